"""Executing a plan: C-MOVE source -> archive, or C-GET into a spool then C-STORE to the archive.

Requests go out over one reused association to the source (opening one per request costs a round trip
and, on a busy PACS, an association slot). A study whose instances are all pending is asked for at STUDY
level (for a C-MOVE the source opens one sub-association to the archive per request, and a PACS looks the
request up in its index: one per study, not one per series); otherwise a fully pending series at SERIES
level with the expected count, and a partial series (some already archived, or cut by max_uids_per_run)
at IMAGE level with a list of SOP Instance UIDs (PS3.4 C.2.2.2.2 list matching).

Sub-operation counts are only the first rung of the verification ladder: `finalize()` asks the archive
(C-FIND, IMAGE level) which pending instances actually arrived and marks each MOVED or FAILED, so the
archived manifest is true even when a source miscounts or the archive went away mid-run.

Error policy: a broken association (source down, rejected, timeout) or 0xA801 (destination unknown, a
configuration error that every further request would repeat) stops the transfer at once; other
sub-operation failures are recorded and the next series is tried, up to `max_consecutive_errors` in a row
(an archive that is out of resources would fail them all). The caller decides what to raise.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from pydicom.dataset import Dataset
from pynetdicom import build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from dicom_backup_dagster.dicom.association import associate
from dicom_backup_dagster.dicom.digest import content_digest
from dicom_backup_dagster.dicom.errors import (
    AssociationError,
    DicomError,
    DimseTimeout,
    StoreError,
    SubOperationError,
)
from dicom_backup_dagster.dicom.network import Peer, Timeouts, make_ae
from dicom_backup_dagster.dicom.retrieve import (
    RetrieveResult,
    chunks,
    collect_responses,
    evaluate,
    instance_list_identifier,
    retrieve_identifier,
)
from dicom_backup_dagster.dicom.sop_classes import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from dicom_backup_dagster.dicom.spool import (
    STORAGE_TRANSFER_SYNTAXES,
    ReceivedInstance,
    retrieve_storage_classes,
    write_received,
)
from dicom_backup_dagster.dicom.store import c_store_files

from .errors import MOVE_DESTINATION_UNKNOWN
from .manifest import FAILED, MOVED, PENDING, InstanceEntry, ManifestWriter, by_series, by_study

Transfer = Literal["c-move", "c-get"]


class RetrieveSession:
    """One association to a Query/Retrieve SCP for many C-MOVEs (PS3.4 C.4.2) or C-GETs (C.4.3).

    The association is opened on first use and re-opened after an error aborted it. For C-GET the
    sub-operation C-STOREs arrive on this association and are written to the spool dir given per request.
    """

    def __init__(
        self,
        peer: Peer,
        calling_aet: str,
        timeouts: Timeouts,
        *,
        operation: Literal["C-MOVE", "C-GET"],
        move_destination: str | None = None,
    ) -> None:
        if operation == "C-MOVE" and not move_destination:
            raise ValueError("a C-MOVE session needs a move destination AE title")
        self.peer = peer
        self.calling_aet = calling_aet
        self.timeouts = timeouts
        self.operation = operation
        self.move_destination = move_destination
        self.associations_opened = 0
        self._assoc: Association | None = None
        self._received: list[ReceivedInstance] = []
        self._spool: Path | None = None

    def _open(self) -> Association:
        ae = make_ae(self.calling_aet, self.timeouts)
        if self.operation == "C-MOVE":
            sop_class = StudyRootQueryRetrieveInformationModelMove
            ae.add_requested_context(sop_class)
            assoc = associate(
                ae,
                self.peer,
                timeouts=self.timeouts,
                operation="C-MOVE",
                required_abstract_syntaxes=[sop_class],
            )
        else:
            sop_class = StudyRootQueryRetrieveInformationModelGet
            ae.add_requested_context(sop_class)
            classes = retrieve_storage_classes()
            for uid in classes:
                ae.add_requested_context(uid, STORAGE_TRANSFER_SYNTAXES)
            assoc = associate(
                ae,
                self.peer,
                timeouts=self.timeouts,
                operation="C-GET",
                ext_neg=[build_role(uid, scp_role=True) for uid in classes],
                evt_handlers=[(evt.EVT_C_STORE, self._on_c_store)],
                required_abstract_syntaxes=[sop_class],
            )
        self.associations_opened += 1
        return assoc

    def _on_c_store(self, event: Event) -> int:
        if self._spool is None:
            return 0xA700  # an unsolicited C-STORE: nowhere to put it
        try:
            self._received.append(write_received(event, self._spool))
        except OSError:
            return 0xA700  # out of resources: the peer counts it as a failed sub-operation
        return 0x0000

    def __enter__(self) -> RetrieveSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(abort=exc_type is not None)

    def close(self, abort: bool = False) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.abort() if abort else assoc.release()

    def retrieve(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uids: Sequence[str] = (),
        *,
        expected_count: int | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> RetrieveResult:
        """One C-MOVE/C-GET; raises like dicom.move.c_move (SubOperationError carries `.result`)."""
        _, identifier = retrieve_identifier(study_instance_uid, series_instance_uid, sop_instance_uids)
        return self._exchange(identifier, expected_count, spool_dir)

    def retrieve_instances(
        self,
        sop_instance_uids: Sequence[str],
        *,
        expected_count: int | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> RetrieveResult:
        """One C-MOVE/C-GET of up to MAX_UIDS_PER_REQUEST instances named by SOP Instance UID alone, in any
        series or study (`instance_list_identifier`: for Orthanc peers only)."""
        return self._exchange(instance_list_identifier(sop_instance_uids), expected_count, spool_dir)

    def _exchange(
        self,
        identifier: Dataset,
        expected_count: int | None,
        spool_dir: str | os.PathLike[str] | None,
    ) -> RetrieveResult:
        if self.operation == "C-GET":
            if spool_dir is None:
                raise ValueError("a C-GET needs a spool dir")
            self._spool = Path(spool_dir)
            self._spool.mkdir(parents=True, exist_ok=True)
        self._received = []
        if self._assoc is None or not self._assoc.is_established:
            self._assoc = self._open()
        assoc = self._assoc
        started = time.monotonic()
        try:
            if self.operation == "C-MOVE":
                assert self.move_destination is not None
                responses = assoc.send_c_move(
                    identifier, self.move_destination, StudyRootQueryRetrieveInformationModelMove
                )
            else:
                responses = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
            final, final_identifier, last_pending = collect_responses(
                responses, assoc, self.peer, self.operation, self.timeouts
            )
        except BaseException:
            self.close(abort=True)
            raise
        finally:
            self._spool = None  # a late C-STORE after the response is refused, not written anywhere
        return evaluate(
            self.peer,
            self.operation,
            final,
            final_identifier,
            last_pending,
            seconds=time.monotonic() - started,
            expected_count=expected_count,
            allow_warnings=False,
            received=list(self._received),
            advice=self._advice(),
        )

    def _advice(self) -> dict[int, str]:
        dest = self.move_destination or self.calling_aet
        return {
            MOVE_DESTINATION_UNKNOWN: (
                f"register the move destination AE {dest} (AE title, host and port) on {self.peer.aet}"
            ),
            0xA700: (
                f"{self.peer.aet} could not run the sub-operations: check that {dest} accepts associations "
                f"from calling AE {self.peer.aet} and has disk space, and {self.peer.aet}'s log"
            ),
        }


@dataclass(frozen=True)
class Received:
    """What passed through us on the C-GET path (so the archived manifest can say it)."""

    transfer_syntax_uid: str
    size: int
    digest: str


@dataclass
class TransferOutcome:
    requests: int = 0
    requested_instances: int = 0
    completed: int = 0  # sub-operations the source reported completed (C-MOVE) / instances stored (C-GET)
    reported_failed_uids: set[str] = field(default_factory=set)
    errors: list[DicomError] = field(default_factory=list)
    stopped_early: bool = False
    bytes: int | None = None  # known on the C-GET path only
    retrieve_seconds: float = 0.0
    store_seconds: float = 0.0
    associations: int = 0
    received: dict[str, Received] = field(default_factory=dict)

    @property
    def fatal(self) -> DicomError | None:
        """The error that stopped the transfer, if one did."""
        return self.errors[-1] if self.stopped_early and self.errors else None


def _requests(entries: list[InstanceEntry]) -> list[tuple[str | None, list[str], int]]:
    """(series UID or None, SOP UIDs, expected count) requests for one study: STUDY level when every
    instance we know of is pending (one request, and one sub-association from the source to the archive,
    instead of one per series), else per series: SERIES level when the whole series is pending, IMAGE
    level in chunks otherwise."""
    pending_count = sum(1 for e in entries if e.state == PENDING)
    if pending_count == 0:
        return []
    if pending_count == len(entries):
        return [(None, [], pending_count)]
    requests: list[tuple[str | None, list[str], int]] = []
    for (_study, series), group in by_series(entries):
        pending = [e.sop_instance_uid for e in group if e.state == PENDING]
        if not pending:
            continue
        if len(pending) == len(group):
            requests.append((series, [], len(pending)))
            continue
        requests.extend((series, chunk, len(chunk)) for chunk in chunks(pending))
    return requests


def _stops_transfer(error: DicomError) -> bool:
    if isinstance(error, (AssociationError, DimseTimeout)):
        return True
    return error.status == MOVE_DESTINATION_UNKNOWN


def transfer(
    plan: Iterable[InstanceEntry],
    *,
    source: Peer,
    archive: Peer,
    calling_aet: str,
    timeouts: Timeouts,
    mode: Transfer,
    spool_dir: str | os.PathLike[str] | None = None,
    store_batch: int = 200,
    max_consecutive_errors: int = 3,
    on_progress: Callable[[TransferOutcome], None] | None = None,
    between_requests: Callable[[Callable[[], None]], None] | None = None,
) -> TransferOutcome:
    """Send every PENDING instance of `plan` to `archive`. Never raises for DICOM errors: they are in
    `outcome.errors` (the last one is `outcome.fatal` when it stopped the transfer).

    `between_requests(release)` is called before every request but the first and may block (clinic hours);
    before a long wait it calls `release()`, which stores the spooled batch and closes the association to
    the source (the next request opens a new one)."""
    if mode == "c-get":
        if spool_dir is None:
            raise ValueError("the c-get transfer needs a spool dir")
        Path(spool_dir).mkdir(parents=True, exist_ok=True)
    session = RetrieveSession(
        source,
        calling_aet,
        timeouts,
        operation="C-MOVE" if mode == "c-move" else "C-GET",
        move_destination=archive.aet if mode == "c-move" else None,
    )
    run = _TransferRun(
        session,
        archive=archive,
        calling_aet=calling_aet,
        timeouts=timeouts,
        mode=mode,
        spool_dir=spool_dir,
        store_batch=store_batch,
        max_consecutive_errors=max_consecutive_errors,
        on_progress=on_progress,
        between_requests=between_requests,
    )
    try:
        with session:
            run.request_all(plan)
        if run.submit():  # hands over the last batch ...
            run.submit()  # ... and waits for it
    finally:
        run.storer.shutdown(wait=True)
        run.outcome.associations = session.associations_opened
        if mode == "c-get" and spool_dir is not None:
            shutil.rmtree(spool_dir, ignore_errors=True)
    return run.outcome


class _TransferRun:
    """The state of one `transfer`: the outcome, the retrieve session and, on the C-GET path, the batch.

    C-GET path: the batch retrieved so far is stored by a worker thread while the next series is
    retrieved, so the two associations overlap instead of taking turns. Each batch has its own spool
    sub-directory: a source that sends an instance twice cannot pull a file from under the store.
    """

    def __init__(
        self,
        session: RetrieveSession,
        *,
        archive: Peer,
        calling_aet: str,
        timeouts: Timeouts,
        mode: Transfer,
        spool_dir: str | os.PathLike[str] | None,
        store_batch: int,
        max_consecutive_errors: int,
        on_progress: Callable[[TransferOutcome], None] | None,
        between_requests: Callable[[Callable[[], None]], None] | None,
    ) -> None:
        self.session = session
        self.archive = archive
        self.calling_aet = calling_aet
        self.timeouts = timeouts
        self.mode = mode
        self.spool_dir = spool_dir
        self.store_batch = store_batch
        self.max_consecutive_errors = max_consecutive_errors
        self.on_progress = on_progress
        self.between_requests = between_requests
        self.outcome = TransferOutcome(bytes=0 if mode == "c-get" else None)
        self.batch: list[ReceivedInstance] = []
        self.consecutive_errors = 0
        self.storer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="c-store")
        self.storing: Future[bool] | None = None
        self.batches = 0

    # --- retrieving -----------------------------------------------------------------------------------
    def request_all(self, plan: Iterable[InstanceEntry]) -> None:
        for study, entries in by_study(plan):
            for series, uids, expected in _requests(entries):
                if self.between_requests is not None and self.outcome.requests:
                    self.between_requests(self.release)
                    if self.outcome.stopped_early:  # the archive went away while the batch was stored
                        return
                if not self._request(study, series, uids, expected):
                    return

    def _request(self, study: str, series: str | None, uids: list[str], expected: int) -> bool:
        """One C-MOVE/C-GET and what follows from it; False when the transfer must stop."""
        outcome = self.outcome
        outcome.requests += 1
        outcome.requested_instances += expected
        started = time.monotonic()
        try:
            result = self.session.retrieve(
                study, series, uids, expected_count=expected, spool_dir=self.batch_dir()
            )
        except (AssociationError, DimseTimeout) as error:
            outcome.errors.append(error)
            outcome.stopped_early = True
            return False
        except SubOperationError as error:
            outcome.errors.append(error)
            outcome.reported_failed_uids.update(error.failed_sop_instance_uids)
            self.batch.extend(error.result.received)  # what did arrive still goes to the archive
            self.consecutive_errors += 1
            if _stops_transfer(error) or self.consecutive_errors >= self.max_consecutive_errors:
                outcome.stopped_early = True
                return False
            return True
        finally:
            outcome.retrieve_seconds += time.monotonic() - started
        self.consecutive_errors = 0
        if self.mode == "c-move":
            outcome.completed += result.completed
        else:
            self.batch.extend(result.received)
            if len(self.batch) >= self.store_batch and not self.submit():
                return False
        if self.on_progress is not None:
            self.on_progress(outcome)
        return True

    def release(self) -> None:
        """Before a long wait: store the spooled batch and close the association to the source."""
        if self.mode == "c-get":
            self.submit()
        self.session.close()

    # --- storing (C-GET path) -------------------------------------------------------------------------
    def batch_dir(self) -> Path | None:
        return Path(self.spool_dir) / f"batch-{self.batches}" if self.spool_dir is not None else None

    def submit(self) -> bool:
        """Wait for the previous store, then hand the current batch over; False if the archive is gone."""
        previous_ok = self.storing.result() if self.storing is not None else True
        self.storing = None
        if not previous_ok:
            return False
        if self.batch:
            self.storing = self.storer.submit(self.store, list(self.batch))
            self.batch.clear()
            self.batches += 1
        return True

    def store(self, items: list[ReceivedInstance]) -> bool:
        """C-STORE spooled instances to the archive; False if the archive cannot be reached at all."""
        outcome = self.outcome
        started = time.monotonic()
        try:
            for item in items:
                outcome.received[item.sop_instance_uid] = Received(
                    item.transfer_syntax_uid, item.size, content_digest(item.path)
                )
            result = c_store_files(
                self.archive,
                self.calling_aet,
                [i.path for i in items],
                raise_on_failure=False,
                timeouts=self.timeouts,
            )
        except DicomError as error:  # association to the archive refused, aborted or timed out
            outcome.errors.append(error)
            outcome.stopped_early = True
            return False
        finally:
            for item in items:
                Path(item.path).unlink(missing_ok=True)
            outcome.store_seconds += time.monotonic() - started
        stored = {o.sop_instance_uid for o in result.stored}
        outcome.completed += len(stored)
        outcome.bytes = (outcome.bytes or 0) + sum(i.size for i in items if i.sop_instance_uid in stored)
        if result.failed:
            first = result.failed[0]
            outcome.errors.append(
                StoreError(
                    self.archive,
                    f"{len(result.failed)} of {len(result.outcomes)} instances failed",
                    result=result,
                    status=first.status,
                    failed_sop_instance_uids=[o.sop_instance_uid for o in result.failed],
                )
            )
            outcome.reported_failed_uids.update(o.sop_instance_uid for o in result.failed)
        return True


@dataclass(frozen=True)
class FinalSummary:
    moved: int
    failed: int
    failed_uids: tuple[str, ...]  # at most `keep_failed` of them
    counts: dict[str, int]


def finalize(
    plan: Iterable[InstanceEntry],
    archived_uids: Callable[[str], set[str]],
    out_path: str | os.PathLike[str],
    *,
    received: dict[str, Received] | None = None,
    keep_failed: int = 100,
) -> FinalSummary:
    """Write the archived manifest: each PENDING instance becomes MOVED if the archive now has it, else
    FAILED. Only studies with pending instances are asked about."""
    received = received or {}
    moved = failed = 0
    failed_uids: list[str] = []
    with ManifestWriter(out_path) as writer:
        for study_uid, entries in by_study(plan):
            on_archive = archived_uids(study_uid) if any(e.state == PENDING for e in entries) else set()
            for entry in entries:
                if entry.state != PENDING:
                    writer.write(entry)
                    continue
                extra = received.get(entry.sop_instance_uid)
                changes = (
                    {
                        "transfer_syntax_uid": extra.transfer_syntax_uid,
                        "size": extra.size,
                        "digest": extra.digest,
                    }
                    if extra
                    else {}
                )
                if entry.sop_instance_uid in on_archive:
                    writer.write(entry.with_state(MOVED, **changes))
                    moved += 1
                else:
                    writer.write(entry.with_state(FAILED, **changes))
                    failed += 1
                    if len(failed_uids) < keep_failed:
                        failed_uids.append(entry.sop_instance_uid)
    return FinalSummary(moved, failed, tuple(failed_uids), dict(writer.states))
