"""On-demand backup of given studies of every ARIA/MIM source: `<source>/on_demand`, job
`<source>_backup_studies`.

A physicist who wants a plan in the archive now launches the job from the Launchpad with the Study
Instance UIDs. The run does what the nightly `inventory` and `archived` steps and their checks do, for
just those studies: C-FIND STUDY -> IMAGE at the source (backup/on_demand.py), the nightly transfer
(`archive_from_source`: plan against the main archive, C-MOVE or C-GET + C-STORE, confirmation by
C-FIND), then presence of every instance on main (C-FIND) and the content digest of every instance,
retrieved by C-GET from the source and from main (backup/verify.py).

The nightly run of the studies' day moves none of them again: its plan asks main which instances it holds,
and they are there. Each day's partition of `<source>/archived` gets an observation saying how many of its
instances an on-demand run archived and verified (UIDs and counts only, no patient data).

Unlike the nightly steps, an on-demand run does not wait for the source's bulk_hours (it is a few
studies, asked for now); it holds the source's pool like every other step and moves at most
max_uids_per_run instances (the rest deferred: launch it again).

No `from __future__ import annotations`: Dagster 1.13 validates `context` annotations by identity.
"""

import time
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetObservation,
    AssetSelection,
    Config,
    DailyPartitionsDefinition,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    define_asset_job,
    in_process_executor,
)
from pydantic import Field

from dicom_backup_dagster.backup.archive import ArchivePhaseError, ArchiveResult
from dicom_backup_dagster.backup.hours import WorkWindow
from dicom_backup_dagster.backup.inventory import ArchiveLookup
from dicom_backup_dagster.backup.manifest import DEFERRED, MOVED, InstanceEntry, read_manifest
from dicom_backup_dagster.backup.on_demand import (
    RequestedInventory,
    StudyListError,
    inventory_requested,
    validate_study_uids,
)
from dicom_backup_dagster.backup.partitions import RunDays, iso_date
from dicom_backup_dagster.backup.verify import (
    ContentResult,
    PresenceResult,
    check_presence,
    sample,
    verify_content,
)
from dicom_backup_dagster.config import EnvironmentConfig, QRSource
from dicom_backup_dagster.defs.common import (
    FROM_SETTINGS,
    RetryChoice,
    backup_failure,
    daily_partitions,
    explain_failures,
    find_session,
    resolve_retry_policy,
    uids_metadata,
)
from dicom_backup_dagster.defs.keys import KIND_TAG
from dicom_backup_dagster.defs.qr_backup import (
    QRPlan,
    archive_from_source,
    failure_metadata,
    transfer_failure,
)
from dicom_backup_dagster.defs.resources import BackupStorage, DicomNetwork
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.monitoring.dimse import with_dimse_metadata

EXAMPLE_UID = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"


class StudiesConfig(Config):
    """Run configuration of `<source>_backup_studies`."""

    study_uids: list[str] = Field(
        description=(
            "Study Instance UIDs (0020,000D) to back up now, e.g. the planning study of a plan: "
            f"['{EXAMPLE_UID}']"
        )
    )


def on_demand_description(plan: QRPlan) -> str:
    return (
        f"Back up the given studies of {plan.alias} ({plan.what}) into {plan.archive_alias} now, with the "
        "nightly transfer and verification: C-FIND at the source, what main lacks moved, then every "
        "instance found on main by C-FIND and its content digest compared with the source's. The nightly "
        "run of the studies' day then finds them already archived."
    )


def materialize_on_demand(
    context: AssetExecutionContext,
    plan: QRPlan,
    config: StudiesConfig,
    dicom: DicomNetwork,
    storage: BackupStorage,
) -> MaterializeResult:
    """Inventory, archive and verify the studies of `config`; Failure naming every study or instance
    that is not on main and verified."""
    alias, source = plan.alias, plan.source
    try:
        uids = validate_study_uids(config.study_uids)
    except StudyListError as error:
        raise Failure(description=f"{alias} on-demand backup: {error}", allow_retries=False) from None
    what = f"on-demand ({len(uids)} {'study' if len(uids) == 1 else 'studies'})"
    folder = storage.partition_dir(context.instance, alias, f"on-demand/{context.run.run_id}")
    started = time.monotonic()
    try:
        with find_session(source.peer, dicom) as session:
            requested = inventory_requested(
                session,
                uids,
                folder / "inventory.jsonl",
                query_keys=source.query_keys,
                by_study=source.inventory == "by-study",
                cap=source.max_find_results,
            )
    except DicomError as error:
        raise backup_failure(alias, "inventory (C-FIND)", what, error) from error
    context.log.info(
        f"{alias} {what}: {len(requested.found)} found at {source.peer}, {len(requested.unknown)} unknown; "
        f"{requested.summary.series} series, {requested.summary.instances} instances"
    )
    problems = [unknown_text(plan, requested.unknown)] if requested.unknown else []
    metadata = request_metadata(uids, requested)
    if requested.found:
        result = archive_studies(context, plan, dicom, storage, folder, what)
        entries = list(read_manifest(folder / "archived.jsonl"))
        presence, content = verify_on_main(context, plan, dicom, storage, entries, what)
        metadata |= verified_metadata(plan, result, presence, content, folder / "archived.jsonl")
        problems += verification_problems(plan, result, presence, content)
        record_on_days(context, plan, entries, content)
    metadata["seconds_total"] = round(time.monotonic() - started, 3)
    if problems:
        raise Failure(
            description=f"{alias} on-demand backup: " + " ".join(problems),
            metadata=metadata,
            allow_retries=False,
        )
    context.log.info(
        f"{alias} {what}: {metadata['instances']} instances on {plan.archive} and verified "
        f"({metadata['moved']} moved, {metadata['already_archived']} already there)"
    )
    return MaterializeResult(metadata=metadata)


