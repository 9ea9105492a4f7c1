"""``python -m dicom_backup_dagster.config check [--config PATH] [--environment NAME]``: validate the site
configuration and print a summary (never a secret) and warnings; exit status 2 when it is invalid."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dicom_backup_dagster.config.loader import CONFIG_ENV_VAR, ENVIRONMENT_ENV_VAR, load_config
from dicom_backup_dagster.config.models import (
    ConfigError,
    MosaiqSource,
    QRSource,
    SiteConfig,
)

# How a field is shown in the summary, when not as key=value; secrets themselves are never fields.
_SHOWN = {
    "db_password_env": "password from ${}",
    "rest_password_env": "password from ${}",
    "staging_target_alias": "staging -> {}",
}
_IDENTITY = {"alias", "type", "aet", "ip", "port", "bulk_hours"}  # shown before the other fields


def _fields(obj: Any, skip: Iterable[str] = ()) -> str:
    """Every field of a model that is set (tables by their keys only: they may hold SQL)."""
    out = []
    for f in dataclasses.fields(obj):
        value, unset = getattr(obj, f.name), f.name in skip or f.name.endswith("_secret")
        if unset or value is None or value is False or value in ("", (), {}):
            continue
        shown = repr(value) if isinstance(value, str) else sorted(value) if isinstance(value, dict) else value
        shown = f"({_fields(value)})" if dataclasses.is_dataclass(value) else shown
        out.append(_SHOWN[f.name].format(value) if f.name in _SHOWN else f"{f.name}={shown}")
    return " ".join(out)


def _summary(site: SiteConfig) -> list[str]:
    env, n, port = site.environment, site.environment.notifications, site.environment.script_ae.port
    others = ", ".join(x for x in site.environment_names if x != env.name)
    lines = [
        f"config: {site.path}",
        f"environment: {env.name}{f' ({env.description})' if env.description else ''}"
        + (f"; also defined: {others}" if others else ""),
        f"script AE: {env.script_ae.aet}{f' listening on port {port}' if port else ' (no listening port)'}",
    ]
    tables: dict[str, tuple[Mapping[str, Any], str, str]] = {
        "sources": (env.sources, env.default_source, " (default)"),
        "backup targets": (env.backup_targets, env.default_backup, " (main)"),
    }
    for title, (peers, default, mark) in tables.items():
        lines.append(f"{title}:")
        for alias, x in peers.items():
            peer = "" if isinstance(x, MosaiqSource) else f" {x.peer}"
            window = (
                x.bulk_window(env.settings.timezone) if isinstance(x, QRSource) and x.bulk_hours else None
            )
            hours = f"; backfills, sweeps and manual runs only {window.describe()}" if window else ""
            lines.append(
                f"  {alias}{mark if alias == default else ''}: {x.type}{peer} {_fields(x, _IDENTITY)}{hours}"
            )
    routes = ", ".join(f"{sev} -> {'+'.join(n.routes.get(sev, ())) or 'nobody'}" for sev in n.routes)
    channels = f"configured: {', '.join(n.configured_channels)}; Dagster UI {n.dagster_ui_url or 'not set'}"
    alerts = f"{routes} ({channels})" if n.enabled else "none configured (alerts are only logged)"
    return [*lines, f"settings: {_fields(env.settings)}", f"notifications: {alerts}"]


def _warnings(site: SiteConfig) -> list[str]:
    # Notification secrets are read at send time, so a missing one fails that channel, not the code
    # location: the check reports it here instead of refusing the file.
    env = site.environment
    unset = "is not set; that channel will fail until it is exported"
    out = [
        f"warning: {env.name}.{k}: environment variable {v} {unset}"
        for k, v in env.notifications.env_vars().items()
        if not os.environ.get(v)
    ]
    # Nightly runs are never paused, but a paused backfill step keeps its slot in the source's pool: a
    # nightly tick outside bulk_hours may then wait for the window like the backfill does.
    s = env.settings
    for alias, qr in ((a, q) for a, q in env.qr_sources.items() if q.bulk_hours):
        outside = qr.bulk_window(s.timezone).closed_tick(s.schedule)
        if outside is not None:
            out.append(
                f"warning: {env.name}.sources.{alias}.bulk_hours: the nightly schedule {s.schedule!r} "
                f"({s.timezone}) fires outside {alias}'s bulk hours (e.g. {outside:%a %H:%M}); nightly runs "
                f"are never paused, but backfill or manual runs paused then hold {alias}'s pool slots and "
                "can delay the nightly run until the window opens: move settings.schedule into the window "
                "or widen bulk_hours"
            )
    if not env.mosaiq_sources:
        return out
    try:
        import pyodbc

        installed = ", ".join(pyodbc.drivers())
    except Exception as exc:  # the check must still report the configuration itself
        return [f"warning: cannot list ODBC drivers ({type(exc).__name__})"]
    for alias, src in env.mosaiq_sources.items():
        if src.odbc_driver not in pyodbc.drivers():
            where = f"{env.name}.sources.{alias}.odbc_driver"
            missing = f"ODBC driver {src.odbc_driver!r} is not installed here"
            out.append(f"warning: {where}: {missing} (installed: {installed or 'none'})")
    return out


def _all_sites(path: str | None) -> int:
    """`check --all`: every environment of the file, then what sites sharing one Dagster instance must not
    share: an alias names asset keys, manifests and metric labels (docs/decisions/multi-site.md)."""
    file = path or os.environ.get(CONFIG_ENV_VAR) or ""
    try:
        names = [
            k for k, v in tomllib.loads(Path(file).read_text(encoding="utf-8")).items() if isinstance(v, dict)
        ]
    except (OSError, tomllib.TOMLDecodeError):
        names = [""]  # load_config reports what is wrong with the file
    worst, owners = 0, dict[str, list[str]]()
    for name in names:
        site = _check(file or None, name)
        if site is None:
            worst = 2
            continue
        for where in ("sources", "backup_targets"):
            for alias in getattr(site.environment, where):
                owners.setdefault(alias, []).append(f"{name}.{where}.{alias}")
    for alias, keys in owners.items():
        if len(keys) > 1:
            worst = 2
            print(
                f"error: alias {alias!r} is defined by {' and '.join(keys)}: the sites of one file share one "
                f"Dagster instance, where an alias names asset keys ({alias}/archived, peers/{alias}), "
                f"manifests and metrics; rename it in all but one site "
                f"(e.g. {alias}_{keys[-1].split('.')[0]})",
                file=sys.stderr,
            )
    print(f"{len(names)} sites: {'all OK' if worst == 0 else 'INVALID (see above)'}")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dicom_backup_dagster.config",
        description="Validate the DICOM backup site configuration.",
    )
    check = parser.add_subparsers(dest="command", required=True).add_parser(
        "check", help="validate the file and print a summary (never prints secrets)"
    )
    check.add_argument("--config", help=f"path of the TOML file (default: ${CONFIG_ENV_VAR})")
    default = f"${ENVIRONMENT_ENV_VAR}, then the file's default_environment"
    check.add_argument("--environment", help=f"environment to check (default: {default})")
    check.add_argument("--all", action="store_true", help="check every environment (site) of the file")
    args = parser.parse_args(argv)
    if args.all:
        return _all_sites(args.config)
    return 0 if _check(args.config, args.environment) else 2


def _check(path: str | None, environment: str | None) -> SiteConfig | None:
    """Print one environment's summary and warnings, or its errors (and return None)."""
    try:
        site = load_config(path, environment)
    except ConfigError as exc:
        print(f"configuration INVALID:\n{exc}", file=sys.stderr)
        return None
    print("\n".join([*_summary(site), *_warnings(site)]))
    executor = site.environment.settings
    if executor.executor == "celery":  # what the site's workers are started with (deploy/README.md)
        print(f"celery queue: {executor.celery_queue or 'dicom-backup-' + site.environment.name.lower()}")
    print(f"configuration OK: {site.path} environment {site.environment.name}")
    return site
