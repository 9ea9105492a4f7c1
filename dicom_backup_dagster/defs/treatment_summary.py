"""The `treatment_summary` job for the Launchpad: one patient's courses, from Mosaiq when it answers, from
the main archive when it does not (backup/treatment_summary.py, mosaiq/summary.py).

The PatientID is only in the run config the operator typed and in the report files (reports directory,
0700/0600): the files are named by run, and logs and metadata carry counts, which source answered and
the path. A Mosaiq that does not answer is said in the metadata (what failed, never the patient)."""

# No `from __future__ import annotations`: Dagster 1.13 resolves the op's Config annotation at definition.
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyodbc
from dagster import (
    Config,
    Definitions,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Output,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from dicom_backup_dagster.backup import reports
from dicom_backup_dagster.backup import treatment_summary as summary
from dicom_backup_dagster.backup.staging import staging_client
from dicom_backup_dagster.config import BackupTarget, EnvironmentConfig
from dicom_backup_dagster.defs.keys import KIND_TAG
from dicom_backup_dagster.defs.resources import BackupStorage, MosaiqDatabase, mosaiq_resource_key
from dicom_backup_dagster.mosaiq.connection import MosaiqConnectionError
from dicom_backup_dagster.mosaiq.summary import site_histories

SUMMARY_JOB = "treatment_summary"
SUMMARY_OP = "write_treatment_summary"


class TreatmentSummaryConfig(Config):
    """Run config of `treatment_summary` (Launchpad: ops: write_treatment_summary: config: ...)."""

    patient_id: str = Field(description="PatientID (0010,0020) = Mosaiq's MRN (Ident.IDA)")
    source: str = Field(default="", description="Mosaiq source alias (default: the only Mosaiq source)")


@dataclass(frozen=True)
class SummaryPlan:
    mosaiq: tuple[str, ...]
    main: BackupTarget
    reports_dir: str | None


def _source(plan: SummaryPlan, wanted: str) -> str | None:
    if not wanted:
        return plan.mosaiq[0] if plan.mosaiq else None
    if wanted not in plan.mosaiq:
        close = difflib.get_close_matches(wanted, plan.mosaiq, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise Failure(
            f"source {wanted!r} is not a Mosaiq source of this site{hint}; Mosaiq sources: "
            f"{', '.join(plan.mosaiq) or 'none'} (leave source empty to use the first)",
            allow_retries=False,
        )
    return wanted


def _from_mosaiq(database: MosaiqDatabase, patient_id: str, alias: str) -> list[summary.CourseSummary]:
    """Mosaiq's answer; raises MosaiqConnectionError / pyodbc.Error when it does not answer."""
    connection = database.connect()
    try:
        return summary.from_mosaiq(site_histories(connection, patient_id), alias)
    finally:
        connection.close()


def _archive(plan: SummaryPlan, patient_id: str) -> list[summary.CourseSummary]:
    main = plan.main
    if not main.rest_url:
        raise Failure(f"backup_targets.{main.alias}.rest_url is not set: the summary reads main by REST")
    with staging_client(main.rest_url, main.rest_username, main.rest_password, label=main.alias) as client:
        return summary.from_archive(client, patient_id, main.alias)


def run_summary(
    context: OpExecutionContext, plan: SummaryPlan, config: TreatmentSummaryConfig, storage: BackupStorage
) -> dict[str, Any]:
    """Write the summary files; the metadata (no patient data)."""
    patient_id = config.patient_id.strip()
    if not patient_id:
        raise Failure("patient_id is empty: give the patient's PatientID (Mosaiq MRN)", allow_retries=False)
    alias = _source(plan, config.source.strip())
    courses: list[summary.CourseSummary] | None = None
    mosaiq = "no Mosaiq source configured"
    if alias is not None:
        try:
            courses = _from_mosaiq(getattr(context.resources, mosaiq_resource_key(alias)), patient_id, alias)
            mosaiq = "answered"
        except MosaiqConnectionError as exc:
            mosaiq = f"did not answer: {exc.what_failed}"
        except pyodbc.Error as exc:  # the query failed: its SQLSTATE only (driver text may quote values)
            mosaiq = f"did not answer: the summary query failed (SQLSTATE {exc.args[0] if exc.args else '?'})"
    answered = f"Mosaiq {alias}" if courses is not None else f"archive {plan.main.alias}"
    if courses is None:
        context.log.warning(f"Mosaiq {alias or ''} {mosaiq}: the summary is built from {plan.main.alias}")
        courses = _archive(plan, patient_id)
    directory = Path(plan.reports_dir) if plan.reports_dir else storage.root(context.instance) / "reports"
    name = f"treatment_summary-{context.run_id[:8]}"
    title = f"Treatment summary (from {answered})"
    csv_path, html_path = reports.write_report(
        directory, name, title, summary.SUMMARY_COLUMNS, [c.row() for c in courses]
    )
    context.log.info(f"treatment summary: {len(courses)} courses from {answered}")
    return {
        "courses": len(courses),
        "answered_by": answered,
        "mosaiq": mosaiq,
        "fractions_delivered": sum(c.fractions_delivered for c in courses),
        "csv": MetadataValue.path(str(csv_path)),
        "html": MetadataValue.path(str(html_path)),
    }


def build_treatment_summary_defs(env: EnvironmentConfig) -> Definitions:
    """The `treatment_summary` job (one op, every Mosaiq database resource), for the Launchpad."""
    plan = SummaryPlan(tuple(env.mosaiq_sources), env.main_target, env.settings.reports_dir)

    @op(
        name=SUMMARY_OP,
        required_resource_keys={"backup_storage", *(mosaiq_resource_key(a) for a in plan.mosaiq)},
        description="Treatment summary of one patient: Mosaiq when it answers, else the main archive.",
    )
    def summary_op(context: OpExecutionContext, config: TreatmentSummaryConfig) -> Output[None]:
        metadata = run_summary(context, plan, config, context.resources.backup_storage)
        return Output(None, metadata=metadata)

    @job(
        name=SUMMARY_JOB,
        description=(
            "Downtime: one patient's courses, sites, doses, fractions and dates, from Mosaiq when it "
            "answers, "
            f"else from {plan.main.alias}; files in the reports directory. Launchpad: ops: {SUMMARY_OP}: "
            "config: patient_id (+ source)."
        ),
        tags={KIND_TAG: "treatment_summary"},
        executor_def=in_process_executor,
    )
    def summary_job() -> None:
        summary_op()

    return Definitions(jobs=[summary_job])
