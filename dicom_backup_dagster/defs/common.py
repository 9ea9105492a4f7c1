"""What every backup source kind shares: partitions, the retry policy, failure messages and check helpers.

No `from __future__ import annotations`: Dagster 1.13 validates `context` annotations by identity.
"""

import datetime as dt
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetExecutionContext,
    AssetKey,
    Backoff,
    DailyPartitionsDefinition,
    Failure,
    Jitter,
    MetadataValue,
    RetryPolicy,
)

from dicom_backup_dagster.backup import baseline
from dicom_backup_dagster.backup.errors import is_transient
from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.defs.keys import BACKFILL_ID_TAG, SourceNames
from dicom_backup_dagster.defs.resources import STORAGE_RESOURCE_KEY, BackupStorage, DicomNetwork
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.network import Peer

__all__ = [  # BackupStorage, SourceNames and the storage key live in resources.py / keys.py
    "DEFAULT_RETRY_POLICY",
    "DEFAULT_RULES",
    "STORAGE_RESOURCE_KEY",
    "BackupStorage",
    "SourceNames",
    "backup_failure",
    "check_partition",
    "check_partitions",
    "daily_partitions",
    "find_session",
    "is_backfill_run",
    "uids_metadata",
]

# volume_vs_baseline warns below 0.5 x and duration_vs_baseline above 2 x the trailing median of the
# previous 7 partitions (backup/baseline.py)
DEFAULT_RULES = baseline.BaselineRules()

# Transient network trouble (peer restarting, association limit, timeouts) is retried with backoff;
# configuration errors raise Failure(allow_retries=False) and fail at once.
DEFAULT_RETRY_POLICY = RetryPolicy(
    max_retries=3, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)

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


def backup_failure(
    source: str, phase: str, partition: str, error: DicomError, metadata: dict[str, Any] | None = None
) -> Failure:
    """A Failure naming the source, the peer and the DICOM status meaning (DicomError's text has both)."""
    retry = is_transient(error)
    kind = "transient, will be retried" if retry else "configuration or peer error, not retried"
    return Failure(
        description=f"{source} backup, {phase} of partition {partition}: {error} ({kind})",
        metadata={
            "source": source,
            "peer": str(error.peer),
            "operation": error.operation,
            "dicom_status": f"0x{error.status:04X}" if error.status is not None else "none",
            "status_meaning": error.status_meaning or "none",
            **(metadata or {}),
        },
        allow_retries=retry,
    )


# ------------------------------------------------------------------------------------------------------
# Helpers shared by the assets and checks of every source kind


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
