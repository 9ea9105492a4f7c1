"""Restore: main archive (Orthanc) -> a destination AE, by C-MOVE, verified at the destination.

The selection is resolved on main by C-FIND (Study Root, PS3.4 C.6.2): a list of StudyInstanceUIDs, or a
PatientID with an optional StudyDate range and series modalities, or what a source's backups recorded as
archived for a range of day partitions (`recorded`, then `resolve_recorded` confirms each instance on main).
The PatientID goes into the C-FIND identifier only (pynetdicom's identifier logging is off); nothing here
logs, returns or raises it. Instances of a selected study that are not selected are kept in the entries
as ALREADY_ARCHIVED, so the transfer moves them at SERIES or IMAGE level and never the whole study.

The transfer reuses `transfer.transfer` with main as the source and the destination as the archive: one
association to main for every C-MOVE, STUDY level when a whole study is selected, sub-operation
accounting, and 0xA801 (Move Destination Unknown) or a broken association stop it at once. A C-MOVE only
copies: nothing is deleted anywhere, and a destination keeps what it already has.

Verification at the destination (docs/decisions/restore.md): presence of every selected instance by
IMAGE-level C-FIND per series (works on hierarchical SCPs), and, where the destination serves C-GET, the
content digest of every instance against main's (C-GET from both; main's copies are fetched and digested
in a background thread while main moves the data), and, where the destination is configured for it,
Storage Commitment (`dicom.commitment`). Sizes come from Orthanc's REST statistics.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dicom_backup_dagster.dicom.commitment import CommitmentResult, request_storage_commitment
from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.errors import AssociationError, DicomError
from dicom_backup_dagster.dicom.find import FindSession, InstanceRecord, study_date_range
from dicom_backup_dagster.dicom.network import Peer, Timeouts
from dicom_backup_dagster.dicom.scp import StorageSCP
from dicom_backup_dagster.dicom.sop_classes import StorageCommitmentPushModel
from dicom_backup_dagster.orthanc import OrthancClient

from .errors import MOVE_DESTINATION_UNKNOWN
from .manifest import ALREADY_ARCHIVED, MOVED, PENDING, InstanceEntry, by_series
from .transfer import RetrieveSession, TransferOutcome, transfer
from .verify import ContentResult, retrieve_digests


@dataclass(frozen=True)
class Selection:
    """What to restore: `study_instance_uids`; or `patient_id` with optional dates and modalities; or the
    alias of a `source` with dates (its recorded backups of those days: resolved by the caller)."""

    study_instance_uids: tuple[str, ...] = ()
    patient_id: str = field(default="", repr=False)  # PHI: never in repr, logs or results
    start: dt.date | None = None
    end: dt.date | None = None
    modalities: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if sum(map(bool, (self.study_instance_uids, self.patient_id, self.source))) != 1:
            raise ValueError("give exactly one of study_instance_uids, patient_id or source")
        if self.source and self.start is None:
            raise ValueError("a selection by source needs a start date")


def _entry(inst: InstanceRecord, study_date: str | None, state: str) -> InstanceEntry:
    return InstanceEntry(
        inst.study_instance_uid,
        inst.series_instance_uid,
        inst.sop_instance_uid,
        inst.sop_class_uid,
        study_date,
        inst.instance_number,
        state=state,
    )


def resolve(main: FindSession, selection: Selection) -> list[InstanceEntry]:
    """Every instance of the selected studies on main, study by study: PENDING when selected, else (a
    series of another modality) ALREADY_ARCHIVED, so that only the selection moves."""
    if selection.source:
        raise ValueError("a selection by source is resolved from the backups' records (resolve_recorded)")
    if selection.study_instance_uids:
        studies = main.studies(study_instance_uid=list(selection.study_instance_uids))
    else:
        date = study_date_range(selection.start, selection.end) if selection.start or selection.end else ""
        studies = main.studies(study_date=date or None, extra_keys={"PatientID": selection.patient_id})
    wanted = {m.upper() for m in selection.modalities}
    entries: list[InstanceEntry] = []
    for study in sorted(studies, key=lambda s: (s.study_date or "", s.study_instance_uid)):
        for series in main.series(study.study_instance_uid):
            state = PENDING if not wanted or (series.modality or "").upper() in wanted else ALREADY_ARCHIVED
            for inst in main.instances(study.study_instance_uid, series.series_instance_uid):
                entries.append(_entry(inst, study.study_date, state))
    return entries


def recorded(entries: Iterable[InstanceEntry]) -> list[InstanceEntry]:
    """The instances a backup manifest records as on main (moved, or already archived before), once each,
    as PENDING entries in study/series order."""
    out: dict[str, InstanceEntry] = {}
    for e in entries:
        if e.state in (MOVED, ALREADY_ARCHIVED) and e.sop_instance_uid not in out:
            out[e.sop_instance_uid] = e.with_state(PENDING)
    return sorted(
        out.values(), key=lambda e: (e.study_date or "", e.study_instance_uid, e.series_instance_uid)
    )


def resolve_recorded(
    main: FindSession, wanted: Sequence[InstanceEntry]
) -> tuple[list[InstanceEntry], list[str]]:
    """(entries, recorded UIDs main does not hold): every instance of the recorded series as main lists
    it (SOP Class UID included), PENDING when recorded, else ALREADY_ARCHIVED (not part of the restore)."""
    uids = {e.sop_instance_uid for e in wanted}
    entries: list[InstanceEntry] = []
    for (study, series), group in by_series(wanted):
        for inst in main.instances(study, series):
            state = PENDING if inst.sop_instance_uid in uids else ALREADY_ARCHIVED
            entries.append(_entry(inst, group[0].study_date, state))
    found = {e.sop_instance_uid for e in entries}
    return entries, [e.sop_instance_uid for e in wanted if e.sop_instance_uid not in found]


@dataclass(frozen=True)
class Sizes:
    """What a selection weighs on main (Orthanc's DiskSize, UncompressedSize: bytes)."""

    bytes: int = 0
    uncompressed_bytes: int = 0


def _lookup(client: OrthancClient, uid: str, level: str) -> str | None:
    for hit in client.request("POST", "/tools/lookup", data=uid).json():
        if hit.get("Type") == level:
            return str(hit["ID"])
    return None


def sizes_on_main(client: OrthancClient, entries: Sequence[InstanceEntry]) -> Sizes:
    """Bytes of the selected (PENDING) entries from Orthanc's REST statistics: a whole study or series in
    one call (GET /studies|series/{id}/statistics), a partly selected series instance by instance
    (GET /instances/{id}/statistics)."""
    disk = raw = 0

    def add(path: str) -> None:
        nonlocal disk, raw
        stats = client.get_json(path)
        disk += int(stats.get("DiskSize", 0))
        raw += int(stats.get("UncompressedSize", 0))

    by_study: dict[str, list[InstanceEntry]] = {}
    for e in entries:
        by_study.setdefault(e.study_instance_uid, []).append(e)
    for study_uid, group in by_study.items():
        if all(e.state == PENDING for e in group):
            if (oid := _lookup(client, study_uid, "Study")) is not None:
                add(f"/studies/{oid}/statistics")
            continue
        for (_study, series_uid), members in by_series(group):
            selected = [e for e in members if e.state == PENDING]
            if len(selected) == len(members) and (oid := _lookup(client, series_uid, "Series")):
                add(f"/series/{oid}/statistics")
                continue
            for e in selected:
                if (oid := _lookup(client, e.sop_instance_uid, "Instance")) is not None:
                    add(f"/instances/{oid}/statistics")
    return Sizes(disk, raw)


@dataclass
class RestoreResult:
    """Counts and UIDs only (no patient data)."""

    destination: str
    selected: int
    studies: int
    series: int
    dry_run: bool
    outcome: TransferOutcome | None = None
    present: int = 0
    missing_uids: list[str] = field(default_factory=list)
    content: ContentResult | None = None
    commitment: CommitmentResult | None = None
    sizes: Sizes | None = None
    missing_on_main: list[str] = field(default_factory=list)  # recorded as archived, not on main now
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. digests not checked: no C-GET there
    seconds: dict[str, float] = field(default_factory=dict)  # per phase: move, presence, digests, commitment

    @property
    def passed(self) -> bool:
        if self.missing_on_main:
            return False
        if self.dry_run:
            return True
        content_ok = self.content is None or self.content.passed
        committed = self.commitment is None or not self.commitment.failed
        complete = not self.missing_uids and self.present == self.selected
        return not self.errors and complete and content_ok and committed

    def summary(self) -> str:
        """One line an operator reads first: what was selected, what is proven at the destination."""
        what = f"{_count(self.selected, 'instance')} in {_count(self.studies, 'study', 'studies')}"
        if self.dry_run:
            return f"dry run: {what} would be restored to {self.destination}; nothing was sent"
        parts = [f"{self.present} of {self.selected} instances present at {self.destination}"]
        if self.content is not None:
            parts.append(f"{self.content.matched} of {self.content.compared} content digests equal to main's")
        else:
            parts.append("content digests not compared (see notes)")
        if self.commitment is not None:
            committed = len(self.commitment.committed)
            parts.append(f"{committed} of {self.selected} committed (Storage Commitment)")
        verdict = "restored and verified" if self.passed else "INCOMPLETE"
        return f"{verdict}: " + ", ".join(parts)


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def destination_unknown_advice(main: Peer, destination: Peer) -> str:
    return (
        f"{main.aet} does not know the move destination {destination.aet}: register it in Orthanc's "
        f'DicomModalities (e.g. "{destination.aet}": ["{destination.aet}", "{destination.host}", '
        f"{destination.port}]) and restart Orthanc, or PUT /modalities/{destination.aet} through its REST API"
    )


def _explain(
    error: DicomError, main: Peer, destination: Peer, calling_aet: str, t: Timeouts, delivered: int
) -> str:
    """A refused C-MOVE: 0xA801, or (Orthanc 1.10, docs/decisions/orthanc.md) 0xC000 with zero counts both
    for a destination missing from its DicomModalities and for a study whose C-STORE the destination
    refused. A C-ECHO to the destination tells "down" apart; `delivered` (sub-operations main completed
    or selected instances found there) > 0 shows main knows the destination."""
    text = str(error)
    if error.status not in (MOVE_DESTINATION_UNKNOWN, 0xC000):
        return text
    try:
        c_echo(destination, calling_aet, t)
    except DicomError as down:
        cause = f"the destination {destination} does not answer a C-ECHO ({down.detail})"
        return f"{text}; {cause}: start it, or fix its host and port in the configuration and on main"
    refused = (
        f"{destination} refused a C-STORE (Orthanc then stops that study's C-MOVE): read its log, free "
        "space or accept the SOP class there"
    )
    if delivered and error.status == 0xC000:
        return f"{text}; {delivered} selected instances are at {destination.aet}, so main knows it: {refused}"
    if error.status == 0xC000:
        return (
            f"{text}; either {destination_unknown_advice(main, destination)}; or, if main lists it, {refused}"
        )
    return f"{text}; {destination_unknown_advice(main, destination)}"


def present_at(
    destination: Peer, entries: Sequence[InstanceEntry], calling_aet: str, t: Timeouts
) -> set[str]:
    """SOP Instance UIDs of `entries` the destination finds by IMAGE-level C-FIND, one query per series."""
    found: set[str] = set()
    with FindSession(destination, calling_aet, t) as session:
        for (study, series), _group in by_series(entries):
            found.update(i.sop_instance_uid for i in session.instances(study, series))
    return found


def _commit(
    result: RestoreResult, present: list[InstanceEntry], destination: Peer, calling_aet: str,
    timeouts: Timeouts, listener: StorageSCP, report_timeout: float,
) -> None:  # fmt: skip
    """Storage Commitment (N-ACTION, report by N-EVENT-REPORT on `listener`) of what is present."""
    refs = [(e.sop_class_uid, e.sop_instance_uid) for e in present if e.sop_class_uid]
    if len(refs) < len(present):
        result.notes.append(f"{len(present) - len(refs)} instances without a SOP Class UID: not committed")
    if not refs:
        return
    try:
        result.commitment = request_storage_commitment(
            destination, calling_aet, refs, listener, report_timeout=report_timeout, timeouts=timeouts
        )
    except AssociationError as error:
        # pynetdicom aborts itself when the destination accepts no proposed context, which reads as the
        # peer's abort: the usual cause here is a destination without the SOP Class.
        result.errors.append(
            f"storage commitment at the destination {destination}: {error}; if it does not support the "
            f"Storage Commitment Push Model SOP Class ({StorageCommitmentPushModel}), set "
            "storage_commitment = false for it"
        )
    except DicomError as error:
        result.errors.append(f"storage commitment at the destination {destination}: {error}")


def restore(
    entries: list[InstanceEntry],
    *,
    main: Peer,
    destination: Peer,
    calling_aet: str,
    timeouts: Timeouts,
    dry_run: bool = False,
    verify_digests: bool = True,
    spool_dir: Path | None = None,
    keep: int = 100,
    commitment_listener: StorageSCP | None = None,
    commitment_timeout: float = 60.0,
) -> RestoreResult:
    """C-MOVE the PENDING `entries` from `main` to `destination` (the others only tell the transfer what
    else their studies hold), then verify there: presence; digests when `verify_digests` and the
    destination answers C-GET; Storage Commitment when a `commitment_listener` (our AE, registered on the
    destination) is given. A dry run only counts."""
    selected = [e for e in entries if e.state == PENDING]
    result = RestoreResult(
        str(destination),
        len(selected),
        len({e.study_instance_uid for e in selected}),
        len({e.series_instance_uid for e in selected}),
        dry_run,
    )
    if dry_run or not selected:
        return result
    clock = time.monotonic()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.monotonic()
        result.seconds[phase] = round(now - clock, 3)
        clock = now

    spool = Path(spool_dir) if spool_dir is not None else Path()
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="restore-digests") as background:
        # Main's digests are fetched while main moves the data (two associations to main at once).
        at_main = (
            background.submit(_digests_at, main, selected, calling_aet, timeouts, spool / "main", stop=stop)
            if verify_digests and spool_dir is not None
            else None
        )
        try:
            present = _move_and_verify(result, entries, selected, main, destination, calling_aet, timeouts,
                                       lap, at_main, spool, keep)  # fmt: skip
        finally:
            stop.set()
            if spool_dir is not None:
                background.submit(shutil.rmtree, spool, ignore_errors=True)
    if commitment_listener is not None and present:
        _commit(result, present, destination, calling_aet, timeouts, commitment_listener, commitment_timeout)
        lap("commitment")
    return result


