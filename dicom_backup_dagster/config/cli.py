"""``python -m dicom_backup_dagster.config check [--config PATH] [--environment NAME]``: validate the site
configuration and print a summary (never a secret) and warnings; exit status 2 when it is invalid."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dicom_backup_dagster.config.loader import CONFIG_ENV_VAR, ENVIRONMENT_ENV_VAR, load_config
from dicom_backup_dagster.config.models import (
    ConfigError,
    EnvironmentConfig,
    QRSource,
    SiteConfig,
    cron_values,
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
    env, n = site.environment, site.environment.notifications
    others = ", ".join(x for x in site.environment_names if x != env.name)
    port = env.script_ae.port
    lines = [
        f"config: {site.path}",
        f"environment: {env.name}"
        + (f" ({env.description})" if env.description else "")
        + (f"; also defined: {others}" if others else ""),
        f"script AE: {env.script_ae.aet}"
        + (f" listening on port {port}" if port else " (no listening port)"),
        "sources:",
    ]
    for alias, src in env.sources.items():
        mark = " (default)" if alias == env.default_source else ""
        peer = f" {src.peer}" if isinstance(src, QRSource) else ""
        hours = ""
        if isinstance(src, QRSource) and src.bulk_hours:
            window = src.bulk_window(env.settings.timezone).describe()
            hours = f"; backfills, sweeps and manual runs only {window}"
        lines.append(f"  {alias}{mark}: {src.type}{peer} {_fields(src, _IDENTITY)}{hours}")
    lines.append("backup targets:")
    for alias, tgt in env.backup_targets.items():
        mark = " (main)" if alias == env.default_backup else ""
        lines.append(f"  {alias}{mark}: {tgt.type} {tgt.peer} {_fields(tgt, _IDENTITY)}")
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
    out.extend(_bulk_hours_warnings(env))
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


def _bulk_hours_warnings(env: EnvironmentConfig) -> list[str]:
    """Nightly runs are never paused, but a paused backfill step keeps its slot in the source's pool: a
    nightly tick outside bulk_hours may then wait for the window like the backfill does."""
    s = env.settings
    minutes, hours, _dom, _month, weekdays = (cron_values(p, i) for i, p in enumerate(s.schedule.split()))
    out = []
    for alias, src in ((a, q) for a, q in env.qr_sources.items() if q.bulk_hours):
        window = src.bulk_window(s.timezone)
        monday = dt.datetime(2026, 1, 5, tzinfo=window.tzinfo)  # a week without DST changes (north)
        ticks = [
            monday + dt.timedelta(days=day, hours=hour, minutes=minute)
            for day in range(7)
            if (day + 1) % 7 in {d % 7 for d in weekdays}  # cron: 0 and 7 are Sunday
            for hour in sorted(hours)
            for minute in sorted(minutes)
        ]
        outside = next((tick for tick in ticks if not window.allows(tick)), None)
        if outside is not None:
            out.append(
                f"warning: {env.name}.sources.{alias}.bulk_hours: the nightly schedule {s.schedule!r} "
                f"({s.timezone}) fires outside {alias}'s bulk hours (e.g. {outside:%a %H:%M}); nightly runs "
                f"are never paused, but backfill or manual runs paused then hold {alias}'s pool slots and "
                "can delay the nightly run until the window opens: move settings.schedule into the window "
                "or widen bulk_hours"
            )
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
        status = main(["check", *(["--config", file] if file else []), "--environment", name])
        worst = max(worst, status)
        if status == 0:
            env = load_config(file or None, name).environment
            for alias, where in [
                *((a, "sources") for a in env.sources),
                *((a, "backup_targets") for a in env.backup_targets),
            ]:
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
    try:
        site = load_config(args.config, args.environment)
    except ConfigError as exc:
        print(f"configuration INVALID:\n{exc}", file=sys.stderr)
        return 2
    print("\n".join([*_summary(site), *_warnings(site)]))
    executor = site.environment.settings
    if executor.executor == "celery":  # what the site's workers are started with (deploy/README.md)
        print(f"celery queue: {executor.celery_queue or 'dicom-backup-' + site.environment.name.lower()}")
    print(f"configuration OK: {site.path} environment {site.environment.name}")
    return 0
