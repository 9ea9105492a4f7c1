"""Restore: main archive (Orthanc) -> a destination AE, by C-MOVE, verified at the destination.

The selection is resolved on main by C-FIND (Study Root, PS3.4 C.6.2): a list of StudyInstanceUIDs, or a
PatientID with an optional StudyDate range and series modalities. The PatientID goes into the C-FIND
identifier only (pynetdicom's identifier logging is off); nothing here logs, returns or raises it.

The transfer reuses `transfer.transfer` with main as the source and the destination as the archive: one
association to main for every C-MOVE, STUDY level when a whole study is selected, sub-operation
accounting, and 0xA801 (Move Destination Unknown) or a broken association stop it at once. A C-MOVE only
copies: nothing is deleted anywhere, and a destination keeps what it already has.

Verification at the destination (docs/decisions/restore.md): presence of every selected instance by
IMAGE-level C-FIND per series (works on hierarchical SCPs), and, where the destination serves C-GET, the
content digest of every instance against main's (`verify.verify_content`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import FindSession, study_date_range
from dicom_backup_dagster.dicom.network import Peer, Timeouts

from .errors import MOVE_DESTINATION_UNKNOWN
from .manifest import PENDING, InstanceEntry, by_series
from .transfer import TransferOutcome, transfer
from .verify import ContentResult, verify_content


@dataclass(frozen=True)
class Selection:
    """What to restore: `study_instance_uids`, or `patient_id` with optional dates and modalities."""

    study_instance_uids: tuple[str, ...] = ()
    patient_id: str = field(default="", repr=False)  # PHI: never in repr, logs or results
    start: dt.date | None = None
    end: dt.date | None = None
    modalities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.study_instance_uids) == bool(self.patient_id):
            raise ValueError("give exactly one of study_instance_uids or patient_id")


def resolve(main: FindSession, selection: Selection) -> list[InstanceEntry]:
    """Every instance of the selection on main, study by study, as PENDING manifest entries."""
    if selection.study_instance_uids:
        studies = main.studies(study_instance_uid=list(selection.study_instance_uids))
    else:
        date = study_date_range(selection.start, selection.end) if selection.start or selection.end else ""
        studies = main.studies(study_date=date or None, extra_keys={"PatientID": selection.patient_id})
    wanted = {m.upper() for m in selection.modalities}
    entries: list[InstanceEntry] = []
    for study in sorted(studies, key=lambda s: (s.study_date or "", s.study_instance_uid)):
        for series in main.series(study.study_instance_uid):
            if wanted and (series.modality or "").upper() not in wanted:
                continue
            for inst in main.instances(study.study_instance_uid, series.series_instance_uid):
                entries.append(
                    InstanceEntry(
                        inst.study_instance_uid,
                        inst.series_instance_uid,
                        inst.sop_instance_uid,
                        inst.sop_class_uid,
                        study.study_date,
                        inst.instance_number,
                        state=PENDING,
                    )
                )
    return entries


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
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. digests not checked: no C-GET there

    @property
    def passed(self) -> bool:
        if self.dry_run:
            return True
        content_ok = self.content is None or self.content.passed
        return not self.errors and not self.missing_uids and content_ok and self.present == self.selected


def destination_unknown_advice(main: Peer, destination: Peer) -> str:
    return (
        f"{main.aet} does not know the move destination {destination.aet}: register it in Orthanc's "
        f'DicomModalities (e.g. "{destination.aet}": ["{destination.aet}", "{destination.host}", '
        f"{destination.port}]) and restart Orthanc, or PUT /modalities/{destination.aet} through its REST API"
    )


def _explain(error: DicomError, main: Peer, destination: Peer, calling_aet: str, t: Timeouts) -> str:
    """A refused C-MOVE with nothing moved: 0xA801, or (Orthanc 1.10, docs/decisions/orthanc.md) 0xC000
    for a destination missing from its DicomModalities. A C-ECHO to the destination tells "down" apart."""
    text = str(error)
    if error.status not in (MOVE_DESTINATION_UNKNOWN, 0xC000):
        return text
    try:
        c_echo(destination, calling_aet, t)
    except DicomError as down:
        cause = f"the destination {destination} does not answer a C-ECHO ({down.detail})"
        return f"{text}; {cause}: start it, or fix its host and port in the configuration and on main"
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
) -> RestoreResult:
    """C-MOVE `entries` from `main` to `destination`, then verify there (presence; digests when
    `verify_digests` and the destination answers C-GET). A dry run only counts."""
    result = RestoreResult(
        str(destination),
        len(entries),
        len({e.study_instance_uid for e in entries}),
        len({e.series_instance_uid for e in entries}),
        dry_run,
    )
    if dry_run or not entries:
        return result
    outcome = result.outcome = transfer(
        entries, source=main, archive=destination, calling_aet=calling_aet, timeouts=timeouts, mode="c-move"
    )
    result.errors.extend(
        _explain(error, main, destination, calling_aet, timeouts) for error in outcome.errors
    )
    try:
        found = present_at(destination, entries, calling_aet, timeouts)
    except DicomError as error:
        result.errors.append(f"presence check at the destination {destination}: {error}")
        return result
    result.present = sum(1 for e in entries if e.sop_instance_uid in found)
    result.missing_uids = [e.sop_instance_uid for e in entries if e.sop_instance_uid not in found][:keep]
    if verify_digests and spool_dir is not None and result.present:
        try:
            # verify_content fetches its `source` per series (hierarchical) and its `archive` by UID list
            # (Orthanc): the destination is the hierarchical side here, main the Orthanc.
            result.content = verify_content(
                [e for e in entries if e.sop_instance_uid in found],
                source=destination,
                archive=main,
                calling_aet=calling_aet,
                timeouts=timeouts,
                spool_dir=spool_dir,
                keep=keep,
            )
        except DicomError as error:
            result.content = None  # no C-GET at the destination: presence is what we can prove
            result.notes.append(f"content check skipped: {destination} did not serve C-GET ({error})")
    return result
