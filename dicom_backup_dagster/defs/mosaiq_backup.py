"""Mosaiq backups: delivery rows -> RT Beams Treatment Records -> staging SCP -> main archive, verified.

For every Mosaiq source of the selected environment, `build_mosaiq_backup_defs` makes, partitioned by
treatment date in the site's timezone (same start date as the Q/R backups):

- `<source>/deliveries`: the day's Dose_Hst rows read through the `mosaiq_<alias>` resource: deliveries.jsonl
  (DHS_ID and state: delivery, quarantined or skipped, with the reason).
- `<source>/rt_records`: one RT Beams Treatment Record per delivery, written into a spool under
  BackupStorage, with the content digest computed from the encoded bytes: rt_records.jsonl. Check
  `conformance` (ERROR): check_rt_record on every record file.
- `<source>/staged`: every record C-STOREd over one association to the source's staging target
  (staging_target_alias): staged.jsonl.
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
staging; a failing check and every new render remove it. A pass also removes the partition's spool of
rendered records (they carry patient data; main holds them now, and a re-run renders them again).

Each asset hands the next its manifest through a handle file in the partition's folder (defs/manifests.py),
as the Q/R sources do; nothing goes through an IO manager. `rt_records` reads the day's rows again and
renders the DHS_IDs `deliveries` listed, rather than passing Delivery objects between steps: those hold
PHI, which must stay out of the files and of Dagster's storage.
SOP Instance UIDs are derived from Mosaiq keys, so a re-run stores and moves the same instances again and
the archive keeps one copy of each (no new instances).

Concurrency: `staged` and `archived` talk to the staging SCP and run in the pool `dicom_<staging AET>`.
Metadata carries counts, seconds, UIDs, DHS_IDs and quarantine reasons (keys and codes only), never PHI.
"""

# No `from __future__ import annotations` here: Dagster 1.13 validates the `context` annotation of assets
# and checks by identity, and a string annotation fails that check.
import datetime as dt
import functools
import inspect
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetExecutionContext,
    BackfillPolicy,
    DagsterInstance,
    DailyPartitionsDefinition,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
    multi_asset_check,
)

from dicom_backup_dagster.backup import baseline
from dicom_backup_dagster.backup.manifest import (
    FAILED,
    MOVED,
    PENDING,
    InstanceEntry,
    ManifestHandle,
    read_manifest,
)
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
from dicom_backup_dagster.config import BackupTarget, EnvironmentConfig, MosaiqSource, Settings
from dicom_backup_dagster.defs.checks import (
    baseline_checks,
    check_op_name,
    day_check_spec,
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
    explain_destination,
    explain_failures,
    find_session,
    resolve_retry_policy,
    uids_metadata,
)
from dicom_backup_dagster.defs.keys import SourceNames, pool_id
from dicom_backup_dagster.defs.manifests import handle_path, load_handle, save_handle
from dicom_backup_dagster.defs.resources import (
    BackupStorage,
    DicomNetwork,
    MosaiqDatabase,
    mosaiq_resource_key,
)
from dicom_backup_dagster.defs.schedules import backup_job_and_schedule
from dicom_backup_dagster.dicom.errors import DicomError, SubOperationError
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.dicom.retrieve import RetrieveResult, chunks
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

# MosaiqError.what_failed when no connection to the database server could be made (mosaiq/connection.py).
UNREACHABLE = "the database server is unreachable"
_KEEP_REASONS = 50  # quarantine reasons shown in metadata (deliveries.jsonl has all of them)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class MosaiqPlan:
    """What the assets and checks of one Mosaiq source need, fixed when the definitions load."""

    names: SourceNames  # pool: the staging AE's
    source: MosaiqSource
    settings: Settings
    staging: BackupTarget
    archive: Peer  # the main archive
    archive_alias: str
    options: RecordOptions

    @classmethod
    def of(cls, env: EnvironmentConfig, source: MosaiqSource, *, multi_site: bool = False) -> "MosaiqPlan":
        staging = env.staging_target(source)
        return cls(
            names=SourceNames(
                source.alias, pool_id(staging.aet, staging.ip, staging.port, multi_site=multi_site)
            ),
            source=source,
            settings=env.settings,
            staging=staging,
            archive=env.main_target.peer,
            archive_alias=env.main_target.alias,
            options=RecordOptions(source_key=source.alias),
        )

    @property
    def alias(self) -> str:
        return self.source.alias

    @property
    def stage(self) -> Peer:
        return self.staging.peer

    @property
    def database_key(self) -> str:
        return mosaiq_resource_key(self.alias)

    def folder(self, storage: BackupStorage, instance: DagsterInstance, partition: str) -> Path:
        return storage.partition_dir(instance, self.alias, partition)

    def spool(self, storage: BackupStorage, instance: DagsterInstance, partition: str) -> Path:
        return storage.root(instance) / "spool" / self.alias / "rt_records" / partition

    def release_spool(self, storage: BackupStorage, instance: DagsterInstance, partition: str) -> None:
        """Remove the partition's rendered records (they carry patient data) once content_verified found
        every one of them identical on main: main holds them now, and a re-run renders them again."""
        shutil.rmtree(self.spool(storage, instance, partition), ignore_errors=True)

    def upstream(self, storage: BackupStorage, context: AssetExecutionContext, name: str) -> ManifestHandle:
        """The handle the asset `name` wrote for the run's partition."""
        partition = context.partition_key
        path = handle_path(self.folder(storage, context.instance, partition), name)
        return load_handle(path, self.names, self.names.key(name), partition)


