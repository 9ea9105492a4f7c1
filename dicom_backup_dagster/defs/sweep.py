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
    RetryPolicy,
    ScheduleDefinition,
    asset,
    define_asset_job,
    in_process_executor,
)
from pydantic import Field

from dicom_backup_dagster.backup.archive import ArchivePhaseError
from dicom_backup_dagster.backup.inventory import inventory_studies, split_query_keys
from dicom_backup_dagster.backup.late import archive_study_counts, lacking_by_counts
from dicom_backup_dagster.backup.manifest import DEFERRED, FAILED, MOVED, read_manifest
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
from dicom_backup_dagster.config import EnvironmentConfig, QRSource
from dicom_backup_dagster.defs.common import (
    DEFAULT_RETRY_POLICY,
    BackupStorage,
    SourceNames,
    backup_failure,
    find_session,
    uids_metadata,
)
from dicom_backup_dagster.defs.hours import wait_for_window
from dicom_backup_dagster.defs.qr_backup import archive_from_source
from dicom_backup_dagster.defs.resources import DicomNetwork
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.monitoring.dimse import with_dimse_metadata

BATCH_STUDIES = 50  # studies per inventory -> archive -> state save round: what an outage can cost
NOTHING_MISSED = "nothing_missed"
SWEEP_COVERAGE = "sweep_coverage"


class SweepConfig(Config):
    """Run configuration of a sweep launched by hand (the schedule needs none)."""

    as_of: str = Field(
        default="",
        description=(
            "Reconcile as if tonight were this date (YYYY-MM-DD): the window is the sweep_days days before "
            "it. Empty: today in the site's timezone."
        ),
    )


def sweep_key(alias: str) -> Any:
    return SourceNames(alias, "").key("reconciled")


def sweep_job_name(alias: str) -> str:
    return f"{alias}_reconciliation_sweep"


def _as_of(config: SweepConfig, now: dt.datetime, env: EnvironmentConfig) -> dt.date:
    if not config.as_of:
        return now.astimezone(env.settings.tzinfo).date()
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


