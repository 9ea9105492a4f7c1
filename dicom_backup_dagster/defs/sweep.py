"""The reconciliation sweep of every ARIA/MIM source: one asset, its two checks, a job and a schedule.

`<source>/reconciled` re-inventories tonight's slice of older studies (backup/sweep.py), archives what the
main archive lacks, and records when each study was last reconciled. Its checks:
- `nothing_missed` fails (WARN) when the sweep found instances on the source that the archive lacked:
  data the nightly runs had missed (now archived, or failed with the run);
- `sweep_coverage` fails (WARN) when a study of the window has not been reconciled within
  `settings.sweep_nights` nights.

No `from __future__ import annotations`: Dagster 1.13 validates `context` annotations by identity.
"""

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSelection,
    Config,
    DefaultScheduleStatus,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
    define_asset_job,
    in_process_executor,
)
from pydantic import Field

from dicom_backup_dagster.backup.archive import ArchivePhaseError, ArchiveResult
from dicom_backup_dagster.backup.hours import WorkWindow
from dicom_backup_dagster.backup.inventory import inventory_studies, split_query_keys
from dicom_backup_dagster.backup.late import archive_study_counts, lacking_by_counts
from dicom_backup_dagster.backup.manifest import read_manifest
from dicom_backup_dagster.backup.partitions import iso_date
from dicom_backup_dagster.backup.sweep import (
    Coverage,
    SweepState,
    batches,
    by_last_reconciled,
    choose_slice,
    coverage,
    list_window,
    nightly_quota,
    reconciled_studies,
)
from dicom_backup_dagster.config import EnvironmentConfig, QRSource, Settings
from dicom_backup_dagster.defs.common import (
    FROM_SETTINGS,
    RetryChoice,
    backup_failure,
    explain_destination,
    explain_failures,
    find_session,
    resolve_retry_policy,
    uids_metadata,
)
from dicom_backup_dagster.defs.hours import wait_for_window
from dicom_backup_dagster.defs.keys import (
    KIND_TAG,
    NOTHING_MISSED,
    SWEEP_COVERAGE,
    SourceNames,
    pool_id,
    sweep_job_name,
    sweep_key,
)
from dicom_backup_dagster.defs.qr_backup import archive_from_source
from dicom_backup_dagster.defs.resources import BackupStorage, DicomNetwork
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import StudyRecord
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.monitoring.dimse import with_dimse_metadata

__all__ = ["NOTHING_MISSED", "SWEEP_COVERAGE", "build_sweep_defs", "sweep_job_name", "sweep_key"]

BATCH_STUDIES = 50  # studies per inventory -> archive -> state save round: what an outage can cost


class SweepConfig(Config):
    """Run configuration of a sweep launched by hand (the schedule needs none)."""

    as_of: str = Field(
        default="",
        description=(
            "Reconcile as if tonight were this date (YYYY-MM-DD): the window is the sweep_days days before "
            "it. Empty: today in the site's timezone."
        ),
    )


@dataclass(frozen=True)
class SweepPlan:
    """What the sweep of one ARIA/MIM source needs, fixed when the definitions load."""

    names: SourceNames
    source: QRSource
    settings: Settings
    archive: Peer
    archive_alias: str
    study_keys: dict[str, str]  # the source's extra query keys at STUDY level
    window: WorkWindow  # the source's bulk_hours

    @classmethod
    def of(cls, env: EnvironmentConfig, source: QRSource, *, multi_site: bool = False) -> "SweepPlan":
        return cls(
            names=SourceNames(
                source.alias, pool_id(source.aet, source.ip, source.port, multi_site=multi_site)
            ),
            source=source,
            settings=env.settings,
            archive=env.main_target.peer,
            archive_alias=env.main_target.alias,
            study_keys=split_query_keys(source.query_keys)[0],
            window=source.bulk_window(env.settings.timezone),
        )

    @property
    def alias(self) -> str:
        return self.source.alias