def with_database_key(key: str) -> Callable[[F], F]:
    """Dagster names a resource parameter after its resource key; a Mosaiq source's database key
    (`mosaiq_<alias>`) is known only when the definitions load. The decorated function takes the resource
    as `database`; Dagster sees (through `__signature__`, which it honours) a parameter named `key`."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        parameters = [
            p.replace(name=key) if p.name == "database" else p for p in signature.parameters.values()
        ]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if key in kwargs:
                kwargs["database"] = kwargs.pop(key)
            return fn(*args, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


# ------------------------------------------------------------------------------------------------------
# Helpers


def read_day(database: MosaiqDatabase, plan: MosaiqPlan, partition: str) -> DeliveryBatch:
    """The partition's deliveries; a database that cannot be opened or queried fails with a clear reason
    (MosaiqConnectionError / MosaiqQueryError never carry the password)."""
    source, settings = plan.source, plan.settings
    try:
        conn = database.connect()
    except MosaiqConnectionError as error:
        raise connection_failure(source, partition, error) from error
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


def connection_failure(source: MosaiqSource, partition: str, error: MosaiqConnectionError) -> Failure:
    # An unreachable server (SQLSTATE class 08, HYT00/HYT01 timeouts) may clear up; a rejected login,
    # a missing driver (IM...) or a wrong database name will not. Classified by what failed, not by
    # SQLSTATE alone: psqlODBC reports a rejected password as 08001 too.
    transient = error.what_failed == UNREACHABLE or (
        error.what_failed == "the ODBC driver reported an error"
        and (error.sqlstate or "").startswith(("08", "HYT"))
    )
    # The resource holds the password's value, not the variable's name: say where it comes from.
    where = f" (password from ${source.db_password_env})" if error.what_failed == "login failed" else ""
    return Failure(
        description=(
            f"{source.alias} backup, reading deliveries of partition {partition}: {error}{where}"
            + ("" if transient else " (not retried)")
        ),
        metadata={
            "source": source.alias,
            "peer": f"database {error.database} on {error.server}",
            "operation": "ODBC connect",
            "sqlstate": error.sqlstate or "none",
            "cause": error.what_failed,
            "advice": error.what_to_do,
            "error_class": type(error).__name__,
            # For cause grouping (notify/causes.py): no connection to the server, like a DICOM "connect".
            **({"association_stage": "connect"} if error.what_failed == UNREACHABLE else {}),
        },
        allow_retries=transient,
    )


def _reasons(outcomes: list[Any]) -> MetadataValue:
    return MetadataValue.json(reasons_by_dhs_id(outcomes[:_KEEP_REASONS]))


def _handle(path: Path, alias: str, partition: str, states: dict[str, int], seconds: float) -> ManifestHandle:
    return ManifestHandle(str(path), alias, partition, sum(states.values()), states, seconds)


def _count(entries: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.state] = counts.get(entry.state, 0) + 1
    return counts


def _per_second(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


# ------------------------------------------------------------------------------------------------------
# <source>/deliveries and <source>/rt_records


def materialize_deliveries(
    context: AssetExecutionContext, plan: MosaiqPlan, database: MosaiqDatabase, storage: BackupStorage
) -> MaterializeResult:
    """The day's delivery rows into deliveries.jsonl (DHS_IDs and states, no PHI)."""
    alias, partition = plan.alias, context.partition_key
    batch = read_day(database, plan, partition)
    folder = plan.folder(storage, context.instance, partition)
    path = folder / "deliveries.jsonl"
    write_delivery_lines(path, delivery_lines(batch))
    counts = batch.counts
    context.log.info(
        f"{alias} {partition}: {counts['deliveries']} deliveries, {counts['quarantined']} "
        f"quarantined, {counts['skipped']} skipped ({batch.seconds:.2f} s)"
    )
    for q in batch.quarantined[:_KEEP_REASONS]:
        context.log.warning(f"{alias} {partition}: DHS_ID {q.dhs_id} quarantined: {q.reason}")
    states = {k: v for k, v in counts.items() if k != "plan_missing"}
    save_handle(_handle(path, alias, partition, states, batch.seconds), folder, "deliveries")
    return MaterializeResult(
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


def materialize_rt_records(
    context: AssetExecutionContext, plan: MosaiqPlan, database: MosaiqDatabase, storage: BackupStorage
) -> MaterializeResult:
    """One RT Beams Treatment Record per delivery `deliveries` listed, into the partition's spool."""
    alias, partition = plan.alias, context.partition_key
    deliveries = plan.upstream(storage, context, "deliveries")
    folder = plan.folder(storage, context.instance, partition)
    started = time.monotonic()
    wanted = {line.dhs_id for line in read_delivery_lines(deliveries.path) if line.state == DELIVERY}
    # A new render may change content under the same UIDs: the partition is unverified until
    # content_verified passes again, so the staging cleanup leaves its records alone meanwhile.
    mark_verified(folder, None)
    batch = read_day(database, plan, partition)
    read = time.monotonic()
    chosen = [d for d in batch.deliveries if d.dhs_id in wanted]
    rendered = render_deliveries(chosen, plan.options)
    out = fresh_spool(plan.spool(storage, context.instance, partition))
    entries = [spool_record(record, out) for _, record in rendered.records]
    path = folder / "rt_records.jsonl"
    write_entries(path, entries)
    done = time.monotonic()
    seconds_render = done - read
    context.log.info(
        f"{alias} {partition}: {len(entries)} records rendered, {len(rendered.quarantined)} "
        f"quarantined, {len(rendered.skipped)} skipped ({seconds_render:.2f} s)"
    )
    for q in rendered.quarantined[:_KEEP_REASONS]:
        context.log.warning(f"{alias} {partition}: DHS_ID {q.dhs_id} quarantined: {q.reason}")
    # Handles carry the cumulative seconds of the chain so far: archived's seconds_total is the whole
    # partition's time (read + render + store + move), what duration_vs_baseline judges.
    seconds = deliveries.seconds + done - started
    save_handle(_handle(path, alias, partition, {PENDING: len(entries)}, seconds), folder, "rt_records")
    return MaterializeResult(
        metadata={
            "records": len(entries),
            "quarantined": len(rendered.quarantined),
            "skipped": len(rendered.skipped),
            "quarantined_reasons": _reasons(rendered.quarantined),
            "vanished_since_read": len(wanted) - len(chosen),
            "series": len({e.series_instance_uid for e in entries}),
            "bytes": sum(e.size or 0 for e in entries),
            "seconds_read": round(read - started, 3),
            "seconds_render": round(seconds_render, 3),
            "records_per_second": _per_second(len(entries), seconds_render),
            "spool": MetadataValue.path(str(out)),
            "manifest": MetadataValue.path(str(path)),
        },
    )


# ------------------------------------------------------------------------------------------------------
# <source>/staged


def materialize_staged(
    context: AssetExecutionContext, plan: MosaiqPlan, dicom: DicomNetwork, storage: BackupStorage
) -> MaterializeResult:
    """C-STORE every record of the partition to the staging SCP over one association."""
    alias, partition, stage = plan.alias, context.partition_key, plan.stage
    rt_records = plan.upstream(storage, context, "rt_records")
    records = list(read_manifest(rt_records.path))
    out = plan.spool(storage, context.instance, partition)
    folder = plan.folder(storage, context.instance, partition)
    path = folder / "staged.jsonl"
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
            alias, f"C-STORE to staging {plan.staging.alias} ({stage})", partition, error
        ) from error
    failed = {o.sop_instance_uid for o in result.failed}
    entries = [e.with_state(FAILED if e.sop_instance_uid in failed else PENDING) for e in records]
    write_entries(path, entries)
    metadata: dict[str, Any] = {
        "stored": len(result.stored),
        "failed": len(result.failed),
        "warnings": len(result.warnings),
        "seconds_store": round(result.seconds, 3),
        "records_per_second": _per_second(len(result.stored), result.seconds),
        "staging_peer": str(stage),
        "manifest": MetadataValue.path(str(path)),
    }
    if result.failed:
        first = result.failed[0]
        metadata["failed_uids"] = uids_metadata(sorted(failed))
        metadata |= {  # what the run-failure alert names (defs/alerts.py)
            "source": alias,
            "peer": str(stage),
            "operation": "C-STORE",
            "dicom_status": f"0x{first.status:04X}" if first.status is not None else "none",
            "status_meaning": first.status_meaning or "none",
        }
        raise Failure(
            description=(
                f"{alias} backup, C-STORE of partition {partition} to staging {plan.staging.alias} "
                f"({stage}): {len(result.failed)} of {len(records)} records refused, first "
                f"{first.sop_instance_uid}: {first.status_meaning}"
                + (f" ({first.error_comment})" if first.error_comment else "")
                + f"; check {stage.aet}'s log and disk, then re-run {plan.names.job} for {partition}"
            ),
            metadata=metadata,
        )
    context.log.info(
        f"{alias} {partition}: stored {len(result.stored)} records on {stage} ({result.seconds:.2f} s)"
    )
    seconds = rt_records.seconds + result.seconds
    save_handle(_handle(path, alias, partition, _count(entries), seconds), folder, "staged")
    return MaterializeResult(metadata=metadata)


