"""The `restore` job: main archive -> a destination AE, launched from the Launchpad (backup/restore.py does
the work; docs/decisions/restore.md has the facts it relies on).

The PatientID an operator may type is in the run config only: it is a C-FIND matching key, never logged,
never in metadata, tags or alerts (the result holds counts and UIDs). No `from __future__ import
annotations`: Dagster 1.13 resolves the op's Config annotation at definition time.
"""

import datetime as dt
from dataclasses import dataclass
from typing import Any

from dagster import (
    Config,
    Definitions,
    Failure,
    MetadataValue,
    OpExecutionContext,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from dicom_backup_dagster.backup.restore import RestoreResult, Selection, resolve, restore
from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.config.models import hint
from dicom_backup_dagster.defs.keys import KIND_TAG
from dicom_backup_dagster.defs.resources import BackupStorage, DicomNetwork
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.network import Peer

RESTORE_JOB = "restore"


class RestoreConfig(Config):
    """What to restore and where (give study_uids, or patient_id with optional dates and modalities)."""

    destination: str = Field(description="alias of a restore target, source or backup target (not main)")
    study_uids: list[str] = Field(default=[], description="Study Instance UIDs (0020,000D) to restore")
    patient_id: str = Field(default="", description="PatientID (0010,0020): every study of the patient")
    start_date: str = Field(default="", description="with patient_id: first StudyDate, YYYY-MM-DD")
    end_date: str = Field(default="", description="with patient_id: last StudyDate, YYYY-MM-DD")
    modalities: list[str] = Field(default=[], description="only series of these modalities, e.g. RTPLAN")
    dry_run: bool = Field(default=False, description="count what would be restored; move nothing")


@dataclass(frozen=True)
class RestorePlan:
    main_alias: str
    main: Peer
    destinations: dict[str, Peer]

    @staticmethod
    def of(env: EnvironmentConfig) -> "RestorePlan":
        main = env.peers()[env.default_backup]
        return RestorePlan(env.default_backup, main, env.restore_destinations())


def _date(value: str, key: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        raise Failure(f"{key} must be a date as YYYY-MM-DD", allow_retries=False) from None


def selection_of(plan: RestorePlan, config: RestoreConfig) -> tuple[Peer, Selection]:
    """The destination and selection of the run config, or a Failure saying what to fix (never echoing the
    PatientID)."""
    if config.destination not in plan.destinations:
        choices = sorted(plan.destinations)
        raise Failure(
            f"unknown restore destination {config.destination!r}{hint(config.destination, choices)}: "
            f"use one of {', '.join(choices)} (add a [<ENV>.restore_targets.<ALIAS>] table for another AE)",
            allow_retries=False,
        )
    if bool(config.study_uids) == bool(config.patient_id.strip()):
        raise Failure("give exactly one of study_uids or patient_id in the run config", allow_retries=False)
    selection = Selection(
        study_instance_uids=tuple(u.strip() for u in config.study_uids),
        patient_id=config.patient_id.strip(),
        start=_date(config.start_date, "start_date"),
        end=_date(config.end_date, "end_date"),
        modalities=tuple(m.strip().upper() for m in config.modalities),
    )
    return plan.destinations[config.destination], selection


def restore_metadata(result: RestoreResult) -> dict[str, Any]:
    outcome = result.outcome
    return {
        "destination": result.destination,
        "dry_run": result.dry_run,
        "studies": result.studies,
        "series": result.series,
        "instances": result.selected,
        "moved": outcome.completed if outcome else 0,
        "present_at_destination": result.present,
        "digests_matched": result.content.matched if result.content else 0,
        "missing_uids": MetadataValue.json(result.missing_uids),
        "notes": MetadataValue.json(result.notes),
    }


def run_restore(
    context: OpExecutionContext,
    plan: RestorePlan,
    config: RestoreConfig,
    dicom: DicomNetwork,
    storage: BackupStorage,
) -> RestoreResult:
    destination, selection = selection_of(plan, config)
    with FindSession(plan.main, dicom.calling_aet, dicom.timeouts) as session:
        entries = resolve(session, selection)
    context.log.info(f"restore to {destination}: {len(entries)} instances selected on {plan.main_alias}")
    result = restore(
        entries,
        main=plan.main,
        destination=destination,
        calling_aet=dicom.calling_aet,
        timeouts=dicom.timeouts,
        dry_run=config.dry_run,
        spool_dir=storage.spool_dir(context.instance, "restore", context.run_id, "verify"),
    )
    context.add_output_metadata(restore_metadata(result))
    if not entries:
        raise Failure(
            f"nothing on {plan.main_alias} matches the selection: check the UIDs, PatientID or dates"
        )
    if not result.passed:
        problems = result.errors or [f"{len(result.missing_uids)} instances not found at {destination}"]
        missing = (
            f"; missing at the destination: {', '.join(result.missing_uids[:10])}"
            if result.missing_uids
            else ""
        )
        content = "" if result.content is None or result.content.passed else "; content digests differ"
        raise Failure(f"restore to {destination} incomplete: {'; '.join(problems)}{missing}{content}")
    return result


def build_restore_defs(env: EnvironmentConfig) -> Definitions:
    """The `restore` job (one op), for the Launchpad."""
    plan = RestorePlan.of(env)

    @op(name="restore_studies", description=f"Restore from {plan.main_alias} to a destination AE, verified.")
    def restore_op(
        context: OpExecutionContext, config: RestoreConfig, dicom: DicomNetwork, backup_storage: BackupStorage
    ) -> None:
        run_restore(context, plan, config, dicom, backup_storage)

    @job(
        name=RESTORE_JOB,
        description=(
            f"Give data back: C-MOVE from {plan.main_alias} to a destination, then prove it there (C-FIND, "
            "digests where it serves C-GET). Launchpad: ops: restore_studies: config: destination, "
            "study_uids | patient_id (+ start_date, end_date, modalities), dry_run."
        ),
        tags={KIND_TAG: "restore"},
        executor_def=in_process_executor,
    )
    def restore_job() -> None:
        restore_op()

    return Definitions(jobs=[restore_job])