@dataclass
class SweepNight:
    """Tonight's sweep: the window, what is in it, the slice chosen and the state that records it."""

    now: dt.datetime
    first: dt.date
    last: dt.date
    label: str
    state: SweepState
    state_path: Path
    listed: int = 0
    window: list[StudyRecord] = field(default_factory=list)
    visibly_changed: set[str] = field(default_factory=set)
    quota: int = 0
    chosen: list[StudyRecord] = field(default_factory=list)

    def failure(self, alias: str, phase: str, error: DicomError) -> Failure:
        self.state.save(self.state_path)  # what was reconciled before the error counts; the next run goes on
        return backup_failure(alias, f"reconciliation sweep, {phase}", self.label, error)


@dataclass
class SweepTotals:
    """What the batches of tonight's slice found and moved."""

    instances: int = 0
    lacked: int = 0
    moved: int = 0
    failed: int = 0
    deferred: int = 0
    reconciled: int = 0
    missed_studies: list[str] = field(default_factory=list)
    failed_uids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, instances: int, result: ArchiveResult, done: list[str], lacking: dict[str, int]) -> None:
        self.missed_studies += [uid for uid in lacking if uid not in self.missed_studies]
        self.instances += instances
        self.lacked += sum(lacking.values())
        self.reconciled += len(done)
        self.moved += result.final.moved
        self.failed += result.final.failed
        self.deferred += result.plan.deferred
        self.failed_uids += list(result.final.failed_uids)
        self.errors += [str(e) for e in result.outcome.errors[:5]]


def _as_of(config: SweepConfig, now: dt.datetime, settings: Settings) -> dt.date:
    if not config.as_of:
        return now.astimezone(settings.tzinfo).date()
    try:
        return dt.date.fromisoformat(config.as_of)
    except ValueError:
        raise Failure(
            description=f"as_of {config.as_of!r} is not a date: write it as YYYY-MM-DD, or leave it empty",
            allow_retries=False,
        ) from None


def _coverage_text(cov: Coverage, first: dt.date, last: dt.date, nights: int, quota: int) -> str:
    text = (
        f"{cov.percent:g}% of the {cov.studies} studies dated {first}..{last} (on days already backed up) "
        f"reconciled within {nights} nights; {len(cov.overdue)} overdue"
    )
    if cov.nights_to_cover:
        text += f"; the rest in {cov.nights_to_cover} more nights at {quota} a night"
    return text


# ------------------------------------------------------------------------------------------------------
# <source>/reconciled


def sweep_description(plan: SweepPlan) -> str:
    settings = plan.settings
    return (
        f"Reconciliation sweep of {plan.alias}: every night, a slice of the studies dated in the last "
        f"{settings.sweep_days} days is re-inventoried down to each instance and compared with "
        f"{plan.archive_alias}, so that every study is reconciled within {settings.sweep_nights} "
        f"nights (at most {settings.sweep_max_studies} studies a night; studies the archive visibly "
        "lacks data of come first). Whatever is missing is archived and reported. At most "
        f"{settings.max_uids_per_run} instances are moved per run."
    )


def sweep_check_specs(plan: SweepPlan) -> list[AssetCheckSpec]:
    key, settings = plan.names.reconciled, plan.settings
    return [
        AssetCheckSpec(
            NOTHING_MISSED,
            asset=key,
            description=(
                "The sweep found no instance on the source that the archive lacked. A failure means the "
                "nightly runs had missed data (the sweep archives it): see the run for the studies."
            ),
        ),
        AssetCheckSpec(
            SWEEP_COVERAGE,
            asset=key,
            description=(
                f"Every study dated in the last {settings.sweep_days} days (on days already backed up) "
                f"was reconciled with the archive within {settings.sweep_nights} nights."
            ),
        ),
    ]