# ------------------------------------------------------------------------------------------------------
# <source>/archived


@dataclass
class MoveTally:
    """What the C-MOVEs of one run from staging to main did."""

    requests: int = 0
    completed: int = 0
    warnings: int = 0
    sub_failed: int = 0
    failed: set[str] = field(default_factory=set)
    unnamed: list[str] = field(default_factory=list)  # records of refused requests the staging did not list
    errors: list[DicomError] = field(default_factory=list)

    def add(self, result: RetrieveResult) -> None:
        self.completed += result.completed
        self.warnings += result.warning
        self.sub_failed += result.failed

    def refused(self, error: SubOperationError, chunk: list[str]) -> RetrieveResult:
        self.errors.append(error)
        if error.result.failed_sop_instance_uids:
            self.failed.update(error.result.failed_sop_instance_uids)
        else:
            self.unnamed.extend(chunk)
        return error.result


MoveRequest = tuple[tuple[str, str] | None, list[str]]  # (study, series) or None for a list of instances


def move_requests(plan: MosaiqPlan, records: list[InstanceEntry]) -> tuple[list[MoveRequest], int]:
    """The run's C-MOVE requests and how many series they cover.

    IMAGE level with the run's own UIDs: staging may hold other records of a series (earlier renders),
    which this run must neither move nor count. An Orthanc staging resolves instances by SOP Instance UID
    alone, so one request carries up to MAX_UIDS_PER_REQUEST records of any series (600 per-series requests
    took 17.5 s for 2,100 records, lists 9 s); any other SCP gets one hierarchical request per series."""
    by_series: dict[tuple[str, str], list[str]] = {}
    for e in records:
        by_series.setdefault((e.study_instance_uid, e.series_instance_uid), []).append(e.sop_instance_uid)
    if plan.staging.type == "orthanc":
        requests: list[MoveRequest] = [
            (None, chunk) for chunk in chunks([e.sop_instance_uid for e in records])
        ]
    else:
        requests = [(key, chunk) for key, uids in by_series.items() for chunk in chunks(uids)]
    return requests, len(by_series)


