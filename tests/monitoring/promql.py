"""Helpers for the deploy/ tests: metric names in PromQL, served names, rule files."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"  # minute-scale cases
RULES_TEST_DAILY = DEPLOY / "prometheus" / "rules_test_daily.yml"  # hour- and day-scale cases
RULES_TEST_HOST = DEPLOY / "prometheus" / "rules_test_host.yml"  # host, process, Dagster storage
RULES_TEST_SLO = DEPLOY / "prometheus" / "rules_test_slo.yml"  # backup SLOs, ProcessNeverStarted
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "dicom-backup.json"

# Metrics other exporters serve (node_exporter, Prometheus itself, blackbox_exporter).
EXTERNAL_METRICS = frozenset(
    {"up", "node_filesystem_avail_bytes", "node_filesystem_size_bytes", "probe_success"}
)
# The runbook kinds docs/runbooks/<kind>.md. The notifications work (issue 5) names the check kinds
# archive_incomplete and content_not_verified; the infrastructure kinds are Prometheus-only.
KINDS = frozenset(
    {
        "backup_failed",
        "archive_incomplete",
        "check_failed",
        "content_not_verified",
        "volume_anomaly",
        "duration_anomaly",
        "peer_unreachable",
        "no_recent_success",
        "archive_disk_low",
        "daemon_heartbeat_stale",
        "dicom_failure_rate",
        "exporter_down",
        "host_resources",
        "host_disk_low",
        "process_down",
        "dagster_storage",
        "slo_breach",
    }
)
# Metric prefixes of node_exporter, process-exporter and postgres_exporter: tests/monitoring/
# test_host_exporters.py checks these names against the real exporters.
HOST_EXPORTER_PREFIXES = ("node_", "namedprocess_", "pg_")
# Kinds whose runbook page the notifications work has not written yet (checked once they exist).
RUNBOOKS_PENDING: frozenset[str] = frozenset()
_KEYWORDS = frozenset(
    {"by", "on", "without", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
)


def metric_names(expr: str) -> set[str]:
    """Metric (and recorded series) names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b\d+(?:\.\d+)?(?:ms|[smhdwy])?\b", "", text)  # numbers and durations (offset 1d)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        name = match.group(0)
        if rest.startswith("(") or name in _KEYWORDS:
            continue  # a function or aggregation
        if name in {"Inf", "NaN", "inf", "nan"}:
            continue
        names.add(name)
    return names


def served_names(exposition: str) -> set[str]:
    """Every family and sample name of an exposition (counters as `_total`, histograms as _bucket...)."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        names.update(s.name for s in family.samples)
    return names


def rule_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


def recorded_names() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


def rule_exprs() -> Iterable[str]:
    for g in rule_groups():
        for r in g["rules"]:
            yield r["expr"]
