"""Per-run DIMSE statistics: requests per peer AE title and operation, by status class, with latency.

The DICOM functions call `record()` once per DIMSE request (C-ECHO, C-FIND, C-MOVE, C-GET, C-STORE,
N-ACTION) and once per association that could not be opened for one. Nothing is recorded unless a caller
activated a collector with `collecting()`: asset code wraps its work in it and writes `to_metadata()` into
the materialization's `dimse` metadata, which the exporter (monitoring/exporter.py) sums into Prometheus
counters and a histogram. Metrics are never pushed from run processes: a run that crashes or never starts
pushes nothing, and a pushed per-run counter is not a counter (docs/decisions/monitoring.md).

Status classes follow PS3.7 C.1-C.5 (dicom/status.py): Success, Warning, Failure; Cancel and any
request that got no response, timed out or found no association count as failure. Pending responses are
not requests. Labels are bounded: the peer key is the AE title (from the site configuration), never a
host, UID or anything from a data set.

Histogram buckets are fixed (seconds, cumulative like Prometheus `le`, "+Inf" = total) so that runs and
the exporter always agree. Thread-safe: C-STOREs run on a worker thread (backup/transfer.py); threads
that do not inherit the context variable record into the only collector active in the process.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .status import SUCCESS, WARNING, status_category

# Seconds. A C-ECHO takes milliseconds, a study-level C-MOVE minutes; 17 buckets per (peer, operation).
BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    math.inf,
)
OPERATIONS = ("C-ECHO", "C-FIND", "C-MOVE", "C-GET", "C-STORE", "N-ACTION")
STATUS_CLASSES = ("success", "warning", "failure")


def bucket_label(bound: float) -> str:
    """Prometheus `le` text of a bucket bound: "0.005", "1.0", "+Inf" (what the metadata keys are)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


BUCKET_LABELS: tuple[str, ...] = tuple(bucket_label(b) for b in BUCKETS)


def status_class(code: int | None) -> str:
    """success / warning / failure for a DIMSE status (None: no response at all)."""
    if code is None:
        return "failure"
    category = status_category(int(code))
    if category == SUCCESS:
        return "success"
    if category == WARNING:
        return "warning"
    return "failure"  # Failure, Cancel (and a final Pending, which a conformant SCP never sends)


@dataclass
class OperationStats:
    """Counts by status class, the sum of seconds and cumulative bucket counts of one (peer, operation)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUS_CLASSES, 0))
    seconds_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))

    def add(self, status: str, seconds: float) -> None:
        self.counts[status] += 1
        self.seconds_sum += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            **self.counts,
            "seconds_sum": round(self.seconds_sum, 6),
            "buckets": dict(zip(BUCKET_LABELS, self.buckets, strict=True)),
        }


class DimseStats:
    """A thread-safe collector: {peer AE title: {operation: OperationStats}}."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, OperationStats]] = {}

    def record(self, peer_aet: str, operation: str, status: str, seconds: float) -> None:
        if operation not in OPERATIONS or status not in STATUS_CLASSES:
            return  # keeps the label sets bounded whatever a caller passes
        seconds = max(0.0, float(seconds))
        with self._lock:
            per_peer = self._data.setdefault(peer_aet.strip(), {})
            per_peer.setdefault(operation, OperationStats()).add(status, seconds)

    def total(self, status: str | None = None) -> int:
        with self._lock:
            return sum(
                sum(s.counts.values()) if status is None else s.counts[status]
                for ops in self._data.values()
                for s in ops.values()
            )

    def to_metadata(self, peer_aet: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
        """The `dimse` metadata value, {peer AE: {operation: {<status class>: n, "seconds_sum": s,
        "buckets": {<le>: n}}}}: all peers, or only `peer_aet`."""
        with self._lock:
            return {
                peer: {op: stats.to_json() for op, stats in sorted(ops.items())}
                for peer, ops in sorted(self._data.items())
                if peer_aet is None or peer == peer_aet.strip()
            }


_current: contextvars.ContextVar[DimseStats | None] = contextvars.ContextVar("dimse_stats", default=None)
_active: list[DimseStats] = []
_active_lock = threading.Lock()


@contextmanager
def collecting(stats: DimseStats | None = None) -> Iterator[DimseStats]:
    """Record every DIMSE request made inside the block (and on threads it starts) into `stats`."""
    stats = stats or DimseStats()
    token = _current.set(stats)
    with _active_lock:
        _active.append(stats)
    try:
        yield stats
    finally:
        _current.reset(token)
        with _active_lock:
            _active.remove(stats)


def _collector() -> DimseStats | None:
    stats = _current.get()
    if stats is not None:
        return stats
    # A worker thread (ThreadPoolExecutor does not copy context variables): only unambiguous when one
    # collector is active in the process, which holds for Dagster's one-step-at-a-time run workers.
    with _active_lock:
        return _active[0] if len(_active) == 1 else None


def record(peer_aet: str, operation: str, code: int | None, seconds: float) -> None:
    """One DIMSE request to `peer_aet` ended with status `code` (None: no response/association)."""
    stats = _collector()
    if stats is not None:
        stats.record(peer_aet, operation, status_class(code), seconds)


def record_failure(peer_aet: str, operation: str, seconds: float) -> None:
    """A request that never got a status: no association, aborted, timed out."""
    record(peer_aet, operation, None, seconds)


def merge(into: dict[str, Any], dimse: Mapping[str, Any]) -> dict[str, Any]:
    """Add one `dimse` metadata value to another (both in the to_metadata() shape); returns `into`."""
    for peer, ops in dimse.items():
        if not isinstance(ops, Mapping):
            continue
        for op, values in ops.items():
            if not isinstance(values, Mapping):
                continue
            target = into.setdefault(peer, {}).setdefault(
                op, {**dict.fromkeys(STATUS_CLASSES, 0), "seconds_sum": 0.0, "buckets": {}}
            )
            for cls in STATUS_CLASSES:
                target[cls] += int(values.get(cls, 0) or 0)
            target["seconds_sum"] += float(values.get("seconds_sum", 0.0) or 0.0)
            buckets = values.get("buckets") or {}
            for le, n in buckets.items():
                target["buckets"][le] = target["buckets"].get(le, 0) + int(n or 0)
    return into
