"""Health probes (monitoring/probes.py) against the real processes: Orthanc /system, the exporter's
/metrics, `dagster-daemon liveness-check` and dagster-webserver /server_info."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest
import requests
from prometheus_client import start_http_server

from dicom_backup_dagster.monitoring.exporter import DagsterStateCollector, build_registry
from dicom_backup_dagster.monitoring.probes import (
    probe_daemon,
    probe_exporter,
    probe_orthanc,
    probe_webserver,
)
from dicom_backup_dagster.sandbox.processes import free_port
from tests.monitoring.conftest import REPO, Night
from tests.monitoring.daemon import beat


def test_orthanc_system(monitored_night: Night) -> None:
    good = probe_orthanc(monitored_night.orthanc)
    assert good.ok and "AET ORTHANC_MAIN" in good.detail, good
    bad = probe_orthanc(replace(monitored_night.orthanc, password="wrong"))
    assert not bad.ok and "401" in bad.detail and "wrong" not in bad.detail
    down = probe_orthanc(replace(monitored_night.orthanc, url=f"http://127.0.0.1:{free_port()}"))
    assert not down.ok and "ConnectionError" in down.detail


def _broken_instance() -> dg.DagsterInstance:
    raise RuntimeError("storage unreachable")


@pytest.mark.parametrize("healthy", [True, False])
def test_exporter_metrics(monitored_night: Night, healthy: bool) -> None:
    factory = (lambda: monitored_night.instance) if healthy else _broken_instance
    port = free_port()
    server, thread = start_http_server(
        port, addr="127.0.0.1", registry=build_registry(DagsterStateCollector(factory))
    )
    try:
        result = probe_exporter(f"http://127.0.0.1:{port}")
    finally:
        server.shutdown()
        thread.join(5)
    assert result.ok is healthy, result
    assert not probe_exporter(f"http://127.0.0.1:{free_port()}").ok


def test_daemon_liveness_check(tmp_path: Path) -> None:
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    before = probe_daemon(tmp_path)
    assert not before.ok and "Daemon(s) not running" in before.detail, before
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:  # what a running dagster-daemon writes every 30 s
        for daemon_type in instance.get_required_daemon_types():
            beat(instance, daemon_type, time.time(), "probe-test")
    finally:
        instance.dispose()
    after = probe_daemon(tmp_path)
    assert after.ok and "Daemon live" in after.detail, after


def test_webserver_server_info(tmp_path: Path) -> None:
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    webserver = Path(sys.executable).with_name("dagster-webserver")
    log = (tmp_path / "webserver.log").open("w")
    process = subprocess.Popen(
        [str(webserver), "--empty-workspace", "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        result = probe_webserver(base)
        while not result.ok and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
            result = probe_webserver(base)
        assert result.ok, f"{result}\n{(tmp_path / 'webserver.log').read_text()[-2000:]}"
        # /health is not a health check: the single-page app answers any path with 200.
        health = requests.get(f"{base}/health", timeout=5)
        assert health.status_code == 200 and not probe_webserver(f"{base}/health").ok
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        log.close()
    assert not probe_webserver(base).ok  # and a stopped webserver fails the probe
