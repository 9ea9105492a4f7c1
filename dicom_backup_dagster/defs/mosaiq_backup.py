"""Mosaiq backups: delivery rows -> RT Beams Treatment Records -> staging SCP -> main archive, verified.

For every Mosaiq source of the selected environment, `build_mosaiq_backup_defs` makes, partitioned by
treatment date in the site's timezone (same start date as the Q/R backups):

- `<source>/deliveries`: the day's Dose_Hst rows read through the `mosaiq_<alias>` resource. Value: a handle
  on deliveries.jsonl (DHS_ID and state: delivery, quarantined or skipped, with the reason).
- `<source>/rt_records`: one RT Beams Treatment Record per delivery, written into a spool under
  BackupStorage, with the content digest computed from the encoded bytes. Value: a handle on
  rt_records.jsonl. Check `conformance` (ERROR): check_rt_record on every record file.
- `<source>/staged`: every record C-STOREd over one association to the source's staging target
  (staging_target_alias). Value: a handle on staged.jsonl.
- `<source>/archived`: IMAGE-level C-MOVEs of the run's records from staging to the main archive's AE
  with sub-operation accounting, over one association: up to 200 records per request by SOP Instance UID
  from an Orthanc staging, one request per series from any other SCP. Checks
  `complete_in_archive` (blocking: every record on main by IMAGE-level C-FIND) and `content_verified`
  (every record C-GET from main, digest equal to the recorded one), and the WARN baselines
  `volume_vs_baseline` (`records` vs the trailing median of earlier days) and `duration_vs_baseline`
  (`seconds_total`: read + render + store + move of the partition).
- job `<source>_backup`, schedule `<source>_backup_schedule` (STOPPED by default; each tick backs up the
  previous day).

When content_verified passes it writes the partition's verified.jsonl (backup.records.VERIFIED_MANIFEST),
the only evidence the staging cleanup job (defs/staging_cleanup.py) accepts before it deletes a record from
staging; a failing check and every new render remove it.

`rt_records` reads the day's rows again and renders the DHS_IDs `deliveries` listed, rather than passing
Delivery objects between steps: those hold PHI and the IO manager would pickle them into Dagster's storage.
SOP Instance UIDs are derived from Mosaiq keys, so a re-run stores and moves the same instances again and
the archive keeps one copy of each (no new instances).

Concurrency: `staged` and `archived` talk to the staging SCP and run in the pool `dicom_<staging AET>`.
Metadata carries counts, seconds, UIDs, DHS_IDs and quarantine reasons (keys and codes only), never PHI.
"""

# No `from __future__ import annotations` here: Dagster 1.13 validates the `context` annotation of assets
# and checks by identity, and a string annotation fails that check.
import datetime as dt
import time
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    Definitions,
    Failure,
    MetadataValue,
    Output,
    RetryPolicy,
    asset,
    asset_check,
)

from dicom_backup_dagster.backup import baseline
from dicom_backup_dagster.backup.manifest import FAILED, MOVED, PENDING, ManifestHandle, read_manifest
from dicom_backup_dagster.backup.records import (
    DELIVERY,
    delivery_lines,
    fresh_spool,
    mark_verified,
    read_delivery_lines,
    reasons_by_dhs_id,
    record_path,
    spool_record,
    verify_recorded_digests,
    write_delivery_lines,
    write_entries,
)
from dicom_backup_dagster.backup.transfer import RetrieveSession
from dicom_backup_dagster.config import EnvironmentConfig, MosaiqSource
from dicom_backup_dagster.defs.checks import baseline_checks, peer_unreachable_result, presence_check_result
from dicom_backup_dagster.defs.common import (
    DEFAULT_RETRY_POLICY,
    DEFAULT_RULES,
    DEFAULT_START_DATE,
    STORAGE_RESOURCE_KEY,
    BackupStorage,
    SourceNames,
    backup_failure,
    check_partition,
    daily_partitions,
    find_session,
    uids_metadata,
)
from dicom_backup_dagster.defs.resources import DicomNetwork, MosaiqDatabase, mosaiq_resource_key
from dicom_backup_dagster.defs.schedules import backup_job_and_schedule
from dicom_backup_dagster.dicom.errors import DicomError, SubOperationError
from dicom_backup_dagster.dicom.retrieve import chunks
from dicom_backup_dagster.dicom.store import c_store_files
from dicom_backup_dagster.monitoring.dimse import with_dimse_metadata
from dicom_backup_dagster.mosaiq.connection import MosaiqConnectionError
from dicom_backup_dagster.mosaiq.deliveries import (
    DeliveryBatch,
    MosaiqQueryError,
    read_deliveries_for_date,
    render_deliveries,
)
from dicom_backup_dagster.rtrecord.builder import RecordOptions
from dicom_backup_dagster.rtrecord.conformance import check_rt_record_files

