"""deploy/prometheus: rules valid, every alert tested firing and quiet by promtool, configuration valid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.monitoring.conftest import PROMTOOL
from tests.monitoring.promql import (
    DEPLOY,
    KINDS,
    REPO,
    RULES,
    RULES_TEST,
    RULES_TEST_DAILY,
    RULES_TEST_HOST,
    RULES_TEST_SLO,
    RUNBOOKS_PENDING,
    alerts,
)

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")

# seeds/000 section 4 (and the issue): each condition and the alerts that implement it.
CONDITIONS = {
    "host down": {"DicomBackupHostDown"},
    "process down (Orthanc, exporter, webserver)": {
        "OrthancDown",
        "DicomBackupExporterDown",
        "DagsterWebserverDown",
    },
    "archive disk free < 20% warning": {"ArchiveDiskSpaceLow"},
    "archive disk free < 10% critical": {"ArchiveDiskSpaceCritical"},
    "backup failures per source": {"DicomBackupFailed", "DicomBackupRepeatedFailures"},
    "instance count drop vs history": {"DicomBackupInstanceCountDrop"},
    "duration > 2x baseline": {"DicomBackupDurationHigh"},
    "DICOM failure rate": {"DicomDimseFailureRateHigh"},
    "connectivity failure": {"DicomPeerUnreachable"},
    "no success in 26 h": {"DicomBackupNoRecentSuccess"},
    "stale daemon heartbeat": {"DagsterDaemonHeartbeatStale"},
    "verification failed": {"DicomBackupContentVerificationFailed"},
    "instances missing on the archive": {"DicomBackupArchiveIncomplete"},
    "watchdog": {"Watchdog"},
    # seeds/000 section 2 (host health) and the Dagster storage (issue 17).
    "CPU average > 80% for 15 min": {"HostCpuHigh"},
    "CPU per core > 80% for 15 min": {"HostCpuCoreHigh"},
    "memory and swap": {"HostMemoryLow", "HostSwapUsed"},
    "Orthanc volume latency, IOPS, queue depth": {
        "HostDiskLatencyHigh",
        "HostDiskIopsHigh",
        "HostDiskQueueHigh",
    },
    "free space of the log and root volumes": {"HostVolumeSpaceLow", "HostVolumeSpaceCritical"},
    "network bytes, packets, errors, drops": {"HostNetworkSaturated", "HostNetworkErrors"},
    "unusual network traffic": {"HostNetworkTrafficUnusual"},
    "TCP connection states": {"HostTcpConnectionsHigh"},
    "process health (stopped, or never started)": {"ProcessDown", "ProcessNeverStarted"},
    "Dagster storage down, connections, slow queries, deadlocks": {
        "DagsterStorageDown",
        "DagsterStorageConnectionsHigh",
        "DagsterStorageSlowQueries",
        "DagsterStorageDeadlocks",
    },
    # seeds/001 "define SLIs and SLOs", "alert on symptoms" (issue 17): page on a breach, warn on burn.
    "recovery point over its target": {"DicomBackupRecoveryPointBreached"},
    "nights verified in time below target": {"DicomBackupNightsSloBreached"},
    "SLO error budget burning": {"DicomBackupSloBurnRateHigh"},
}
TEST_FILES = (RULES_TEST, RULES_TEST_DAILY, RULES_TEST_HOST, RULES_TEST_SLO)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rules_file_is_valid() -> None:
    result = promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests() -> None:
    result = promtool("test", "rules", *(f.name for f in TEST_FILES), cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tested: dict[str, set[str]] = {}
    groups = [g for f in TEST_FILES for g in yaml.safe_load(f.read_text())["tests"]]
    for group in groups:
        for case in group.get("alert_rule_test", []):
            tested.setdefault(case["alertname"], set()).add("fires" if case["exp_alerts"] else "quiet")
    for name in alerts():
        expected = {"fires"} if name == "Watchdog" else {"fires", "quiet"}
        assert tested.get(name, set()) >= expected, f"{name}: unit tests cover {tested.get(name)}"


def test_unit_tests_fail_when_a_threshold_changes(tmp_path: Path) -> None:
    """The promtool cases pin the thresholds: moving one makes them fail (so they can fail). Only the
    cases of the changed alert run, to keep this quick."""
    mutations = [
        ("< 0.20", "< 0.30", "ArchiveDiskSpaceLow", RULES_TEST),
        ("> 300\n", "> 900\n", "DagsterDaemonHeartbeatStale", RULES_TEST),
        ("> 26 * 3600", "> 28 * 3600", "DicomBackupNoRecentSuccess", RULES_TEST_DAILY),
        ('root"} < 0.20', 'root"} < 0.12', "HostVolumeSpaceLow", RULES_TEST_HOST),
        ("[5m]))) > 80", "[5m]))) > 95", "HostCpuHigh", RULES_TEST_HOST),
        ("< 0.5 * avg", "< 0.2 * avg", "DicomBackupInstanceCountDrop", RULES_TEST_DAILY),
        ('{window="week"} >= 2', '{window="week"} >= 6', "DicomBackupSloBurnRateHigh", RULES_TEST_SLO),
        (
            "(1 - dicom_backup_nights_verified_target_ratio) *",
            "(2 - dicom_backup_nights_verified_target_ratio) *",
            "DicomBackupNightsSloBreached",
            RULES_TEST_SLO,
        ),
    ]
    for old, new, alert, tests in mutations:
        suite = yaml.safe_load(tests.read_text())
        suite["tests"] = [
            g for g in suite["tests"] if any(c["alertname"] == alert for c in g.get("alert_rule_test", []))
        ]
        (tmp_path / "cases.yml").write_text(yaml.safe_dump(suite))
        text = RULES.read_text()
        assert old in text
        (tmp_path / RULES.name).write_text(text)
        assert promtool("test", "rules", "cases.yml", cwd=tmp_path).returncode == 0, alert
        (tmp_path / RULES.name).write_text(text.replace(old, new, 1))
        result = promtool("test", "rules", "cases.yml", cwd=tmp_path)
        assert result.returncode == 1, f"changing {old!r} went unnoticed"


def test_every_alert_has_severity_kind_and_runbook() -> None:
    for name, rule in alerts().items():
        labels, annotations = rule["labels"], rule["annotations"]
        if name == "Watchdog":
            assert labels["severity"] == "none"
            continue
        assert labels["severity"] in {"critical", "high", "low"}, name
        assert labels["kind"] in KINDS, name
        assert annotations["runbook_url"] == f"docs/runbooks/{labels['kind']}.md", name
        assert annotations["summary"] and annotations["description"], name
        page = REPO / "docs" / "runbooks" / f"{labels['kind']}.md"
        assert page.is_file() or labels["kind"] in RUNBOOKS_PENDING, f"{name}: no runbook {page}"
    # Infrastructure pages (critical); what the Dagster sensors already page for goes to Slack (high).
    critical = {n for n, r in alerts().items() if r["labels"]["severity"] == "critical"}
    assert {"DicomBackupHostDown", "DagsterDaemonHeartbeatStale", "DicomBackupNoRecentSuccess"} <= critical
    assert {"DicomBackupExporterDown", "ArchiveDiskSpaceCritical", "OrthancDown"} <= critical
    assert {
        "DicomBackupRecoveryPointBreached",
        "DicomBackupNightsSloBreached",
        "ProcessNeverStarted",
    } <= critical
    assert not critical & {
        "DicomBackupFailed",
        "DicomBackupCheckFailed",
        "DicomBackupContentVerificationFailed",
    }


def test_every_seed_condition_has_an_alert() -> None:
    names = set(alerts())
    for condition, implementing in CONDITIONS.items():
        assert implementing <= names, condition


def test_prometheus_configuration_is_valid(tmp_path: Path) -> None:
    # Secrets are files outside the repository: point them at a temporary one for the check.
    secret = tmp_path / "orthanc_password"
    secret.write_text("x\n")
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/orthanc_password", str(secret)))
    shutil.copy(RULES, tmp_path / RULES.name)
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {j["job_name"] for j in yaml.safe_load(config)["scrape_configs"]}
    assert {"dicom_backup_exporter", "orthanc", "node", "process", "postgres"} <= jobs
    orthanc = next(j for j in yaml.safe_load(config)["scrape_configs"] if j["job_name"] == "orthanc")
    assert orthanc["metrics_path"] == "/tools/metrics-prometheus"
