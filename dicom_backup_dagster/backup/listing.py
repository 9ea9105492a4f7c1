"""The studies of a StudyDate range from a source whose C-FIND answers may be capped (issue 11).

Many PACS stop a C-FIND at a configured number of matches and say nothing (final status 0x0000), others
say it: Orthanc 1.10.1 with LimitFindResults=N sends N matches then a final 0xFE00 "Cancel" that nobody
asked for (measured, tests/backup/test_listing.py), dcm4chee-arc refuses queries over
QueryMaxNumberOfResults, and PS3.4 C.4.1.1.4 gives C-FIND only one refusal for it: 0xA700 "Refused: Out of
resources". So with a known cap (the source's `max_find_results`), an answer of `cap` or more matches, or
one of those statuses, is not trusted and its part is split until every part is below the cap:

- a range of days by halves;
- one day by StudyTime ranges (PS3.4 C.2.2.2.5), bisected down to one minute;
- a minute still at the cap by ModalitiesInStudy (one query per modality, PS3.3 C.7.3.1.1.1 terms).

StudyTime range semantics differ: PS3.4 compares times, Orthanc 1.10 and many SCPs compare the strings
(measured: "10-11" does not match 110000). Bounds are therefore written so both readings give the same
parts: a lower bound without trailing zero pairs ("10", "1030") and an upper bound at full precision
("105959.999999"); the first part is open below and the last open above, so any StudyTime falls into
exactly one part.

A time range does not match a study without StudyTime (PS3.4 C.2.2.2.5). Orthanc 1.10 matches an empty
StudyTime with an open "-hhmm" (string comparison) but not an absent one (both measured), so nothing
can be assumed: a split day is also asked once per modality without a time key. Every such part below
the cap is complete; one at the cap whose rows show a study without a time raises (others may be hidden);
one at the cap without that evidence is reported in `splits` ("... without StudyTime cannot be ruled
out"): C-FIND cannot isolate them (Empty Value Matching '""' is PS3.4 2019+ and Orthanc 1.10 answers it
with nothing: measured).

A part that cannot be split below the cap raises FindCapError: nothing is listed rather than a part.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from dicom_backup_dagster.dicom.errors import DicomError, UnreadableResponse
from dicom_backup_dagster.dicom.find import FindSession, StudyRecord, study_date_range

log = logging.getLogger(__name__)

MINUTES_PER_DAY = 24 * 60

# Final C-FIND statuses that mean "too many matches" rather than a broken query: 0xA700-0xA7FF Refused:
# Out of resources (PS3.4 C.4.1.1.4; dcm4chee-arc's QueryMaxNumberOfResults refusal) and 0xFE00 Cancel,
# which we never request: Orthanc 1.10.1 ends an answer cut at LimitFindResults with it.
CANCEL = 0xFE00


def is_too_many_matches(status: int | None) -> bool:
    return status is not None and (0xA700 <= status <= 0xA7FF or status == CANCEL)


# PS3.3 C.7.3.1.1.1 Modality defined terms (2024): the values ModalitiesInStudy can take. The whole list
# is asked, not only the modalities seen, because a study of an unseen modality would be lost unseen.
MODALITIES = (
    "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CFM", "CR", "CT", "CTPROTOCOL", "DMS", "DG", "DOC", "DX",
    "ECG", "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER",
    "KO", "LEN", "LS", "MG", "MR", "M3D", "NM", "OAM", "OCT", "OP", "OPM", "OPT", "OPTBSV", "OPTENF",
    "OPV", "OSS", "OT", "PA", "PLAN", "POS", "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE",
    "RTIMAGE", "RTINTENT", "RTPLAN", "RTRAD", "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SM",
    "SMR", "SR", "SRF", "STAIN", "TEXTUREMAP", "TG", "US", "VA", "XA", "XAPROTOCOL", "XC",
)  # fmt: skip


class FindCapError(DicomError):
    """A part of a study listing is still at the source's C-FIND cap and cannot be split further."""


@dataclass(frozen=True)
class StudyListing:
    studies: list[StudyRecord]  # de-duplicated by StudyInstanceUID, any order
    queries: int  # C-FINDs sent
    # One short line per part that reached the cap and was split, or (per-modality pass of a split day)
    # that stayed at the cap without studies lacking a StudyTime in view. Dates, times, modalities: no PHI.
    splits: tuple[str, ...]


