"""`python -m dicom_backup_dagster.health` against real peers: the sandbox's Orthancs, ARIA and MIM
simulators and Mosaiq database, a real PostgreSQL as the Dagster storage, the exporter over it, a real
Prometheus; then stopped ports in their place."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest
import requests
from prometheus_client import start_http_server

from dicom_backup_dagster import health
from dicom_backup_dagster.config import load_config
from dicom_backup_dagster.monitoring.exporter import DagsterStateCollector, build_registry
from dicom_backup_dagster.sandbox.processes import free_port, stop_pid, wait_until
from dicom_backup_dagster.sandbox.sandbox import ENVIRONMENT, Sandbox
from tests.monitoring.daemon import beat
from tests.postgres import PG, throwaway_database

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def postgres_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """DAGSTER_HOME with the repository's dagster-postgres dagster.yaml, on a throwaway database."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "postgres" / "dagster.yaml", home / "dagster.yaml")
    with throwaway_database("health") as name:
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        for key, value in {
            "HOST": PG["host"],
            "PORT": str(PG["port"]),
            "USER": PG["user"],
            "DB": name,
        }.items():
            monkeypatch.setenv(f"DAGSTER_PG_{key}", value)
        monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-with-trust")
        yield home


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian package prometheus)")
    port = free_port()
    (tmp_path / "prometheus.yml").write_text("global: {scrape_interval: 1m}\n")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(url + "/-/healthy", timeout=1).ok, 20, "Prometheus /-/healthy")
        yield url
    finally:
        stop_pid(process.pid)


def test_every_component_up_prints_an_ok_summary(
    sandbox: Sandbox,
    sandbox_env: dict[str, str],
    postgres_home: Path,
    prometheus: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in sandbox_env.items():
        monkeypatch.setenv(name, value)
    instance = dg.DagsterInstance.get()
    for daemon in instance.get_required_daemon_types():
        beat(instance, daemon, time.time(), "test")
    port = free_port()
    server, thread = start_http_server(
        port, addr="127.0.0.1", registry=build_registry(DagsterStateCollector(lambda: instance))
    )
    try:
        status = health.main(["--exporter", f"http://127.0.0.1:{port}", "--prometheus", prometheus])
        out = capsys.readouterr().out
        assert status == 0, out
        assert out.startswith("health OK: ") and len(out.splitlines()) == 1
        for what in (
            "source ARIA C-ECHO",
            "source MIM C-ECHO",
            "main archive ORTHANC_MAIN C-ECHO",
            "staging ORTHANC_STAGE C-ECHO",
            "Mosaiq MOSAIQ ODBC connect",
            "Dagster storage",
            "dagster-daemon SCHEDULER",
            "dicom-backup-exporter",
            "Prometheus",
        ):
            assert what in out, what
        # A daemon that stopped beating 20 minutes ago is a problem.
        beat(instance, "SCHEDULER", time.time() - 1200, "test")
        (stale,) = [f for f in health.check_daemons(instance, 300) if not f.ok]
        assert stale.what == "dagster-daemon SCHEDULER" and "last heartbeat 1200 s ago" in stale.detail
        assert "systemctl restart dicom-backup-daemon" in stale.detail
    finally:
        server.shutdown()
        thread.join(5)
        instance.dispose()


def test_stopped_components_give_one_line_each_and_exit_1(
    sandbox: Sandbox,
    sandbox_env: dict[str, str],
    postgres_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in sandbox_env.items():
        monkeypatch.setenv(name, value)
    stopped = free_port()  # nothing listens there
    monkeypatch.setenv("DAGSTER_PG_PORT", str(stopped))
    env = load_config(sandbox.config_path, ENVIRONMENT).environment
    main = replace(env.main_target, port=stopped)
    env = replace(env, backup_targets={**env.backup_targets, main.alias: main})
    url = f"http://127.0.0.1:{stopped}"
    started = time.perf_counter()
    findings = health.run_checks(env, health.Targets(exporter=url, alertmanager=url, timeout=3))
    seconds = time.perf_counter() - started
    lines, status = health.report(findings, seconds)
    assert status == 1
    problems = {line.split(" at ")[0] for line in lines[:-1]}
    assert problems == {
        f"PROBLEM main archive {main.alias} C-ECHO",
        "PROBLEM Dagster storage (PostgreSQL)",
        "PROBLEM dicom-backup-exporter",
        "PROBLEM Alertmanager",
    }, lines
    text = "\n".join(lines)
    assert f"{main.aet}@127.0.0.1:{stopped}" in text  # where: AE@host:port
    assert f"127.0.0.1:{stopped}/" in text and "systemctl status postgresql" in text  # the storage
    assert "peer_unreachable.md" in text and "systemctl status dicom-backup-exporter" in text
    assert lines[-1] == f"health: 4 problems in {len(findings)} checks"
    assert "unused-with-trust" not in text
    assert seconds < 15  # in parallel, and without Dagster's ~20 s of connection retries
