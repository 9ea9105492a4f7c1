"""Study Root Query/Retrieve C-FIND SCU at STUDY, SERIES and IMAGE level (PS3.4 C.4.1, C.6.2).

Source SCPs differ (docs/decisions/dicom-peers.md): pynetdicom's qrscp returns one SERIES row per
instance, and dcmqrscp omits optional return keys (counts, ModalitiesInStudy, even SOPClassUID) and is
strictly hierarchical (an IMAGE query needs the SeriesInstanceUID). So rows are de-duplicated on their
unique key, optional keys become None when absent, and `walk()` goes STUDY -> SERIES -> IMAGE over one
association.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from types import TracebackType
from typing import Literal

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom.association import Association

from dicom_backup_dagster.dicom.sop_classes import StudyRootQueryRetrieveInformationModelFind

from . import stats
from .association import associate, no_response_error
from .errors import AssociationError, DicomError, UnreadableResponse
from .network import Peer, Timeouts, make_ae
from .retrieve import chunks
from .status import status_category

log = logging.getLogger(__name__)

Level = Literal["STUDY", "SERIES", "IMAGE"]
KeyValue = str | Sequence[str]

FIND_SOP_CLASS = StudyRootQueryRetrieveInformationModelFind


@dataclass(frozen=True)
class StudyRecord:
    study_instance_uid: str
    study_date: str | None = None
    study_time: str | None = None
    modalities_in_study: tuple[str, ...] = ()
    number_of_study_related_instances: int | None = None


@dataclass(frozen=True)
class SeriesRecord:
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None = None
    series_number: int | None = None
    number_of_series_related_instances: int | None = None


@dataclass(frozen=True)
class InstanceRecord:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None = None
    instance_number: int | None = None


def study_date_range(start: date | None, end: date | None) -> str:
    """StudyDate range matching value (PS3.4 C.2.2.2.5): "YYYYMMDD-YYYYMMDD", open ends allowed."""
    if start is None and end is None:
        raise ValueError("a date range needs a start or an end")
    fmt = "%Y%m%d"
    return f"{start.strftime(fmt) if start else ''}-{end.strftime(fmt) if end else ''}"


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _text(ds, keyword)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _multi(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split("\\") if v)
    return tuple(str(v) for v in value if str(v))


def _dedupe(rows: Iterable[Dataset], keyword: str) -> list[Dataset]:
    seen: dict[str, Dataset] = {}
    missing = 0
    for row in rows:
        uid = _text(row, keyword)
        if uid is None:
            missing += 1
            continue
        seen.setdefault(uid, row)
    if missing:
        log.warning("C-FIND: ignored %d response rows without %s", missing, keyword)
    return list(seen.values())


class FindSession:
    """One association for many C-FINDs (Study Root, PS3.4 C.6.2). Use as a context manager."""

    def __init__(self, peer: Peer, calling_aet: str, timeouts: Timeouts | None = None) -> None:
        self.peer = peer
        self.calling_aet = calling_aet
        self.timeouts = timeouts or Timeouts()
        self._assoc: Association | None = None

    def __enter__(self) -> FindSession:
        ae = make_ae(self.calling_aet, self.timeouts)
        ae.add_requested_context(FIND_SOP_CLASS)
        self._assoc = associate(
            ae,
            self.peer,
            timeouts=self.timeouts,
            operation="C-FIND",
            required_abstract_syntaxes=[FIND_SOP_CLASS],
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            if exc_type is None:
                assoc.release()
            else:
                assoc.abort()

    def find(self, level: Level, keys: Mapping[str, KeyValue]) -> list[Dataset]:
        """Raw C-FIND: identifier = QueryRetrieveLevel + `keys` (empty value = return key). Rows as sent."""
        if self._assoc is None:
            raise RuntimeError("FindSession is not open: use it as a context manager")
        query = Dataset()
        query.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            if tag_for_keyword(keyword) is None:
                # pydicom would silently keep it out of the identifier: the match would not happen.
                raise ValueError(f"{keyword!r} is not a DICOM keyword (check the query keys)")
            setattr(query, keyword, value)
        if not self._assoc.is_established:
            # The peer closed or aborted the association since the last request (restarted, or its
            # idle timeout): pynetdicom would raise a bare RuntimeError.
            raise AssociationError(
                self.peer,
                f"association lost before a {level}-level C-FIND (the peer closed or aborted it)",
                operation="C-FIND",
                advice="check that the peer is running and reachable; the step is retried",
                stage="aborted",
            )
        rows: list[Dataset] = []
        started = waited_from = time.monotonic()
        for status, identifier in self._assoc.send_c_find(query, FIND_SOP_CLASS):
            if "Status" not in status:
                stats.record_failure(self.peer.aet, "C-FIND", time.monotonic() - started)
                raise no_response_error(
                    self._assoc, self.peer, "C-FIND", self.timeouts, time.monotonic() - waited_from
                )
            waited_from = time.monotonic()
            code = int(status.Status)
            category = status_category(code)
            if category == "Pending":
                if identifier is None:
                    stats.record_failure(self.peer.aet, "C-FIND", time.monotonic() - started)
                    # A match we cannot read is a match we would lose: fail (and let the caller retry).
                    raise UnreadableResponse(
                        self.peer,
                        "C-FIND",
                        f"{level}-level query: pending response {len(rows) + 1} carried no readable "
                        "identifier; no match may be dropped, so the query failed. Run it again; if it "
                        "repeats, check the peer's character set and transfer syntax",
                        status=code,
                    )
                rows.append(identifier)
            elif code != 0x0000:
                stats.record(self.peer.aet, "C-FIND", code, time.monotonic() - started)
                raise DicomError(
                    self.peer,
                    "C-FIND",
                    f"{level}-level query",
                    status=code,
                )
        stats.record(self.peer.aet, "C-FIND", 0x0000, time.monotonic() - started)
        return rows

    def _unique_rows(
        self,
        level: Level,
        keys: Mapping[str, KeyValue],
        extra_keys: Mapping[str, KeyValue] | None,
        unique_key: str,
    ) -> list[Dataset]:
        """find() on `keys` plus `extra_keys` (which win), one row per value of `unique_key`."""
        return _dedupe(self.find(level, {**keys, **(extra_keys or {})}), unique_key)

    def studies(
        self,
        *,
        study_date: str | None = None,
        study_instance_uid: str | Sequence[str] | None = None,
        extra_keys: Mapping[str, KeyValue] | None = None,
    ) -> list[StudyRecord]:
        """STUDY level. `study_date` is a single date or a range ("20240101-20240131", study_date_range)."""
        keys: dict[str, KeyValue] = {
            "StudyInstanceUID": study_instance_uid or "",
            "StudyDate": study_date or "",
            "StudyTime": "",
            "ModalitiesInStudy": "",
            "NumberOfStudyRelatedInstances": "",
        }
        return [
            StudyRecord(
                study_instance_uid=str(_text(row, "StudyInstanceUID")),
                study_date=_text(row, "StudyDate"),
                study_time=_text(row, "StudyTime"),
                modalities_in_study=_multi(row, "ModalitiesInStudy"),
                number_of_study_related_instances=_int(row, "NumberOfStudyRelatedInstances"),
            )
            for row in self._unique_rows("STUDY", keys, extra_keys, "StudyInstanceUID")
        ]

    def series(
        self,
        study_instance_uid: str,
        *,
        series_instance_uid: str | Sequence[str] | None = None,
        extra_keys: Mapping[str, KeyValue] | None = None,
    ) -> list[SeriesRecord]:
        """SERIES level within one study (hierarchical: the StudyInstanceUID is always sent)."""
        keys: dict[str, KeyValue] = {
            "StudyInstanceUID": study_instance_uid,
            "SeriesInstanceUID": series_instance_uid or "",
            "Modality": "",
            "SeriesNumber": "",
            "NumberOfSeriesRelatedInstances": "",
        }
        return [
            SeriesRecord(
                study_instance_uid=_text(row, "StudyInstanceUID") or study_instance_uid,
                series_instance_uid=str(_text(row, "SeriesInstanceUID")),
                modality=_text(row, "Modality"),
                series_number=_int(row, "SeriesNumber"),
                number_of_series_related_instances=_int(row, "NumberOfSeriesRelatedInstances"),
            )
            for row in self._unique_rows("SERIES", keys, extra_keys, "SeriesInstanceUID")
        ]

    def series_of_studies(
        self,
        study_instance_uids: Sequence[str] = (),
        *,
        series_date: str = "",
    ) -> list[SeriesRecord]:
        """SERIES level across studies (relational query, PS3.4 C.4.1.2.2.2): the series of up to
        MAX_UIDS_PER_REQUEST studies per request (list of UID matching), or with `study_instance_uids`
        empty every series whose SeriesDate matches `series_date` (a date or a range), whatever its
        study. Orthanc and relational sources answer this; a strictly hierarchical SCP refuses it (use
        `series()` per study there)."""
        keys: dict[str, KeyValue] = {
            "SeriesInstanceUID": "",
            "Modality": "",
            "SeriesDate": series_date,
            "NumberOfSeriesRelatedInstances": "",
        }
        requests: list[KeyValue] = list(chunks(list(study_instance_uids))) if study_instance_uids else [""]
        out: list[SeriesRecord] = []
        for studies in requests:
            for row in self._unique_rows(
                "SERIES", {"StudyInstanceUID": studies, **keys}, None, "SeriesInstanceUID"
            ):
                study_uid = _text(row, "StudyInstanceUID")
                if study_uid is None:
                    continue  # a relational answer without its study cannot be placed
                out.append(
                    SeriesRecord(
                        study_instance_uid=study_uid,
                        series_instance_uid=str(_text(row, "SeriesInstanceUID")),
                        modality=_text(row, "Modality"),
                        number_of_series_related_instances=_int(row, "NumberOfSeriesRelatedInstances"),
                    )
                )
        return out

    def instances(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        *,
        sop_instance_uid: str | Sequence[str] | None = None,
        extra_keys: Mapping[str, KeyValue] | None = None,
    ) -> list[InstanceRecord]:
        """IMAGE level. Without `series_instance_uid` the SeriesInstanceUID key is sent empty (universal
        matching): Orthanc and dcmqrscp 3.6.7 answer that, but a strictly hierarchical SCP may refuse it
        (0xC000) or match nothing — walk() is the portable way."""
        keys: dict[str, KeyValue] = {
            "StudyInstanceUID": study_instance_uid,
            "SeriesInstanceUID": series_instance_uid or "",
            "SOPInstanceUID": sop_instance_uid or "",
            "SOPClassUID": "",
            "InstanceNumber": "",
        }
        rows = self._unique_rows("IMAGE", keys, extra_keys, "SOPInstanceUID")
        return _instance_records(rows, study_instance_uid, series_instance_uid)

    def instances_by_uid(self, sop_instance_uids: Sequence[str]) -> list[InstanceRecord]:
        """The instances among `sop_instance_uids` that the peer holds, whatever their study or series:
        IMAGE-level C-FINDs with up to MAX_UIDS_PER_REQUEST UIDs each (list of UID matching, PS3.4
        C.2.2.2.2) and no higher-level keys to match. Orthanc answers these (the main archive and
        staging); a strictly hierarchical SCP needs `instances()` per study or series.

        Only the UIDs are asked for: with SOPClassUID and InstanceNumber as return keys too, 2,100
        instances took Orthanc 1.10 4.4 s instead of 1.1 s (tags outside its index are read from the
        files)."""
        keys: dict[str, KeyValue] = {"StudyInstanceUID": "", "SeriesInstanceUID": ""}
        records: list[InstanceRecord] = []
        for chunk in chunks(list(sop_instance_uids)):
            rows = self._unique_rows("IMAGE", {**keys, "SOPInstanceUID": chunk}, None, "SOPInstanceUID")
            records.extend(_instance_records(rows, None, None))
        return records

    def walk(self, studies: Iterable[StudyRecord | str]) -> list[InstanceRecord]:
        """STUDY -> SERIES -> IMAGE for each study; works on strictly hierarchical SCPs."""
        out: list[InstanceRecord] = []
        for study in studies:
            study_uid = study if isinstance(study, str) else study.study_instance_uid
            for series in self.series(study_uid):
                out.extend(self.instances(study_uid, series.series_instance_uid))
        return out


def _instance_records(
    rows: Iterable[Dataset], study_instance_uid: str | None, series_instance_uid: str | None
) -> list[InstanceRecord]:
    """IMAGE-level rows as records; the UIDs asked for stand in for return keys a peer left out."""
    records = []
    for row in rows:
        series_uid = _text(row, "SeriesInstanceUID") or series_instance_uid
        if series_uid is None:
            log.warning("C-FIND IMAGE row %s has no SeriesInstanceUID; skipped", _text(row, "SOPInstanceUID"))
            continue
        records.append(
            InstanceRecord(
                study_instance_uid=_text(row, "StudyInstanceUID") or study_instance_uid or "",
                series_instance_uid=series_uid,
                sop_instance_uid=str(_text(row, "SOPInstanceUID")),
                sop_class_uid=_text(row, "SOPClassUID"),
                instance_number=_int(row, "InstanceNumber"),
            )
        )
    return records


def c_find(
    peer: Peer,
    calling_aet: str,
    level: Level,
    keys: Mapping[str, KeyValue],
    timeouts: Timeouts | None = None,
) -> list[Dataset]:
    """One raw C-FIND on its own association (rows not de-duplicated)."""
    with FindSession(peer, calling_aet, timeouts) as session:
        return session.find(level, keys)


def find_studies(
    peer: Peer,
    calling_aet: str,
    *,
    study_date: str | None = None,
    study_instance_uid: str | Sequence[str] | None = None,
    extra_keys: Mapping[str, KeyValue] | None = None,
    timeouts: Timeouts | None = None,
) -> list[StudyRecord]:
    with FindSession(peer, calling_aet, timeouts) as session:
        return session.studies(
            study_date=study_date, study_instance_uid=study_instance_uid, extra_keys=extra_keys
        )


def find_series(
    peer: Peer,
    calling_aet: str,
    study_instance_uid: str,
    *,
    extra_keys: Mapping[str, KeyValue] | None = None,
    timeouts: Timeouts | None = None,
) -> list[SeriesRecord]:
    with FindSession(peer, calling_aet, timeouts) as session:
        return session.series(study_instance_uid, extra_keys=extra_keys)


def find_instances(
    peer: Peer,
    calling_aet: str,
    study_instance_uid: str,
    series_instance_uid: str | None = None,
    *,
    extra_keys: Mapping[str, KeyValue] | None = None,
    timeouts: Timeouts | None = None,
) -> list[InstanceRecord]:
    with FindSession(peer, calling_aet, timeouts) as session:
        return session.instances(study_instance_uid, series_instance_uid, extra_keys=extra_keys)


def walk_hierarchy(
    peer: Peer,
    calling_aet: str,
    *,
    study_date: str | None = None,
    study_instance_uids: Sequence[str] | None = None,
    study_keys: Mapping[str, KeyValue] | None = None,
    timeouts: Timeouts | None = None,
) -> list[InstanceRecord]:
    """Every instance of the matching studies via STUDY -> SERIES -> IMAGE over one association.

    Studies come from `study_instance_uids` if given, else from a STUDY query on `study_date` and
    `study_keys` (extra match keys, e.g. {"PatientID": "..."}).
    """
    with FindSession(peer, calling_aet, timeouts) as session:
        studies: Sequence[StudyRecord | str]
        if study_instance_uids is not None:
            studies = list(study_instance_uids)
        else:
            studies = session.studies(study_date=study_date, extra_keys=study_keys)
        return session.walk(studies)
