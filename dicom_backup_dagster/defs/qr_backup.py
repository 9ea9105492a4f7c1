"""ARIA and MIM backups: daily-partitioned assets, verification checks, one job and schedule per source.

For every Query/Retrieve source (type aria or mim) of the selected environment, `build_qr_backup_defs`
makes:

- `<source>/inventory`: every instance the source holds for StudyDates in [day - lookback_days, day]
  (C-FIND STUDY -> SERIES -> IMAGE). Value: a handle on the inventory manifest.
- `<source>/archived`: the inventory minus what is already on the main archive, transferred (C-MOVE
  source -> archive, or C-GET + C-STORE for a MIM source with transfer = "c-get"), at most
  max_uids_per_run instances oldest first (the rest reported as deferred), then confirmed instance by
  instance on the archive. Value: a handle on the archived manifest.
- checks on `<source>/archived`: complete_in_archive (blocking), content_verified, volume_vs_baseline,
  duration_vs_baseline.
- job `<source>_backup` (one run per partition in a backfill), schedule `<source>_backup_schedule`
  (settings.schedule in settings.timezone, each tick backs up the previous day).

Concurrency: every step that talks to a source runs in the Dagster pool `dicom_<source AET>`; set its limit
to the source's max_associations (`dagster instance concurrency set dicom_ARIA_SIM 2`, or the UI; unset
pools get dagster.yaml's `concurrency.pools.default_limit`). Each such step holds one association to the
source at a time. Runs execute in one process (in_process_executor): parallelism comes from concurrent
runs. Manifests live on disk (BackupStorage), never in run metadata, and metadata carries counts, seconds
and UIDs only: no patient data.
"""

# No `from __future__ import annotations` here: Dagster 1.13 validates the `context` annotation of assets
# and checks by identity, and a string annotation fails that check.
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetExecutionContext,
    BackfillPolicy,
    DailyPartitionsDefinition,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset_check,
)

from dicom_backup_dagster.backup import baseline
from dicom_backup_dagster.backup.archive import ArchivePhaseError, ArchiveResult, archive_missing
from dicom_backup_dagster.backup.hours import WorkWindow
from dicom_backup_dagster.backup.inventory import InventorySummary, split_query_keys, take_inventory
from dicom_backup_dagster.backup.late import LateScan, find_late_studies
from dicom_backup_dagster.backup.manifest import (
    ALREADY_ARCHIVED,
    DEFERRED,
    FAILED,
    FOUND,
    MOVED,
    InstanceEntry,
    ManifestHandle,
    read_manifest,
)
from dicom_backup_dagster.backup.partitions import RunDays, counts_by_partition
from dicom_backup_dagster.backup.verify import (
    ContentResult,
    read_verified_sample,
    record_verified_sample,
    sample,
    split_reusable,
    verify_content,
)
from dicom_backup_dagster.config import EnvironmentConfig, QRSource, Settings
from dicom_backup_dagster.defs.checks import (
    baseline_checks,
    check_op_name,
    day_check_spec,
    entries_by_day,
    label_days,
    latest_metadata_value,
    log_day_results,
    not_run_hook,
    nothing_to_verify,
    peer_unreachable_result,
    presence_results,
)
from dicom_backup_dagster.defs.common import (
    DEFAULT_RULES,
    FROM_SETTINGS,
    RetryChoice,
    backup_failure,
    check_partitions,
    daily_partitions,
    day_first_metadata,
    explain_destination,
    explain_failures,
    find_session,
    is_backfill_run,
    resolve_retry_policy,
    uids_metadata,
)
from dicom_backup_dagster.defs.hours import between_requests, wait_for_window
from dicom_backup_dagster.defs.keys import SourceNames, pool_id
from dicom_backup_dagster.defs.manifests import load_handle
from dicom_backup_dagster.defs.resources import BackupStorage, DicomNetwork
from dicom_backup_dagster.defs.schedules import backup_job_and_schedule
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.monitoring.dimse import with_dimse_metadata

QR_CHECKS = ("complete_in_archive", "content_verified", "volume_vs_baseline", "duration_vs_baseline")

INVENTORY_HANDLE = "inventory.handle.json"