def materialize_reconciled(
    context: AssetExecutionContext,
    plan: SweepPlan,
    config: SweepConfig,
    dicom: DicomNetwork,
    storage: BackupStorage,
) -> MaterializeResult:
    """Tonight's slice of older studies re-inventoried and archived where the archive lacks data."""
    wait_for_window(context, plan.alias, plan.window)  # a sweep loads the source only in its bulk_hours
    started = time.monotonic()
    night = choose_tonight(context, plan, config, dicom, storage)
    totals = SweepTotals()
    budget = plan.settings.max_uids_per_run
    for number, batch in enumerate(batches(night.chosen, BATCH_STUDIES)):
        budget = reconcile_batch(context, plan, night, totals, (number, batch, budget), dicom, storage)
    cov = coverage(night.window, night.state, night.now, plan.settings.sweep_nights, night.quota)
    metadata = sweep_metadata(plan, night, totals, cov, time.monotonic() - started)
    if totals.failed:
        raise Failure(
            description=(
                f"{plan.alias} reconciliation sweep: {totals.failed} instances the archive lacked "
                f"could not be archived; first: {', '.join(totals.failed_uids[:5])}"
                + (f"; {totals.errors[0]}" if totals.errors else "")
            ),
            metadata=metadata,
        )
    return MaterializeResult(metadata=metadata, check_results=sweep_check_results(plan, night, totals, cov))


def choose_tonight(
    context: AssetExecutionContext,
    plan: SweepPlan,
    config: SweepConfig,
    dicom: DicomNetwork,
    storage: BackupStorage,
) -> SweepNight:
    """List the window's studies on the source and their counts on the archive; choose tonight's slice."""
    settings = plan.settings
    now = dt.datetime.now(dt.UTC)
    tonight = _as_of(config, now, settings)
    state_path = storage.root(context.instance) / "sweep" / f"{plan.alias}.json"
    night = SweepNight(
        now=now,
        first=tonight - dt.timedelta(days=settings.sweep_days),
        last=tonight - dt.timedelta(days=1),
        label=f"sweep-{tonight.isoformat()}",
        state=SweepState.load(state_path, now),
        state_path=state_path,
    )
    backed_up = context.instance.get_materialized_partitions(plan.names.archived)
    try:
        with find_session(plan.source.peer, dicom) as session:
            listed = list_window(
                session, night.first, night.last, extra_keys=plan.study_keys, cap=plan.source.max_find_results
            )
        night.window = [s for s in listed if iso_date(s.study_date) in backed_up]
        with find_session(plan.archive, dicom) as main:
            counts = archive_study_counts(main, [s.study_instance_uid for s in night.window])
    except DicomError as error:
        raise night.failure(plan.alias, "listing the window's studies (C-FIND)", error) from error
    night.listed = len(listed)
    night.visibly_changed = {s.study_instance_uid for s in lacking_by_counts(night.window, counts)[0]}
    night.quota = nightly_quota(len(night.window), settings.sweep_nights, settings.sweep_max_studies)
    night.chosen = choose_slice(
        night.window,
        night.state,
        quota=night.quota,
        max_studies=settings.sweep_max_studies,
        visibly_changed=night.visibly_changed,
    )
    context.log.info(
        f"{plan.alias} sweep {night.first}..{night.last}: {len(listed)} studies listed, {len(night.window)} "
        f"on days already backed up, {len(night.visibly_changed)} visibly lacking data on the archive; "
        f"reconciling {len(night.chosen)} tonight (quota {night.quota})"
    )
    return night


