"""The job and nightly schedule every backup source gets, whatever its kind (Q/R or Mosaiq)."""

import datetime as dt

from dagster import (
    AssetKey,
    AssetSelection,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    Definitions,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    in_process_executor,
    schedule,
)

from dicom_backup_dagster.config import Settings
from dicom_backup_dagster.defs.keys import SourceNames


def previous_day_request(
    scheduled: dt.datetime, settings: Settings, partitions_def: DailyPartitionsDefinition
) -> RunRequest | SkipReason:
    """The run of a nightly tick: the latest complete day in the site's timezone, the day before the
    tick's local date."""
    day = scheduled.astimezone(settings.tzinfo).date() - dt.timedelta(days=1)
    if day < partitions_def.start.date():
        return SkipReason(f"no complete day since {partitions_def.start:%Y-%m-%d} yet")
    return RunRequest(run_key=day.isoformat(), partition_key=day.isoformat())


def backup_job_and_schedule(
    names: SourceNames,
    assets: list[AssetKey],
    description: str,
    settings: Settings,
    partitions_def: DailyPartitionsDefinition,
) -> Definitions:
    """`<source>_backup` over `assets`, and `<source>_backup_schedule` running it for the previous day."""
    job = define_asset_job(
        names.job,
        selection=AssetSelection.assets(*assets),
        description=description,
        tags=names.tags,
        # One process per run, not per step: the steps are sequential DICOM I/O and a step process costs
        # 2-5 s to start here. Parallelism comes from concurrent runs, bounded per AE by the pools. With
        # settings.executor = "celery", the code location's executor: every step on the site's workers.
        executor_def=None if settings.executor == "celery" else in_process_executor,
    )

    # A plain cron schedule rather than build_schedule_from_partitioned_job, which only takes hour/minute
    # fields for time-partitioned jobs: settings.schedule is a full cron expression.
    @schedule(
        name=names.schedule,
        job=job,
        cron_schedule=settings.schedule,
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.STOPPED,
        description=(
            f"Nightly {names.alias} backup of the previous day ({settings.schedule}, {settings.timezone})."
        ),
    )
    def nightly(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        return previous_day_request(context.scheduled_execution_time, settings, partitions_def)

    return Definitions(jobs=[job], schedules=[nightly])
