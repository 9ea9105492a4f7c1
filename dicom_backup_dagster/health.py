"""``python -m dicom_backup_dagster.health``: check every component of a site in one go.

Checks, in parallel: C-ECHO to every DICOM peer (the sources, the staging SCPs, the main archive) from the
script AE; an ODBC connect and ``SELECT 1`` on every Mosaiq database; the Dagster storage
(``$DAGSTER_HOME/dagster.yaml``: a PostgreSQL connect with a 5 s timeout before Dagster's own ~20 s of
retries, then a read); the heartbeat of every daemon the instance requires (``get_daemon_heartbeats``,
tolerance ``$DAGSTER_DAEMON_HEARTBEAT_TOLERANCE`` or 300 s); the exporter's ``/metrics``; and Prometheus's
and Alertmanager's ``/-/healthy`` when their URLs are given (``--prometheus``, ``--alertmanager`` or
``$DICOM_BACKUP_PROMETHEUS_URL``, ``$DICOM_BACKUP_ALERTMANAGER_URL``).

Prints one line per problem (what, where: AE@host:port or host:port, what to do) and exits 1, or prints a
short OK summary and exits 0; 2 when the configuration is invalid. Never prints a password.

    python -m dicom_backup_dagster.health [--config PATH] [--environment NAME] [--exporter URL]
        [--prometheus URL] [--alertmanager URL] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import requests
import yaml  # type: ignore[import-untyped]  # PyYAML, a dependency of dagster

from dicom_backup_dagster.config import CONFIG_ENV_VAR, ConfigError, EnvironmentConfig, load_config
from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.flows import Deployment
from dicom_backup_dagster.monitoring.probes import probe_exporter
from dicom_backup_dagster.mosaiq.connection import MosaiqConnectionError, connect

HEARTBEAT_TOLERANCE_S = 300.0  # as DagsterDaemonHeartbeatStale (deploy/prometheus/rules.yml)
RUNBOOKS = "docs/runbooks"


@dataclass(frozen=True)
class Finding:
    what: str  # "main archive ORTHANC_MAIN C-ECHO", "Dagster storage", ...
    where: str  # AE@host:port, host:port, URL or path; never credentials
    ok: bool
    detail: str  # OK: a short figure; a problem: what failed and what to do

    def __str__(self) -> str:
        return f"{'OK' if self.ok else 'PROBLEM'} {self.what} at {self.where}: {self.detail}"


def _role(env: EnvironmentConfig, alias: str) -> str:
    if alias == env.default_backup:
        return "main archive"
    if alias in env.qr_sources:
        return "source"
    staging = {s.staging_target_alias for s in env.mosaiq_sources.values()}
    return "staging" if alias in staging else "backup target"


def check_peer(env: EnvironmentConfig, alias: str, peer: Peer) -> Finding:
    what, calling = f"{_role(env, alias)} {alias} C-ECHO", env.script_ae.aet
    try:
        seconds = c_echo(peer, calling, env.settings.timeouts)
    except DicomError as error:  # its message says what failed, the DICOM status and what to check
        return Finding(what, str(peer), False, f"{error} ({RUNBOOKS}/peer_unreachable.md)")
    return Finding(what, str(peer), True, f"{1000 * seconds:.0f} ms")


def check_mosaiq(env: EnvironmentConfig, alias: str, timeout: float) -> Finding:
    source = env.mosaiq_sources[alias]
    where = source.db_database if source.is_sqlite else f"{source.db_server}:{source.db_port or 1433}"
    what = f"Mosaiq {alias} ODBC connect"
    try:
        conn = connect(source, timeout)
        try:
            conn.cursor().execute("SELECT 1").fetchone()
        finally:
            conn.close()
    except MosaiqConnectionError as error:
        return Finding(what, where, False, str(error))
    except ValueError as error:  # the password variable is not set
        return Finding(what, where, False, f"{error}: export it in this shell (as in the services' env file)")
    return Finding(what, where, True, f"database {source.db_database} answers")


def _setting(value: Any) -> str | None:
    """A dagster.yaml value: literal or {env: NAME}."""
    if isinstance(value, dict) and "env" in value:
        return os.environ.get(str(value["env"]))
    return None if value is None else str(value)


def postgres_settings(dagster_home: Path) -> dict[str, Any] | None:
    """The PostgreSQL connection of `storage: postgres: postgres_db:` in dagster.yaml, or None."""
    path = dagster_home / "dagster.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    db = ((data or {}).get("storage") or {}).get("postgres", {}).get("postgres_db")
    if not isinstance(db, dict):
        return None
    return {
        "host": _setting(db.get("hostname")) or "localhost",
        "port": int(_setting(db.get("port")) or 5432),
        "user": _setting(db.get("username")),
        "password": _setting(db.get("password")),
        "dbname": _setting(db.get("db_name")),
    }


def check_storage(timeout: float) -> tuple[Finding, Any]:
    """(finding, DagsterInstance or None). PostgreSQL is tried directly first: Dagster retries a refused
    connection for ~20 s before it says so."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        fix = (
            "export DAGSTER_HOME=<the instance folder> (the services use /var/lib/dicom-backup/dagster_home)"
        )
        return Finding("Dagster storage", "$DAGSTER_HOME", False, f"DAGSTER_HOME is not set; {fix}"), None
    pg = postgres_settings(Path(home))
    where = f"{pg['host']}:{pg['port']}/{pg['dbname']}" if pg else f"{home} (SQLite)"
    if pg:
        import psycopg2  # type: ignore[import-untyped]  # with dagster-postgres (the postgres extra)

        try:
            psycopg2.connect(connect_timeout=max(1, round(timeout)), **pg).close()
        except psycopg2.Error as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            fix = (
                "is PostgreSQL running (systemctl status postgresql)? check DAGSTER_PG_HOST, _PORT, _USER, "
                f"_PASSWORD and _DB ({RUNBOOKS}/dagster_storage.md)"
            )
            return Finding("Dagster storage (PostgreSQL)", where, False, f"{reason}; {fix}"), None
    from dagster import DagsterInstance

    try:
        instance = DagsterInstance.get()
        runs = instance.get_runs_count()
    except Exception as error:  # any storage error; its class only (messages can quote SQL parameters)
        fix = f"see {RUNBOOKS}/dagster_storage.md (schema: `dagster instance migrate`)"
        return Finding(
            "Dagster storage", where, False, f"reading runs failed ({type(error).__name__}); {fix}"
        ), None
    return Finding("Dagster storage", where, True, f"{runs} runs"), instance


