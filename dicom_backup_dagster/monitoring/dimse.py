"""Writes the DIMSE statistics of an asset or check execution into Dagster metadata (`dimse` key).

`@with_dimse_metadata`, placed between `@asset(...)`/`@asset_check(...)` and the function, runs the body
inside dicom.stats.collecting() and:
- on success adds `metadata["dimse"]` (the shape of `dicom.stats.DimseStats.to_metadata`) to the
  returned Output, MaterializeResult or AssetCheckResult;
- on an exception logs an AssetObservation of the asset with the same `dimse` value (and `failed`, when
  the Failure's metadata counts failed instances) before re-raising, so that failed attempts, whose DIMSE
  failures matter most, still reach the exporter;
- logs one structured line per (peer AE, operation) for the JSON logs (logs.py).

No `from __future__ import annotations`: Dagster 1.13 validates `context` annotations by identity, and
functools.wraps keeps the wrapped function's signature for it.
"""

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from dagster import AssetCheckResult, AssetObservation, Failure, MaterializeResult, MetadataValue, Output

from dicom_backup_dagster.dicom import stats

log = logging.getLogger("dicom_backup_dagster.monitoring.dimse")

F = TypeVar("F", bound=Callable[..., Any])


def dimse_metadata_value(collected: stats.DimseStats, peer_aet: str | None = None) -> MetadataValue:
    return MetadataValue.json(collected.to_metadata(peer_aet))


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