@dataclass(frozen=True)
class QRPlan:
    """What the assets and checks of one ARIA/MIM source need, fixed when the definitions load."""

    names: SourceNames
    source: QRSource
    settings: Settings
    archive: Peer  # the main archive
    archive_alias: str
    partitions_def: DailyPartitionsDefinition
    window: WorkWindow  # the source's bulk_hours

    @classmethod
    def of(
        cls,
        env: EnvironmentConfig,
        source: QRSource,
        partitions_def: DailyPartitionsDefinition,
        *,
        multi_site: bool = False,
    ) -> "QRPlan":
        pool = pool_id(source.aet, source.ip, source.port, multi_site=multi_site)
        return cls(
            names=SourceNames(source.alias, pool),
            source=source,
            settings=env.settings,
            archive=env.main_target.peer,
            archive_alias=env.main_target.alias,
            partitions_def=partitions_def,
            window=source.bulk_window(env.settings.timezone),
        )

    @property
    def alias(self) -> str:
        return self.source.alias

    @property
    def what(self) -> str:
        return f"{self.source.type.upper()} {self.source.peer}"


# ------------------------------------------------------------------------------------------------------
# <source>/inventory


def inventory_description(plan: QRPlan) -> str:
    settings = plan.settings
    return (
        f"Every instance {plan.alias} ({plan.what}) holds for the partition's StudyDate and the "
        f"{settings.lookback_days} days before it, found by C-FIND STUDY -> SERIES -> IMAGE, and the "
        f"older studies (dated up to {settings.late_series_days} days before, or with a series dated "
        "in the window on a relational source) that hold data the archive lacks. A backfill run covers "
        f"up to {settings.backfill_days_per_run} days in one C-FIND, without the look-back. The "
        "manifest of instance UIDs is on disk."
    )


def materialize_inventory(
    context: AssetExecutionContext, plan: QRPlan, dicom: DicomNetwork, storage: BackupStorage
) -> MaterializeResult:
    """C-FIND the run's days (and the late studies) into inventory.jsonl, and its handle beside it."""
    alias, source = plan.alias, plan.source
    wait_for_window(context, alias, plan.window)  # backfills and manual runs: only in bulk_hours
    days = RunDays(tuple(context.partition_keys))
    backfill = is_backfill_run(context)
    first, last = days.study_dates(0 if backfill else plan.settings.lookback_days)
    folder = storage.partition_dir(context.instance, alias, days.label)
    path = folder / "inventory.jsonl"
    late = LateScan(0, (), "not run (backfill run)", 0)
    try:
        with find_session(source.peer, dicom) as session:
            if not backfill:
                late = late_scan(context, plan, session, first, last, dicom)
            summary = take_inventory(
                session,
                first,
                last,
                path,
                query_keys=source.query_keys,
                by_study=source.inventory == "by-study",
                extra_studies=late.changed,
                max_find_results=source.max_find_results,
            )
    except DicomError as error:
        raise backup_failure(alias, "inventory (C-FIND)", days.label, error) from error
    context.log.info(
        f"{alias} {days.label}: {summary.studies} studies, {summary.series} series, "
        f"{summary.instances} instances dated {first}..{last} or on older studies with new data "
        f"({len(late.changed)} of {late.studies_checked} older studies compared, {summary.seconds:.2f} s)"
    )
    for line in summary.find_splits:  # an answer at the source's C-FIND cap (dates and times only)
        context.log.warning(f"{alias} {days.label}: C-FIND answer at the cap: {line}")
    found = {FOUND: summary.instances}
    ManifestHandle(str(path), alias, days.label, summary.instances, found, summary.seconds).save(
        folder / INVENTORY_HANDLE
    )
    per_day = {
        day: {"instances": counts.found, "instances_dated": counts.dated}
        for day, counts in counts_by_partition(read_manifest(path), days).items()
    }
    run_figures, details = inventory_metadata(plan, summary, late, (first, last), path)
    return MaterializeResult(metadata=day_first_metadata(context, days, per_day, run_figures, details))