def unknown_text(plan: QRPlan, unknown: tuple[str, ...]) -> str:
    keys = plan.source.query_keys
    return (
        f"{len(unknown)} of the requested studies unknown at {plan.source.peer}: a STUDY-level C-FIND "
        "for StudyInstanceUID "
        f"{', '.join(unknown[:10])} found no study"
        + (f" matching the source's query_keys {dict(keys)}" if keys else "")
        + ". Nothing was done for them: check the UID (copy it from the study's DICOM header or "
        f"{plan.alias}'s study list), and if the study is on another source launch that source's "
        "<SOURCE>_backup_studies job."
    )


def archive_studies(
    context: AssetExecutionContext,
    plan: QRPlan,
    dicom: DicomNetwork,
    storage: BackupStorage,
    folder: Path,
    what: str,
) -> ArchiveResult:
    """The nightly chain over the requested inventory (no bulk_hours pause); Failure when an instance is
    not on main after it, naming the peer and its status like the nightly step."""
    try:
        result = archive_from_source(
            context,
            plan.source,
            plan.archive,
            dicom,
            storage,
            folder / "inventory.jsonl",
            folder,
            uid_limit=plan.settings.max_uids_per_run,
            spool_purpose="on-demand",
            window=WorkWindow(),  # always open: the operator asked for it now
        )
    except ArchivePhaseError as failed:
        raise backup_failure(plan.alias, failed.phase, what, failed.error) from failed
    if result.final.failed:
        counts = failure_metadata(plan, RunDays((what,)), result, folder / "archived.jsonl")
        raise transfer_failure(plan, what, result, counts, dicom)
    return result


def verify_on_main(
    context: AssetExecutionContext,
    plan: QRPlan,
    dicom: DicomNetwork,
    storage: BackupStorage,
    entries: list[InstanceEntry],
    what: str,
) -> tuple[PresenceResult, ContentResult]:
    """complete_in_archive and content_verified of the nightly checks, for every instance of the studies."""
    try:
        with find_session(plan.archive, dicom) as main:
            lookup = ArchiveLookup(main, (e for e in entries if e.state != DEFERRED))
            presence = check_presence(entries, lookup, recheck=lookup.refresh)
    except DicomError as error:
        raise backup_failure(plan.alias, "presence on the archive (C-FIND)", what, error) from error
    try:
        content = verify_content(
            sample(entries, 1.0),  # every instance: a handful of studies, and the operator wants certainty
            source=plan.source.peer,
            archive=plan.archive,
            calling_aet=dicom.calling_aet,
            timeouts=dicom.timeouts,
            spool_dir=storage.spool_dir(context.instance, plan.alias, context.run.run_id, "verify"),
        )
    except DicomError as error:
        raise backup_failure(
            plan.alias, "content verification (C-GET from source and archive)", what, error
        ) from error
    return presence, content


def request_metadata(uids: tuple[str, ...], requested: RequestedInventory) -> dict[str, Any]:
    summary = requested.summary
    return {
        "studies": len(requested.found),
        "series": summary.series,
        "instances": summary.instances,
        "already_archived": 0,
        "moved": 0,
        "verified": 0,
        "studies_requested": len(uids),
        "studies_unknown": len(requested.unknown),
        "study_uids": uids_metadata(list(uids)),
        "unknown_study_uids": uids_metadata(list(requested.unknown)),
    }


def verified_metadata(
    plan: QRPlan, result: ArchiveResult, presence: PresenceResult, content: ContentResult, manifest: Path
) -> dict[str, Any]:
    """The counts of the transfer and of both verifications (UIDs only: no patient data)."""
    metadata: dict[str, Any] = {
        "already_archived": result.plan.already_archived,
        "moved": result.final.moved,
        "verified": content.matched,
        "deferred": result.plan.deferred,
        "present_on_archive": presence.present,
        "missing_uids": uids_metadata(presence.missing_uids),
        "mismatched_uids": uids_metadata(content.mismatched_uids),
        "missing_on_source_uids": uids_metadata(content.missing_on_source),
        "requests": result.outcome.requests,
        "transfer": plan.source.transfer,
        "source_peer": str(plan.source.peer),
        "archive_peer": str(plan.archive),
        "manifest": MetadataValue.path(str(manifest)),
    }
    if content.errors:
        metadata["errors"] = MetadataValue.json(content.errors[:5])
    return metadata


