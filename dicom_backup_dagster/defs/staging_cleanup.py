"""The staging cleanup job: delete Mosaiq RT records from the staging Orthanc once they are safe on main.

Job `staging_cleanup`, one op per Orthanc staging target that a Mosaiq source stages to (`clean_<alias>`),
and schedule `staging_cleanup_schedule` (STOPPED by default; daily at CLEANUP_CRON in the site timezone).
What may be deleted is decided by `backup.staging.clean_staging`: verified by content_verified (the
partition's verified.jsonl), found on main by C-FIND now, unchanged on staging, and received by staging at
least `settings.staging_retention_days` ago. Deletion goes through Orthanc's REST API
(DELETE /instances/{id}), never Orthanc Lua auto-routing (``Delete(SendToModality(...))`` deletes even when
the send failed).

A staging target of type `dicom_scp` (no REST API) gets no op: nothing can delete from it here.

Each op runs in the staging AE's pool (`dicom_<AET>`, as `staged` and `archived` do), and it asks main by
C-FIND before the first DELETE, so a main archive that is down fails the run with nothing deleted.
Metadata: examined, deleted, kept_not_on_main, kept_too_young, kept_changed, already_gone, seconds; UIDs
only, never PHI.

No `from __future__ import annotations`: Dagster 1.13 validates `context` annotations by identity.
"""

import contextlib
import datetime as dt
from typing import Any

from dagster import (
    DefaultScheduleStatus,
    Definitions,
    Failure,
    OpExecutionContext,
    ScheduleDefinition,
    job,
    op,
)

from dicom_backup_dagster.backup.inventory import archived_sop_uids
from dicom_backup_dagster.backup.records import read_verified
from dicom_backup_dagster.backup.staging import clean_staging
from dicom_backup_dagster.config import BackupTarget, EnvironmentConfig
from dicom_backup_dagster.defs.common import STORAGE_RESOURCE_KEY, BackupStorage, find_session, uids_metadata
from dicom_backup_dagster.defs.resources import (
    DicomNetwork,
    OrthancRestApi,
    rest_resource_key,
    staging_targets,
)
from dicom_backup_dagster.dicom.digest import fast_content_digest
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.orthanc import OrthancRestError

JOB_NAME = "staging_cleanup"
#: Daily, after the nightly backups (settings.schedule defaults to 01:30) have verified the previous day.
CLEANUP_CRON = "0 7 * * *"


def _build_op(env: EnvironmentConfig, target: BackupTarget, sources: list[str]) -> Any:
    archive = env.main_target.peer
    rest_key = rest_resource_key(target.alias)
    settings = env.settings

    @op(
        name=f"clean_{rest_key.removeprefix('orthanc_rest_')}",
        required_resource_keys={"dicom", STORAGE_RESOURCE_KEY, rest_key},
        pool=f"dicom_{target.aet}",
        tags={"dicom_backup/staging": target.alias},
        description=(
            f"Delete from staging {target.alias} ({target.rest_url}) the RT records of {', '.join(sources)} "
            f"that are verified on {env.main_target.alias} and older than staging_retention_days "
            f"({settings.staging_retention_days})."
        ),
    )
    def clean(context: OpExecutionContext) -> None:
        dicom: DicomNetwork = context.resources.dicom
        storage: BackupStorage = getattr(context.resources, STORAGE_RESOURCE_KEY)
        rest: OrthancRestApi = getattr(context.resources, rest_key)
        retention = dt.timedelta(days=settings.staging_retention_days)
        verified = read_verified(storage.root(context.instance) / "manifests", sources)
        where = f"staging cleanup of {target.alias} ({target.rest_url})"
        try:
            with rest.client() as staging, contextlib.ExitStack() as stack:
                sessions: list[Any] = []

                def on_main(study: str) -> set[str]:
                    # One association to main, opened only once there is something old enough to delete.
                    if not sessions:
                        sessions.append(stack.enter_context(find_session(archive, dicom)))
                    return archived_sop_uids(sessions[0], study)

                result = clean_staging(
                    staging,
                    verified,
                    on_main,
                    now=dt.datetime.now(dt.UTC),
                    retention=retention,
                    digest=fast_content_digest,
                )
        except DicomError as error:
            raise Failure(
                description=(
                    f"{where}: could not confirm on the main archive {error.peer}: {error}; nothing was "
                    f"deleted — bring {env.main_target.alias} back, then re-run {JOB_NAME}"
                ),
                metadata={"staging": target.alias, "main_peer": str(archive)},
                allow_retries=False,
            ) from error
        except OrthancRestError as error:
            raise Failure(
                description=f"{where}: {error}",
                metadata={"staging": target.alias},
                allow_retries=False,
            ) from error
        context.log.info(
            f"{where}: examined {result.examined}, deleted {result.deleted}, kept {result.kept} "
            f"(not on main {result.kept_not_on_main}, too young {result.kept_too_young}, changed "
            f"{result.kept_changed}) in {result.seconds:.2f} s"
        )
        if result.missing_on_main_uids:
            context.log.warning(
                f"{where}: {len(result.missing_on_main_uids)} records verified earlier are no longer found "
                f"on {archive}, kept on staging: {', '.join(result.missing_on_main_uids[:5])}"
            )
        context.add_output_metadata(
            {
                "examined": result.examined,
                "deleted": result.deleted,
                "kept_not_on_main": result.kept_not_on_main,
                "kept_too_young": result.kept_too_young,
                "kept_changed": result.kept_changed,
                "already_gone": result.already_gone,
                "verified_known": len(verified),
                "studies_queried": result.studies_queried,
                "missing_on_main_uids": uids_metadata(result.missing_on_main_uids),
                "changed_uids": uids_metadata(result.changed_uids),
                "retention_days": settings.staging_retention_days,
                "seconds": round(result.seconds, 3),
                "staging": target.alias,
                "main_peer": str(archive),
            }
        )

    return clean


def build_staging_cleanup_defs(env: EnvironmentConfig) -> Definitions:
    """The staging_cleanup job and its schedule, or nothing when no Mosaiq source stages to an Orthanc with
    a REST API (its REST resources come from resources.build_resources, with every other resource)."""
    targets = staging_targets(env)
    if not targets:
        return Definitions()
    ops = [_build_op(env, target, sources) for target, sources in targets.values()]

    @job(
        name=JOB_NAME,
        description=(
            "Deletes from the staging Orthanc(s) the Mosaiq RT records that are verified on the main archive "
            "and older than settings.staging_retention_days; keeps everything else."
        ),
        tags={"dicom_backup/kind": "staging_cleanup"},
    )
    def staging_cleanup() -> None:
        for clean in ops:
            clean()

    schedule = ScheduleDefinition(
        name=f"{JOB_NAME}_schedule",
        job=staging_cleanup,
        cron_schedule=CLEANUP_CRON,
        execution_timezone=env.settings.timezone,
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Runs {JOB_NAME} daily ({CLEANUP_CRON}, {env.settings.timezone}).",
    )
    return Definitions(jobs=[staging_cleanup], schedules=[schedule])