def move_to_archive(
    plan: MosaiqPlan, dicom: DicomNetwork, requests: list[MoveRequest], partition: str
) -> MoveTally:
    """Every request over one association from staging, with sub-operation accounting."""
    tally = MoveTally(requests=len(requests))
    try:
        with RetrieveSession(
            plan.stage,
            dicom.calling_aet,
            dicom.timeouts,
            operation="C-MOVE",
            move_destination=plan.archive.aet,
        ) as session:
            for series_key, chunk in requests:
                try:
                    result = (
                        session.retrieve_instances(chunk, expected_count=len(chunk))
                        if series_key is None
                        else session.retrieve(*series_key, chunk, expected_count=len(chunk))
                    )
                except SubOperationError as error:
                    result = tally.refused(error, chunk)
                tally.add(result)
    except DicomError as error:
        raise backup_failure(
            plan.alias,
            f"C-MOVE from staging {plan.staging.alias} to {plan.archive.aet}",
            partition,
            error,
            {"moved_before_error": tally.completed},
        ) from error
    resolve_unnamed(plan, dicom, tally)
    return tally


def resolve_unnamed(plan: MosaiqPlan, dicom: DicomNetwork, tally: MoveTally) -> None:
    """A refused request without a Failed SOP Instance UID List: main says which of its records arrived
    (a 200-record request must not count as 200 failures for one missing record). Main unreachable: all
    of them count as failed, and the next run moves them again."""
    if not tally.unnamed:
        return
    try:
        with find_session(plan.archive, dicom) as main:
            arrived = {r.sop_instance_uid for r in main.instances_by_uid(tally.unnamed)}
    except DicomError:
        arrived = set()
    tally.failed.update(uid for uid in tally.unnamed if uid not in arrived)