_KEEP_REASONS = 50  # quarantine reasons shown in metadata (deliveries.jsonl has all of them)


class _Names(SourceNames):
    """A Mosaiq source's names: SourceNames (pool = its staging AE) plus its assets and database resource."""

    @property
    def deliveries(self) -> AssetKey:
        return self.key("deliveries")

    @property
    def rt_records(self) -> AssetKey:
        return self.key("rt_records")

    @property
    def staged(self) -> AssetKey:
        return self.key("staged")

    @property
    def database(self) -> str:
        return mosaiq_resource_key(self.alias)


# ------------------------------------------------------------------------------------------------------
# Helpers


def _read_day(
    database: MosaiqDatabase, source: MosaiqSource, env: EnvironmentConfig, partition: str
) -> DeliveryBatch:
    """The partition's deliveries; a database that cannot be opened or queried fails with a clear reason
    (MosaiqConnectionError / MosaiqQueryError never carry the password)."""
    settings = env.settings
    try:
        conn = database.connect()
    except MosaiqConnectionError as error:
        # An unreachable server (SQLSTATE class 08, HYT00/HYT01 timeouts) may clear up; a rejected login,
        # a missing driver (IM...) or a wrong database name will not. Classified by what failed, not by
        # SQLSTATE alone: psqlODBC reports a rejected password as 08001 too.
        transient = error.what_failed == "the database server is unreachable" or (
            error.what_failed == "the ODBC driver reported an error"
            and (error.sqlstate or "").startswith(("08", "HYT"))
        )
        # The resource holds the password's value, not the variable's name: say where it comes from.
        where = f" (password from ${source.db_password_env})" if error.what_failed == "login failed" else ""
        raise Failure(
            description=(
                f"{source.alias} backup, reading deliveries of partition {partition}: {error}{where} "
                + ("(transient, will be retried)" if transient else "(not retried)")
            ),
            metadata={"source": source.alias, "sqlstate": error.sqlstate or "none"},
            allow_retries=transient,
        ) from error
    try:
        return read_deliveries_for_date(
            conn,
            dt.date.fromisoformat(partition),
            settings.timezone,
            queries=settings.mosaiq_queries or None,
        )
    except MosaiqQueryError as error:
        raise Failure(
            description=f"{source.alias} backup, reading deliveries of partition {partition}: {error}",
            metadata={"source": source.alias},
            allow_retries=False,
        ) from error
    finally:
        conn.close()


def _reasons(outcomes: list[Any]) -> MetadataValue:
    return MetadataValue.json(reasons_by_dhs_id(outcomes[:_KEEP_REASONS]))


def _handle(path: Path, alias: str, partition: str, states: dict[str, int], seconds: float) -> ManifestHandle:
    return ManifestHandle(str(path), alias, partition, sum(states.values()), states, seconds)


