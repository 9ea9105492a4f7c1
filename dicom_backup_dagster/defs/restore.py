"""The `restore` job: main archive -> a destination AE, launched from the Launchpad (backup/restore.py does
the work; docs/decisions/restore.md has the facts it relies on).

The PatientID an operator may type is in the run config only: it is a C-FIND matching key, never logged,
never in metadata, tags or alerts (the result holds counts and UIDs). No `from __future__ import
annotations`: Dagster 1.13 resolves the op's Config annotation at definition time.

Bounded associations: the C-MOVEs to a destination (main opens one association to it per request) run
while the step holds a slot of the Dagster pool `dicom_<destination AET>`, the pool the backups of that AE
use. The destination is chosen in the run config, after Dagster fixed the run's pools, so the step claims
the slot itself (`destination_slot`): in the instance's slot table (Deployment -> Concurrency shows it),
counting the runs of other jobs that hold the pool (granularity `run`) against its limit.
"""

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    Config,
    DagsterRunStatus,
    DailyPartitionsDefinition,
    Definitions,
    Failure,
    MetadataValue,
    OpExecutionContext,
    RunsFilter,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from dicom_backup_dagster.backup import restore as core
from dicom_backup_dagster.backup.manifest import InstanceEntry, read_manifest
from dicom_backup_dagster.backup.restore import RestoreResult, Selection
from dicom_backup_dagster.backup.staging import staging_client
from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.config.models import BackupTarget
from dicom_backup_dagster.defs.checks import entries_by_day, label_days, latest_metadata_value
from dicom_backup_dagster.defs.common import daily_partitions
from dicom_backup_dagster.defs.keys import KIND_TAG, SourceNames
from dicom_backup_dagster.defs.resources import BackupStorage, DicomNetwork
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.dicom.scp import StorageSCP
from dicom_backup_dagster.notify.settings import hint
from dicom_backup_dagster.orthanc import OrthancClient, OrthancRestError

RESTORE_JOB = "restore"
RESTORE_OP = "restore_studies"
POOL_POLL_SECONDS = 2.0  # how often a step waiting for its destination's pool looks again
POOL_TAG_PREFIX = "dagster/pool/"  # Dagster's run tag per pool of a run's steps (granularity run)
ACTIVE = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


class RestoreConfig(Config):
    """What to restore and where: study_uids; or patient_id (+ dates, modalities); or source + dates."""

    destination: str = Field(description="alias of a restore target, source or backup target (not main)")
    study_uids: list[str] = Field(default=[], description="Study Instance UIDs (0020,000D) to restore")
    patient_id: str = Field(default="", description="PatientID (0010,0020): every study of the patient")
    source: str = Field(default="", description="source alias: what its backups archived on the days")
    start_date: str = Field(default="", description="first StudyDate (day partition), YYYY-MM-DD")
    end_date: str = Field(default="", description="last StudyDate (day partition), YYYY-MM-DD")
    modalities: list[str] = Field(default=[], description="only series of these modalities, e.g. RTPLAN")
    dry_run: bool = Field(default=False, description="count what would be restored (and its bytes)")


@dataclass(frozen=True)
class RestorePlan:
    main_alias: str
    main: Peer
    main_target: BackupTarget
    destinations: dict[str, Peer]
    sources: tuple[str, ...]
    partitions_def: DailyPartitionsDefinition
    commitment: frozenset[str] = frozenset()  # destination aliases configured for Storage Commitment
    register: bool = False  # settings.restore_registers_destinations

    @staticmethod
    def of(env: EnvironmentConfig) -> "RestorePlan":
        main = env.peers()[env.default_backup]
        return RestorePlan(
            env.default_backup,
            main,
            env.main_target,
            env.restore_destinations(),
            tuple(env.sources),
            daily_partitions(env),
            frozenset(a for a, t in env.restore_targets.items() if t.storage_commitment),
            env.settings.restore_registers_destinations,
        )

    def main_rest(self) -> OrthancClient:
        t = self.main_target
        return staging_client(t.rest_url or "", t.rest_username, t.rest_password, label=f"{t.alias} REST API")