def materialize_archived(
    context: AssetExecutionContext, plan: MosaiqPlan, dicom: DicomNetwork, storage: BackupStorage
) -> MaterializeResult:
    """IMAGE-level C-MOVEs of the run's records from staging to the main archive."""
    alias, partition = plan.alias, context.partition_key
    staged = plan.upstream(storage, context, "staged")
    records = list(read_manifest(staged.path))
    folder = plan.folder(storage, context.instance, partition)
    path = folder / "archived.jsonl"
    started = time.monotonic()
    requests, series = move_requests(plan, records)
    tally = move_to_archive(plan, dicom, requests, partition)
    seconds = time.monotonic() - started
    entries = [e.with_state(FAILED if e.sop_instance_uid in tally.failed else MOVED) for e in records]
    write_entries(path, entries)
    metadata: dict[str, Any] = {
        # `records` is the volume baseline's key (the Q/R sources' instances_found); moved / failed /
        # deferred / already_archived / seconds_total / bytes follow the archived metadata contract
        # that monitoring reads. Nothing is ever deferred or skipped as already archived here: every
        # record of the day is moved (the archive keeps one copy of a UID).
        # The day's own figures first (a Mosaiq run is always one day).
        "records": len(records),
        "already_archived": 0,
        "moved": tally.completed,
        "deferred": 0,
        "failed": len(tally.failed),
        "seconds_total": round(staged.seconds + seconds, 3),
        "bytes": sum(e.size or 0 for e in records),
        "series": series,
        "move_requests": tally.requests,
        "sub_operations_completed": tally.completed,
        "sub_operations_failed": tally.sub_failed,
        "sub_operations_warning": tally.warnings,
        "seconds_move": round(seconds, 3),
        "records_per_second": _per_second(tally.completed, seconds),
        "staging_peer": str(plan.stage),
        "archive_peer": str(plan.archive),
        "manifest": MetadataValue.path(str(path)),
    }
    if tally.failed:
        metadata["failed_uids"] = uids_metadata(sorted(tally.failed))
        raise backup_failure(
            alias,
            f"C-MOVE from staging {plan.staging.alias} to {plan.archive.aet} ({len(tally.failed)} of "
            f"{len(records)} records not moved)",
            partition,
            explain_destination(tally.errors[0], plan.archive, dicom),
            metadata,
        )
    context.log.info(
        f"{alias} {partition}: moved {tally.completed} records in {series} series to "
        f"{plan.archive.aet} ({seconds:.2f} s)"
    )
    save_handle(
        _handle(path, alias, partition, _count(entries), staged.seconds + seconds), folder, "archived"
    )
    return MaterializeResult(metadata=metadata)


# ------------------------------------------------------------------------------------------------------
# Checks


def check_manifests(
    context: AssetCheckExecutionContext, plan: MosaiqPlan, storage: BackupStorage, asset: str
) -> dict[str, Path | None]:
    """The days the check judges (the run's, else the latest materialized one) and each day's manifest
    `<asset>.jsonl` (None when missing). Mosaiq runs cover one day each (BackfillPolicy.multi_run(1))."""
    days = check_partitions(context, plan.names.key(asset))
    paths = {day: plan.folder(storage, context.instance, day) / f"{asset}.jsonl" for day in days}
    return {day: path if path.exists() else None for day, path in paths.items()}


