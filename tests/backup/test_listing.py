"""list_studies against capped sources: Debian's Orthanc 1.10 with LimitFindResults, and the pynetdicom MIM
simulator cutting answers silently (max_results). Every study of a capped day is listed, the splits are
reported, and a part that cannot be split below the cap raises FindCapError."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_backup_dagster.backup.inventory import take_inventory
from dicom_backup_dagster.backup.listing import (
    MINUTES_PER_DAY,
    MODALITIES,
    FindCapError,
    list_studies,
    time_minute,
    time_range,
)
from dicom_backup_dagster.backup.manifest import read_manifest
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.sandbox.mim import MimServer
from dicom_backup_dagster.sandbox.orthanc import OrthancServer
from dicom_backup_dagster.sandbox.processes import free_port
from tests.dicom.conftest import CALLING_AET, FAST, ORTHANC_PASSWORD, ORTHANC_USER
from tests.dicom.synthetic import SyntheticInstance, make_patient, make_study

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

CAP = 4
DAY_A, DAY_B, DAY_C = dt.date(2026, 1, 5), dt.date(2026, 1, 6), dt.date(2026, 1, 7)
SAME_MINUTE, UNTIMED_CT = dt.date(2026, 1, 8), dt.date(2026, 1, 9)
# Day A: 11 timed CT studies in every TM form (HH, HHMM, fractions; three in one minute, one a moment
# before noon, where the day is first split), a timed RTPLAN, and two RTPLAN without a time (empty and
# absent StudyTime: Orthanc 1.10 matches the first with an open "-hhmm" range, never the second).
DAY_A_CT = ["070000", "081500", "093000", "103000", "103020", "103040", "115959.5", "120000", "134500"]
DAY_A_CT += ["1600", "17"]


def _write(directory: Path) -> dict[dt.date, list[SyntheticInstance]]:
    out: dict[dt.date, list[SyntheticInstance]] = {}

    def add(day: dt.date, time: str | None, modality: str = "CT") -> None:
        out.setdefault(day, []).append(
            make_study(directory, study_date=day.strftime("%Y%m%d"), study_time=time, modality=modality)
        )

    for time in DAY_A_CT:
        add(DAY_A, time)
    add(DAY_A, "0900", "RTPLAN")
    add(DAY_A, "", "RTPLAN")
    add(DAY_A, None, "RTPLAN")
    for hour in range(8, 13):
        add(DAY_B, f"{hour:02d}0000")
    add(DAY_C, "090000")
    add(DAY_C, None)
    for second in range(5):
        add(SAME_MINUTE, f"1030{second:02d}")
    for _ in range(5):
        add(UNTIMED_CT, None)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[dt.date, list[SyntheticInstance]]]:
    directory = tmp_path_factory.mktemp("capped-data")
    return directory, _write(directory)


def _uids(studies: list[SyntheticInstance]) -> set[str]:
    return {s.study_instance_uid for s in studies}


def _expected(data: dict[dt.date, list[SyntheticInstance]], *days: dt.date) -> set[str]:
    return set().union(*(_uids(data[d]) for d in days))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, data) -> Iterator[OrthancServer]:
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc-capped"),
        "ORTHANC_CAP",
        free_port(),
        free_port(),
        ORTHANC_USER,
        ORTHANC_PASSWORD,
        modalities={"backup": Peer(CALLING_AET, "127.0.0.1", free_port())},
        extra_config={"LimitFindResults": CAP},
    )
    server.start()
    try:
        for study in [s for studies in data[1].values() for s in studies]:
            server.upload(study.path)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def simulator(data) -> Iterator[MimServer]:
    server = MimServer(data[0], "MIM_CAP", free_port(), max_results=CAP)
    server.load()
    server.start()
    try:
        yield server
    finally:
        server.shutdown()


def _sim_peer(server: MimServer) -> Peer:
    return Peer(server.aet, "127.0.0.1", server.port)


# --------------------------------------------------------------------------------------- time ranges


def _numeric(value: str) -> float:
    digits = value.split(".")[0].ljust(6, "0")
    fraction = float("0." + value.split(".")[1]) if "." in value else 0.0
    return int(digits[:2]) * 3600 + int(digits[2:4]) * 60 + int(digits[4:6]) + fraction


def _in_range(value: str, matching: str, numeric: bool) -> bool:
    lower, upper = matching.split("-")
    if numeric:  # PS3.4 C.2.2.2.5 read as times; an upper bound of HHMM means up to HHMM59.999999
        v = _numeric(value)
        return (not lower or v >= _numeric(lower)) and (not upper or v <= _numeric(upper))
    return (not lower or value >= lower) and (not upper or value <= upper)  # Orthanc 1.10: strings


def test_time_parts_put_every_tm_form_in_exactly_one_part() -> None:
    bounds = [0, 1, 59, 60, 617, 630, 631, 720, 721, 1380, 1439, MINUTES_PER_DAY]
    parts = [time_range(a, b) for a, b in itertools.pairwise(bounds)]
    assert parts[0] == "-000059.999999" and parts[-1] == "2359-"
    assert time_range(630, 720) == "1030-115959.999999" and time_range(600, 601) == "10-100059.999999"
    for minute in range(MINUTES_PER_DAY):
        hh, mm = divmod(minute, 60)
        forms = [
            f"{hh:02d}{mm:02d}",
            f"{hh:02d}{mm:02d}00",
            f"{hh:02d}{mm:02d}59.999999",
            f"{hh:02d}{mm:02d}30.5",
        ]
        forms += [f"{hh:02d}"] if mm == 0 else []
        for value in forms:
            assert time_minute(value) == minute
            for numeric in (False, True):
                hits = [p for p in parts if _in_range(value, p, numeric)]
                assert len(hits) == 1, (value, numeric, hits)
    assert time_minute("") is None and time_minute(None) is None and time_minute("25") is None


# ------------------------------------------------------------------------------------------- Orthanc


def test_orthanc_ends_an_answer_cut_at_limit_find_results_with_cancel(orthanc, data) -> None:
    # Measured on Debian's Orthanc 1.10.1: CAP pending matches, then 0xFE00 without any C-CANCEL.
    with FindSession(orthanc.peer, CALLING_AET, FAST) as session:
        with pytest.raises(DicomError) as info:
            session.studies(study_date="20260105")
        assert info.value.status == 0xFE00
        # Without a cap, the listing says what to configure instead of "cancelled, run it again".
        with pytest.raises(FindCapError) as capped:
            list_studies(session, DAY_A, DAY_A)
    text = str(capped.value)
    assert f"ORTHANC_CAP@127.0.0.1:{orthanc.dicom_port}" in text and "0xFE00" in text
    assert "max_find_results" in text and "20260105" in text


def test_orthanc_capped_days_are_listed_whole(orthanc, data) -> None:
    with FindSession(orthanc.peer, CALLING_AET, FAST) as session:
        listing = list_studies(session, DAY_A, DAY_C, cap=CAP)
    found = [s.study_instance_uid for s in listing.studies]
    assert len(found) == len(set(found))
    assert set(found) == _expected(data[1], DAY_A, DAY_B, DAY_C)  # including both untimed RTPLAN
    splits = listing.splits
    assert splits[0] == "20260105-20260107: refused 0xFE00 (too many matches), split by days"
    assert "20260105: refused 0xFE00 (too many matches), split by StudyTime" in splits
    assert "20260106: refused 0xFE00 (too many matches), split by StudyTime" in splits
    # Day A has more than CAP CT studies: their untimed ones (none here) cannot be isolated; said so.
    assert (
        "20260105 CT: refused 0xFE00 (too many matches), studies without StudyTime cannot be ruled out"
        in splits
    )
    assert not any("20260107" in line and "StudyTime" in line for line in splits)  # day C fits
    assert listing.queries > 2 * len(MODALITIES)  # each split day is also asked per modality
    assert "SANDBOX" not in repr(splits)


def test_uncapped_listing_is_one_query(orthanc, data) -> None:
    with FindSession(orthanc.peer, CALLING_AET, FAST) as session:
        listing = list_studies(session, DAY_C, DAY_C)
    assert (listing.queries, listing.splits) == (1, ())
    assert {s.study_instance_uid for s in listing.studies} == _uids(data[1][DAY_C])


# -------------------------------------------------------------------------- silently truncating SCP


def test_simulator_truncates_silently_and_the_split_finds_every_study(simulator, data) -> None:
    with FindSession(_sim_peer(simulator), CALLING_AET, FAST) as session:
        cut = session.studies(study_date="20260105-20260107")
        assert len(cut) == CAP  # final status 0x0000: nothing says it was cut
        listing = list_studies(session, DAY_A, DAY_C, cap=CAP)
    assert {s.study_instance_uid for s in listing.studies} == _expected(data[1], DAY_A, DAY_B, DAY_C)
    # No time range matches the two RTPLAN of day A without StudyTime on this SCP: the per-modality pass
    # of the split day found them.
    untimed = {
        s.study_instance_uid for s in listing.studies if s.study_date == "20260105" and not s.study_time
    }
    assert untimed == _uids(data[1][DAY_A][-2:])
    assert listing.splits[0] == f"20260105-20260107: {CAP} matches = cap {CAP}, split by days"
    assert f"20260105: {CAP} matches = cap {CAP}, split by StudyTime" in listing.splits
    assert f"20260105 00:00-11:59: {CAP} matches = cap {CAP}, split by StudyTime" in listing.splits


def test_a_minute_at_the_cap_is_split_by_modality_and_then_raises(simulator) -> None:
    peer = _sim_peer(simulator)
    with FindSession(peer, CALLING_AET, FAST) as session, pytest.raises(FindCapError) as info:
        list_studies(session, SAME_MINUTE, SAME_MINUTE, cap=CAP)
    text = str(info.value)
    assert f"C-FIND to MIM_CAP@127.0.0.1:{peer.port} failed" in text
    assert f"20260108 10:30 CT: {CAP} matches = cap {CAP} and cannot be split further" in text
    assert f"raise the source's C-FIND limit above {CAP}" in text and "LimitFindResults" in text
    assert "SANDBOX" not in text


def test_untimed_studies_beyond_the_cap_raise_instead_of_being_dropped(simulator) -> None:
    with FindSession(_sim_peer(simulator), CALLING_AET, FAST) as session, pytest.raises(FindCapError) as info:
        list_studies(session, UNTIMED_CT, UNTIMED_CT, cap=CAP)
    assert "20260109 CT" in str(info.value) and "without a StudyTime" in str(info.value)


def test_whole_study_answer_at_the_cap_is_walked(tmp_path: Path) -> None:
    # No NumberOfStudyRelatedInstances to compare with (minimal responses): only the cap says that the
    # IMAGE answer of 6 instances, cut at 4, is short.
    patient = make_patient(tmp_path / "data")
    server = MimServer(
        tmp_path / "data", "MIM_CAP2", free_port(), relational=True, minimal_responses=True, max_results=CAP
    )
    server.load()
    server.start()
    try:
        peer = Peer(server.aet, "127.0.0.1", server.port)
        with FindSession(peer, CALLING_AET, FAST) as session:
            day = dt.date(2024, 1, 15)
            summary = take_inventory(session, day, day, tmp_path / "m.jsonl", max_find_results=CAP)
    finally:
        server.shutdown()
    assert summary.studies_walked == 1 and summary.find_splits == () and summary.find_queries == 1
    assert {e.sop_instance_uid for e in read_manifest(tmp_path / "m.jsonl")} == {
        p.sop_instance_uid for p in patient
    }