def _date(value: str, key: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        raise Failure(f"{key} must be a date as YYYY-MM-DD", allow_retries=False) from None


def _forms(plan: RestorePlan, config: RestoreConfig) -> None:
    """Exactly one selection form, and what each form needs; a Failure says what to change."""
    forms = [f for f, v in (("study_uids", config.study_uids), ("patient_id", config.patient_id.strip()),
                            ("source", config.source.strip())) if v]  # fmt: skip
    if len(forms) != 1:
        given = f" (given: {', '.join(forms)})" if forms else ""
        raise Failure(
            f"give exactly one of study_uids, patient_id or source in the run config{given}",
            allow_retries=False,
        )
    source = config.source.strip()
    if source and source not in plan.sources:
        raise Failure(
            f"unknown source {source!r}{hint(source, plan.sources)}: use one of {', '.join(plan.sources)}",
            allow_retries=False,
        )
    if source and not config.start_date:
        raise Failure("a restore by source needs start_date (and end_date, default: start_date)",
                      allow_retries=False)  # fmt: skip
    if source and config.modalities:
        raise Failure("modalities go with patient_id or study_uids, not with source", allow_retries=False)


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
    _forms(plan, config)
    start, end = _date(config.start_date, "start_date"), _date(config.end_date, "end_date")
    if start and end and end < start:
        raise Failure(f"end_date {end} is before start_date {start}", allow_retries=False)
    selection = Selection(
        study_instance_uids=tuple(u.strip() for u in config.study_uids),
        patient_id=config.patient_id.strip(),
        start=start,
        end=end or (start if config.source.strip() else None),
        modalities=tuple(m.strip().upper() for m in config.modalities),
        source=config.source.strip(),
    )
    return plan.destinations[config.destination], selection


def recorded_entries(
    context: OpExecutionContext, plan: RestorePlan, selection: Selection
) -> tuple[list[InstanceEntry], list[str]]:
    """What the source's backups recorded as archived on each day of the selection: the latest
    materialization of `<source>/archived` of the day names its manifest. (entries, days never backed up)."""
    assert selection.start is not None and selection.end is not None
    key = SourceNames(selection.source).archived
    entries: list[InstanceEntry] = []
    not_backed_up: list[str] = []
    day = selection.start
    while day <= selection.end:
        partition = day.isoformat()
        path = latest_metadata_value(context.instance, key, partition, "manifest")
        if not isinstance(path, str) or not Path(path).exists():
            not_backed_up.append(partition)
        else:
            days = label_days(Path(path).parent.name, plan.partitions_def)
            entries.extend(entries_by_day(read_manifest(path), days).get(partition, []))
        day += dt.timedelta(days=1)
    return core.recorded(entries), not_backed_up


def select(
    context: OpExecutionContext, plan: RestorePlan, selection: Selection, session: FindSession
) -> tuple[list[InstanceEntry], list[str]]:
    """(entries on main, UIDs recorded as archived but not on main); a Failure when nothing matches."""
    gone: list[str] = []
    if not selection.source:
        entries = core.resolve(session, selection)
    else:
        wanted, not_backed_up = recorded_entries(context, plan, selection)
        if not_backed_up:
            context.log.warning(
                f"{selection.source}: no backup recorded for {len(not_backed_up)} of the days "
                f"({', '.join(not_backed_up[:10])}): run {SourceNames(selection.source).job} for them"
            )
        entries, gone = core.resolve_recorded(session, wanted)
    if not entries and not gone:
        raise Failure(
            f"nothing on {plan.main_alias} matches the selection: check the UIDs, PatientID, source or dates",
            allow_retries=False,
        )
    return entries, gone


@contextmanager
def destination_slot(context: OpExecutionContext, pool: str) -> Iterator[None]:
    """Hold one slot of `pool` (Dagster's per-AE pool) while the body runs; wait while the pool is full:
    slots claimed by other steps plus active runs of other jobs whose steps use the pool (granularity
    `run` counts runs, not slots) reach its limit. A pool without a limit does not wait."""
    storage = context.instance.event_log_storage
    run_id, step = context.run_id, RESTORE_OP
    if not storage.supports_global_concurrency_limits:
        yield
        return
    default = context.instance.global_op_concurrency_default_limit
    if default and pool not in {limit.name for limit in storage.get_pool_limits()}:
        storage.initialize_concurrency_limit_to_default(pool)  # as Dagster does for a pool first seen
    waited_since: float | None = None
    while True:
        limit = storage.get_concurrency_info(pool).slot_count
        if limit <= 0:
            context.log.info(f"pool {pool} has no limit: associations to the destination are not bounded")
            yield
            return
        if storage.claim_concurrency_slot(pool, run_id, step).is_claimed:
            runs = context.instance.get_runs(
                RunsFilter(statuses=ACTIVE, tags={f"{POOL_TAG_PREFIX}{pool}": "true"})
            )
            holders = storage.get_concurrency_info(pool).active_slot_count
            if holders + len([r for r in runs if r.run_id != run_id]) <= limit:
                break
            storage.free_concurrency_slot_for_step(run_id, step)
        if waited_since is None:
            waited_since = time.monotonic()
            context.log.info(f"waiting for a slot in pool {pool} (limit {limit}): other runs hold it")
        time.sleep(POOL_POLL_SECONDS)
    if waited_since is not None:
        context.log.info(f"pool {pool}: slot after {time.monotonic() - waited_since:.1f} s")
    try:
        yield
    finally:
        storage.free_concurrency_slot_for_step(run_id, step)


def restore_metadata(result: RestoreResult) -> dict[str, Any]:
    outcome, commitment = result.outcome, result.commitment
    metadata: dict[str, Any] = {
        "result": result.summary(),
        "destination": result.destination,
        "dry_run": result.dry_run,
        "studies": result.studies,
        "series": result.series,
        "instances": result.selected,
        "moved": outcome.completed if outcome else 0,
        "present_at_destination": result.present,
        "digests_matched": result.content.matched if result.content else 0,
    }
    if result.sizes is not None:
        metadata["bytes"] = result.sizes.bytes
        metadata["uncompressed_bytes"] = result.sizes.uncompressed_bytes
    if commitment is not None:
        metadata["committed"] = len(commitment.committed)
        metadata["commitment_failed"] = len(commitment.failed)
    metadata.update({f"seconds_{phase}": seconds for phase, seconds in result.seconds.items()})
    if result.missing_on_main:
        metadata["missing_on_main"] = MetadataValue.json(result.missing_on_main[:100])
    metadata["missing_uids"] = MetadataValue.json(result.missing_uids)
    metadata["notes"] = MetadataValue.json(result.notes)
    return metadata


def failure_of(result: RestoreResult, destination: Peer, main_alias: str) -> Failure:
    problems = list(result.errors)
    if result.missing_on_main:
        problems.append(
            f"{len(result.missing_on_main)} instances recorded as archived are not on {main_alias}: "
            f"{', '.join(result.missing_on_main[:10])} (see the reconciliation sweep)"
        )
    if result.missing_uids:
        problems.append(
            f"{len(result.missing_uids)} instances not found at {destination}: "
            f"{', '.join(result.missing_uids[:10])}"
        )
    if result.content is not None and not result.content.passed:
        problems.append(f"content digests differ: {', '.join(result.content.mismatched_uids[:10])}")
    if result.commitment is not None and result.commitment.failed:
        failed = result.commitment.failed
        problems.append(
            f"{len(failed)} instances not committed by {destination}: "
            + ", ".join(f"{f.sop_instance_uid} ({f.meaning})" for f in failed[:10])
        )
    return Failure(
        f"restore to {destination} incomplete: {'; '.join(problems)}", metadata=restore_metadata(result)
    )


def prepare_destination(context: OpExecutionContext, plan: RestorePlan, destination: Peer) -> None:
    """With settings.restore_registers_destinations, add a destination main lacks to its DicomModalities."""
    if not plan.register:
        return
    try:
        with plan.main_rest() as client:
            done = core.register_destination(client, destination)
    except OrthancRestError as error:
        raise Failure(
            f"registering {destination} on {plan.main_alias}: {error}", allow_retries=False
        ) from None
    if done:
        context.log.info(done)


@contextmanager
def commitment_listener(
    plan: RestorePlan, alias: str, dicom: DicomNetwork, spool: Path
) -> Iterator[StorageSCP | None]:
    """Our AE listening for the destination's N-EVENT-REPORT, when `alias` is configured for commitment."""
    if alias not in plan.commitment:
        yield None
        return
    if not dicom.listen_port:
        raise Failure(
            f"restore target {alias} has storage_commitment = true, but script_ae.port is not set: set the "
            "port our AE listens on for the destination's report (and register it there)",
            allow_retries=False,
        )
    listener = StorageSCP(dicom.calling_aet, spool, host=dicom.listen_host, port=dicom.listen_port,
                          timeouts=dicom.timeouts)  # fmt: skip
    try:
        listener.start()
    except (OSError, DicomError) as error:
        raise Failure(
            f"cannot listen on {dicom.listen_host}:{dicom.listen_port} (script_ae.port) for the storage "
            f"commitment report: {error}"
        ) from None
    try:
        yield listener
    finally:
        listener.stop()


def run_restore(
    context: OpExecutionContext,
    plan: RestorePlan,
    config: RestoreConfig,
    dicom: DicomNetwork,
    storage: BackupStorage,
) -> RestoreResult:
    alias = config.destination
    destination, selection = selection_of(plan, config)
    with FindSession(plan.main, dicom.calling_aet, dicom.timeouts) as session:
        entries, gone = select(context, plan, selection, session)
    selected = sum(1 for e in entries if e.state == core.PENDING)
    context.log.info(f"restore to {destination}: {selected} instances selected on {plan.main_alias}")
    spool = storage.spool_dir(context.instance, "restore", context.run_id, "verify")
    if config.dry_run:
        result = core.restore(entries, main=plan.main, destination=destination, calling_aet=dicom.calling_aet,
                              timeouts=dicom.timeouts, dry_run=True)  # fmt: skip
        try:
            with plan.main_rest() as client:
                result.sizes = core.sizes_on_main(client, entries)
        except OrthancRestError as error:
            raise Failure(f"dry run: sizes from {plan.main_alias}'s REST statistics: {error}") from None
    else:
        prepare_destination(context, plan, destination)
        reports = spool.with_name(spool.name + "-commitment")
        with (
            destination_slot(context, f"dicom_{destination.aet}"),
            commitment_listener(plan, alias, dicom, reports) as listener,
        ):
            result = core.restore(
                entries,
                main=plan.main,
                destination=destination,
                calling_aet=dicom.calling_aet,
                timeouts=dicom.timeouts,
                spool_dir=spool,
                commitment_listener=listener,
            )
    result.missing_on_main = gone
    if not result.passed:
        raise failure_of(result, destination, plan.main_alias)
    context.log.info(result.summary())
    context.add_output_metadata(restore_metadata(result))
    return result


def build_restore_defs(env: EnvironmentConfig) -> Definitions:
    """The `restore` job (one op), for the Launchpad."""
    plan = RestorePlan.of(env)

    @op(name=RESTORE_OP, description=f"Restore from {plan.main_alias} to a destination AE, verified.")
    def restore_op(
        context: OpExecutionContext, config: RestoreConfig, dicom: DicomNetwork, backup_storage: BackupStorage
    ) -> None:
        run_restore(context, plan, config, dicom, backup_storage)

    @job(
        name=RESTORE_JOB,
        description=(
            f"Give data back: C-MOVE from {plan.main_alias} to a destination (in its pool dicom_<AET>), then "
            "prove it there (C-FIND, digests where it serves C-GET, Storage Commitment where configured). "
            "Launchpad: ops: restore_studies: config: destination, study_uids | patient_id (+ start_date, "
            "end_date, modalities) | source + start_date (+ end_date), dry_run."
        ),
        tags={KIND_TAG: "restore"},
        executor_def=in_process_executor,
    )
    def restore_job() -> None:
        restore_op()

    return Definitions(jobs=[restore_job])