def no_manifest(plan: MosaiqPlan, partition: str | None, name: str) -> AssetCheckResult:
    return AssetCheckResult(
        passed=False,
        description=f"no {name} for partition {partition}: run {plan.names.job} for it first",
        metadata={"partition": str(partition)},
    )


def evaluate_conformance(
    context: AssetCheckExecutionContext, plan: MosaiqPlan, storage: BackupStorage
) -> dict[str, AssetCheckResult]:
    return {
        day: conformance_day(context, plan, storage, day, path)
        if path
        else no_manifest(plan, day, "rt_records.jsonl")
        for day, path in check_manifests(context, plan, storage, "rt_records").items()
    }


def conformance_day(
    context: AssetCheckExecutionContext, plan: MosaiqPlan, storage: BackupStorage, partition: str, path: Path
) -> AssetCheckResult:
    entries = list(read_manifest(path))
    if not entries:
        return nothing_to_verify(partition, "records")
    out = plan.spool(storage, context.instance, partition)
    bad: dict[str, list[str]] = {}
    files: dict[Path, str] = {}
    for entry in entries:
        file = record_path(out, entry.sop_instance_uid)
        if file.exists():
            files[file] = entry.sop_instance_uid
        else:
            bad[entry.sop_instance_uid] = ["record file missing from the spool"]
    checked = 0
    for file, found in check_rt_record_files(list(files)):
        checked += 1
        if found:
            bad[files[file]] = [str(f) for f in found[:5]]
    metadata: dict[str, Any] = {
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
            description=(
                f"{partition}: {len(bad)} of {checked} records are not conformant; {uid}: {findings[0]}"
            ),
            metadata=metadata,
        )
    return AssetCheckResult(
        passed=True, description=f"{partition}: all {checked} records conformant", metadata=metadata
    )


def evaluate_complete_in_archive(
    context: AssetCheckExecutionContext, plan: MosaiqPlan, dicom: DicomNetwork, storage: BackupStorage
) -> dict[str, AssetCheckResult]:
    paths = check_manifests(context, plan, storage, "archived")
    found = {day: list(read_manifest(path)) for day, path in paths.items() if path is not None}
    results = presence_results(plan.alias, found, plan.archive, dicom, noun="records") if found else {}
    return {
        day: results[day] if day in results else no_manifest(plan, day, "archived.jsonl") for day in paths
    }


def evaluate_content_verified(
    context: AssetCheckExecutionContext, plan: MosaiqPlan, dicom: DicomNetwork, storage: BackupStorage
) -> dict[str, AssetCheckResult]:
    return {
        day: content_day(context, plan, dicom, storage, day, path)
        if path
        else no_manifest(plan, day, "archived.jsonl")
        for day, path in check_manifests(context, plan, storage, "archived").items()
    }


def content_day(
    context: AssetCheckExecutionContext,
    plan: MosaiqPlan,
    dicom: DicomNetwork,
    storage: BackupStorage,
    partition: str,
    path: Path,
) -> AssetCheckResult:
    """Every record C-GET from main has its recorded digest; a pass writes verified.jsonl, the staging
    cleanup's evidence, and a failure removes it."""
    archive = plan.archive
    entries = list(read_manifest(path))
    if not entries:
        mark_verified(path.parent, entries)  # nothing on staging waits for this day
        return nothing_to_verify(partition, "records")
    compared = f"content digests of {len(entries)} records: recorded at render vs C-GET from {archive}"
    try:
        result = verify_recorded_digests(
            entries,
            archive=archive,
            calling_aet=dicom.calling_aet,
            timeouts=dicom.timeouts,
            spool_dir=storage.spool_dir(context.instance, plan.alias, context.run.run_id, "verify"),
        )
    except DicomError as error:
        return peer_unreachable_result("retrieve for verification", error, partition, compared)
    metadata: dict[str, Any] = {
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
        mark_verified(path.parent, entries)  # what the staging cleanup trusts (backup.staging)
        plan.release_spool(storage, context.instance, partition)
        return AssetCheckResult(
            passed=True,
            description=f"{partition}: all {result.matched} records identical on {archive}",
            metadata=metadata,
        )
    mark_verified(path.parent, None)
    bad = result.mismatched_uids or result.missing_on_archive
    return AssetCheckResult(
        passed=False,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"{partition}: {len(result.mismatched_uids)} differ, {len(result.missing_on_archive)} missing "
            f"on {archive}; first: {', '.join(bad[:5])}" + (f"; {result.errors[0]}" if result.errors else "")
        ),
        metadata=metadata,
    )


