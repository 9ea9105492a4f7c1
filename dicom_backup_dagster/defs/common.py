"""What every backup source kind shares: where manifests live, the retry policy, and failure messages.

No `from __future__ import annotations`: Dagster 1.13 validates `context` annotations by identity.
"""

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetExecutionContext,
    AssetKey,
    Backoff,
    ConfigurableResource,
    DagsterInstance,
    DailyPartitionsDefinition,
    Failure,
    Jitter,
    MetadataValue,
    RetryPolicy,
)
from dagster._core.storage.tags import BACKFILL_ID_TAG  # "dagster/backfill", not exported publicly

from dicom_backup_dagster.backup import baseline
from dicom_backup_dagster.backup.errors import is_transient
from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.defs.resources import DicomNetwork
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.network import Peer

DEFAULT_START_DATE = "2020-01-01"
DEFAULT_RULES = baseline.BaselineRules()  # volume/duration baseline thresholds (seeds/000 section 4)
STORAGE_RESOURCE_KEY = "backup_storage"

# Transient network trouble (peer restarting, association limit, timeouts) is retried with backoff;
# configuration errors raise Failure(allow_retries=False) and fail at once.
DEFAULT_RETRY_POLICY = RetryPolicy(
    max_retries=3, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)

KEEP_UIDS = 20  # failing UIDs shown in metadata (the manifest on disk has all of them)


class BackupStorage(ConfigurableResource):
    """Where manifests and C-GET spools are written: `base_dir`, or by default the Dagster instance's
    storage directory ($DAGSTER_HOME/storage/dicom_backup), which every run worker of the instance sees."""

    base_dir: str = ""

    def root(self, instance: DagsterInstance) -> Path:
        if self.base_dir:
            return Path(self.base_dir).expanduser()
        return Path(instance.storage_directory()) / "dicom_backup"

    def partition_dir(self, instance: DagsterInstance, source: str, partition: str) -> Path:
        path = self.root(instance) / "manifests" / source / partition
        path.mkdir(parents=True, exist_ok=True)
        return path

    def spool_dir(self, instance: DagsterInstance, source: str, run_id: str, purpose: str) -> Path:
        return self.root(instance) / "spool" / source / f"{run_id}-{purpose}"


def daily_partitions(env: EnvironmentConfig, start_date: str | dt.date) -> DailyPartitionsDefinition:
    """One partition per day in the site's timezone (StudyDate for Q/R sources, treatment day for Mosaiq)."""
    start = start_date if isinstance(start_date, str) else start_date.isoformat()
    return DailyPartitionsDefinition(start_date=start, timezone=env.settings.timezone)


@dataclass(frozen=True)
class SourceNames:
    """The Dagster names every backup source has, derived from its alias in one place; `pool_aet` is the
    AE title whose associations the source's steps hold (the source itself, or a Mosaiq source's staging)."""

    alias: str
    pool_aet: str

    def key(self, name: str) -> AssetKey:
        return AssetKey([self.alias, name])

    @property
    def archived(self) -> AssetKey:
        return self.key("archived")

    @property
    def job(self) -> str:
        return f"{self.alias}_backup"

    @property
    def pool(self) -> str:
        return f"dicom_{self.pool_aet}"

    @property
    def group(self) -> str:
        return f"{self.alias.lower()}_backup"


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