def _move_and_verify(
    result: RestoreResult, entries: list[InstanceEntry], selected: list[InstanceEntry], main: Peer,
    destination: Peer, calling_aet: str, timeouts: Timeouts, lap: Callable[[str], None],
    main_digests: Future[tuple[dict[str, str], list[str]]] | None, spool: Path, keep: int,
) -> list[InstanceEntry]:  # fmt: skip
    """The move, then presence and digests at the destination; returns the instances present there."""
    outcome = result.outcome = transfer(
        entries, source=main, archive=destination, calling_aet=calling_aet, timeouts=timeouts, mode="c-move"
    )
    lap("move")

    def explain(arrived: int) -> None:
        result.errors.extend(
            _explain(error, main, destination, calling_aet, timeouts, arrived) for error in outcome.errors
        )

    try:
        found = present_at(destination, selected, calling_aet, timeouts)
    except DicomError as error:
        explain(outcome.completed)
        result.errors.append(f"presence check at the destination {destination}: {error}")
        return []
    lap("presence")
    # Orthanc 1.10 reports 0 completed for a study it stopped at a refused C-STORE: what arrived counts.
    explain(max(outcome.completed, sum(e.sop_instance_uid in found for e in selected)))
    present = [e for e in selected if e.sop_instance_uid in found]
    result.present = len(present)
    result.missing_uids = [e.sop_instance_uid for e in selected if e.sop_instance_uid not in found][:keep]
    if main_digests is not None and present:
        try:
            at_destination, errors = _digests_at(destination, present, calling_aet, timeouts,
                                                 spool / "destination", per_series=True)  # fmt: skip
        except DicomError as error:  # no C-GET at the destination: presence is what we can prove
            result.notes.append(f"content check skipped: {destination} did not serve C-GET ({error})")
            return present
        try:
            at_main = main_digests.result()
        except DicomError as error:
            result.errors.append(f"content check: C-GET from {main} failed: {error}")
            return present
        result.content = _compare(present, at_destination, errors, at_main, keep)
        lap("digests")
    return present


