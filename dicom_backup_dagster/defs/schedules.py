"""The job and nightly schedule every backup source gets, whatever its kind (Q/R or Mosaiq)."""

import datetime as dt
from typing import TYPE_CHECKING

from dagster import (
    AssetKey,
    AssetSelection,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    in_process_executor,
    schedule,
)

from dicom_backup_dagster.config import Settings

if TYPE_CHECKING:  # not exported by dagster's top-level package in 1.13
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition


def nightly_schedule_name(job_name: str) -> str:
    """The name of the schedule backup_job_and_schedule makes for `job_name` (defs/hours.py tells nightly
    runs by it)."""
    return f"{job_name}_schedule"


def backup_job_and_schedule(
    job_name: str,
    source_alias: str,
    assets: list[AssetKey],
    description: str,
    settings: Settings,
    partitions_def: DailyPartitionsDefinition,
) -> tuple["UnresolvedAssetJobDefinition", ScheduleDefinition]:
    """`<source>_backup` over `assets`, and `<source>_backup_schedule` running it for the previous day."""
    job = define_asset_job(
        job_name,
        selection=AssetSelection.assets(*assets),
        description=description,
        tags={"dicom_backup/source": source_alias},
        # One process per run, not per step: the steps are sequential DICOM I/O and a step process costs
        # 2-5 s to start here. Parallelism comes from concurrent runs, bounded per AE by the pools.
        executor_def=in_process_executor,
    )

    # A plain cron schedule rather than build_schedule_from_partitioned_job, which only takes hour/minute
    # fields for time-partitioned jobs: settings.schedule is a full cron expression.
    @schedule(
        name=nightly_schedule_name(job_name),
        job=job,
        cron_schedule=settings.schedule,
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.STOPPED,
        description=(
            f"Nightly {source_alias} backup of the previous day ({settings.schedule}, {settings.timezone})."
        ),
    )
    def nightly(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        # The latest complete day in the site's timezone: the day before the tick's local date.
        local = context.scheduled_execution_time.astimezone(settings.tzinfo)
        day = local.date() - dt.timedelta(days=1)
        if day < partitions_def.start.date():
            return SkipReason(f"no complete day since {partitions_def.start:%Y-%m-%d} yet")
        return RunRequest(run_key=day.isoformat(), partition_key=day.isoformat())

    return job, nightly
