"""Late data: series and instances added to studies dated before the night's window.

In radiation oncology an old study grows: a re-plan adds an RTPLAN, RTDOSE and RTSTRUCT (sometimes a new
CT) to the planning study weeks after its StudyDate. A StudyDate window alone never sees them again, so
the nightly inventory also asks which older studies hold more than the archive does:

- **By counts or series, any source** (`changed_studies`): the source's studies dated in the late window
  (one STUDY-level C-FIND) are compared with the archive (always an Orthanc: one STUDY-level C-FIND per
  200 studies, list of UID matching, PS3.4 C.2.2.2.2). Where the source reports
  NumberOfStudyRelatedInstances (PS3.4 C.6.2.1.2), a study with more instances than the archive holds
  has changed. Where it does not (dcmqrscp, many hierarchical SCPs), its series are listed one study at a
  time, which a strictly hierarchical SCP allows (the StudyInstanceUID is sent, PS3.4 C.4.1.2.2.1), and a
  series the archive lacks, or one with more instances where both report counts, marks the study.
- **By SeriesDate, relational sources** (`studies_with_series_dated`): one SERIES-level C-FIND without a
  StudyInstanceUID (relational query, PS3.4 C.4.1.2.2.2) for series dated in the night's window, whatever
  their study's date. This reaches studies of any age, but only where the source fills SeriesDate (type 3)
  and accepts relational queries.

A changed study is then inventoried whole, and the plan moves only what the archive lacks. What neither
way can see (an instance added to an existing series of a source without counts, or one deleted from the
archive) is found by the reconciliation sweep (`backup/sweep.py`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from dicom_backup_dagster.dicom.errors import DicomError, UnreadableResponse
from dicom_backup_dagster.dicom.find import FindSession, SeriesRecord, StudyRecord, study_date_range
from dicom_backup_dagster.dicom.retrieve import chunks

from .partitions import iso_date


@dataclass(frozen=True)
class LateScan:
    """What the look for late data found: older studies with data the archive lacks."""

    studies_checked: int  # older studies compared with the archive
    changed: tuple[StudyRecord, ...]  # of those (and of the SeriesDate matches), the ones to inventory
    compared_by: str  # "counts", "series", "counts+series" or "none"
    queries: int  # C-FINDs sent to the source and the archive


def archive_study_counts(archive: FindSession, study_uids: Sequence[str]) -> dict[str, int | None]:
    """StudyInstanceUID -> NumberOfStudyRelatedInstances on the archive, for the studies it holds."""
    out: dict[str, int | None] = {}
    for chunk in chunks(list(study_uids)):
        for study in archive.studies(study_instance_uid=chunk):
            out[study.study_instance_uid] = study.number_of_study_related_instances
    return out


def _series_counts(series: Iterable[SeriesRecord]) -> dict[str, int | None]:
    return {s.series_instance_uid: s.number_of_series_related_instances for s in series}


def lacking_by_counts(
    studies: Iterable[StudyRecord], on_archive: Mapping[str, int | None]
) -> tuple[list[StudyRecord], list[StudyRecord]]:
    """Split `studies` (as the source listed them) by the archive's counts (`archive_study_counts`):
    those the archive visibly lacks data of (absent there, or fewer instances where both report a count),
    and those the counts cannot decide (a count missing on either side)."""
    lacking: list[StudyRecord] = []
    undecided: list[StudyRecord] = []
    for study in studies:
        uid = study.study_instance_uid
        if uid not in on_archive:
            lacking.append(study)  # not archived at all (a day that was never backed up, or a late study)
            continue
        theirs, ours = study.number_of_study_related_instances, on_archive[uid]
        if theirs is None or ours is None:
            undecided.append(study)
        elif theirs > ours:
            lacking.append(study)
    return lacking, undecided


def changed_studies(
    source: FindSession,
    archive: FindSession,
    studies: Sequence[StudyRecord],
    series_keys: Mapping[str, str] | None = None,
) -> LateScan:
    """Of `studies` (as the source listed them), those holding data the archive lacks."""
    if not studies:
        return LateScan(0, (), "none", 0)
    queries = 0
    on_archive = archive_study_counts(archive, [s.study_instance_uid for s in studies])
    queries += len(chunks([s.study_instance_uid for s in studies]))
    changed, by_series = lacking_by_counts(studies, on_archive)
    if by_series:
        archived_series = _series_counts(archive.series_of_studies([s.study_instance_uid for s in by_series]))
        queries += len(chunks([s.study_instance_uid for s in by_series]))
        for study in by_series:
            queries += 1
            for series in source.series(study.study_instance_uid, extra_keys=series_keys):
                uid = series.series_instance_uid
                theirs = series.number_of_series_related_instances
                if uid not in archived_series or (
                    theirs is not None and (archived_series[uid] or 0) < theirs
                ):
                    changed.append(study)
                    break
    methods = [
        m for m, used in (("counts", len(by_series) < len(studies)), ("series", bool(by_series))) if used
    ]
    return LateScan(len(studies), tuple(changed), "+".join(methods), queries)


def studies_with_series_dated(
    source: FindSession, first_day: dt.date, last_day: dt.date, exclude: set[str]
) -> tuple[list[StudyRecord], int]:
    """Studies (not in `exclude`) with a series whose SeriesDate is in first_day..last_day, by one
    relational SERIES-level C-FIND, then their study rows (STUDY level, by UID list). Queries sent too."""
    try:
        series = source.series_of_studies(series_date=study_date_range(first_day, last_day))
    except DicomError as error:
        if error.status is None or isinstance(error, UnreadableResponse):
            raise
        raise DicomError(
            error.peer,
            "C-FIND",
            "relational SERIES-level query (SeriesDate, no StudyInstanceUID)",
            status=error.status,
            advice="the source refuses relational queries: set relational = false for this source "
            "(the late scan and the sweep still find late series, study by study)",
        ) from error
    uids = sorted({s.study_instance_uid for s in series} - exclude)
    studies: list[StudyRecord] = []
    for chunk in chunks(uids):
        studies.extend(source.studies(study_instance_uid=chunk))
    return studies, 1 + len(chunks(uids))


def find_late_studies(
    source: FindSession,
    archive: FindSession,
    window_first: dt.date,
    window_last: dt.date,
    late_days: int,
    *,
    relational: bool,
    backed_up_days: Collection[str] | None = None,
    study_keys: Mapping[str, str] | None = None,
    series_keys: Mapping[str, str] | None = None,
) -> LateScan:
    """Older studies to inventory with the night's window window_first..window_last: those dated in the
    `late_days` before the window that hold data the archive lacks, and (relational sources) every study
    with a series dated in the window.

    `backed_up_days` (ISO dates): only studies dated on days already backed up are compared; a day never
    backed up is a backfill's work, not late data (None: every day)."""
    scan = LateScan(0, (), "none", 0)
    if late_days > 0:
        first = window_first - dt.timedelta(days=late_days)
        older = source.studies(
            study_date=study_date_range(first, window_first - dt.timedelta(days=1)), extra_keys=study_keys
        )
        if backed_up_days is not None:
            older = [s for s in older if iso_date(s.study_date) in backed_up_days]
        scan = changed_studies(source, archive, older, series_keys)
        scan = LateScan(scan.studies_checked, scan.changed, scan.compared_by, scan.queries + 1)
    if not relational:
        return scan
    first_text, last_text = f"{window_first:%Y%m%d}", f"{window_last:%Y%m%d}"
    known = {s.study_instance_uid for s in scan.changed}
    dated, queries = studies_with_series_dated(source, window_first, window_last, known)
    # Studies dated in the night's window are inventoried anyway.
    dated = [s for s in dated if not (s.study_date and first_text <= s.study_date <= last_text)]
    methods = [m for m in scan.compared_by.split("+") if m != "none"] + ["series-date"]
    return LateScan(
        scan.studies_checked, scan.changed + tuple(dated), "+".join(methods), scan.queries + queries
    )