# ------------------------------------------------------------------------------------------------------
# The wiring


MOSAIQ_CHECKS = (
    ("rt_records", "conformance"),
    ("archived", "complete_in_archive"),
    ("archived", "content_verified"),
    ("archived", "volume_vs_baseline"),
    ("archived", "duration_vs_baseline"),
)


def mosaiq_checks(plan: MosaiqPlan, partitions_def: DailyPartitionsDefinition) -> list[AssetChecksDefinition]:
    """`conformance` on rt_records, `complete_in_archive` and `content_verified` on archived, per day."""
    names = plan.names
    conformance_spec = day_check_spec(
        names.rt_records, "conformance", partitions_def, CONFORMANCE_DESCRIPTION
    )

    @multi_asset_check(
        specs=[conformance_spec], can_subset=True, name=check_op_name(names.rt_records, "conformance")
    )
    def conformance(
        context: AssetCheckExecutionContext, backup_storage: BackupStorage
    ) -> Iterator[AssetCheckEvaluation]:
        yield from log_day_results(
            context, conformance_spec, evaluate_conformance(context, plan, backup_storage)
        )

    complete_spec = day_check_spec(
        names.archived,
        "complete_in_archive",
        partitions_def,
        f"Every record of the day is on {plan.archive_alias}, by IMAGE-level C-FIND on {plan.archive}; a "
        "day without records passes.",
        blocking=True,
    )

    @multi_asset_check(
        specs=[complete_spec], can_subset=True, name=check_op_name(names.archived, "complete_in_archive")
    )
    def complete_in_archive(
        context: AssetCheckExecutionContext, dicom: DicomNetwork, backup_storage: BackupStorage
    ) -> Iterator[AssetCheckEvaluation]:
        results = evaluate_complete_in_archive(context, plan, dicom, backup_storage)
        yield from log_day_results(context, complete_spec, results)

    content_spec = day_check_spec(
        names.archived,
        "content_verified",
        partitions_def,
        f"Every record of the day retrieved by C-GET from {plan.archive_alias} has the content digest "
        "recorded when it was rendered.",
    )

    @multi_asset_check(
        specs=[content_spec], can_subset=True, name=check_op_name(names.archived, "content_verified")
    )
    def content_verified(
        context: AssetCheckExecutionContext, dicom: DicomNetwork, backup_storage: BackupStorage
    ) -> Iterator[AssetCheckEvaluation]:
        results = evaluate_content_verified(context, plan, dicom, backup_storage)
        yield from log_day_results(context, content_spec, results)

    return [conformance, complete_in_archive, content_verified]


def _step_arguments(
    names: SourceNames, partitions_def: DailyPartitionsDefinition, policy: RetryPolicy | None
) -> dict[str, Any]:
    """What every asset of a Mosaiq source shares: one treatment day per run, retries, group, and the hook
    with which the checks a failed run planned for days it did not materialize keep their earlier results."""
    return {
        "partitions_def": partitions_def,
        "backfill_policy": BackfillPolicy.multi_run(1),
        "retry_policy": policy,
        "group_name": names.group,
        "hooks": {
            not_run_hook(
                f"{names.archived.to_python_identifier()}_checks_not_run",
                [AssetCheckKey(names.key(asset), check) for asset, check in MOSAIQ_CHECKS],
                partitions_def,
            )
        },
    }


