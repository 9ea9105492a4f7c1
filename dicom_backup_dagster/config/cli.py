"""``python -m dicom_backup_dagster.config check [--config PATH] [--environment NAME]``: validate the site
configuration and print a summary (never a secret) and warnings; exit status 2 when it is invalid."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

from dicom_backup_dagster.config.loader import CONFIG_ENV_VAR, ENVIRONMENT_ENV_VAR, load_config
from dicom_backup_dagster.config.models import (
    CRON_FIELDS,
    ConfigError,
    EnvironmentConfig,
    QRSource,
    SiteConfig,
    cron_value,
)


def _summary(site: SiteConfig) -> list[str]:
    env = site.environment
    s = env.settings
    others = [n for n in site.environment_names if n != env.name]
    lines = [
        f"config: {site.path}",
        f"environment: {env.name}"
        + (f" ({env.description})" if env.description else "")
        + (f"; also defined: {', '.join(others)}" if others else ""),
        f"script AE: {env.script_ae.aet}"
        + (f" listening on port {env.script_ae.port}" if env.script_ae.port else " (no listening port)"),
        "sources:",
    ]
    for alias, src in env.sources.items():
        mark = " (default)" if alias == env.default_source else ""
        if isinstance(src, QRSource):
            lines.append(
                f"  {alias}{mark}: {src.type} {src.peer} query_level={src.query_level} "
                f"transfer={src.transfer} max_associations={src.max_associations}"
                + (" relational" if src.relational else "")
                + (f" max_find_results={src.max_find_results}" if src.max_find_results else "")
                + (f" query_keys={sorted(src.query_keys)}" if src.query_keys else "")
                + (
                    f"; backfills, sweeps and manual runs only {src.bulk_window(s.timezone).describe()}"
                    if src.bulk_hours
                    else ""
                )
            )
        else:
            where = (
                src.db_database
                if src.is_sqlite
                else (f"{src.db_server}{':' + str(src.db_port) if src.db_port else ''}/{src.db_database}")
            )
            lines.append(
                f"  {alias}{mark}: mosaiq via ODBC driver {src.odbc_driver!r} {where} as "
                f"{src.db_username}, password from ${src.db_password_env}; staging -> "
                f"{src.staging_target_alias}"
            )
    lines.append("backup targets:")
    for alias, tgt in env.backup_targets.items():
        mark = " (main)" if alias == env.default_backup else ""
        rest = ""
        if tgt.rest_url:
            rest = f" REST {tgt.rest_url}" + (
                f" as {tgt.rest_username}, password from ${tgt.rest_password_env}"
                if tgt.rest_username
                else ""
            )
        lines.append(f"  {alias}{mark}: {tgt.type} {tgt.peer}{rest}")
    lines.append(
        f"settings: schedule {s.schedule!r} ({s.timezone}), connectivity {s.connectivity_schedule!r}, "
        f"lookback_days={s.lookback_days}, max_uids_per_run={s.max_uids_per_run}, "
        f"backfill_days_per_run={s.backfill_days_per_run}, "
        f"staging_retention_days={s.staging_retention_days}, late_series_days={s.late_series_days}, "
        f"sweep: {s.sweep_days} days within {s.sweep_nights} nights, at most {s.sweep_max_studies} "
        f"studies a night, {s.sweep_schedule!r}, "
        f"verification_fraction={s.verification_fraction}, timeouts acse={s.timeouts.acse} "
        f"dimse={s.timeouts.dimse} network={s.timeouts.network} connect={s.timeouts.connect}"
        + (f", mosaiq_queries={sorted(s.mosaiq_queries)}" if s.mosaiq_queries else "")
    )
    n = env.notifications
    lines.append(
        "notifications: "
        + (
            ", ".join(f"{sev} -> {'+'.join(n.routes.get(sev, ())) or 'nobody'}" for sev in n.routes)
            + f" (configured: {', '.join(n.configured_channels)}; Dagster UI {n.dagster_ui_url or 'not set'})"
            if n.enabled
            else "none configured (alerts are only logged)"
        )
    )
    return lines


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


def _cron_values(part: str, index: int) -> set[int]:
    """The values one field of a cron expression (already checked by cron_problem) matches."""
    out: set[int] = set()
    for item in part.split(","):
        base, _, step = item.partition("/")
        first, dash, last = base.partition("-")
        if base == "*":
            low, high = CRON_FIELDS[index][1], CRON_FIELDS[index][2]
        else:  # "5/15": from 5 every 15
            low = cron_value(first, index)
            high = cron_value(last, index) if dash else (CRON_FIELDS[index][2] if step else low)
        out.update(range(low, high + 1, int(step or 1)))
    return out


def _bulk_hours_warnings(env: EnvironmentConfig) -> list[str]:
    """Nightly runs are never paused, but a paused backfill step keeps its slot in the source's pool: a
    nightly tick outside bulk_hours may then wait for the window like the backfill does."""
    minutes, hours, _dom, _month, weekdays = env.settings.schedule.split()
    cron_days = {d % 7 for d in _cron_values(weekdays, 4)}  # cron: 0 and 7 are Sunday
    out = []
    for alias, src in env.qr_sources.items():
        if not src.bulk_hours:
            continue
        window = src.bulk_window(env.settings.timezone)
        monday = dt.datetime(2026, 1, 5, tzinfo=window.tzinfo)  # a week without DST changes (north)
        outside = next(
            (
                tick
                for day in range(7)
                if (day + 1) % 7 in cron_days
                for hour in sorted(_cron_values(hours, 1))
                for minute in sorted(_cron_values(minutes, 0))
                if not window.allows(tick := monday + dt.timedelta(days=day, hours=hour, minutes=minute))
            ),
            None,
        )
        if outside is not None:
            out.append(
                f"warning: {env.name}.sources.{alias}.bulk_hours: the nightly schedule "
                f"{env.settings.schedule!r} ({env.settings.timezone}) fires outside {alias}'s bulk hours "
                f"(e.g. {outside:%a %H:%M}); nightly runs are never paused, but backfill or manual runs "
                f"paused then hold {alias}'s pool slots and can delay the nightly run until the window "
                "opens: move settings.schedule into the window or widen bulk_hours"
            )
    return out


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
    args = parser.parse_args(argv)
    try:
        site = load_config(args.config, args.environment)
    except ConfigError as exc:
        print(f"configuration INVALID:\n{exc}", file=sys.stderr)
        return 2
    print("\n".join([*_summary(site), *_warnings(site)]))
    print(f"configuration OK: {site.path} environment {site.environment.name}")
    return 0
