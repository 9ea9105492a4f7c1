"""Writes the DIMSE statistics of an asset or check execution into Dagster metadata (`dimse` key).

The value is a small table, one row per (peer AE, operation): requests by status class, seconds, and the
latency histogram as one string (`dimse_table`); the exporter reads it back with `dimse_mapping`, which
also takes the older JSON form ({peer: {operation: {...}}}, still written by connectivity_check).

`@with_dimse_metadata`, placed between `@asset(...)`/`@asset_check(...)` and the function, runs the body
inside dicom.stats.collecting() and:
- on success adds `metadata["dimse"]` (the shape of `dicom.stats.DimseStats.to_metadata`) to the
  returned Output, MaterializeResult or AssetCheckResult (of per-day check results, to the first day's);
- on an exception logs an AssetObservation of the asset with the same `dimse` value (and `failed`, when
  the Failure's metadata counts failed instances) before re-raising, so that failed attempts, whose DIMSE
  failures matter most, still reach the exporter;
- logs one structured line per (peer AE, operation) for the JSON logs (logs.py).

No `from __future__ import annotations`: Dagster 1.13 validates `context` annotations by identity, and
functools.wraps keeps the wrapped function's signature for it.
"""

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from dagster import (
    AssetCheckResult,
    AssetObservation,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
)

from dicom_backup_dagster.dicom import stats

log = logging.getLogger("dicom_backup_dagster.monitoring.dimse")

F = TypeVar("F", bound=Callable[..., Any])


DIMSE_SCHEMA = TableSchema(
    columns=[
        TableColumn("peer_ae", "string"),
        TableColumn("operation", "string"),
        *(TableColumn(c, "int", description=f"requests with a {c} status") for c in stats.STATUS_CLASSES),
        TableColumn("seconds_sum", "float", description="seconds from request to final response, summed"),
        TableColumn(
            "latency",
            "string",
            description="cumulative requests by latency bound in seconds, `<=bound:n` where n grows",
        ),
    ]
)


def _latency_text(buckets: Mapping[str, Any]) -> str:
    """Cumulative bucket counts, only where they grow: `<=0.05:3 <=0.1:5` (the rest follows)."""
    out, last = [], 0
    for le in stats.BUCKET_LABELS:
        n = int(buckets.get(le, 0) or 0)
        if n > last:
            out.append(f"<={le}:{n}")
            last = n
    return " ".join(out) or "none"


def _latency_buckets(text: str) -> dict[str, int]:
    given = {}
    for part in text.split():
        le, _, n = part.removeprefix("<=").rpartition(":")
        if le and n.isdigit():
            given[le] = int(n)
    out, last = {}, 0
    for le in stats.BUCKET_LABELS:
        last = given.get(le, last)
        out[le] = last
    return out


def dimse_table(value: Mapping[str, Any]) -> MetadataValue:
    """The `dimse` metadata value of a to_metadata() mapping: one table row per (peer AE, operation)."""
    records = [
        TableRecord(
            {
                "peer_ae": peer,
                "operation": op,
                **{cls: int(values.get(cls, 0)) for cls in stats.STATUS_CLASSES},
                "seconds_sum": round(float(values.get("seconds_sum", 0.0)), 3),
                "latency": _latency_text(values.get("buckets") or {}),
            }
        )
        for peer, ops in sorted(value.items())
        for op, values in sorted(ops.items())
    ]
    return MetadataValue.table(records=records, schema=DIMSE_SCHEMA)


def dimse_mapping(value: Any) -> dict[str, Any]:
    """A `dimse` metadata value (a dimse_table, or the older JSON mapping) in the to_metadata() shape."""
    if isinstance(value, Mapping):
        return dict(value)
    out: dict[str, Any] = {}
    for record in getattr(value, "records", None) or ():
        data = getattr(record, "data", {})
        peer, op = data.get("peer_ae"), data.get("operation")
        if not isinstance(peer, str) or not isinstance(op, str):
            continue
        out.setdefault(peer, {})[op] = {
            **{cls: int(data.get(cls) or 0) for cls in stats.STATUS_CLASSES},
            "seconds_sum": float(data.get("seconds_sum") or 0.0),
            "buckets": _latency_buckets(str(data.get("latency") or "")),
        }
    return out