def build_source_sweep(
    env: EnvironmentConfig, source: QRSource, *, retry_policy: RetryPolicy | None = DEFAULT_RETRY_POLICY
) -> Definitions:
    """`<source>/reconciled`, its checks, `<source>_reconciliation_sweep` and its schedule."""
    names = SourceNames(source.alias, source.aet)
    settings = env.settings
    archive = env.main_target.peer
    key = sweep_key(source.alias)
    study_keys = split_query_keys(source.query_keys)[0]
    bulk_window = source.bulk_window(settings.timezone)

    @asset(
        key=key,
        pool=names.pool,
        retry_policy=retry_policy,
        group_name=names.group,
        kinds={"dicom", "orthanc"},
        check_specs=[
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
        ],
        description=(
            f"Reconciliation sweep of {source.alias}: every night, a slice of the studies dated in the last "
            f"{settings.sweep_days} days is re-inventoried down to each instance and compared with "
            f"{env.main_target.alias}, so that every study is reconciled within {settings.sweep_nights} "
            f"nights (at most {settings.sweep_max_studies} studies a night; studies the archive visibly "
            "lacks data of come first). Whatever is missing is archived and reported. At most "
            f"{settings.max_uids_per_run} instances are moved per run."
        ),
    )
    @with_dimse_metadata
    def reconciled(
        context: AssetExecutionContext,
        config: SweepConfig,
        dicom: DicomNetwork,
        backup_storage: BackupStorage,
    ) -> MaterializeResult:
        wait_for_window(context, source.alias, bulk_window)  # a sweep loads the source only in its bulk_hours
        started = time.monotonic()
        now = dt.datetime.now(dt.UTC)
        tonight = _as_of(config, now, env)
        first, last = tonight - dt.timedelta(days=settings.sweep_days), tonight - dt.timedelta(days=1)
        label = f"sweep-{tonight.isoformat()}"
        backed_up = context.instance.get_materialized_partitions(names.archived)
        state_path = backup_storage.root(context.instance) / "sweep" / f"{source.alias}.json"
        state = SweepState.load(state_path, now)

        def failure(phase: str, error: DicomError) -> Failure:
            state.save(state_path)  # what was reconciled before the error counts; the next run goes on
            return backup_failure(source.alias, f"reconciliation sweep, {phase}", label, error)

        try:
            with find_session(source.peer, dicom) as session:
                listed = list_window(session, first, last, extra_keys=study_keys, cap=source.max_find_results)
            window = [s for s in listed if iso_date(s.study_date) in backed_up]
            with find_session(archive, dicom) as main:
                counts = archive_study_counts(main, [s.study_instance_uid for s in window])
        except DicomError as error:
            raise failure("listing the window's studies (C-FIND)", error) from error
        visibly_changed = {s.study_instance_uid for s in lacking_by_counts(window, counts)[0]}
        quota = nightly_quota(len(window), settings.sweep_nights, settings.sweep_max_studies)
        chosen = choose_slice(
            window,
            state,
            quota=quota,
            max_studies=settings.sweep_max_studies,
            visibly_changed=visibly_changed,
        )
        context.log.info(
            f"{source.alias} sweep {first}..{last}: {len(listed)} studies listed, {len(window)} on days "
            f"already backed up, {len(visibly_changed)} visibly lacking data on the archive; reconciling "
            f"{len(chosen)} tonight (quota {quota})"
        )
        budget = settings.max_uids_per_run
        totals = {"instances": 0, "lacked": 0, MOVED: 0, FAILED: 0, DEFERRED: 0, "reconciled": 0}
        missed_studies: list[str] = []
        failed_uids: list[str] = []
        errors: list[str] = []
        for number, batch in enumerate(batches(chosen, BATCH_STUDIES)):
            wait_for_window(context, source.alias, bulk_window)
            folder = backup_storage.partition_dir(
                context.instance, source.alias, f"{label}/{context.run.run_id}/{number:04d}"
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
                    archive,
                    dicom,
                    backup_storage,
                    folder / "inventory.jsonl",
                    folder,
                    uid_limit=budget,
                    spool_purpose=f"sweep-{number:04d}",
                    window=bulk_window,
                )
            except DicomError as error:
                raise failure("inventory (C-FIND)", error) from error
            except ArchivePhaseError as failed:
                raise failure(failed.phase, failed.error) from failed
            budget = max(0, budget - result.plan.pending)
            done, lacking = reconciled_studies(
                read_manifest(folder / "archived.jsonl"), [s.study_instance_uid for s in batch]
            )
            for uid in done:
                state.reconciled[uid] = now
            state.save(state_path)
            missed_studies += [uid for uid in lacking if uid not in missed_studies]
            totals["instances"] += summary.instances
            totals["lacked"] += sum(lacking.values())
            totals["reconciled"] += len(done)
            totals[MOVED] += result.final.moved
            totals[FAILED] += result.final.failed
            totals[DEFERRED] += result.plan.deferred
            failed_uids += list(result.final.failed_uids)
            errors += [str(e) for e in result.outcome.errors[:5]]
            if result.outcome.fatal is not None and result.final.failed:
                raise failure(
                    f"transfer ({result.final.failed} of {result.plan.pending} instances not on the archive)",
                    result.outcome.fatal,
                )
        cov = coverage(window, state, now, settings.sweep_nights, quota)
        least_recent = by_last_reconciled(window, state)[:10]
        # What an operator reads first: how much of the window is reconciled, and what was missing.
        metadata: dict[str, Any] = {
            "coverage": _coverage_text(cov, first, last, settings.sweep_nights, quota),
            "coverage_percent": cov.percent,
            "overdue": len(cov.overdue),
            "nights_to_cover": cov.nights_to_cover,
            "instances_missed": totals["lacked"],
            "moved": totals[MOVED],
            "failed": totals[FAILED],
            "deferred": totals[DEFERRED],
            "window": f"{first}..{last}",
            "studies_listed": len(listed),
            "studies_in_window": len(window),
            "studies_on_days_not_backed_up": len(listed) - len(window),
            "studies_visibly_lacking": len(visibly_changed),
            "studies_checked_tonight": len(chosen),
            "studies_reconciled_tonight": totals["reconciled"],
            "instances_compared": totals["instances"],
            "studies_with_missed_instances": len(missed_studies),
            "nightly_quota": quota,
            "reconciled_within_cycle": cov.reconciled_in_cycle,
            "never_reconciled": cov.never,
            "oldest_reconciliation": cov.oldest.isoformat(timespec="seconds") if cov.oldest else "never",
            "least_recently_reconciled": MetadataValue.md(
                "| StudyDate | last reconciled | Study Instance UID |\n|---|---|---|\n"
                + "\n".join(
                    f"| {s.study_date or '?'} | {(state.last(s.study_instance_uid) or 'never')!s:.16} | "
                    f"{s.study_instance_uid} |"
                    for s in least_recent
                )
            ),
            "seconds_total": round(time.monotonic() - started, 3),
            "source_peer": str(source.peer),
            "archive_peer": str(archive),
            "state_file": MetadataValue.path(str(state_path)),
        }
        if missed_studies:
            metadata["missed_study_uids"] = uids_metadata(missed_studies)
        if failed_uids:
            metadata["failed_uids"] = uids_metadata(failed_uids)
        if errors:
            metadata["errors"] = MetadataValue.json(errors[:5])
        if totals[FAILED]:
            raise Failure(
                description=(
                    f"{source.alias} reconciliation sweep: {totals[FAILED]} instances the archive lacked "
                    f"could not be archived; first: {', '.join(failed_uids[:5])}"
                    + (f"; {errors[0]}" if errors else "")
                ),
                metadata=metadata,
            )
        missed = totals["lacked"]
        return MaterializeResult(
            metadata=metadata,
            check_results=[
                AssetCheckResult(
                    check_name=NOTHING_MISSED,
                    passed=missed == 0,
                    severity=AssetCheckSeverity.WARN,
                    description=(
                        f"found {missed} instances the nightly runs had missed, in {len(missed_studies)} "
                        f"studies: {totals[MOVED]} now archived, {totals[DEFERRED]} deferred to the next "
                        "sweep"
                        if missed
                        else f"no instance missing on the archive among {totals['instances']} instances of "
                        f"{len(chosen)} studies reconciled tonight"
                    ),
                    metadata={
                        "instances_missed": missed,
                        "moved": totals[MOVED],
                        "deferred": totals[DEFERRED],
                        "studies_checked_tonight": len(chosen),
                    },
                ),
                AssetCheckResult(
                    check_name=SWEEP_COVERAGE,
                    passed=not cov.overdue,
                    severity=AssetCheckSeverity.WARN,
                    description=_coverage_text(cov, first, last, settings.sweep_nights, quota)
                    + (
                        f"; raise sweep_max_studies ({settings.sweep_max_studies}) or sweep_nights"
                        if cov.overdue and quota >= settings.sweep_max_studies
                        else ""
                    ),
                    metadata={
                        "coverage_percent": cov.percent,
                        "overdue": len(cov.overdue),
                        "overdue_study_uids": uids_metadata(cov.overdue),
                        "nights_to_cover": cov.nights_to_cover,
                    },
                ),
            ],
        )

    job = define_asset_job(
        sweep_job_name(source.alias),
        selection=AssetSelection.assets(key),
        description=(
            f"Reconcile a slice of {source.alias}'s older studies with {env.main_target.alias} and archive "
            "whatever is missing (runs nightly after the backups; launch it by hand any time)."
        ),
        tags={"dicom_backup/source": source.alias},
        executor_def=in_process_executor,
    )
    schedule = ScheduleDefinition(
        name=f"{sweep_job_name(source.alias)}_schedule",
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
    env: EnvironmentConfig, *, retry_policy: RetryPolicy | None = DEFAULT_RETRY_POLICY
) -> Definitions:
    """A sweep per ARIA/MIM source of `env` (none when settings.sweep_days is 0)."""
    if env.settings.sweep_days == 0:
        return Definitions()
    return Definitions.merge(
        *(build_source_sweep(env, s, retry_policy=retry_policy) for s in env.qr_sources.values())
    )
