"""What the exporter serves: metric names, and the running totals it folds Dagster events into (no dagster).

Naming follows the Prometheus conventions (prometheus.io/docs/practices/naming): one prefix per domain
(`dicom_backup_`, `dicom_dimse_`, `dicom_peer_`, `dagster_daemon_`), base units (`_seconds`, `_bytes`),
counters end in `_total` (prometheus_client's CounterMetricFamily appends it), points in time are
`_timestamp_seconds`. Labels are bounded and PHI-free: `source` (a configured source alias), `peer`
(a configured peer alias), `peer_ae` (a configured AE title), `operation` (a DIMSE operation),
`status_class`, `status`, `check` (an asset check name), `daemon_type`, `archive`. Never UIDs, patient
data, paths or run IDs; never `job` or `instance`, which clash with Prometheus target labels.

`Totals` is fed the asset events in storage-id order, once each (the exporter keeps cursors), so the
`_total` counters only go up and are rebuilt identically after an exporter restart.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dicom_backup_dagster.dicom import stats
from dicom_backup_dagster.monitoring.dimse import dimse_mapping
from dicom_backup_dagster.monitoring.slo import Nights

# Names as served (counters with their `_total`), for the dashboard and rules tests.
RUNS_STARTED = "dicom_backup_runs_started_total"
RUNS = "dicom_backup_runs_total"
RUNS_IN_PROGRESS = "dicom_backup_runs_in_progress"
RUN_IN_PROGRESS_SECONDS = "dicom_backup_run_in_progress_seconds"
LAST_RUN_SUCCESS = "dicom_backup_last_run_success"
LAST_RUN_TIMESTAMP = "dicom_backup_last_run_timestamp_seconds"
LAST_RUN_DURATION = "dicom_backup_last_run_duration_seconds"
DURATION_BASELINE = "dicom_backup_duration_baseline_seconds"
LAST_SUCCESS_TIMESTAMP = "dicom_backup_last_success_timestamp_seconds"
INSTANCE_COUNTERS = {  # archived materialization metadata key -> counter name
    "instances_found": "dicom_backup_instances_found_total",
    "moved": "dicom_backup_instances_moved_total",
    "failed": "dicom_backup_instances_failed_total",
    "deferred": "dicom_backup_instances_deferred_total",
    "already_archived": "dicom_backup_instances_already_archived_total",
}
BYTES = "dicom_backup_archived_bytes_total"
LAST_INSTANCES_FOUND = "dicom_backup_last_instances_found"
LAST_INSTANCES_MOVED = "dicom_backup_last_instances_moved"
VERIFIED = "dicom_backup_instances_verified_total"
VERIFICATION_FAILED = "dicom_backup_instances_verification_failed_total"
CHECK_PASSED = "dicom_backup_check_passed"
CHECK_EVALUATIONS = "dicom_backup_check_evaluations_total"
RESTATED_KEY = "restated_from_run"  # defs/checks.py RESTATED_FROM_RUN (monitoring/ does not import defs/)
CHECK_TIMESTAMP = "dicom_backup_check_timestamp_seconds"
DIMSE_REQUESTS = "dicom_dimse_requests_total"
DIMSE_DURATION = "dicom_dimse_request_duration_seconds"
PEER_UP = "dicom_peer_up"
PEER_LATENCY = "dicom_peer_check_latency_seconds"
PEER_TIMESTAMP = "dicom_peer_check_timestamp_seconds"
DAEMON_HEARTBEAT = "dagster_daemon_last_heartbeat_timestamp_seconds"
DAEMON_HEARTBEAT_AGE = "dagster_daemon_heartbeat_age_seconds"
ARCHIVE_UP = "dicom_backup_archive_up"
ARCHIVE_INSTANCES = "dicom_backup_archive_instances"
ARCHIVE_STUDIES = "dicom_backup_archive_studies"
ARCHIVE_DISK = "dicom_backup_archive_disk_size_bytes"
EXPORTER_DAGSTER_UP = "dicom_backup_exporter_dagster_up"
EXPORTER_ERRORS = "dicom_backup_exporter_refresh_errors_total"
EXPORTER_REFRESH_SECONDS = "dicom_backup_exporter_refresh_duration_seconds"
EXPORTER_LAST_REFRESH = "dicom_backup_exporter_last_refresh_timestamp_seconds"
EXPORTER_EVENTS = "dicom_backup_exporter_events_read_total"
# Backup SLOs (monitoring/slo.py): SLIs and their targets from the site settings.
RECOVERY_POINT = "dicom_backup_recovery_point_seconds"
RECOVERY_POINT_TARGET = "dicom_backup_recovery_point_target_seconds"
NIGHTS_COUNTED = "dicom_backup_nights_counted"
NIGHTS_VERIFIED = "dicom_backup_nights_verified"
NIGHTS_VERIFIED_RATIO = "dicom_backup_nights_verified_ratio"
NIGHTS_TARGET = "dicom_backup_nights_verified_target_ratio"
SLO_WINDOW = "dicom_backup_slo_window_nights"

# The backup assets the instance counters come from, and the checks counted as verification.
ARCHIVED_ASSET = "archived"
PEERS_PREFIX = "peers"
VERIFICATION_CHECK = "content_verified"

# Labels never allowed on any served metric (tested): PHI or unbounded values, or target-label clashes.
BANNED_LABELS = frozenset(
    {
        "job",
        "instance",
        "run_id",
        "patient",
        "patient_id",
        "patient_name",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
        "uid",
        "partition",
        "path",
        "accession_number",
    }
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def empty_dimse_entry() -> dict[str, Any]:
    return {**dict.fromkeys(stats.STATUS_CLASSES, 0), "seconds_sum": 0.0, "buckets": {}}


@dataclass
class Totals:
    """Running totals folded from asset materializations, observations and check evaluations."""

    instances: dict[tuple[str, str], float] = field(default_factory=dict)  # (source, metadata key)
    bytes: dict[str, float] = field(default_factory=dict)
    last_archived: dict[str, tuple[float, Mapping[str, float]]] = field(default_factory=dict)
    verified: dict[str, float] = field(default_factory=dict)
    verification_failed: dict[str, float] = field(default_factory=dict)
    check_latest: dict[tuple[str, str], tuple[float, bool]] = field(default_factory=dict)
    check_evaluations: dict[tuple[str, str, str], int] = field(default_factory=dict)
    dimse: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)
    nights: Nights = field(default_factory=Nights)
    events: int = 0
    _dimse_seen: set[builtins.bytes] = field(default_factory=set)  # `bytes` is a field of this class
    _run_bytes_seen: set[tuple[str, str]] = field(default_factory=set)  # (run ID, source)

    # -- feeding -------------------------------------------------------------------------------------

    def add_dimse(self, run_id: str, asset: str, value: Any) -> None:
        """Add one `dimse` metadata value. A ranged run writes the same value on every partition's
        materialization of a step: count it once per (run, asset, value)."""
        value = dimse_mapping(value)  # a table (monitoring/dimse.py) or the older JSON mapping
        if not value:
            return
        digest = hashlib.blake2b(
            f"{run_id}\0{asset}\0{json.dumps(value, sort_keys=True)}".encode(), digest_size=12
        ).digest()
        if digest in self._dimse_seen:
            return
        self._dimse_seen.add(digest)
        # Only known operations and status classes become series (bounded label values).
        clean = {
            str(peer): {op: v for op, v in ops.items() if op in stats.OPERATIONS}
            for peer, ops in value.items()
            if isinstance(ops, Mapping)
        }
        stats.merge(self.dimse, clean)

    def add_materialization(
        self,
        run_id: str,
        asset_path: Sequence[str],
        timestamp: float,
        metadata: Mapping[str, Any],
        partition: str | None = None,
    ) -> None:
        self.events += 1
        asset = "/".join(asset_path)
        self.add_dimse(run_id, asset, metadata.get("dimse"))
        if len(asset_path) != 2 or asset_path[1] != ARCHIVED_ASSET:
            return
        source = asset_path[0]
        self.sources.add(source)
        self.nights.archived(source, partition, timestamp, metadata)
        values: dict[str, float] = {}
        for key in INSTANCE_COUNTERS:
            # Mosaiq's archived asset counts `records` where Q/R sources count `instances_found`.
            raw = metadata.get(key, metadata.get("records") if key == "instances_found" else None)
            number = _number(raw)
            if number is not None:
                values[key] = number
                self.instances[(source, key)] = self.instances.get((source, key), 0.0) + number
        size = _number(metadata.get("bytes"))
        if size is None and (run_id, source) not in self._run_bytes_seen:
            # A ranged run's bytes are the run's (run_bytes, on each of its days): counted once.
            size = _number(metadata.get("run_bytes"))
            if size is not None:
                self._run_bytes_seen.add((run_id, source))
        if size is not None:
            self.bytes[source] = self.bytes.get(source, 0.0) + size
        previous = self.last_archived.get(source)
        if previous is None or timestamp >= previous[0]:
            self.last_archived[source] = (timestamp, values)

    def add_observation(
        self, run_id: str, asset_path: Sequence[str], timestamp: float, metadata: Mapping[str, Any]
    ) -> None:
        self.events += 1
        self.add_dimse(run_id, "/".join(asset_path), metadata.get("dimse"))
        if len(asset_path) == 2 and asset_path[0] == PEERS_PREFIX and "up" in metadata:
            previous = self.peers.get(asset_path[1])
            if previous is None or timestamp >= previous["timestamp"]:
                latency_ms = _number(metadata.get("latency_ms"))
                self.peers[asset_path[1]] = {
                    "timestamp": timestamp,
                    "up": 1.0 if metadata.get("up") else 0.0,
                    "latency_seconds": latency_ms / 1000 if latency_ms is not None else None,
                    "check": str(metadata.get("check") or "unknown"),
                }
        elif len(asset_path) == 2 and asset_path[1] == ARCHIVED_ASSET:
            # A failed attempt (monitoring/dimse.py): its failed instances count too.
            failed = _number(metadata.get("failed"))
            if failed is not None:
                key = (asset_path[0], "failed")
                self.instances[key] = self.instances.get(key, 0.0) + failed

    def add_check_evaluation(
        self,
        run_id: str,
        asset_path: Sequence[str],
        check_name: str,
        passed: bool,
        timestamp: float,
        metadata: Mapping[str, Any],
        partition: str | None = None,
        severity: str = "ERROR",
    ) -> None:
        self.events += 1
        source = asset_path[0] if asset_path else "unknown"
        self.nights.check(source, partition, check_name, passed, severity, timestamp)
        self.add_dimse(run_id, "/".join(asset_path) + ":" + check_name, metadata.get("dimse"))
        key = (source, check_name)
        previous = self.check_latest.get(key)
        if previous is None or timestamp >= previous[0]:
            self.check_latest[key] = (timestamp, passed)
        if RESTATED_KEY in metadata:
            return  # an earlier result restated by a failed run (defs/checks.py): counted when it was made
        result = "pass" if passed else "fail"
        self.check_evaluations[(source, check_name, result)] = (
            self.check_evaluations.get((source, check_name, result), 0) + 1
        )
        if check_name == VERIFICATION_CHECK:
            sampled = _number(metadata.get("sampled"))
            matched = _number(metadata.get("matched"))
            if sampled is not None and matched is not None:
                self.verified[source] = self.verified.get(source, 0.0) + matched
                self.verification_failed[source] = self.verification_failed.get(source, 0.0) + max(
                    0.0, sampled - matched
                )


@dataclass(frozen=True)
class RunStats:
    """Per-source run figures read from run storage at one refresh."""

    started: int
    finished: Mapping[str, int]  # success / failure / canceled -> count
    in_progress: int
    in_progress_since: float | None  # start time of the oldest running run
    last_run_success: float | None
    last_run_timestamp: float | None
    last_run_duration: float | None
    duration_baseline: float | None
    last_success_timestamp: float | None