def dimse_metadata_value(collected: stats.DimseStats, peer_aet: str | None = None) -> MetadataValue:
    return dimse_table(collected.to_metadata(peer_aet))


def log_summary(collected: stats.DimseStats, what: str) -> None:
    """One line per (peer AE, operation): counts by status class and the seconds spent; WARNING when a
    request failed (the step's own failure, if any, is Dagster's ERROR line), INFO otherwise."""
    for peer, ops in collected.to_metadata().items():
        for operation, values in ops.items():
            count = sum(int(values[c]) for c in stats.STATUS_CLASSES)
            worst = next((c for c in ("failure", "warning") if values[c]), "success")
            log.log(
                logging.WARNING if worst == "failure" else logging.INFO,
                "%s: %s %s to %s: %d success, %d warning, %d failure, %.3f s",
                what,
                count,
                operation,
                peer,
                values["success"],
                values["warning"],
                values["failure"],
                values["seconds_sum"],
                extra={
                    "peer_ae": peer,
                    "operation": operation,
                    "status": worst,
                    "count": count,
                    "duration_seconds": float(values["seconds_sum"]),
                },
            )


def _with_dimse(result: Any, value: MetadataValue) -> Any:
    if isinstance(result, MaterializeResult):  # a NamedTuple without with_metadata (lead's fix)
        return result._replace(metadata={**(result.metadata or {}), "dimse": value})
    if isinstance(result, Output | AssetCheckResult):
        return result.with_metadata({**(result.metadata or {}), "dimse": value})
    per_day = isinstance(result, Mapping) and result
    if per_day and all(isinstance(r, AssetCheckResult) for r in result.values()):
        # A check's results per day (defs/checks.py): the step's traffic goes on its first day's result
        # only, so that the exporter, which sums the `dimse` values it reads, counts it once.
        first = next(iter(result))
        return {**result, first: _with_dimse(result[first], value)}
    return result


def _failed_count(error: BaseException) -> int | None:
    if isinstance(error, Failure):
        entry = (error.metadata or {}).get("failed")
        value = getattr(entry, "value", entry)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def with_dimse_metadata(fn: F) -> F:
    """Decorator for asset and asset-check compute functions whose first argument is `context`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        context = args[0] if args else kwargs.get("context")
        with stats.collecting() as collected:
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:
                _observe_failure(context, collected, error)
                raise
        log_summary(collected, _describe(context))
        return _with_dimse(result, dimse_metadata_value(collected))

    return wrapper  # type: ignore[return-value]


def _describe(context: Any) -> str:
    """The asset key, or for an asset check its op name (`ARIA__archived_content_verified`)."""
    try:
        return context.asset_key.to_user_string()
    except Exception:
        pass
    try:
        return str(context.op_execution_context.op.name)
    except Exception:
        return "step"


def _observe_failure(context: Any, collected: stats.DimseStats, error: BaseException) -> None:
    if not collected.total() or context is None:
        return
    log_summary(collected, _describe(context) + " (failed attempt)")
    try:
        asset_key = context.asset_key
        partition = context.partition_key if context.has_partition_key else None
    except Exception:  # an asset check context, or no single asset: the log lines above remain
        return
    metadata: dict[str, Any] = {
        "dimse": dimse_metadata_value(collected),
        "outcome": "failed attempt",
        "error": type(error).__name__,
    }
    failed = _failed_count(error)
    if failed is not None:
        metadata["failed"] = failed
    context.log_event(AssetObservation(asset_key=asset_key, partition=partition, metadata=metadata))
