"""What every backup source kind shares: partitions, the retry policy, failure messages and check helpers.

No `from __future__ import annotations`: Dagster 1.13 validates `context` annotations by identity.
"""

import datetime as dt
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from dagster import (
    AssetCheckExecutionContext,
    AssetExecutionContext,
    AssetKey,
    Backoff,
    DagsterError,
    DailyPartitionsDefinition,
    Failure,
    Jitter,
    MetadataValue,
    RetryPolicy,
    RetryRequested,
)

from dicom_backup_dagster.backup import baseline
from dicom_backup_dagster.backup.errors import is_transient
from dicom_backup_dagster.backup.partitions import RunDays
from dicom_backup_dagster.config import EnvironmentConfig, Settings
from dicom_backup_dagster.defs.keys import BACKFILL_ID_TAG, SourceNames
from dicom_backup_dagster.defs.resources import STORAGE_RESOURCE_KEY, BackupStorage, DicomNetwork
from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.errors import AssociationError, DicomError, SubOperationError
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.dicom.status import destination_unreachable_advice

__all__ = [  # BackupStorage, SourceNames and the storage key live in resources.py / keys.py
    "DEFAULT_RULES",
    "FROM_SETTINGS",
    "STORAGE_RESOURCE_KEY",
    "BackupStorage",
    "SourceNames",
    "backup_failure",
    "check_partition",
    "check_partitions",
    "daily_partitions",
    "day_first_metadata",
    "explain_destination",
    "explain_failures",
    "find_session",
    "is_backfill_run",
    "resolve_retry_policy",
    "uids_metadata",
]

# volume_vs_baseline warns below 0.5 x and duration_vs_baseline above 2 x the trailing median of the
# previous 7 partitions (backup/baseline.py)
DEFAULT_RULES = baseline.BaselineRules()

# Transient network trouble (peer restarting, association limit, timeouts) is retried with backoff;
# configuration errors raise Failure(allow_retries=False) and fail at once. The builders take their policy
# from settings.max_retries / settings.retry_delay_s (FROM_SETTINGS, resolve_retry_policy).
FROM_SETTINGS = "settings"
RetryChoice = RetryPolicy | None | str  # a policy, None (no retries) or FROM_SETTINGS

F = TypeVar("F", bound=Callable[..., Any])

KEEP_UIDS = 20  # failing UIDs shown in metadata (the manifest on disk has all of them)


def daily_partitions(
    env: EnvironmentConfig, start_date: str | dt.date | None = None
) -> DailyPartitionsDefinition:
    """One partition per day in the site's timezone (StudyDate for Q/R sources, treatment day for Mosaiq),
    from `settings.first_day` unless `start_date` is given."""
    start_date = start_date or env.settings.first_day
    start = start_date if isinstance(start_date, str) else start_date.isoformat()
    return DailyPartitionsDefinition(start_date=start, timezone=env.settings.timezone)


# ------------------------------------------------------------------------------------------------------
# Errors: what to tell the operator, and whether a retry can help


def resolve_retry_policy(choice: RetryChoice, settings: Settings) -> RetryPolicy | None:
    """The retry policy of a backup step: `choice` itself, or for FROM_SETTINGS the site's settings."""
    if not isinstance(choice, str):
        return choice
    if settings.max_retries == 0:
        return None
    return RetryPolicy(
        max_retries=settings.max_retries,
        delay=settings.retry_delay_s,
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    )


def backup_failure(
    source: str, phase: str, partition: str, error: DicomError, metadata: dict[str, Any] | None = None
) -> Failure:
    """A Failure naming the source, the peer, the operation, the DICOM status and its meaning, and the
    advice (DicomError's text has them all). A transient one is retried; `explain_failures` adds which
    attempt it was and, on the last one, makes it final so that the step's failure still says why."""
    retry = is_transient(error)
    kind = "" if retry else " (configuration or peer error, not retried)"
    return Failure(
        description=f"{source} backup, {phase} of partition {partition}: {error}{kind}",
        metadata={
            "source": source,
            "peer": str(error.peer),
            "operation": error.operation,
            "dicom_status": f"0x{error.status:04X}" if error.status is not None else "none",
            "status_meaning": error.status_meaning or "none",
            # Our own wording (no data set content): "connection refused (nothing listening on that
            # port)", the sub-operation counts, a timeout; the alerts name it when there is no status.
            "cause": error.detail[:160] or "none",
            "advice": error.advice or "none",
            **failure_fields(error),
            **(metadata or {}),
        },
        allow_retries=retry,
    )


def failure_fields(error: DicomError) -> dict[str, str]:
    """The structured facts the alert sensors group failures by (notify/causes.py): the error's class, where
    an association failed, and a C-MOVE's unreachable destination. Names and addresses only."""
    out = {"error_class": type(error).__name__}
    stage = getattr(error, "stage", None)
    if stage:
        out["association_stage"] = stage
    if error.unreachable_destination:
        out["destination_unreachable"] = error.unreachable_destination
    return out


def explain_destination(error: DicomError, destination: Peer, dicom: DicomNetwork) -> DicomError:
    """A C-MOVE that failed while its move destination is unreachable (a C-ECHO to it fails): the same
    error with advice saying so. The source's status alone cannot tell: Orthanc answers 0xC000 without
    counts when it cannot reach the destination."""
    if error.operation != "C-MOVE" or error.status is None:
        return error
    try:
        c_echo(destination, dicom.calling_aet, dicom.timeouts)
    except AssociationError as down:
        advice = destination_unreachable_advice(str(destination), down.detail)
    except DicomError:  # it answers: the destination is up, the source's hint stands
        return error
    else:
        return error
    if isinstance(error, SubOperationError):
        explained: DicomError = SubOperationError(
            error.peer,
            error.operation,
            error.detail,
            result=error.result,
            status=error.status,
            advice=advice,
            failed_sop_instance_uids=error.failed_sop_instance_uids,
        )
    else:
        explained = DicomError(
            error.peer,
            error.operation,
            error.detail,
            status=error.status,
            advice=advice,
            failed_sop_instance_uids=error.failed_sop_instance_uids,
        )
    explained.unreachable_destination = str(destination)
    return explained