def _digests_at(
    peer: Peer, entries: Sequence[InstanceEntry], calling_aet: str, timeouts: Timeouts, spool: Path,
    *, per_series: bool = False, stop: threading.Event | None = None, chunk: int = 100,
) -> tuple[dict[str, str], list[str]]:  # fmt: skip
    """(SOP Instance UID -> content digest, errors) of what C-GETs of `entries` at `peer` bring back: per
    series (a hierarchical SCP), or by UID lists (Orthanc), `chunk` UIDs at a time until `stop` is set."""
    out: dict[str, str] = {}
    errors: list[str] = []
    with RetrieveSession(peer, calling_aet, timeouts, operation="C-GET") as session:
        for (study, series), group in by_series(entries):
            uids = [e.sop_instance_uid for e in group]
            for start in range(0, len(uids), chunk):
                if stop is not None and stop.is_set():
                    return out, errors
                where = (study, series) if per_series else None
                out.update(
                    retrieve_digests(session, spool, uids[start : start + chunk], errors, series=where)
                )
    return out, errors


def _compare(
    present: Sequence[InstanceEntry], at_destination: dict[str, str], errors: list[str],
    at_main: tuple[dict[str, str], list[str]], keep: int,
) -> ContentResult:  # fmt: skip
    content = ContentResult(errors=[*errors, *at_main[1]])
    for e in present:
        content.compare(
            e.sop_instance_uid,
            at_destination.get(e.sop_instance_uid),
            at_main[0].get(e.sop_instance_uid),
            keep,
        )
    return content


def register_destination(client: OrthancClient, destination: Peer) -> str | None:
    """Make sure main's DicomModalities knows `destination` (by AE title), adding it through
    `PUT /modalities/<AE>` when missing; an existing entry is never changed. Returns what was done, or
    None when main knew it already."""
    known = client.get_json("/modalities?expand")
    entries = known.values() if isinstance(known, dict) else []
    if any(str(m.get("AET", "")) == destination.aet for m in entries if isinstance(m, dict)):
        return None
    client.put_modality(destination.aet, destination.aet, destination.host, destination.port)
    return f"registered {destination} in main's DicomModalities (PUT /modalities/{destination.aet})"