def verification_problems(
    plan: QRPlan, result: ArchiveResult, presence: PresenceResult, content: ContentResult
) -> list[str]:
    """What keeps the studies from being archived and verified now, each with what to do."""
    problems: list[str] = []
    if result.plan.deferred:
        problems.append(
            f"{result.plan.deferred} instances deferred by max_uids_per_run "
            f"({plan.settings.max_uids_per_run}): launch {plan.names.studies_job} again with the same "
            "study_uids (what is on the archive now is not moved again)."
        )
    if presence.missing:
        problems.append(
            f"{presence.missing} of {presence.expected} instances are not on {plan.archive} (IMAGE-level "
            f"C-FIND): {', '.join(presence.missing_uids[:5])}."
        )
    if not content.passed:
        bad = content.mismatched_uids or content.missing_on_archive or content.missing_on_source
        problems.append(
            f"content digests (C-GET from {plan.source.peer} and from {plan.archive}): "
            f"{len(content.mismatched_uids)} differ, {len(content.missing_on_archive)} not retrieved from "
            f"the archive, {len(content.missing_on_source)} not retrieved from the source; first: "
            f"{', '.join(bad[:5])}" + (f"; {content.errors[0]}" if content.errors else "") + "."
        )
    return problems


def record_on_days(
    context: AssetExecutionContext, plan: QRPlan, entries: list[InstanceEntry], content: ContentResult
) -> None:
    """An observation on each study day's `<source>/archived` partition: how many of its instances this
    run archived and verified (the nightly run of the day counts them as already archived)."""
    bad = {*content.mismatched_uids, *content.missing_on_archive, *content.missing_on_source}
    days: dict[str, list[InstanceEntry]] = {}
    for entry in entries:
        day = iso_date(entry.study_date)
        if entry.state != DEFERRED and entry.sop_instance_uid not in bad and day is not None:
            days.setdefault(day, []).append(entry)
    for day, group in sorted(days.items()):
        if not plan.partitions_def.has_partition_key(day):
            continue  # today, or before first_day: no partition to note it on
        context.log_event(
            AssetObservation(
                asset_key=plan.names.archived,
                partition=day,
                metadata={
                    "on_demand_studies": len({e.study_instance_uid for e in group}),
                    "on_demand_instances": len(group),
                    "on_demand_moved": sum(1 for e in group if e.state == MOVED),
                    "on_demand_job": plan.names.studies_job,
                },
            )
        )


# ------------------------------------------------------------------------------------------------------
# The wiring


def build_source_on_demand(
    env: EnvironmentConfig,
    source: QRSource,
    partitions_def: DailyPartitionsDefinition,
    *,
    retry_policy: RetryChoice = FROM_SETTINGS,
    multi_site: bool = False,
) -> Definitions:
    """`<source>/on_demand` and the job `<source>_backup_studies` that the Launchpad runs."""
    plan = QRPlan.of(env, source, partitions_def, multi_site=multi_site)
    names = plan.names
    policy = resolve_retry_policy(retry_policy, env.settings)

    @asset(
        key=names.on_demand,
        pool=names.pool,
        retry_policy=policy,
        group_name=names.group,
        kinds={"dicom", "orthanc"},
        description=on_demand_description(plan),
    )
    @explain_failures(policy)
    @with_dimse_metadata
    def on_demand(
        context: AssetExecutionContext,
        config: StudiesConfig,
        dicom: DicomNetwork,
        backup_storage: BackupStorage,
    ) -> MaterializeResult:
        return materialize_on_demand(context, plan, config, dicom, backup_storage)

    job = define_asset_job(
        names.studies_job,
        selection=AssetSelection.assets(names.on_demand),
        description=(
            f"Back up given studies of {source.alias} into {plan.archive_alias} now and verify every "
            f"instance (Launchpad: ops: {names.on_demand.to_python_identifier()}: config: study_uids: [...])."
        ),
        # Not the source's tag: the exporter's per-source run figures (last success, last run failed) are
        # the backups', and a mistyped UID must not fire DicomBackupFailed nor a success mask a failed night.
        tags={KIND_TAG: "on_demand_backup"},
        executor_def=None if env.settings.executor == "celery" else in_process_executor,
    )
    return Definitions(assets=[on_demand], jobs=[job])


def build_on_demand_defs(
    env: EnvironmentConfig,
    *,
    start_date: str | None = None,
    retry_policy: RetryChoice = FROM_SETTINGS,
    multi_site: bool = False,
) -> Definitions:
    """The on-demand backup of every ARIA/MIM source of `env`."""
    partitions_def = daily_partitions(env, start_date)
    return Definitions.merge(
        *(
            build_source_on_demand(
                env, source, partitions_def, retry_policy=retry_policy, multi_site=multi_site
            )
            for source in env.qr_sources.values()
        )
    )