def _attempts(context: Any, policy: RetryPolicy | None) -> tuple[int, int]:
    """(this attempt, attempts allowed), both counted from 1."""
    retries = policy.max_retries if policy is not None else 0
    return int(getattr(context, "retry_number", 0)) + 1, retries + 1


def with_attempt(failure: Failure, context: Any, policy: RetryPolicy | None) -> Failure:
    """`failure` with the attempt it ended. Dagster ends a step whose last attempt raised a retryable
    Failure with "Exceeded max_retries of N" and nothing else; a Failure with allow_retries=False on the
    last attempt becomes the step failure's message itself (measured with Dagster 1.13), so the last
    attempt says why, as every earlier one did."""
    if not failure.allow_retries:
        return failure
    attempt, allowed = _attempts(context, policy)
    last = attempt >= allowed
    if last:
        suffix = f" (attempt {attempt} of {allowed}: failed after every retry)" if allowed > 1 else ""
    else:
        suffix = f" (transient, attempt {attempt} of {allowed}: will be retried)"
    metadata: dict[str, Any] = {**(failure.metadata or {}), "attempt": attempt, "attempts_allowed": allowed}
    return Failure(description=f"{failure.description}{suffix}", metadata=metadata, allow_retries=not last)


def _unexpected(context: Any, error: Exception) -> Failure:
    """A Failure for an exception no body turned into one: its class (an OSError's text too: paths and
    errno, never data set content); the stack trace stays on the event."""
    what = f"{type(error).__name__}: {error}" if isinstance(error, OSError) else type(error).__name__
    step = getattr(getattr(context, "op", None), "name", None) or "step"
    metadata: dict[str, Any] = {"error": type(error).__name__, "error_class": type(error).__name__}
    if isinstance(error, OSError) and error.errno is not None:
        metadata["errno"] = error.errno  # ENOSPC: the spool is full (notify/causes.py)
    return Failure(description=f"{step} failed: {what}", metadata=metadata, allow_retries=True)


def explain_failures(policy: RetryPolicy | None) -> Callable[[F], F]:
    """Decorator (under @asset) making every failure of a backup step say why, on every attempt:
    Failures get the attempt (final on the last one), other exceptions become such a Failure."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            context = args[0] if args else kwargs.get("context")
            try:
                return fn(*args, **kwargs)
            except Failure as failure:
                raise with_attempt(failure, context, policy) from failure
            except (RetryRequested, DagsterError):
                raise
            except Exception as error:
                raise with_attempt(_unexpected(context, error), context, policy) from error

        return wrapper  # type: ignore[return-value]

    return decorate


# ------------------------------------------------------------------------------------------------------
# Helpers shared by the assets and checks of every source kind


def day_first_metadata(
    context: AssetExecutionContext,
    days: RunDays,
    per_day: dict[str, dict[str, Any]],
    run_figures: dict[str, Any],
    details: dict[str, Any],
) -> dict[str, Any]:
    """A materialization's metadata, the day's own figures first.

    A one-day run is the day: its figures, then the run's (requests, seconds per phase, ...) unprefixed,
    then `details` (peers, manifest). A ranged run (a backfill) records each day's figures on that day
    (sums over days are the run's totals) and every run-wide figure as `run_<key>` (the totals of the
    day figures too), never a run's figure under a day's name. Dagster puts a day's own metadata after the
    run's; placeholders in the run's dict keep the day's keys first (the day's values replace them)."""
    if len(days.partitions) == 1:
        (figures,) = per_day.values()
        return {**figures, **run_figures, **details}
    for day, figures in per_day.items():
        context.add_asset_metadata(figures, partition_key=day)
    keys = list(next(iter(per_day.values())))
    totals = {f"run_{k}": sum(f[k] for f in per_day.values()) for k in keys}
    return {
        **dict.fromkeys(keys, 0),
        "run_partitions": days.label,
        **totals,
        **{f"run_{k}": v for k, v in run_figures.items()},
        **details,
    }


def uids_metadata(uids: list[str] | tuple[str, ...]) -> MetadataValue:
    return MetadataValue.json(list(uids[:KEEP_UIDS]))


def check_partition(context: AssetCheckExecutionContext, key: AssetKey) -> str | None:
    """The run's partition (the last one of a ranged run); for checks executed on their own (an
    unpartitioned run, e.g. "Execute checks" in the UI) the most recently materialized partition."""
    partitions = check_partitions(context, key)
    return partitions[-1] if partitions else None


def check_partitions(context: AssetCheckExecutionContext, key: AssetKey) -> list[str]:
    """Every partition the run covers (one, or a backfill's range); for checks executed on their own the
    most recently materialized partition of the asset; [] when it was never materialized."""
    op_context = context.op_execution_context
    if op_context.has_partition_key or op_context.has_partition_key_range:
        return list(op_context.partition_keys)
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.dagster_event is None or event.dagster_event.partition is None:
        return []
    return [event.dagster_event.partition]


def is_backfill_run(context: AssetExecutionContext) -> bool:
    return BACKFILL_ID_TAG in context.run.tags


def find_session(peer: Peer, dicom: DicomNetwork) -> FindSession:
    return FindSession(peer, dicom.calling_aet, dicom.timeouts)
