"""``python -m dicom_backup_dagster.mosaiq_probe``: check a site's Mosaiq before the first night.

A program over the site configuration and the Mosaiq layer (it lives beside them, not in `mosaiq/`, so
that `mosaiq/` never imports `config/`, which sits above it).

Loads the site configuration (``--config`` / ``$DICOM_BACKUP_CONFIG``), connects to each Mosaiq source
read-only with the password from its ``db_password_env`` variable, and prints `probe.ProbeReport.lines`.
Exit status: 0 every source is ready (a night would run), 1 a source is not ready, 2 the configuration is
invalid (an override that does not parse is reported here too), 3 a database could not be reached or
its catalogue read. Nothing printed holds the password or patient data.
"""

from __future__ import annotations

import argparse
import sys

from dicom_backup_dagster.config import CONFIG_ENV_VAR, ConfigError, load_config
from dicom_backup_dagster.mosaiq.connection import MosaiqConnectionError, connect
from dicom_backup_dagster.mosaiq.probe import probe
from dicom_backup_dagster.mosaiq.queries import MosaiqQueryError

READY, NOT_READY, BAD_CONFIG, UNREACHABLE = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dicom_backup_dagster.mosaiq_probe",
        description="Check that each Mosaiq database has every table and column the nightly queries read.",
    )
    cmd = parser
    cmd.add_argument("--config", help=f"path of the TOML file (default: ${CONFIG_ENV_VAR})")
    cmd.add_argument("--environment", help="environment to use (default as for the backup itself)")
    cmd.add_argument("--source", help="alias of one Mosaiq source (default: every Mosaiq source)")
    cmd.add_argument("--timeout", type=float, default=10, help="login timeout in seconds (default 10)")
    args = parser.parse_args(argv)

    try:
        site = load_config(args.config, args.environment)
    except ConfigError as exc:
        print(f"configuration INVALID:\n{exc}", file=sys.stderr)
        return BAD_CONFIG
    env = site.environment
    sources = env.mosaiq_sources
    if args.source is not None:
        if args.source not in sources:
            known = ", ".join(sorted(sources)) or "none"
            print(
                f"no Mosaiq source {args.source!r} in {site.path}; Mosaiq sources: {known}", file=sys.stderr
            )
            return BAD_CONFIG
        sources = {args.source: sources[args.source]}
    if not sources:
        print(f"{site.path} environment {env.name} has no Mosaiq source: nothing to probe", file=sys.stderr)
        return BAD_CONFIG

    status = READY
    overrides = env.settings.mosaiq_queries or None
    for alias, source in sources.items():
        print(f"== {alias}")
        try:
            conn = connect(source, args.timeout)
        except MosaiqConnectionError as exc:
            print(f"{alias}: {exc}", file=sys.stderr)
            status = max(status, UNREACHABLE)
            continue
        try:
            report = probe(conn, overrides)
        except MosaiqQueryError as exc:
            print(f"{alias}: {exc}", file=sys.stderr)
            status = max(status, UNREACHABLE)
            continue
        finally:
            conn.close()
        for line in report.lines():
            print(line)
        if not report.ok:
            status = max(status, NOT_READY)
    return status


if __name__ == "__main__":
    sys.exit(main())