def reconcile_batch(
    context: AssetExecutionContext,
    plan: SweepPlan,
    night: SweepNight,
    totals: SweepTotals,
    work: tuple[int, list[StudyRecord], int],
    dicom: DicomNetwork,
    storage: BackupStorage,
) -> int:
    """Inventory one batch of studies, archive what the archive lacks, save the state; the budget left."""
    number, batch, budget = work
    source = plan.source
    wait_for_window(context, plan.alias, plan.window)
    folder = storage.partition_dir(
        context.instance, plan.alias, f"{night.label}/{context.run.run_id}/{number:04d}"
    )
    try:
        with find_session(source.peer, dicom) as session:
            summary = inventory_studies(
                session,
                batch,
                folder / "inventory.jsonl",
                query_keys=source.query_keys,
                by_study=source.inventory == "by-study",
                cap=source.max_find_results,
            )
        result = archive_from_source(
            context,
            source,
            plan.archive,
            dicom,
            storage,
            folder / "inventory.jsonl",
            folder,
            uid_limit=budget,
            spool_purpose=f"sweep-{number:04d}",
            window=plan.window,
        )
    except DicomError as error:
        raise night.failure(plan.alias, "inventory (C-FIND)", error) from error
    except ArchivePhaseError as failed:
        raise night.failure(plan.alias, failed.phase, failed.error) from failed
    done, lacking = reconciled_studies(
        read_manifest(folder / "archived.jsonl"), [s.study_instance_uid for s in batch]
    )
    for uid in done:
        night.state.reconciled[uid] = night.now
    night.state.save(night.state_path)
    totals.add(summary.instances, result, done, lacking)
    if result.outcome.fatal is not None and result.final.failed:
        raise night.failure(
            plan.alias,
            f"transfer ({result.final.failed} of {result.plan.pending} instances not on the archive)",
            explain_destination(result.outcome.fatal, plan.archive, dicom),
        )
    return max(0, budget - result.plan.pending)


def least_recent_table(night: SweepNight) -> MetadataValue:
    return MetadataValue.md(
        "| StudyDate | last reconciled | Study Instance UID |\n|---|---|---|\n"
        + "\n".join(
            f"| {s.study_date or '?'} | {(night.state.last(s.study_instance_uid) or 'never')!s:.16} | "
            f"{s.study_instance_uid} |"
            for s in by_last_reconciled(night.window, night.state)[:10]
        )
    )


def sweep_metadata(
    plan: SweepPlan, night: SweepNight, totals: SweepTotals, cov: Coverage, seconds: float
) -> dict[str, Any]:
    nights = plan.settings.sweep_nights
    # What an operator reads first: how much of the window is reconciled, and what was missing.
    metadata: dict[str, Any] = {
        "coverage": _coverage_text(cov, night.first, night.last, nights, night.quota),
        "coverage_percent": cov.percent,
        "overdue": len(cov.overdue),
        "nights_to_cover": cov.nights_to_cover,
        "instances_missed": totals.lacked,
        "moved": totals.moved,
        "failed": totals.failed,
        "deferred": totals.deferred,
        "window": f"{night.first}..{night.last}",
        "studies_listed": night.listed,
        "studies_in_window": len(night.window),
        "studies_on_days_not_backed_up": night.listed - len(night.window),
        "studies_visibly_lacking": len(night.visibly_changed),
        "studies_checked_tonight": len(night.chosen),
        "studies_reconciled_tonight": totals.reconciled,
        "instances_compared": totals.instances,
        "studies_with_missed_instances": len(totals.missed_studies),
        "nightly_quota": night.quota,
        "reconciled_within_cycle": cov.reconciled_in_cycle,
        "never_reconciled": cov.never,
        "oldest_reconciliation": cov.oldest.isoformat(timespec="seconds") if cov.oldest else "never",
        "least_recently_reconciled": least_recent_table(night),
        "seconds_total": round(seconds, 3),
        "source_peer": str(plan.source.peer),
        "archive_peer": str(plan.archive),
        "state_file": MetadataValue.path(str(night.state_path)),
    }
    if totals.missed_studies:
        metadata["missed_study_uids"] = uids_metadata(totals.missed_studies)
    if totals.failed_uids:
        metadata["failed_uids"] = uids_metadata(totals.failed_uids)
    if totals.errors:
        metadata["errors"] = MetadataValue.json(totals.errors[:5])
    return metadata


