"""Inventory: every instance a source holds for a range of StudyDates, as an ordered manifest.

Per study, one IMAGE-level C-FIND with the series key universal (Study Root, PS3.4 C.6.2) over one
association; a study whose answer cannot be trusted (refused, empty, short of its
NumberOfStudyRelatedInstances) is walked SERIES -> IMAGE instead, which works on strictly hierarchical
SCPs. Duplicate rows and missing optional keys are tolerated (the DICOM layer de-duplicates and treats
absent keys as None). Entries are written study by study in a deterministic oldest-first order
(StudyDate, StudyTime, UIDs) so that "the first N instances" means the same thing on every run: the
plan's max_uids_per_run cut depends on it.

Presence on the main archive (always an Orthanc) is asked by SOP Instance UID lists instead
(`ArchiveLookup`): 200 UIDs per C-FIND whatever their study, 25 queries for 5,000 instances where one per
study took 240.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from dicom_backup_dagster.dicom.errors import DicomError, UnreadableResponse
from dicom_backup_dagster.dicom.find import FindSession, InstanceRecord, StudyRecord

from .listing import list_studies
from .manifest import InstanceEntry, ManifestWriter

# Where an extra match key from the site configuration (`query_keys`) belongs in the Study Root
# hierarchy (PS3.4 C.6.2.1.2): sending a series attribute in a STUDY query would match nothing on a
# strict SCP. Anything not listed here is treated as an IMAGE-level key.
_STUDY_KEYS = {
    "PatientID",
    "PatientName",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "StudyTime",
    "InstitutionName",
}
_SERIES_KEYS = {
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesDate",
    "StationName",
}


def split_query_keys(keys: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(study, series, image) match keys from a flat `query_keys` mapping."""
    study: dict[str, str] = {}
    series: dict[str, str] = {}
    image: dict[str, str] = {}
    for keyword, value in keys.items():
        if keyword in _STUDY_KEYS or keyword.startswith(("Patient", "Study")):
            study[keyword] = value
        elif keyword in _SERIES_KEYS or keyword.startswith("Series"):
            series[keyword] = value
        else:
            image[keyword] = value
    return study, series, image


def window(partition_day: dt.date, lookback_days: int) -> tuple[dt.date, dt.date]:
    """StudyDates a partition covers: its own day and `lookback_days` before it (late series on older
    studies are found by the next nights' runs)."""
    if lookback_days < 0:
        raise ValueError("lookback_days must be >= 0")
    return partition_day - dt.timedelta(days=lookback_days), partition_day


def study_order(study: StudyRecord) -> tuple[str, str, str]:
    """Oldest first; studies without a date go last (they cannot be placed in time)."""
    return (study.study_date or "99999999", study.study_time or "", study.study_instance_uid)


@dataclass(frozen=True)
class InventorySummary:
    studies: int
    series: int
    instances: int
    instances_on_day: int  # instances whose StudyDate is the partition's own day
    seconds: float
    studies_walked: int = 0  # studies listed series by series (by_study off, or its answer not trusted)
    find_splits: tuple[str, ...] = ()  # listing parts that reached the source's cap (listing.py)
    find_queries: int = 0  # STUDY-level C-FINDs the listing took


def _unique_studies(studies: Iterable[StudyRecord]) -> list[StudyRecord]:
    return list({s.study_instance_uid: s for s in reversed(list(studies))}.values())


def _instance_order(inst: InstanceRecord) -> tuple[str, int, str]:
    return (inst.series_instance_uid, inst.instance_number or 0, inst.sop_instance_uid)


class _Refused(Exception):
    """The SCP answered a whole-study IMAGE query with a failure status."""


def _whole_study(
    session: FindSession, study: StudyRecord, image_keys: Mapping[str, str], cap: int | None = None
) -> list[InstanceRecord] | None:
    """Every instance of a study from one IMAGE-level C-FIND with the SeriesInstanceUID left universal,
    or None when that answer cannot be trusted and the study must be walked: no rows at all, or fewer rows
    than the study's NumberOfStudyRelatedInstances where the SCP reports it. Raises _Refused for a failure
    status (a strictly hierarchical SCP rejects a universal series key, PS3.4 C.4.1.2.2)."""
    uid = study.study_instance_uid
    try:
        rows = session.instances(uid, extra_keys=image_keys)
    except DicomError as error:
        # Only a refusal (a final failure status) means "walk it"; a broken association, a timeout or an
        # unreadable match would break the walk just the same.
        if error.status is None or isinstance(error, UnreadableResponse):
            raise
        raise _Refused from error
    # Rows of another study mean the SCP ignored the study key; duplicates are already gone (find.py).
    rows = [r for r in rows if r.study_instance_uid == uid]
    expected = study.number_of_study_related_instances
    # An answer at the source's cap may have been cut there (listing.py): walk the study instead.
    if not rows or (expected is not None and len(rows) < expected) or (cap is not None and len(rows) >= cap):
        return None
    return sorted(rows, key=_instance_order)


def _walk_study(
    session: FindSession, uid: str, series_keys: Mapping[str, str], image_keys: Mapping[str, str]
) -> list[InstanceRecord]:
    """Every instance of a study, SERIES then IMAGE level per series: works on every hierarchical SCP."""
    out: list[InstanceRecord] = []
    seen: set[str] = set()
    for series in sorted(session.series(uid, extra_keys=series_keys), key=lambda s: s.series_instance_uid):
        instances = session.instances(uid, series.series_instance_uid, extra_keys=image_keys)
        # Rows of another series mean the SCP ignored our match key; they are taken when their own
        # series is queried. A SOP Instance UID seen before in the study is a duplicate row.
        instances = [
            i
            for i in instances
            if i.series_instance_uid == series.series_instance_uid and i.sop_instance_uid not in seen
        ]
        seen.update(i.sop_instance_uid for i in instances)
        out.extend(sorted(instances, key=_instance_order))
    return out


