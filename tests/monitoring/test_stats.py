"""dicom/stats.py: the collector's arithmetic, its activation rules, and the hooks at real DIMSE requests
(a misbehaving pynetdicom SCP answers with chosen statuses)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicom_backup_dagster.dicom import stats
from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.move import c_move
from dicom_backup_dagster.dicom.network import Peer, Timeouts
from dicom_backup_dagster.dicom.store import c_store_files
from dicom_backup_dagster.sandbox.processes import free_port
from tests.dicom.fault_scp import FaultSCP, RetrievePlan
from tests.dicom.synthetic import make_patient

CALLING = "MONITOR_SCU"
FAST = Timeouts(acse=5, dimse=5, network=5, connect=2)


def test_buckets_counts_and_sum() -> None:
    collected = stats.DimseStats()
    for seconds in (0.003, 0.3, 700.0):
        collected.record("ARIA_SIM", "C-FIND", "success", seconds)
    collected.record("ARIA_SIM", "C-FIND", "failure", 0.02)
    entry = collected.to_metadata()["ARIA_SIM"]["C-FIND"]
    assert (entry["success"], entry["warning"], entry["failure"]) == (3, 0, 1)
    assert entry["seconds_sum"] == pytest.approx(700.323)
    buckets = entry["buckets"]
    assert list(buckets) == list(stats.BUCKET_LABELS)
    assert buckets["0.005"] == 1 and buckets["0.025"] == 2 and buckets["0.5"] == 3 and buckets["600.0"] == 3
    assert buckets["+Inf"] == 4


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, "success"),
        (0xB000, "warning"),
        (0x0001, "warning"),
        (0xA700, "failure"),
        (0xC000, "failure"),
        (0xA801, "failure"),
        (0xFE00, "failure"),
        (None, "failure"),
    ],
)
def test_status_class(code: int | None, expected: str) -> None:
    assert stats.status_class(code) == expected


def test_labels_stay_bounded_and_nothing_is_recorded_without_a_collector() -> None:
    stats.record("ARIA_SIM", "C-ECHO", 0, 0.01)  # no collector active: dropped
    with stats.collecting() as collected:
        stats.record("ARIA_SIM", "association", 0, 0.01)  # not a DIMSE operation
        stats.record("ARIA_SIM", "C-ECHO", 0, 0.01)
    stats.record("ARIA_SIM", "C-ECHO", 0, 0.01)  # after the block: dropped
    assert collected.total() == 1 and list(collected.to_metadata()["ARIA_SIM"]) == ["C-ECHO"]


def test_worker_threads_record_into_the_only_active_collector() -> None:
    with stats.collecting() as collected, ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: stats.record("STAGE", "C-STORE", 0, 0.01), range(50)))
    assert collected.total("success") == 50
    # Two collectors active at once (two threads): a context-less thread cannot tell which, records nothing.
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with stats.collecting():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(5)
    try:
        with stats.collecting() as mine, ThreadPoolExecutor(1) as pool:
            pool.submit(stats.record, "STAGE", "C-STORE", 0, 0.01).result()
            stats.record("STAGE", "C-STORE", 0, 0.01)  # this thread's own context still works
        assert mine.total() == 1
    finally:
        release.set()
        thread.join(5)


def test_merge_adds_metadata_values() -> None:
    a = stats.DimseStats()
    a.record("P", "C-GET", "success", 0.1)
    b = stats.DimseStats()
    b.record("P", "C-GET", "failure", 2.0)
    b.record("Q", "C-ECHO", "success", 0.01)
    total = stats.merge(stats.merge({}, a.to_metadata()), b.to_metadata())
    assert total["P"]["C-GET"]["success"] == total["P"]["C-GET"]["failure"] == 1
    assert total["P"]["C-GET"]["buckets"]["+Inf"] == 2 and total["Q"]["C-ECHO"]["success"] == 1


@pytest.fixture
def scp() -> Iterator[FaultSCP]:
    server = FaultSCP()
    yield server
    server.stop()


def test_hooks_at_real_requests(scp: FaultSCP, tmp_path: Path) -> None:
    files = [i.path for i in make_patient(tmp_path / "files", ct_slices=2)]
    with stats.collecting() as collected:
        c_echo(scp.peer, CALLING, FAST)
        with pytest.raises(DicomError):  # nothing listens there: no association, a failed C-ECHO
            c_echo(Peer("NOBODY", "127.0.0.1", free_port()), CALLING, FAST)
        with FindSession(scp.peer, CALLING, FAST) as session:
            session.find("STUDY", {"StudyInstanceUID": ""})
            scp.find_final_status = 0xC000
            with pytest.raises(DicomError):
                session.find("STUDY", {"StudyInstanceUID": ""})
        scp.move_plan = RetrievePlan(unknown_destination=True)
        with pytest.raises(DicomError):
            c_move(scp.peer, CALLING, "NOWHERE", study_instance_uid=generate_uid(), timeouts=FAST)
        c_store_files(scp.peer, CALLING, files, timeouts=FAST)
    data = collected.to_metadata()
    fault, nobody = data[scp.peer.aet], data["NOBODY"]
    assert fault["C-ECHO"]["success"] == 1 and nobody["C-ECHO"]["failure"] == 1
    assert fault["C-FIND"]["success"] == 1 and fault["C-FIND"]["failure"] == 1
    assert fault["C-MOVE"]["failure"] == 1 and fault["C-MOVE"]["success"] == 0
    assert fault["C-STORE"]["success"] == len(files) == 5


def test_dimse_metadata_is_a_compact_table_the_exporter_reads_back() -> None:
    from dicom_backup_dagster.monitoring.dimse import dimse_mapping, dimse_metadata_value

    collected = stats.DimseStats()
    for seconds in (0.004, 0.03, 0.03, 2.5):
        collected.record("ARIA_SIM", "C-FIND", "success", seconds)
    collected.record("ARIA_SIM", "C-MOVE", "failure", 0.2)
    value = dimse_metadata_value(collected)
    rows = [r.data for r in value.records]  # one row per (peer, operation), not a JSON histogram
    assert [(r["peer_ae"], r["operation"], r["success"], r["failure"]) for r in rows] == [
        ("ARIA_SIM", "C-FIND", 4, 0),
        ("ARIA_SIM", "C-MOVE", 0, 1),
    ]
    assert len(rows[0]["latency"].split()) <= 4
    back = dimse_mapping(value)
    original = collected.to_metadata()
    for op in ("C-FIND", "C-MOVE"):
        assert back["ARIA_SIM"][op]["buckets"] == original["ARIA_SIM"][op]["buckets"]
        assert back["ARIA_SIM"][op]["seconds_sum"] == pytest.approx(original["ARIA_SIM"][op]["seconds_sum"])
    assert dimse_mapping(original) == original  # the older JSON form still reads