def _count(entries: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.state] = counts.get(entry.state, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------------
# The factory


def build_mosaiq_source_backup(
    env: EnvironmentConfig,
    source: MosaiqSource,
    partitions_def: DailyPartitionsDefinition,
    *,
    retry_policy: RetryPolicy | None = DEFAULT_RETRY_POLICY,
    rules: baseline.BaselineRules = DEFAULT_RULES,
) -> Definitions:
    """Assets, checks, job and schedule backing up one Mosaiq source into the environment's main archive."""
    staging = env.staging_target(source)
    names = _Names(source.alias, staging.aet)
    settings = env.settings
    archive = env.main_target.peer
    stage = staging.peer
    staging_by_instance_list = staging.type == "orthanc"
    options = RecordOptions(source_key=source.alias)
    resource_keys = {names.database, "dicom", STORAGE_RESOURCE_KEY}

    def folder(context: Any, partition: str) -> Path:
        storage: BackupStorage = getattr(context.resources, STORAGE_RESOURCE_KEY)
        return storage.partition_dir(context.instance, source.alias, partition)

    def spool(context: Any, partition: str) -> Path:
        storage: BackupStorage = getattr(context.resources, STORAGE_RESOURCE_KEY)
        return storage.root(context.instance) / "spool" / source.alias / "rt_records" / partition

    common: dict[str, Any] = {
        "partitions_def": partitions_def,
        "backfill_policy": BackfillPolicy.multi_run(1),
        "retry_policy": retry_policy,
        "group_name": names.group,
    }

    @asset(
        key=names.deliveries,
        required_resource_keys={names.database, STORAGE_RESOURCE_KEY},
        kinds={"mosaiq"},
        description=(
            f"Every delivered field of every patient treated on the partition's date "
            f"({settings.timezone}) in {source.alias}, read through ODBC. Rows that cannot make a valid "
            "record are quarantined with a reason (DHS_ID, keys and codes only); QA-mode beam-ons are "
            "not deliveries. The value is deliveries.jsonl on disk."
        ),
        **common,
    )
    def deliveries(context: AssetExecutionContext) -> Output[ManifestHandle]:
        partition = context.partition_key
        database: MosaiqDatabase = getattr(context.resources, names.database)
        batch = _read_day(database, source, env, partition)
        path = folder(context, partition) / "deliveries.jsonl"
        lines = delivery_lines(batch)
        write_delivery_lines(path, lines)
        counts = batch.counts
        context.log.info(
            f"{source.alias} {partition}: {counts['deliveries']} deliveries, {counts['quarantined']} "
            f"quarantined, {counts['skipped']} skipped ({batch.seconds:.2f} s)"
        )
        for q in batch.quarantined[:_KEEP_REASONS]:
            context.log.warning(f"{source.alias} {partition}: DHS_ID {q.dhs_id} quarantined: {q.reason}")
        states = {k: v for k, v in counts.items() if k != "plan_missing"}
        return Output(
            _handle(path, source.alias, partition, states, batch.seconds),
            metadata={
                "deliveries": counts["deliveries"],
                "quarantined": counts["quarantined"],
                "skipped": counts["skipped"],
                "quarantined_reasons": _reasons(batch.quarantined),
                "skipped_reasons": _reasons(batch.skipped),
                "rows": MetadataValue.json(dict(batch.rows)),
                "seconds": round(batch.seconds, 3),
                "manifest": MetadataValue.path(str(path)),
            },
        )

    @asset(
        key=names.rt_records,
        ins={"deliveries": AssetIn(key=names.deliveries)},
        required_resource_keys={names.database, STORAGE_RESOURCE_KEY},
        kinds={"dicom"},
        description=(
            "One RT Beams Treatment Record per delivery listed by deliveries (deterministic UIDs), written "
            "into the partition's spool; the manifest records SOP UIDs and the content digest of the "
            "encoded bytes. A delivery the renderer cannot make valid is quarantined, the others proceed."
        ),
        **common,
    )
    def rt_records(context: AssetExecutionContext, deliveries: ManifestHandle) -> Output[ManifestHandle]:
        partition = context.partition_key
        started = time.monotonic()
        wanted = {line.dhs_id for line in read_delivery_lines(deliveries.path) if line.state == DELIVERY}
        # A new render may change content under the same UIDs: the partition is unverified until
        # content_verified passes again, so the staging cleanup leaves its records alone meanwhile.
        mark_verified(folder(context, partition), None)
        database: MosaiqDatabase = getattr(context.resources, names.database)
        batch = _read_day(database, source, env, partition)
        read = time.monotonic()
        chosen = [d for d in batch.deliveries if d.dhs_id in wanted]
        vanished = len(wanted) - len(chosen)
        rendered = render_deliveries(chosen, options)
        out = fresh_spool(spool(context, partition))
        entries = [spool_record(record, out) for _, record in rendered.records]
        path = folder(context, partition) / "rt_records.jsonl"
        write_entries(path, entries)
        done = time.monotonic()
        seconds_render = done - read
        context.log.info(
            f"{source.alias} {partition}: {len(entries)} records rendered, {len(rendered.quarantined)} "
            f"quarantined, {len(rendered.skipped)} skipped ({seconds_render:.2f} s)"
        )
        for q in rendered.quarantined[:_KEEP_REASONS]:
            context.log.warning(f"{source.alias} {partition}: DHS_ID {q.dhs_id} quarantined: {q.reason}")
        return Output(
            # Handles carry the cumulative seconds of the chain so far: archived's seconds_total is the
            # whole partition's time (read + render + store + move), what duration_vs_baseline judges.
            _handle(
                path, source.alias, partition, {PENDING: len(entries)}, deliveries.seconds + done - started
            ),
            metadata={
                "records": len(entries),
                "quarantined": len(rendered.quarantined),
                "skipped": len(rendered.skipped),
                "quarantined_reasons": _reasons(rendered.quarantined),
                "vanished_since_read": vanished,
                "series": len({e.series_instance_uid for e in entries}),
                "bytes": sum(e.size or 0 for e in entries),
                "seconds_read": round(read - started, 3),
                "seconds_render": round(seconds_render, 3),
                "records_per_second": round(len(entries) / seconds_render, 1) if seconds_render > 0 else 0.0,
                "spool": MetadataValue.path(str(out)),
                "manifest": MetadataValue.path(str(path)),
            },
        )

    @asset(
        key=names.staged,
        ins={"rt_records": AssetIn(key=names.rt_records)},
        required_resource_keys=resource_keys,
        pool=names.pool,
        kinds={"dicom"},
        description=(
            f"Every record C-STOREd over one association to the staging target {staging.alias} ({stage})."
        ),
        **common,
    )
    @with_dimse_metadata
    def staged(context: AssetExecutionContext, rt_records: ManifestHandle) -> Output[ManifestHandle]:
        partition = context.partition_key
        dicom: DicomNetwork = context.resources.dicom
        records = list(read_manifest(rt_records.path))
        out = spool(context, partition)
        path = folder(context, partition) / "staged.jsonl"
        try:
            result = c_store_files(
                stage,
                dicom.calling_aet,
                [record_path(out, e.sop_instance_uid) for e in records],
                raise_on_failure=False,
                timeouts=dicom.timeouts,
            )
        except DicomError as error:
            raise backup_failure(
                source.alias, f"C-STORE to staging {staging.alias} ({stage})", partition, error
            ) from error
        failed = {o.sop_instance_uid for o in result.failed}
        entries = [e.with_state(FAILED if e.sop_instance_uid in failed else PENDING) for e in records]
        write_entries(path, entries)
        metadata: dict[str, Any] = {
            "stored": len(result.stored),
            "failed": len(result.failed),
            "warnings": len(result.warnings),
            "seconds_store": round(result.seconds, 3),
            "records_per_second": round(len(result.stored) / result.seconds, 1)
            if result.seconds > 0
            else 0.0,
            "staging_peer": str(stage),
            "manifest": MetadataValue.path(str(path)),
        }
        if result.failed:
            first = result.failed[0]
            metadata["failed_uids"] = uids_metadata(sorted(failed))
            raise Failure(
                description=(
                    f"{source.alias} backup, C-STORE of partition {partition} to staging {staging.alias} "
                    f"({stage}): {len(result.failed)} of {len(records)} records refused, first "
                    f"{first.sop_instance_uid}: {first.status_meaning}"
                    + (f" ({first.error_comment})" if first.error_comment else "")
                    + f"; check {stage.aet}'s log and disk, then re-run {names.job} for {partition}"
                ),
                metadata=metadata,
            )
        context.log.info(
            f"{source.alias} {partition}: stored {len(result.stored)} records on {stage} "
            f"({result.seconds:.2f} s)"
        )
        return Output(
            _handle(path, source.alias, partition, _count(entries), rt_records.seconds + result.seconds),
            metadata=metadata,
        )

    @asset(
        key=names.archived,
        ins={"staged": AssetIn(key=names.staged)},
        required_resource_keys=resource_keys,
        pool=names.pool,
        kinds={"dicom", "orthanc"},
        description=(
            f"Every staged record moved from {staging.alias} to {env.main_target.alias} ({archive.aet}) "
            "by IMAGE-level C-MOVEs of the run's own UIDs over one association (up to 200 records per "
            "request from an Orthanc staging, per series otherwise), with sub-operation accounting."
        ),
        **common,
    )
    @with_dimse_metadata
    def archived(context: AssetExecutionContext, staged: ManifestHandle) -> Output[ManifestHandle]:
        partition = context.partition_key
        dicom: DicomNetwork = context.resources.dicom
        records = list(read_manifest(staged.path))
        path = folder(context, partition) / "archived.jsonl"
        failed: set[str] = set()
        unnamed: list[str] = []  # records of refused requests whose failures the staging did not list
        completed = warnings = sub_failed = 0
        errors: list[DicomError] = []
        started = time.monotonic()
        by_series: dict[tuple[str, str], list[str]] = {}
        for e in records:
            by_series.setdefault((e.study_instance_uid, e.series_instance_uid), []).append(e.sop_instance_uid)
        # IMAGE level with the run's own UIDs: staging may hold other records of a series (earlier
        # renders), which this run must neither move nor count. An Orthanc staging resolves instances by
        # SOP Instance UID alone, so one request carries up to MAX_UIDS_PER_REQUEST records of any series
        # (600 per-series requests took 17.5 s for 2,100 records, lists 9 s); any other SCP gets one
        # hierarchical request per series.
        if staging_by_instance_list:
            requests = [(None, chunk) for chunk in chunks([e.sop_instance_uid for e in records])]
        else:
            requests = [(key, chunk) for key, uids in by_series.items() for chunk in chunks(uids)]
        try:
            with RetrieveSession(
                stage, dicom.calling_aet, dicom.timeouts, operation="C-MOVE", move_destination=archive.aet
            ) as session:
                for series_key, chunk in requests:
                    try:
                        result = (
                            session.retrieve_instances(chunk, expected_count=len(chunk))
                            if series_key is None
                            else session.retrieve(*series_key, chunk, expected_count=len(chunk))
                        )
                    except SubOperationError as error:
                        errors.append(error)
                        result = error.result
                        if result.failed_sop_instance_uids:
                            failed.update(result.failed_sop_instance_uids)
                        else:
                            unnamed.extend(chunk)
                    completed += result.completed
                    warnings += result.warning
                    sub_failed += result.failed
        except DicomError as error:
            raise backup_failure(
                source.alias,
                f"C-MOVE from staging {staging.alias} to {archive.aet}",
                partition,
                error,
                {"moved_before_error": completed},
            ) from error
        # A refused request without a Failed SOP Instance UID List: main says which of its records arrived
        # (a 200-record request must not count as 200 failures for one missing record). Main unreachable:
        # all of them count as failed, and the next run moves them again.
        if unnamed:
            try:
                with find_session(archive, dicom) as main:
                    arrived = {r.sop_instance_uid for r in main.instances_by_uid(unnamed)}
            except DicomError:
                arrived = set()
            failed.update(uid for uid in unnamed if uid not in arrived)
        seconds = time.monotonic() - started
        entries = [e.with_state(FAILED if e.sop_instance_uid in failed else MOVED) for e in records]
        write_entries(path, entries)
        metadata: dict[str, Any] = {
            # `records` is the volume baseline's key (the Q/R sources' instances_found); moved / failed /
            # deferred / already_archived / seconds_total / bytes follow the archived metadata contract
            # that monitoring reads. Nothing is ever deferred or skipped as already archived here: every
            # record of the day is moved (the archive keeps one copy of a UID).
            "records": len(records),
            "moved": completed,
            "deferred": 0,
            "already_archived": 0,
            "bytes": sum(e.size or 0 for e in records),
            "seconds_total": round(staged.seconds + seconds, 3),
            "series": len(by_series),
            "move_requests": len(requests),
            "sub_operations_completed": completed,
            "sub_operations_failed": sub_failed,
            "sub_operations_warning": warnings,
            "failed": len(failed),
            "seconds_move": round(seconds, 3),
            "records_per_second": round(completed / seconds, 1) if seconds > 0 else 0.0,
            "staging_peer": str(stage),
            "archive_peer": str(archive),
            "manifest": MetadataValue.path(str(path)),
        }
        if failed:
            metadata["failed_uids"] = uids_metadata(sorted(failed))
            raise backup_failure(
                source.alias,
                f"C-MOVE from staging {staging.alias} to {archive.aet} ({len(failed)} of {len(records)} "
                "records not moved)",
                partition,
                errors[0],
                metadata,
            )
        context.log.info(
            f"{source.alias} {partition}: moved {completed} records in {len(by_series)} series to "
            f"{archive.aet} ({seconds:.2f} s)"
        )
        return Output(
            _handle(path, source.alias, partition, _count(entries), staged.seconds + seconds),
            metadata=metadata,
        )

    # -- checks ---------------------------------------------------------------------------------------

    def manifest(
        context: AssetCheckExecutionContext, key: AssetKey, name: str
    ) -> tuple[str | None, Path | None]:
        partition = check_partition(context, key)
        if partition is None:
            return None, None
        path = folder(context, partition) / name
        return partition, path if path.exists() else None

    def no_manifest(partition: str | None, name: str) -> AssetCheckResult:
        return AssetCheckResult(
            passed=False,
            description=f"no {name} for partition {partition}: run {names.job} for it first",
            metadata={"partition": str(partition)},
        )

    @asset_check(
        asset=names.rt_records,
        name="conformance",
        required_resource_keys={STORAGE_RESOURCE_KEY},
        description=(
            "Every record file of the partition passes check_rt_record (RT Beams Treatment Record IOD: "
            "type 1/2 presence, enumerated values, control point 0 conditions)."
        ),
    )
    def conformance(context: AssetCheckExecutionContext) -> AssetCheckResult:
        partition, path = manifest(context, names.rt_records, "rt_records.jsonl")
        if partition is None or path is None:
            return no_manifest(partition, "rt_records.jsonl")
        out = spool(context, partition)
        bad: dict[str, list[str]] = {}
        files: dict[Path, str] = {}
        for entry in read_manifest(path):
            file = record_path(out, entry.sop_instance_uid)
            if file.exists():
                files[file] = entry.sop_instance_uid
            else:
                bad[entry.sop_instance_uid] = ["record file missing from the spool"]
        checked = 0
        for file, findings in check_rt_record_files(list(files)):
            checked += 1
            if findings:
                bad[files[file]] = [str(f) for f in findings[:5]]
        metadata = {
            "partition": partition,
            "checked": checked,
            "nonconformant": len(bad),
            "findings": MetadataValue.json(dict(list(bad.items())[:20])),
        }
        if bad:
            uid, findings = next(iter(bad.items()))
            return AssetCheckResult(
                passed=False,
                severity=AssetCheckSeverity.ERROR,
                description=f"{len(bad)} of {checked} records are not conformant; {uid}: {findings[0]}",
                metadata=metadata,
            )
        return AssetCheckResult(
            passed=True, description=f"all {checked} records conformant", metadata=metadata
        )

    @asset_check(
        asset=names.archived,
        name="complete_in_archive",
        blocking=True,
        required_resource_keys={"dicom", STORAGE_RESOURCE_KEY},
        description=f"Every record of the partition is on {env.main_target.alias}, by IMAGE-level C-FIND on "
        f"{archive}.",
    )
    def complete_in_archive(context: AssetCheckExecutionContext) -> AssetCheckResult:
        partition, path = manifest(context, names.archived, "archived.jsonl")
        if partition is None or path is None:
            return no_manifest(partition, "archived.jsonl")
        return presence_check_result(
            source.alias, partition, path, archive, context.resources.dicom, noun="records"
        )

    @asset_check(
        asset=names.archived,
        name="content_verified",
        required_resource_keys={"dicom", STORAGE_RESOURCE_KEY},
        description=(
            f"Every record retrieved by C-GET from {env.main_target.alias} has the content digest recorded "
            "when it was rendered."
        ),
    )
    def content_verified(context: AssetCheckExecutionContext) -> AssetCheckResult:
        partition, path = manifest(context, names.archived, "archived.jsonl")
        if partition is None or path is None:
            return no_manifest(partition, "archived.jsonl")
        dicom: DicomNetwork = context.resources.dicom
        storage: BackupStorage = getattr(context.resources, STORAGE_RESOURCE_KEY)
        entries = list(read_manifest(path))
        compared = f"content digests of {len(entries)} records: recorded at render vs C-GET from {archive}"
        try:
            result = verify_recorded_digests(
                entries,
                archive=archive,
                calling_aet=dicom.calling_aet,
                timeouts=dicom.timeouts,
                spool_dir=storage.spool_dir(context.instance, source.alias, context.run.run_id, "verify"),
            )
        except DicomError as error:
            return peer_unreachable_result("retrieve for verification", error, partition, compared)
        metadata = {
            "partition": partition,
            "compared": compared,
            "records": len(entries),
            "sampled": len(entries),  # every record is verified (the Q/R sources may sample)
            "matched": result.matched,
            "mismatched_uids": uids_metadata(result.mismatched_uids),
            "missing_on_archive_uids": uids_metadata(result.missing_on_archive),
        }
        if result.errors:
            metadata["errors"] = MetadataValue.json(result.errors[:5])
        if result.passed and result.matched == len(entries):
            mark_verified(path.parent, entries)  # what the staging cleanup trusts (mosaiq.staging)
            return AssetCheckResult(
                passed=True,
                description=f"all {result.matched} records identical on {archive}",
                metadata=metadata,
            )
        mark_verified(path.parent, None)
        bad = result.mismatched_uids or result.missing_on_archive
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            description=(
                f"{len(result.mismatched_uids)} differ, {len(result.missing_on_archive)} missing on "
                f"{archive}; first: {', '.join(bad[:5])}" + (f"; {result.errors[0]}" if result.errors else "")
            ),
            metadata=metadata,
        )

    job, nightly = backup_job_and_schedule(
        names.job,
        source.alias,
        [names.deliveries, names.rt_records, names.staged, names.archived],
        (
            f"Back up one treatment day of {source.alias} (Mosaiq) as RT Beams Treatment Records into "
            f"{env.main_target.alias} via {staging.alias}, and verify it. Launch it for a date (partition) "
            "or backfill a date range."
        ),
        settings,
        partitions_def,
    )

    assets: list[AssetsDefinition] = [deliveries, rt_records, staged, archived]
    return Definitions(
        assets=assets,
        asset_checks=[
            conformance,
            complete_in_archive,
            content_verified,
            *baseline_checks(
                names.archived, partitions_def, rules, volume_key="records", volume_noun="records"
            ),
        ],
        jobs=[job],
        schedules=[nightly],
    )


def build_mosaiq_backup_defs(
    env: EnvironmentConfig,
    *,
    start_date: str | dt.date = DEFAULT_START_DATE,
    storage: BackupStorage | None = None,
    retry_policy: RetryPolicy | None = DEFAULT_RETRY_POLICY,
    rules: baseline.BaselineRules = DEFAULT_RULES,
) -> Definitions:
    """The backups of every Mosaiq source of `env`, partitioned by treatment day in the site's timezone.

    The `backup_storage` resource is the one build_qr_backup_defs registers (Definitions.merge refuses two
    resource objects under one key); pass `storage` only when these definitions are used on their own."""
    partitions_def = daily_partitions(env, start_date)
    per_source = [
        build_mosaiq_source_backup(env, source, partitions_def, retry_policy=retry_policy, rules=rules)
        for source in env.mosaiq_sources.values()
    ]
    resources = (
        Definitions(resources={STORAGE_RESOURCE_KEY: storage}) if storage is not None else Definitions()
    )
    return Definitions.merge(*per_source, resources)
