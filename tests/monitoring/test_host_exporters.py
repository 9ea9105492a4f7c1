"""Debian's node_exporter, process-exporter and postgres_exporter (against the real PostgreSQL) started on
loopback: every node_*/namedprocess_*/pg_* metric that rules.yml and the dashboard read is served, or is
listed in DEVICE_ONLY (docs/decisions/monitoring.md "Host health")."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.monitoring.promql import (
    DASHBOARD,
    DEPLOY,
    HOST_EXPORTER_PREFIXES,
    metric_names,
    rule_exprs,
    served_names,
)

# Served only on hosts with that device or state (not in a container on a loopback-only network).
DEVICE_ONLY = frozenset(
    {
        "node_network_speed_bytes",  # physical NICs only (virtual interfaces have no speed)
        "node_disk_read_time_seconds_total",  # node_disk_*: only hosts with block devices in /proc/diskstats
        "node_disk_write_time_seconds_total",
        "node_disk_reads_completed_total",
        "node_disk_writes_completed_total",
        "node_disk_io_time_weighted_seconds_total",
    }
)
EXPORTERS = {
    "node": ["prometheus-node-exporter", "--web.listen-address=127.0.0.1:{port}"],
    "process": [
        "prometheus-process-exporter",
        "-config.path",
        str(DEPLOY / "process-exporter" / "process-exporter.yml"),
        "-web.listen-address",
        "127.0.0.1:{port}",
    ],
    "postgres": ["prometheus-postgres-exporter", "--web.listen-address=127.0.0.1:{port}"],
}
pytestmark = pytest.mark.skipif(
    any(shutil.which(c[0]) is None for c in EXPORTERS.values()),
    reason="exporters not installed (scripts/setup.sh)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, str]]:
    env = dict(os.environ, DATA_SOURCE_NAME="postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable")
    procs, ports = {}, {}
    # A process whose command line is the exporter service's, so that its group is served.
    procs["fake"] = subprocess.Popen(["bash", "-c", "exec -a dicom-backup-exporter sleep 60"])
    cmdline = Path(f"/proc/{procs['fake'].pid}/cmdline")
    while not cmdline.read_bytes().startswith(b"dicom-backup-exporter"):
        time.sleep(0.01)
    try:
        for name, command in EXPORTERS.items():
            ports[name] = free_port()
            argv = [a.format(port=ports[name]) for a in command]
            procs[name] = subprocess.Popen(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 15
        yield {name: scrape(port, deadline) for name, port in ports.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


def used_host_metrics() -> set[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [*rule_exprs(), *(t["expr"] for p in panels for t in p.get("targets", []))]
    return {n for e in exprs for n in metric_names(e) if n.startswith(HOST_EXPORTER_PREFIXES)}


def test_every_host_metric_the_rules_and_dashboard_read_is_served(served: dict[str, str]) -> None:
    names = set().union(*(served_names(text) for text in served.values()))
    used = used_host_metrics()
    assert {"node_cpu_seconds_total", "namedprocess_namegroup_num_procs", "pg_up"} <= used
    missing = used - names - DEVICE_ONLY
    assert not missing, f"rules or dashboard read metrics the exporters do not serve: {sorted(missing)}"
    # The check can fail: a misspelt name is not served.
    assert "node_cpu_second_total" not in names


def test_postgres_exporter_reaches_the_real_postgresql(served: dict[str, str]) -> None:
    assert "pg_up 1" in served["postgres"]
    assert "pg_stat_database_deadlocks{datid=" in served["postgres"]


def test_process_exporter_config_groups_match_rules(served: dict[str, str]) -> None:
    text = served["process"]
    counts = re.findall(r'namedprocess_namegroup_num_procs\{groupname="dicom-backup-exporter"\} (\d+)', text)
    assert counts and int(counts[0]) >= 1, text[-2000:]
