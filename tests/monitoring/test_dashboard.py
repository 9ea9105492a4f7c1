"""deploy/grafana: the dashboard parses, its PromQL is valid, and every metric it (and every rule) reads
is one the exporter really serves over the monitored night, a recording rule, or another exporter's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.monitoring.conftest import PROMTOOL
from tests.monitoring.promql import (
    DASHBOARD,
    EXTERNAL_METRICS,
    HOST_EXPORTER_PREFIXES,
    metric_names,
    recorded_names,
    rule_exprs,
    served_names,
)


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, peer_ae) (increase(dicom_x_bucket{a="b"}[1d])))'
        " / on (s) y offset 1d"
    )
    assert metric_names(expr) == {"dicom_x_bucket", "y"}
    assert metric_names("time() - dicom_t > 26 * 3600 and on () up == bool 0") == {"dicom_t", "up"}


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["targets"] and p["gridPos"] for p in dashboard["panels"])
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    # What the issue asks the dashboard to show.
    for name in (
        "dicom_backup_last_success_timestamp_seconds",
        "dicom_backup_runs_total",
        "dicom_backup_last_run_duration_seconds",
        "dicom_backup_instances_moved_total",
        "dicom_backup_instances_verification_failed_total",
        "dicom_dimse_request_duration_seconds_bucket",
        "archive_volume:node_filesystem_avail_bytes:ratio",
        "dicom_backup_recovery_point_seconds",
        "dicom_backup_nights_verified_ratio",
        "source_window:dicom_backup_slo_burn_rate:ratio",
    ):
        assert name in used, name
    quantiles = " ".join(e for e in dashboard_exprs() if "histogram_quantile" in e)
    assert "histogram_quantile(0.5," in quantiles and "histogram_quantile(0.95," in quantiles


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Grafana variables replaced by what they expand to; each query checked as a recording rule.
    exprs = [e.replace("$source", ".*") for e in dashboard_exprs()]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"q{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    (tmp_path / "q.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(tmp_path / "q.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # ... and the check does catch a broken query.
    rules["groups"][0]["rules"].append({"record": "broken", "expr": "sum(rate(x[5m])"})
    (tmp_path / "q.yml").write_text(yaml.safe_dump(rules))
    assert (
        subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "q.yml")], capture_output=True).returncode
        == 1
    )


def test_dashboard_and_rules_read_only_served_metrics(exposition: str) -> None:
    known = served_names(exposition) | recorded_names() | EXTERNAL_METRICS
    for where, exprs in (("dashboard", dashboard_exprs()), ("rules", list(rule_exprs()))):
        unknown = set().union(*(metric_names(e) for e in exprs)) - known
        unknown = {n for n in unknown if not n.startswith(HOST_EXPORTER_PREFIXES)}  # test_host_exporters.py
        assert not unknown, f"{where} reads metrics nobody serves: {sorted(unknown)}"
    # The check can fail: a misspelt name is caught.
    assert metric_names("dicom_backup_run_total") - known == {"dicom_backup_run_total"}