@dataclass(frozen=True)
class _Part:
    first_day: dt.date
    last_day: dt.date
    minutes: tuple[int, int] | None = None  # [start, end) minutes of the day; None: the whole day(s)
    modality: str | None = None

    @property
    def label(self) -> str:
        text = self.first_day.strftime("%Y%m%d")
        if self.last_day != self.first_day:
            text += "-" + self.last_day.strftime("%Y%m%d")
        if self.minutes is not None:
            start, end = self.minutes
            text += f" {_hhmm(start)}" + (f"-{_hhmm(end - 1)}" if end - start > 1 else "")
        if self.modality is not None:
            text += f" {self.modality}"
        return text

    def keys(self) -> dict[str, str]:
        keys: dict[str, str] = {}
        if self.minutes is not None:
            keys["StudyTime"] = time_range(*self.minutes)
        if self.modality is not None:
            keys["ModalitiesInStudy"] = self.modality
        return keys


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def time_range(start: int, end: int) -> str:
    """StudyTime range matching value (PS3.4 C.2.2.2.5) for the minutes [start, end) of a day.

    The lower bound drops trailing zero pairs ("10", "1030") and the upper bound is full precision
    ("105959.999999") so that SCPs comparing strings (Orthanc 1.10) and SCPs comparing times agree for
    every TM form (HH, HHMM, HHMMSS, HHMMSS.FFFFFF); the day's first part is open below, its last open
    above."""
    if not 0 <= start < end <= MINUTES_PER_DAY:
        raise ValueError(f"bad minute range [{start}, {end})")
    lower = "" if start == 0 else f"{start // 60:02d}" + (f"{start % 60:02d}" if start % 60 else "")
    last = end - 1
    upper = "" if end == MINUTES_PER_DAY else f"{last // 60:02d}{last % 60:02d}59.999999"
    return f"{lower}-{upper}"


def time_minute(study_time: str | None) -> int | None:
    """The minute of the day of a StudyTime (TM, PS3.5 6.2: HH[MM[SS[.F]]], legacy HH:MM:SS), or None."""
    if not study_time:
        return None
    digits = study_time.split(".")[0].replace(":", "").strip()
    if not digits.isdigit() or len(digits) < 2:
        return None
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        return None
    return hours * 60 + minutes