def inventory_metadata(
    plan: QRPlan,
    summary: InventorySummary,
    late: LateScan,
    dates: tuple[dt.date, dt.date],
    path: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the run's figures, the details) of an inventory; the day's counts come from its manifest."""
    splits = list(summary.find_splits)
    first, last = dates
    figures = {
        "seconds_find": round(summary.seconds, 3),
        "studies": summary.studies,  # a study is not split across the days of a ranged run
        "series": summary.series,
        # studies listed series by series: all of them with inventory = "walk", else those whose
        # one-query answer was refused, empty or short (a source that rejects universal series keys)
        "studies_walked": summary.studies_walked,
        # listing parts that reached the source's max_find_results and were split (listing.py)
        "find_queries": summary.find_queries,
        # Older studies with data the archive lacks, inventoried with the window (backup/late.py).
        "late_studies": len(late.changed),
        "late_studies_compared": late.studies_checked,
    }
    details = {
        "study_dates": f"{first:%Y%m%d}-{last:%Y%m%d}",
        "find_splits": MetadataValue.json(splits) if splits else "none",
        "late_compared_by": late.compared_by,
        "source_peer": str(plan.source.peer),
        "manifest": MetadataValue.path(str(path)),
    }
    return figures, details


def late_scan(
    context: AssetExecutionContext,
    plan: QRPlan,
    session: FindSession,
    first: dt.date,
    last: dt.date,
    dicom: DicomNetwork,
) -> LateScan:
    """Older studies that grew since they were archived (backup/late.py); the archive is asked too."""
    study_keys, series_keys, _ = split_query_keys(plan.source.query_keys)
    try:
        with find_session(plan.archive, dicom) as main:
            return find_late_studies(
                session,
                main,
                first,
                last,
                plan.settings.late_series_days,
                relational=plan.source.relational,
                backed_up_days=context.instance.get_materialized_partitions(plan.names.archived),
                study_keys=study_keys,
                series_keys=series_keys,
            )
    except DicomError as error:
        raise backup_failure(
            plan.alias, "late-data scan (C-FIND on source and archive)", context.partition_key, error
        ) from error


# ------------------------------------------------------------------------------------------------------
# <source>/archived


def archived_description(plan: QRPlan) -> str:
    source, destination = plan.source, plan.archive.aet
    how = (
        f"by C-MOVE from {source.alias} to {destination}"
        if source.transfer == "c-move"
        else f"by C-GET from {source.alias} into a spool and C-STORE to {destination}"
    )
    return (
        f"The inventory minus what {plan.archive_alias} already holds, copied there {how}, at most "
        f"{plan.settings.max_uids_per_run} instances per run and day it covers, oldest first "
        "(the rest deferred to the next run), then confirmed instance by instance on the archive by "
        "C-FIND."
    )


def materialize_archived(
    context: AssetExecutionContext, plan: QRPlan, dicom: DicomNetwork, storage: BackupStorage
) -> MaterializeResult:
    """Transfer what the archive lacks of the run's inventory, confirm it, write archived.jsonl."""
    alias, max_uids = plan.alias, plan.settings.max_uids_per_run
    wait_for_window(context, alias, plan.window)
    days = RunDays(tuple(context.partition_keys))
    partition = days.label
    folder = storage.partition_dir(context.instance, alias, partition)
    inventory = load_handle(folder / INVENTORY_HANDLE, plan.names, plan.names.inventory, partition)
    try:
        result = archive_from_source(
            context,
            plan.source,
            plan.archive,
            dicom,
            storage,
            Path(inventory.path),
            folder,
            uid_limit=days.uid_limit(max_uids),
            spool_purpose="transfer",
            window=plan.window,
        )
    except ArchivePhaseError as failed:
        raise backup_failure(alias, failed.phase, partition, failed.error) from failed
    plan_, outcome, final = result.plan, result.outcome, result.final
    context.log.info(
        f"{alias} {partition}: {plan_.found} found, {plan_.already_archived} already archived, "
        f"{plan_.pending} to transfer, {plan_.deferred} deferred (max_uids_per_run "
        f"{max_uids} per day: {days.uid_limit(max_uids)} for this run)"
    )
    for error in outcome.errors:
        context.log.warning(f"{alias} {partition}: {error}")
    if final.failed:
        counts = failure_metadata(plan, days, result, folder / "archived.jsonl")
        raise transfer_failure(plan, partition, result, counts, dicom)
    context.log.info(
        f"{alias} {partition}: moved {final.moved} in {result.seconds_transfer:.2f} s, "
        f"{plan_.deferred} deferred"
    )
    per_day = day_counts(days, folder / "archived.jsonl")
    run_figures, details = archived_metadata(plan, inventory, result, folder / "archived.jsonl")
    return MaterializeResult(metadata=day_first_metadata(context, days, per_day, run_figures, details))


def archived_metadata(
    plan: QRPlan, inventory: ManifestHandle, result: ArchiveResult, out_path: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the run's figures, the details) of a transfer. seconds_total is what duration_vs_baseline judges
    (a ranged run records it as run_seconds_total: not one day's duration)."""
    outcome, final = result.outcome, result.final
    seconds_transfer = result.seconds_transfer
    figures: dict[str, Any] = {
        "seconds_total": round(
            inventory.seconds + result.seconds_plan + seconds_transfer + result.seconds_confirm, 3
        ),
        "requests": outcome.requests,
        "associations": outcome.associations,
        "sub_operations_completed": outcome.completed,
        "seconds_find": round(inventory.seconds, 3),
        "seconds_plan": round(result.seconds_plan, 3),
        "seconds_transfer": round(seconds_transfer, 3),
        "seconds_retrieve": round(outcome.retrieve_seconds, 3),
        "seconds_store": round(outcome.store_seconds, 3),
        "seconds_confirm": round(result.seconds_confirm, 3),
        "instances_per_second": round(final.moved / seconds_transfer, 1) if seconds_transfer > 0 else 0.0,
    }
    if outcome.bytes is not None:
        figures["bytes"] = outcome.bytes
    details: dict[str, Any] = {
        "transfer": plan.source.transfer,
        "source_peer": str(plan.source.peer),
        "archive_peer": str(plan.archive),
        "manifest": MetadataValue.path(str(out_path)),
    }
    if final.failed_uids:
        details["failed_uids"] = uids_metadata(final.failed_uids)
    if outcome.errors:
        details["errors"] = MetadataValue.json([str(e) for e in outcome.errors[:5]])
    return figures, details


def failure_metadata(plan: QRPlan, days: RunDays, result: ArchiveResult, out_path: Path) -> dict[str, Any]:
    """What a failed transfer's Failure carries: the run's counts (no materialization records days)."""
    planned, final = result.plan, result.final
    counts = {
        "instances_found": planned.found,
        "already_archived": planned.already_archived,
        "moved": final.moved,
        "failed": final.failed,
        "deferred": planned.deferred,
        "run_partitions": days.label,
    }
    details: dict[str, Any] = {"source_peer": str(plan.source.peer), "archive_peer": str(plan.archive)}
    if final.failed_uids:
        details["failed_uids"] = uids_metadata(final.failed_uids)
    return {**counts, **details, "manifest": MetadataValue.path(str(out_path))}


def transfer_failure(
    plan: QRPlan, partition: str, result: ArchiveResult, metadata: dict[str, Any], dicom: DicomNetwork
) -> Failure:
    """Instances not on the archive after the transfer: the peer's error if there was one (a C-MOVE's
    saying so when the archive, its destination, is unreachable), else the missing UIDs (the source
    reported success)."""
    outcome, final, pending = result.outcome, result.final, result.plan.pending
    error = outcome.fatal or (outcome.errors[0] if outcome.errors else None)
    if error is not None:
        return backup_failure(
            plan.alias,
            f"transfer ({final.failed} of {pending} instances not on the archive)",
            partition,
            explain_destination(error, plan.archive, dicom),
            metadata,
        )
    return Failure(
        description=(
            f"{plan.alias} backup of partition {partition}: {final.failed} of {pending} "
            f"instances are not on {plan.archive} although {plan.source.peer} reported success; first: "
            f"{', '.join(final.failed_uids[:5])}"
        ),
        metadata=metadata,
    )


def day_counts(days: RunDays, manifest: Path) -> dict[str, dict[str, Any]]:
    """Each day's own counts (a ranged run covers several days; each instance counts for one)."""
    return {
        day: {
            "instances_found": counts.found,
            "instances_dated": counts.dated,
            "already_archived": counts.states[ALREADY_ARCHIVED],
            "moved": counts.states[MOVED],
            "deferred": counts.states[DEFERRED],
            "failed": counts.states[FAILED],
        }
        for day, counts in counts_by_partition(read_manifest(manifest), days).items()
    }


def archive_from_source(
    context: AssetExecutionContext,
    source: QRSource,
    archive: Peer,
    dicom: DicomNetwork,
    backup_storage: BackupStorage,
    inventory_path: Path,
    folder: Path,
    *,
    uid_limit: int,
    spool_purpose: str,
    window: WorkWindow,
) -> ArchiveResult:
    """backup.archive.archive_missing for a Q/R source's inventory, with the source's transfer settings and
    its bulk_hours pause between requests (the nightly `archived` step and the sweep)."""
    return archive_missing(
        inventory_path,
        folder,
        archive_session=lambda: find_session(archive, dicom),
        source=source.peer,
        archive=archive,
        calling_aet=dicom.calling_aet,
        timeouts=dicom.timeouts,
        mode=source.transfer,
        level=source.query_level,
        uid_limit=uid_limit,
        spool_dir=backup_storage.spool_dir(context.instance, source.alias, context.run.run_id, spool_purpose),
        between_requests=between_requests(context, source.alias, window),
    )


# ------------------------------------------------------------------------------------------------------
# Checks on <source>/archived


def archived_by_day(
    context: AssetCheckExecutionContext, plan: QRPlan, storage: BackupStorage
) -> tuple[list[str], dict[str, list[InstanceEntry]] | None]:
    """The days the check judges and each day's entries of the run's archived manifest (None: no
    manifest). A check executed on its own judges the latest materialized day, in the manifest that
    materialization points at (it may cover a whole backfill range)."""
    key = plan.names.archived
    days = check_partitions(context, key)
    if not days:
        return [], None
    op_context = context.op_execution_context
    if op_context.has_partition_key or op_context.has_partition_key_range:
        path = (
            storage.partition_dir(context.instance, plan.alias, RunDays(tuple(days)).label) / "archived.jsonl"
        )
    else:
        recorded = latest_metadata_value(context.instance, key, days[0], "manifest")
        if not isinstance(recorded, str):
            return days, None
        path = Path(recorded)
    if not path.exists():
        return days, None
    split = entries_by_day(read_manifest(path), label_days(path.parent.name, plan.partitions_def))
    return days, {day: split.get(day, []) for day in days}


def no_manifest(plan: QRPlan, partition: str | None) -> AssetCheckResult:
    return AssetCheckResult(
        passed=False,
        description=f"no archived manifest for partition {partition}: run {plan.names.job} for it first",
        metadata={"partition": str(partition)},
    )


def complete_in_archive_description(plan: QRPlan) -> str:
    return (
        f"Every inventoried instance of the day (except those deferred to the next run) is on "
        f"{plan.archive_alias}, by IMAGE-level C-FIND on {plan.archive}. Fails naming the missing UIDs; "
        "warns when instances were deferred by max_uids_per_run; a day without instances passes."
    )


def evaluate_complete_in_archive(
    context: AssetCheckExecutionContext, plan: QRPlan, dicom: DicomNetwork, storage: BackupStorage
) -> dict[str, AssetCheckResult]:
    days, by_day = archived_by_day(context, plan, storage)
    if by_day is None:
        return {day: no_manifest(plan, day) for day in days}
    return presence_results(
        plan.alias,
        by_day,
        plan.archive,
        dicom,
        deferred_advice=lambda day: (
            f" by max_uids_per_run ({plan.settings.max_uids_per_run}): run {plan.names.job} for {day} again"
        ),
    )


def content_verified_description(plan: QRPlan) -> str:
    fraction, sample = plan.settings.verification_fraction, "one instance per series"
    if fraction >= 1:
        sample = "every instance"
    elif fraction > 0:
        sample = f"{fraction * 100:g}% of each series' instances, rounded up"
    return (
        "Content digest (transfer-syntax independent) of a sample of the day, retrieved by C-GET from "
        f"{plan.alias} and from {plan.archive_alias}, must match. Sample: "
        f"{sample} (verification_fraction {fraction:g})."
    )


def evaluate_content_verified(
    context: AssetCheckExecutionContext, plan: QRPlan, dicom: DicomNetwork, storage: BackupStorage
) -> dict[str, AssetCheckResult]:
    days, by_day = archived_by_day(context, plan, storage)
    if by_day is None:
        return {day: no_manifest(plan, day) for day in days}
    return {day: content_day(context, plan, dicom, storage, day, entries) for day, entries in by_day.items()}


def content_day(
    context: AssetCheckExecutionContext,
    plan: QRPlan,
    dicom: DicomNetwork,
    storage: BackupStorage,
    day: str,
    entries: list[InstanceEntry],
) -> AssetCheckResult:
    if not entries:
        return nothing_to_verify(day)
    chosen = sample(entries, plan.settings.verification_fraction)
    if not chosen:  # every instance of the day deferred or failed: complete_in_archive reports them
        return AssetCheckResult(
            passed=True,
            description=f"no instance of {day} on the archive yet ({len(entries)} found): nothing to verify",
            metadata={"partition": day, "sampled": 0},
        )
    # Sampled instances that were on the archive before this run and found identical by an earlier
    # check of the day are not retrieved again (a re-run of a finished night); what this run moved is.
    day_dir = storage.partition_dir(context.instance, plan.alias, day)
    fresh, reused = split_reusable(chosen, read_verified_sample(day_dir))
    compared = (
        f"content digests of {len(fresh)} sampled instances of {day}: C-GET from {plan.source.peer} vs "
        f"C-GET from {plan.archive}"
        + (f" ({len(reused)} more sampled, verified by an earlier run)" if reused else "")
    )
    try:
        result = (
            verify_content(
                fresh,
                source=plan.source.peer,
                archive=plan.archive,
                calling_aet=dicom.calling_aet,
                timeouts=dicom.timeouts,
                spool_dir=storage.spool_dir(context.instance, plan.alias, context.run.run_id, "verify"),
            )
            if fresh
            else ContentResult()
        )
    except DicomError as error:
        return peer_unreachable_result("retrieve for verification", error, day, compared)
    record_verified_sample(day_dir, (e.sop_instance_uid for e in fresh), result.matched_uids)
    metadata: dict[str, Any] = {
        "partition": day,
        "compared": compared,
        "sampled": len(fresh),  # retrieved and compared by this check
        "verified_earlier": len(reused),
        "verification_fraction": plan.settings.verification_fraction,
        "matched": result.matched,
        "mismatched_uids": uids_metadata(result.mismatched_uids),
        "missing_on_source_uids": uids_metadata(result.missing_on_source),
        "missing_on_archive_uids": uids_metadata(result.missing_on_archive),
    }
    if result.errors:
        metadata["errors"] = MetadataValue.json(result.errors[:5])
    description = content_description(result, len(fresh))
    if reused:
        description += f"; {len(reused)} more sampled instances verified by an earlier run"
    return AssetCheckResult(passed=result.passed, description=f"{day}: {description}", metadata=metadata)


def content_description(result: ContentResult, sampled: int) -> str:
    if result.passed:
        return f"{result.matched} of {sampled} sampled instances identical on source and archive"
    bad = result.mismatched_uids or result.missing_on_archive or result.missing_on_source
    return (
        f"{len(result.mismatched_uids)} differ, {len(result.missing_on_archive)} missing on the "
        f"archive, {len(result.missing_on_source)} missing on the source; first: {', '.join(bad[:5])}"
        + (f"; {result.errors[0]}" if result.errors else "")
    )


# ------------------------------------------------------------------------------------------------------
# The wiring


def qr_checks(plan: QRPlan, partitions_def: DailyPartitionsDefinition) -> list[AssetChecksDefinition]:
    """`complete_in_archive` (blocking) and `content_verified` on archived, per day."""
    names = plan.names
    complete_spec = day_check_spec(
        names.archived,
        "complete_in_archive",
        partitions_def,
        complete_in_archive_description(plan),
        blocking=True,
    )

    @multi_asset_check(
        specs=[complete_spec], can_subset=True, name=check_op_name(names.archived, "complete_in_archive")
    )
    def complete_in_archive(
        context: AssetCheckExecutionContext, dicom: DicomNetwork, backup_storage: BackupStorage
    ) -> Iterator[AssetCheckEvaluation]:
        results = with_dimse_metadata(evaluate_complete_in_archive)(context, plan, dicom, backup_storage)
        yield from log_day_results(context, complete_spec, results)

    content_spec = day_check_spec(
        names.archived, "content_verified", partitions_def, content_verified_description(plan)
    )

    @multi_asset_check(
        specs=[content_spec],
        can_subset=True,
        name=check_op_name(names.archived, "content_verified"),
        pool=names.pool,
    )
    def content_verified(
        context: AssetCheckExecutionContext, dicom: DicomNetwork, backup_storage: BackupStorage
    ) -> Iterator[AssetCheckEvaluation]:
        results = with_dimse_metadata(evaluate_content_verified)(context, plan, dicom, backup_storage)
        yield from log_day_results(context, content_spec, results)

    return [complete_in_archive, content_verified]


def build_source_backup(
    env: EnvironmentConfig,
    source: QRSource,
    partitions_def: DailyPartitionsDefinition,
    *,
    retry_policy: RetryChoice = FROM_SETTINGS,
    rules: baseline.BaselineRules = DEFAULT_RULES,
    multi_site: bool = False,
) -> Definitions:
    """Assets, checks, job and schedule backing up one Q/R source into the environment's main archive."""
    plan = QRPlan.of(env, source, partitions_def, multi_site=multi_site)
    names = plan.names
    check_keys = [AssetCheckKey(names.archived, n) for n in QR_CHECKS]
    policy = resolve_retry_policy(retry_policy, env.settings)
    step: dict[str, Any] = {
        "partitions_def": partitions_def,
        "backfill_policy": BackfillPolicy.multi_run(env.settings.backfill_days_per_run),
        "pool": names.pool,
        "retry_policy": policy,
        "group_name": names.group,
        # checks the failed run planned for days it did not materialize keep their earlier results
        "hooks": {
            not_run_hook(
                f"{names.archived.to_python_identifier()}_checks_not_run", check_keys, partitions_def
            )
        },
    }

    @asset(key=names.inventory, kinds={"dicom"}, description=inventory_description(plan), **step)
    @explain_failures(policy)
    @with_dimse_metadata
    def inventory(
        context: AssetExecutionContext, dicom: DicomNetwork, backup_storage: BackupStorage
    ) -> MaterializeResult:
        return materialize_inventory(context, plan, dicom, backup_storage)

    # The inventory reaches `archived` as a handle file on disk (inventory.handle.json), not through an
    # IO manager: manifests of millions of UIDs stay out of Dagster's storage.
    @asset(
        key=names.archived,
        deps=[names.inventory],
        kinds={"dicom", "orthanc"},
        description=archived_description(plan),
        **step,
    )
    @explain_failures(policy)
    @with_dimse_metadata
    def archived(
        context: AssetExecutionContext, dicom: DicomNetwork, backup_storage: BackupStorage
    ) -> MaterializeResult:
        return materialize_archived(context, plan, dicom, backup_storage)

    baselines = baseline_checks(
        names.archived,
        partitions_def,
        rules,
        volume_key="instances_dated",
        volume_noun="instances dated on the day",
    )
    return Definitions.merge(
        Definitions(
            assets=[inventory, archived], asset_checks=[*qr_checks(plan, partitions_def), *baselines]
        ),
        backup_job_and_schedule(
            names,
            [names.inventory, names.archived],
            (
                f"Back up one day of {source.alias} ({plan.what}) into {plan.archive_alias} and verify it. "
                "Launch it for a date (partition) or backfill a date range."
            ),
            env.settings,
            partitions_def,
        ),
    )


def build_qr_backup_defs(
    env: EnvironmentConfig,
    *,
    start_date: str | dt.date | None = None,
    retry_policy: RetryChoice = FROM_SETTINGS,
    rules: baseline.BaselineRules = DEFAULT_RULES,
    multi_site: bool = False,
) -> Definitions:
    """The backups of every ARIA/MIM source of `env`, partitioned by day in the site's timezone. Their
    resources (`dicom`, `backup_storage`) come from defs/resources.build_resources.

    `rules`: thresholds of volume_vs_baseline and duration_vs_baseline (config.py has no keys for them
    yet; a caller can build them from site settings). `multi_site`: pools named by AE@host:port."""
    partitions_def = daily_partitions(env, start_date)
    return Definitions.merge(
        *(
            build_source_backup(
                env, source, partitions_def, retry_policy=retry_policy, rules=rules, multi_site=multi_site
            )
            for source in env.qr_sources.values()
        )
    )
