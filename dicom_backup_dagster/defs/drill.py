"""The restore drill as Dagster definitions (only when `settings.restore_drill_target` names a scratch AE):
the asset `restore_drill` with its check `restore_verified`, the job `restore_drill_job` and the schedule
`restore_drill_schedule` (settings.restore_drill_schedule, site timezone). backup/drill.py does the work.

A failed drill is a failed check (counts and the fix in its description and metadata): the sensor
asset_check_alerts sends it as its own alert kind, `restore_drill` (high: Slack and email, no page). The
check is blocking, so the drill's run fails too (a red run page); backup_failure_alerts leaves that to the
check sensor, and alerts with the same kind only a drill run that failed otherwise (a bug, a resource).

No `from __future__ import annotations`: Dagster 1.13 resolves the asset's Config annotation at definition
time.
"""

from dataclasses import dataclass

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    Config,
    DefaultScheduleStatus,
    Definitions,
    MaterializeResult,
    RunRequest,
    ScheduleEvaluationContext,
    asset,
    define_asset_job,
    in_process_executor,
    schedule,
)
from pydantic import Field

from dicom_backup_dagster.backup.drill import DrillResult, new_seed, run_drill
from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.defs.keys import KIND_TAG, site_key
from dicom_backup_dagster.defs.resources import BackupStorage, DicomNetwork
from dicom_backup_dagster.dicom.network import Peer

DRILL_ASSET = AssetKey("restore_drill")
DRILL_CHECK = "restore_verified"
DRILL_JOB = "restore_drill_job"
DRILL_SCHEDULE = "restore_drill_schedule"
DRILL_KIND = "restore_drill"


class DrillConfig(Config):
    """Which sample to restore: 0 draws a new one (its seed is in the metadata)."""

    seed: int = Field(default=0, ge=0, description="the seed of an earlier drill to restore its sample again")


@dataclass(frozen=True)
class DrillPlan:
    main_alias: str
    main: Peer
    scratch_alias: str
    scratch: Peer
    studies: int

    @staticmethod
    def of(env: EnvironmentConfig) -> "DrillPlan":
        alias = env.settings.restore_drill_target
        scratch = env.restore_targets[alias].peer
        main = env.peers()[env.default_backup]
        return DrillPlan(env.default_backup, main, alias, scratch, env.settings.restore_drill_studies)


def drill_check(result: DrillResult) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=DRILL_CHECK,
        passed=result.passed,
        severity=AssetCheckSeverity.ERROR,
        description=result.summary(),
        metadata={**result.counts(), "scratch": result.scratch},
    )


def drill_body(
    context: AssetExecutionContext,
    plan: DrillPlan,
    config: DrillConfig,
    dicom: DicomNetwork,
    storage: BackupStorage,
) -> MaterializeResult:
    seed = config.seed or new_seed()
    context.log.info(
        f"restore drill: {plan.studies} studies of {plan.main_alias} (seed {seed}) to {plan.scratch_alias} "
        f"{plan.scratch}"
    )
    result = run_drill(
        main=plan.main,
        scratch=plan.scratch,
        calling_aet=dicom.calling_aet,
        timeouts=dicom.timeouts,
        count=plan.studies,
        seed=seed,
        spool_dir=storage.spool_dir(context.instance, "restore_drill", context.run.run_id, "verify"),
    )
    (context.log.info if result.passed else context.log.error)(result.summary())
    return MaterializeResult(
        metadata={**result.counts(), "scratch": f"{plan.scratch_alias} {plan.scratch}"},
        check_results=[drill_check(result)],
    )


def build_drill_defs(env: EnvironmentConfig, *, multi_site: bool = False) -> Definitions:
    """Nothing unless settings.restore_drill_target is set (the loader checks it names a restore target).
    The asset is `restore_drill`, or `restore_drill/<site>` when several sites share the instance."""
    if not env.settings.restore_drill_target:
        return Definitions()
    plan = DrillPlan.of(env)
    settings = env.settings
    key = site_key(DRILL_ASSET, env.name, multi_site=multi_site)

    @asset(
        key=key,
        group_name="restore_drill",
        check_specs=[
            # Blocking: a failed drill also fails its run, so the run page is red, not "Success".
            AssetCheckSpec(
                DRILL_CHECK, asset=key, blocking=True, description="sample restored, digests equal"
            )
        ],
        description=(
            f"Restore drill: {plan.studies} random studies of {plan.main_alias} restored to the scratch AE "
            f"{plan.scratch_alias} and verified there by content digest (docs/runbooks/restore_drill.md)."
        ),
    )
    def restore_drill(
        context: AssetExecutionContext,
        config: DrillConfig,
        dicom: DicomNetwork,
        backup_storage: BackupStorage,
    ) -> MaterializeResult:
        return drill_body(context, plan, config, dicom, backup_storage)

    drill_job = define_asset_job(
        DRILL_JOB,
        selection=AssetSelection.assets(key),
        description=f"Restore drill to {plan.scratch_alias}: a random sample of {plan.main_alias}, verified.",
        tags={KIND_TAG: DRILL_KIND},
        executor_def=in_process_executor,
    )

    @schedule(
        name=DRILL_SCHEDULE,
        job=drill_job,
        cron_schedule=settings.restore_drill_schedule,
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.RUNNING,  # configuring a drill target is the opt-in
        description=f"Restore drill ({settings.restore_drill_schedule}, {settings.timezone}).",
    )
    def drill_schedule(context: ScheduleEvaluationContext) -> RunRequest:
        return RunRequest(run_key=context.scheduled_execution_time.isoformat())

    return Definitions(assets=[restore_drill], jobs=[drill_job], schedules=[drill_schedule])