def sweep_check_results(
    plan: SweepPlan, night: SweepNight, totals: SweepTotals, cov: Coverage
) -> list[AssetCheckResult]:
    settings, missed = plan.settings, totals.lacked
    return [
        AssetCheckResult(
            check_name=NOTHING_MISSED,
            passed=missed == 0,
            severity=AssetCheckSeverity.WARN,
            description=(
                f"found {missed} instances the nightly runs had missed, in {len(totals.missed_studies)} "
                f"studies: {totals.moved} now archived, {totals.deferred} deferred to the next sweep"
                if missed
                else f"no instance missing on the archive among {totals.instances} instances of "
                f"{len(night.chosen)} studies reconciled tonight"
            ),
            metadata={
                "instances_missed": missed,
                "moved": totals.moved,
                "deferred": totals.deferred,
                "studies_checked_tonight": len(night.chosen),
            },
        ),
        AssetCheckResult(
            check_name=SWEEP_COVERAGE,
            passed=not cov.overdue,
            severity=AssetCheckSeverity.WARN,
            description=_coverage_text(cov, night.first, night.last, settings.sweep_nights, night.quota)
            + (
                f"; raise sweep_max_studies ({settings.sweep_max_studies}) or sweep_nights"
                if cov.overdue and night.quota >= settings.sweep_max_studies
                else ""
            ),
            metadata={
                "coverage_percent": cov.percent,
                "overdue": len(cov.overdue),
                "overdue_study_uids": uids_metadata(cov.overdue),
                "nights_to_cover": cov.nights_to_cover,
            },
        ),
    ]


# ------------------------------------------------------------------------------------------------------
# The wiring


def build_source_sweep(
    env: EnvironmentConfig,
    source: QRSource,
    *,
    retry_policy: RetryChoice = FROM_SETTINGS,
    multi_site: bool = False,
) -> Definitions:
    """`<source>/reconciled`, its checks, `<source>_reconciliation_sweep` and its schedule."""
    plan = SweepPlan.of(env, source, multi_site=multi_site)
    names, settings = plan.names, env.settings
    policy = resolve_retry_policy(retry_policy, settings)

    @asset(
        key=names.reconciled,
        pool=names.pool,
        retry_policy=policy,
        group_name=names.group,
        kinds={"dicom", "orthanc"},
        check_specs=sweep_check_specs(plan),
        description=sweep_description(plan),
    )
    @explain_failures(policy)
    @with_dimse_metadata
    def reconciled(
        context: AssetExecutionContext,
        config: SweepConfig,
        dicom: DicomNetwork,
        backup_storage: BackupStorage,
    ) -> MaterializeResult:
        return materialize_reconciled(context, plan, config, dicom, backup_storage)

    job = define_asset_job(
        names.sweep_job,
        selection=AssetSelection.assets(names.reconciled),
        description=(
            f"Reconcile a slice of {source.alias}'s older studies with {plan.archive_alias} and archive "
            "whatever is missing (runs nightly after the backups; launch it by hand any time)."
        ),
        # Not the source's tag: a sweep is not a nightly backup, and the exporter's per-source run figures
        # (last success, DicomBackupNoRecentSuccess) must not count a successful sweep as one. Failure
        # alerts still name the source, from the run's selected asset.
        tags={KIND_TAG: "sweep"},
        executor_def=None if settings.executor == "celery" else in_process_executor,
    )
    schedule = ScheduleDefinition(
        name=names.sweep_schedule,
        job=job,
        cron_schedule=settings.sweep_schedule,
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.STOPPED,
        description=(
            f"Nightly reconciliation sweep of {source.alias} ({settings.sweep_schedule}, "
            f"{settings.timezone})."
        ),
    )
    return Definitions(assets=[reconciled], jobs=[job], schedules=[schedule])


def build_sweep_defs(
    env: EnvironmentConfig, *, retry_policy: RetryChoice = FROM_SETTINGS, multi_site: bool = False
) -> Definitions:
    """A sweep per ARIA/MIM source of `env` (none when settings.sweep_days is 0)."""
    if env.settings.sweep_days == 0:
        return Definitions()
    return Definitions.merge(
        *(
            build_source_sweep(env, s, retry_policy=retry_policy, multi_site=multi_site)
            for s in env.qr_sources.values()
        )
    )
