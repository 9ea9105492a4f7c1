"""Downtime reports as Dagster definitions: per Mosaiq source `<source>/on_treatment`, downstream of
`<source>/archived` and materialized when it is updated (automation condition any_deps_updated: after each
night's Mosaiq backup), with the WARN check `reference_complete`. The work is backup/reports.py; metadata
carries counts and the reports directory only (the patient data are in the files, 0600)."""

# No `from __future__ import annotations`: Dagster validates the `context` annotation by identity.
import datetime as dt
import zoneinfo
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
)

from dicom_backup_dagster.backup import reports
from dicom_backup_dagster.backup.staging import staging_client
from dicom_backup_dagster.config import BackupTarget, EnvironmentConfig
from dicom_backup_dagster.defs.keys import SourceNames
from dicom_backup_dagster.defs.resources import BackupStorage

REFERENCE_CHECK = "reference_complete"


@dataclass(frozen=True)
class ReportPlan:
    names: SourceNames
    main: BackupTarget
    days: int
    reports_dir: str | None
    timezone: str


def on_treatment_body(
    context: AssetExecutionContext, plan: ReportPlan, storage: BackupStorage
) -> MaterializeResult:
    """Read main's RT records of the last `days` days and what they reference; write the report; check the
    references (each record is checked on the nights it is in the window, so every record is checked)."""
    if not plan.main.rest_url:
        raise ValueError(
            f"backup_targets.{plan.main.alias}.rest_url is not set: the reports read main by REST"
        )
    directory = Path(plan.reports_dir) if plan.reports_dir else storage.root(context.instance) / "reports"
    client = staging_client(plan.main.rest_url, plan.main.rest_username, plan.main.rest_password,
                            label=plan.main.alias)  # fmt: skip
    today = dt.datetime.now(zoneinfo.ZoneInfo(plan.timezone)).date()
    with client:  # only the last `days` days' records, and what they reference (indexed lookups)
        records = list(reports.recent_records(client, today - dt.timedelta(days=plan.days), today))
        chase = reports.chase_references(client, records)
    rows = reports.on_treatment(records, today, plan.days, chase.plan_labels())
    columns = reports.ON_TREATMENT_COLUMNS
    csv_path, _ = reports.write_report(
        directory, "on_treatment", "On treatment", columns, [r.row() for r in rows]
    )
    missing = reports.missing_references(chase.objects, chase.instances, chase.series)
    context.log.info(
        f"on treatment: {len(rows)} courses from {len(records)} RT records; {len(missing)} missing"
    )
    uids = "\n".join(f"{m.kind} {m.missing_uid} (from {m.referring_uid})" for m in missing[:200])
    return MaterializeResult(
        metadata={
            "courses": len(rows), "rt_records": len(records),
            "reports_dir": MetadataValue.path(str(csv_path.parent)),
        },
        check_results=[
            AssetCheckResult(
                check_name=REFERENCE_CHECK, passed=not missing, severity=AssetCheckSeverity.WARN,
                metadata={
                    "missing": len(missing), "checked": len(chase.objects),
                    "missing_uids": MetadataValue.md(uids or "none"),
                },
            )
        ],
    )  # fmt: skip


def _on_treatment_asset(plan: ReportPlan) -> AssetsDefinition:
    key = plan.names.key("on_treatment")

    @asset(
        key=key, deps=[plan.names.archived], group_name=plan.names.group,
        automation_condition=AutomationCondition.any_deps_updated() & ~AutomationCondition.in_progress(),
        check_specs=[AssetCheckSpec(REFERENCE_CHECK, asset=key)],
        description="Downtime: courses in progress from main's RT records (docs/runbooks/downtime.md)",
    )  # fmt: skip
    def _on_treatment(context: AssetExecutionContext, backup_storage: BackupStorage) -> MaterializeResult:
        return on_treatment_body(context, plan, backup_storage)

    return _on_treatment


def build_report_defs(env: EnvironmentConfig) -> Definitions:
    """One `<source>/on_treatment` asset per Mosaiq source (thin: the body is on_treatment_body)."""
    s = env.settings
    return Definitions(
        assets=[
            _on_treatment_asset(
                ReportPlan(SourceNames(a), env.main_target, s.on_treatment_days, s.reports_dir, s.timezone)
            )
            for a in env.mosaiq_sources
        ]
    )