def build_mosaiq_source_backup(
    env: EnvironmentConfig,
    source: MosaiqSource,
    partitions_def: DailyPartitionsDefinition,
    *,
    retry_policy: RetryChoice = FROM_SETTINGS,
    rules: baseline.BaselineRules = DEFAULT_RULES,
    multi_site: bool = False,
) -> Definitions:
    """Assets, checks, job and schedule backing up one Mosaiq source into the environment's main archive."""
    plan = MosaiqPlan.of(env, source, multi_site=multi_site)
    names, staging = plan.names, plan.staging
    policy = resolve_retry_policy(retry_policy, env.settings)
    step = _step_arguments(names, partitions_def, policy)
    database = with_database_key(plan.database_key)
    explained = explain_failures(policy)

    @asset(
        key=names.deliveries, kinds={"mosaiq"}, description=DELIVERIES_DESCRIPTION.format(plan=plan), **step
    )
    @explained
    @database
    def deliveries(
        context: AssetExecutionContext, database: MosaiqDatabase, backup_storage: BackupStorage
    ) -> MaterializeResult:
        return materialize_deliveries(context, plan, database, backup_storage)

    @asset(
        key=names.rt_records,
        deps=[names.deliveries],
        kinds={"dicom"},
        description=RT_RECORDS_DESCRIPTION,
        **step,
    )
    @explained
    @database
    def rt_records(
        context: AssetExecutionContext, database: MosaiqDatabase, backup_storage: BackupStorage
    ) -> MaterializeResult:
        return materialize_rt_records(context, plan, database, backup_storage)

    @asset(
        key=names.staged,
        deps=[names.rt_records],
        pool=names.pool,
        kinds={"dicom"},
        description=f"Every record C-STOREd over one association to the staging target {staging.alias} "
        f"({plan.stage}).",
        **step,
    )
    @explained
    @with_dimse_metadata
    def staged(
        context: AssetExecutionContext, dicom: DicomNetwork, backup_storage: BackupStorage
    ) -> MaterializeResult:
        return materialize_staged(context, plan, dicom, backup_storage)

    @asset(
        key=names.archived,
        deps=[names.staged],
        pool=names.pool,
        kinds={"dicom", "orthanc"},
        description=ARCHIVED_DESCRIPTION.format(plan=plan),
        **step,
    )
    @explained
    @with_dimse_metadata
    def archived(
        context: AssetExecutionContext, dicom: DicomNetwork, backup_storage: BackupStorage
    ) -> MaterializeResult:
        return materialize_archived(context, plan, dicom, backup_storage)

    baselines = baseline_checks(
        names.archived, partitions_def, rules, volume_key="records", volume_noun="records", noun="records"
    )
    return Definitions.merge(
        Definitions(
            assets=[deliveries, rt_records, staged, archived],
            asset_checks=[*mosaiq_checks(plan, partitions_def), *baselines],
        ),
        backup_job_and_schedule(
            names,
            [names.deliveries, names.rt_records, names.staged, names.archived],
            (
                f"Back up one treatment day of {source.alias} (Mosaiq) as RT Beams Treatment Records into "
                f"{plan.archive_alias} via {staging.alias}, and verify it. Launch it for a date (partition) "
                "or backfill a date range."
            ),
            env.settings,
            partitions_def,
        ),
    )


DELIVERIES_DESCRIPTION = (
    "Every delivered field of every patient treated on the partition's date "
    "({plan.settings.timezone}) in {plan.alias}, read through ODBC. Rows that cannot make a valid "
    "record are quarantined with a reason (DHS_ID, keys and codes only); QA-mode beam-ons are "
    "not deliveries. The value is deliveries.jsonl on disk."
)
RT_RECORDS_DESCRIPTION = (
    "One RT Beams Treatment Record per delivery listed by deliveries (deterministic UIDs), written "
    "into the partition's spool; the manifest records SOP UIDs and the content digest of the "
    "encoded bytes. A delivery the renderer cannot make valid is quarantined, the others proceed."
)
ARCHIVED_DESCRIPTION = (
    "Every staged record moved from {plan.staging.alias} to {plan.archive_alias} ({plan.archive.aet}) "
    "by IMAGE-level C-MOVEs of the run's own UIDs over one association (up to 200 records per "
    "request from an Orthanc staging, per series otherwise), with sub-operation accounting."
)
CONFORMANCE_DESCRIPTION = (
    "Every record file of the partition passes check_rt_record (RT Beams Treatment Record IOD: "
    "type 1/2 presence, enumerated values, control point 0 conditions)."
)


def build_mosaiq_backup_defs(
    env: EnvironmentConfig,
    *,
    start_date: str | dt.date | None = None,
    retry_policy: RetryChoice = FROM_SETTINGS,
    rules: baseline.BaselineRules = DEFAULT_RULES,
    multi_site: bool = False,
) -> Definitions:
    """The backups of every Mosaiq source of `env`, partitioned by treatment day in the site's timezone.
    Their resources (`mosaiq_<alias>`, `dicom`, `backup_storage`) come from defs/resources.build_resources."""
    partitions_def = daily_partitions(env, start_date)
    return Definitions.merge(
        *(
            build_mosaiq_source_backup(
                env, source, partitions_def, retry_policy=retry_policy, rules=rules, multi_site=multi_site
            )
            for source in env.mosaiq_sources.values()
        )
    )