def check_daemons(instance: Any, tolerance: float, now: float | None = None) -> list[Finding]:
    now = time.time() if now is None else now
    beats = instance.get_daemon_heartbeats()
    fix = (
        "start or restart dagster-daemon (systemctl restart dicom-backup-daemon; journalctl -u "
        f"dicom-backup-daemon) ({RUNBOOKS}/daemon_heartbeat_stale.md)"
    )
    out = []
    for daemon in sorted(instance.get_required_daemon_types()):
        beat = beats.get(daemon)
        what = f"dagster-daemon {daemon}"
        if beat is None:
            out.append(Finding(what, "Dagster storage", False, f"no heartbeat recorded; {fix}"))
        elif now - beat.timestamp > tolerance:
            age = now - beat.timestamp
            detail = f"last heartbeat {age:.0f} s ago (tolerance {tolerance:.0f} s); {fix}"
            out.append(Finding(what, "Dagster storage", False, detail))
        else:
            out.append(Finding(what, "Dagster storage", True, f"heartbeat {now - beat.timestamp:.0f} s ago"))
    return out


def check_exporter(url: str, timeout: float) -> Finding:
    result = probe_exporter(url, timeout)
    fix = f"(systemctl status dicom-backup-exporter; {RUNBOOKS}/exporter_down.md)"
    return Finding(
        "dicom-backup-exporter", url, result.ok, result.detail if result.ok else f"{result.detail} {fix}"
    )


def check_healthy(name: str, url: str, timeout: float) -> Finding:
    target = url.rstrip("/") + "/-/healthy"
    fix = (
        f"is {name} running (systemctl status prometheus{'-alertmanager' if name == 'Alertmanager' else ''})?"
    )
    try:
        response = requests.get(target, timeout=timeout)
    except requests.RequestException as error:
        return Finding(name, url, False, f"GET {target}: {type(error).__name__}; {fix}")
    if response.status_code != 200:
        return Finding(name, url, False, f"GET {target}: HTTP {response.status_code}; {fix}")
    return Finding(name, url, True, "healthy")