def take_inventory(
    session: FindSession,
    first_day: dt.date,
    last_day: dt.date,
    out_path: str | os.PathLike[str],
    *,
    query_keys: Mapping[str, str] | None = None,
    by_study: bool = True,
    extra_studies: Iterable[StudyRecord] = (),
    max_find_results: int | None = None,
) -> InventorySummary:
    """C-FIND every instance of the studies dated first_day..last_day and write the ordered manifest.

    `by_study`: one IMAGE-level query per study (`_whole_study`), walking only the studies whose answer
    cannot be trusted, and every study after the first refusal; 5,000 instances in 240 studies on
    dcmqrscp: 240 queries instead of ~600. Off, or with series-level `query_keys` (not matchable at IMAGE
    level), every study is walked. Both give the same manifest, in the same order. `max_find_results`:
    the source's C-FIND cap; the listing is split below it (listing.list_studies).

    `extra_studies`: older studies to inventory as well (late data found by `backup.late`); they take
    their place in the same oldest-first order."""
    started = time.monotonic()
    study_keys = split_query_keys(query_keys or {})[0]
    listing = list_studies(session, first_day, last_day, extra_keys=study_keys, cap=max_find_results)
    summary = inventory_studies(
        session,
        [*listing.studies, *extra_studies],
        out_path,
        query_keys=query_keys,
        by_study=by_study,
        day=last_day,
        cap=max_find_results,
    )
    return replace(
        summary,
        seconds=time.monotonic() - started,
        find_splits=listing.splits,
        find_queries=listing.queries,
    )


def inventory_studies(
    session: FindSession,
    studies: Iterable[StudyRecord],
    out_path: str | os.PathLike[str],
    *,
    query_keys: Mapping[str, str] | None = None,
    by_study: bool = True,
    day: dt.date | None = None,
    cap: int | None = None,
) -> InventorySummary:
    """Every instance of `studies` (as the source listed them at STUDY level), written oldest first to the
    manifest at `out_path`; `instances_on_day` counts those whose StudyDate is `day`. `cap`: the source's
    C-FIND cap (a whole-study answer that reaches it is walked instead)."""
    started = time.monotonic()
    _, series_keys, image_keys = split_query_keys(query_keys or {})
    ordered = sorted(_unique_studies(studies), key=study_order)
    by_study = by_study and not series_keys
    on = day.strftime("%Y%m%d") if day else None
    n_series = n_instances = on_day = walked = 0
    with ManifestWriter(out_path) as writer:
        for study in ordered:
            uid = study.study_instance_uid
            instances = None
            if by_study:
                try:
                    instances = _whole_study(session, study, image_keys, cap)
                except _Refused:
                    by_study = False  # the SCP refuses universal series keys: walk this and every next study
            if instances is None:
                instances = _walk_study(session, uid, series_keys, image_keys)
                walked += 1
            n_series += len({i.series_instance_uid for i in instances})
            for inst in instances:
                writer.write(
                    InstanceEntry(
                        study_instance_uid=uid,
                        series_instance_uid=inst.series_instance_uid,
                        sop_instance_uid=inst.sop_instance_uid,
                        sop_class_uid=inst.sop_class_uid,
                        study_date=study.study_date,
                        instance_number=inst.instance_number,
                    )
                )
                n_instances += 1
                on_day += study.study_date == on
    return InventorySummary(len(ordered), n_series, n_instances, on_day, time.monotonic() - started, walked)


def archived_sop_uids(session: FindSession, study_instance_uid: str) -> set[str]:
    """SOP Instance UIDs of one study on the archive: IMAGE-level C-FIND with the series left universal
    (Orthanc answers such relational queries; a strictly hierarchical SCP such as dcmqrscp would not)."""
    return {r.sop_instance_uid for r in session.instances(study_instance_uid)}


class ArchiveLookup:
    """Which of a manifest's instances the archive holds, as the per-study callable that make_plan,
    finalize and check_presence take.

    The first call asks for every UID of the manifest at once (FindSession.instances_by_uid, Orthanc);
    every study is then answered from that, however often and in whatever order it is asked. `refresh`
    asks again for one study's UIDs (check_presence's settle re-check). A study that is not in the
    manifest falls back to archived_sop_uids."""

    def __init__(self, session: FindSession, entries: Iterable[InstanceEntry]) -> None:
        self.session = session
        self._by_study: dict[str, list[str]] = {}
        for entry in entries:
            self._by_study.setdefault(entry.study_instance_uid, []).append(entry.sop_instance_uid)
        self._present: set[str] | None = None

    def _ask(self, uids: list[str]) -> set[str]:
        return {r.sop_instance_uid for r in self.session.instances_by_uid(uids)}

    def __call__(self, study_instance_uid: str) -> set[str]:
        uids = self._by_study.get(study_instance_uid)
        if uids is None:
            return archived_sop_uids(self.session, study_instance_uid)
        if self._present is None:
            self._present = self._ask([u for study in self._by_study.values() for u in study])
        return {u for u in uids if u in self._present}

    def refresh(self, study_instance_uid: str) -> set[str]:
        """One study's instances on the archive now (what arrived since the first answer is included)."""
        uids = self._by_study.get(study_instance_uid)
        if uids is None:
            return archived_sop_uids(self.session, study_instance_uid)
        found = self._ask(uids)
        if self._present is not None:
            self._present |= found
        return found