class _Lister:
    def __init__(self, session: FindSession, extra_keys: Mapping[str, str], cap: int | None) -> None:
        self.session = session
        self.extra_keys = dict(extra_keys)
        self.cap = cap
        self.found: dict[str, StudyRecord] = {}
        self.queries = 0
        self.splits: list[str] = []

    def ask(self, part: _Part) -> tuple[list[StudyRecord], str | None]:
        """(rows, why the answer is not trusted or None). Rows of a cut answer are real matches: kept."""
        self.queries += 1
        try:
            rows = self.session.studies(
                study_date=study_date_range(part.first_day, part.last_day),
                extra_keys={**self.extra_keys, **part.keys()},
            )
        except DicomError as error:
            if isinstance(error, UnreadableResponse) or not is_too_many_matches(error.status):
                raise
            if self.cap is None:
                raise self.error(
                    part,
                    f"answered 0x{error.status:04X} {error.status_meaning}, which capped PACS send when a "
                    "query matches too many studies",
                    "set max_find_results on this source to its C-FIND limit (e.g. Orthanc's "
                    "LimitFindResults) so that the listing is split below it",
                ) from error
            return [], f"refused 0x{error.status:04X} (too many matches)"
        for row in rows:
            self.found.setdefault(row.study_instance_uid, row)
        if self.cap is not None and len(rows) >= self.cap:
            return rows, f"{len(rows)} matches = cap {self.cap}"
        return rows, None

    def error(self, part: _Part, what: str, advice: str) -> FindCapError:
        return FindCapError(
            self.session.peer,
            "C-FIND",
            f"STUDY-level listing of {part.label}: {what}; no study of the range was backed up rather "
            "than part of it",
            advice=advice,
        )

    def cannot_split(self, part: _Part, why: str, reason: str) -> FindCapError:
        return self.error(
            part,
            f"{why} and {reason}",
            f"raise the source's C-FIND limit above {self.cap} matches (e.g. Orthanc's LimitFindResults), "
            f"or, if its real limit is higher than max_find_results = {self.cap}, set max_find_results to "
            "it (answers below the real limit are complete); a lower max_find_results does not help",
        )

    # --- the splits --------------------------------------------------------------------------------
    def days(self, part: _Part) -> None:
        _, why = self.ask(part)
        if why is None:
            return
        if part.first_day == part.last_day:
            self.day(part, why)
            return
        self.splits.append(f"{part.label}: {why}, split by days")
        half = (part.last_day - part.first_day).days // 2
        mid = part.first_day + dt.timedelta(days=half)
        self.days(_Part(part.first_day, mid))
        self.days(_Part(mid + dt.timedelta(days=1), part.last_day))

    def day(self, part: _Part, why: str) -> None:
        fixed = "StudyTime" in self.extra_keys
        if fixed:
            raise self.cannot_split(part, why, "the source's query_keys fix StudyTime")
        self.splits.append(f"{part.label}: {why}, split by StudyTime")
        self.times(_Part(part.first_day, part.last_day, (0, MINUTES_PER_DAY // 2)))
        self.times(_Part(part.first_day, part.last_day, (MINUTES_PER_DAY // 2, MINUTES_PER_DAY)))
        self.untimed(part)

    def times(self, part: _Part) -> None:
        rows, why = self.ask(part)
        assert part.minutes is not None
        start, end = part.minutes
        for row in rows:
            minute = time_minute(row.study_time)
            if minute is not None and not start <= minute < end:
                raise self.error(
                    part,
                    f"a StudyTime {row.study_time} outside the queried range {time_range(start, end)} was "
                    "returned: the source does not match StudyTime ranges, so a capped day cannot be split",
                    f"raise the source's C-FIND limit above {self.cap} matches",
                )
        if why is None:
            return
        if end - start > 1:
            mid = start + (end - start) // 2
            self.splits.append(f"{part.label}: {why}, split by StudyTime")
            self.times(_Part(part.first_day, part.last_day, (start, mid)))
            self.times(_Part(part.first_day, part.last_day, (mid, end)))
            return
        self.modalities(part, why)

    def modalities(self, part: _Part, why: str) -> None:
        if "ModalitiesInStudy" in self.extra_keys:
            raise self.cannot_split(part, why, "the source's query_keys fix ModalitiesInStudy")
        self.splits.append(f"{part.label}: {why}, split by ModalitiesInStudy")
        for modality in MODALITIES:
            sub = _Part(part.first_day, part.last_day, part.minutes, modality)
            rows, sub_why = self.ask(sub)
            self.check_modality(sub, rows)
            if sub_why is not None:
                raise self.cannot_split(sub, sub_why, "cannot be split further")

    def check_modality(self, part: _Part, rows: list[StudyRecord]) -> None:
        # A source that ignores ModalitiesInStudy answers the whole part for every modality.
        if any(row.modalities_in_study and part.modality not in row.modalities_in_study for row in rows):
            raise self.error(
                part,
                "studies of other modalities were returned: the source does not match ModalitiesInStudy, "
                "so a minute at the cap cannot be split",
                f"raise the source's C-FIND limit above {self.cap} matches",
            )

    def untimed(self, day: _Part) -> None:
        """Studies of a split day without a usable StudyTime: no time range matches them (PS3.4
        C.2.2.2.5), so the day is asked once per modality without a time key."""
        if "ModalitiesInStudy" in self.extra_keys:
            return  # the day's time parts are all there is; documented limitation
        for modality in MODALITIES:
            sub = _Part(day.first_day, day.last_day, None, modality)
            rows, why = self.ask(sub)
            self.check_modality(sub, rows)
            if why is None:
                continue
            if any(time_minute(r.study_time) is None for r in rows):
                raise self.cannot_split(
                    sub, why, "holds studies without a StudyTime, which no time range matches"
                )
            self.splits.append(f"{sub.label}: {why}, studies without StudyTime cannot be ruled out")


def list_studies(
    session: FindSession,
    first_day: dt.date,
    last_day: dt.date,
    *,
    extra_keys: Mapping[str, str] | None = None,
    cap: int | None = None,
) -> StudyListing:
    """Every study dated first_day..last_day (STUDY-level C-FIND, PS3.4 C.6.2.1), split below `cap`.

    Without a cap: one query, as sent (a "too many matches" status raises FindCapError saying to set
    max_find_results). With one: see the module docstring."""
    if cap is not None and cap < 1:
        raise ValueError("cap must be >= 1")
    lister = _Lister(session, extra_keys or {}, cap)
    lister.days(_Part(first_day, last_day))
    for line in lister.splits:
        log.warning("C-FIND to %s: %s", session.peer, line)
    return StudyListing(list(lister.found.values()), lister.queries, tuple(lister.splits))