@dataclass(frozen=True)
class Targets:
    exporter: str = f"http://127.0.0.1:{Deployment.exporter_port}"
    prometheus: str | None = None
    alertmanager: str | None = None
    timeout: float = 5.0
    heartbeat_tolerance: float = HEARTBEAT_TOLERANCE_S


def run_checks(env: EnvironmentConfig, targets: Targets) -> list[Finding]:
    """Every check, in parallel; the daemon checks once the storage answered."""
    timeouts = replace(env.settings.timeouts, connect=min(env.settings.timeouts.connect, targets.timeout))
    env = replace(env, settings=replace(env.settings, timeouts=timeouts))
    jobs: list[Callable[[], Finding | list[Finding]]] = [
        *(lambda a=a, p=p: check_peer(env, a, p) for a, p in env.peers().items()),
        *(lambda a=a: check_mosaiq(env, a, targets.timeout) for a in env.mosaiq_sources),
        lambda: check_exporter(targets.exporter, 3 * targets.timeout),
        *(
            (lambda n=n, u=u: check_healthy(n, u, targets.timeout))
            for n, u in (("Prometheus", targets.prometheus), ("Alertmanager", targets.alertmanager))
            if u
        ),
    ]

    def storage_and_daemons() -> list[Finding]:
        finding, instance = check_storage(targets.timeout)
        if instance is None:
            return [finding]
        try:
            return [finding, *check_daemons(instance, targets.heartbeat_tolerance)]
        except Exception as error:  # the storage failed between the two reads
            detail = f"reading the daemon heartbeats failed ({type(error).__name__}); run the check again"
            return [finding, Finding("dagster-daemon heartbeats", finding.where, False, detail)]
        finally:
            instance.dispose()

    jobs.insert(0, storage_and_daemons)
    with ThreadPoolExecutor(max_workers=min(16, len(jobs))) as pool:
        results = list(pool.map(lambda job: job(), jobs))
    return [f for r in results for f in (r if isinstance(r, list) else [r])]


def report(findings: Iterable[Finding], seconds: float) -> tuple[list[str], int]:
    findings = list(findings)
    problems = [f for f in findings if not f.ok]
    if problems:
        return [*map(str, problems), f"health: {len(problems)} problems in {len(findings)} checks"], 1
    return [
        f"health OK: {len(findings)} checks ({', '.join(f.what for f in findings)}) in {seconds:.1f} s"
    ], 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dicom_backup_dagster.health",
        description="Check every component of the site in one go; one line per problem, exit 1 if any.",
    )
    parser.add_argument("--config", help=f"path of the TOML file (default: ${CONFIG_ENV_VAR})")
    parser.add_argument("--environment", help="environment (site) to check (default as for the backup)")
    parser.add_argument(
        "--exporter",
        default=os.environ.get("DICOM_BACKUP_EXPORTER_URL") or Targets.exporter,
        help=f"exporter base URL (default $DICOM_BACKUP_EXPORTER_URL, else {Targets.exporter})",
    )
    parser.add_argument("--prometheus", default=os.environ.get("DICOM_BACKUP_PROMETHEUS_URL"))
    parser.add_argument("--alertmanager", default=os.environ.get("DICOM_BACKUP_ALERTMANAGER_URL"))
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per connection (default 5)")
    args = parser.parse_args(argv)
    try:
        env = load_config(args.config, args.environment).environment
    except ConfigError as exc:
        print(f"configuration INVALID:\n{exc}", file=sys.stderr)
        return 2
    tolerance = float(os.environ.get("DAGSTER_DAEMON_HEARTBEAT_TOLERANCE") or HEARTBEAT_TOLERANCE_S)
    targets = Targets(args.exporter, args.prometheus, args.alertmanager, args.timeout, tolerance)
    started = time.perf_counter()
    lines, status = report(run_checks(env, targets), time.perf_counter() - started)
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
