"""MIM simulator subprocess: C-ECHO, C-FIND at every level with proper matching, C-MOVE, C-GET, C-STORE."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import CTImageStorage
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

from dicom_backup_dagster.dicom.network import Peer, make_ae
from dicom_backup_dagster.sandbox.aria import echo_ok
from dicom_backup_dagster.sandbox.mim import MimSimulator
from dicom_backup_dagster.sandbox.processes import free_port, pid_alive
from dicom_backup_dagster.sandbox.synthetic import Manifest, SyntheticOptions, generate


class StoreSink:
    """A pynetdicom Storage SCP collecting SOP Instance UIDs (a C-MOVE destination)."""

    def __init__(self, aet: str) -> None:
        self.aet = aet
        self.port = free_port()
        self.received: list[str] = []
        self.lock = threading.Lock()
        ae = make_ae(aet)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        self.ae = ae
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: Any) -> int:
        with self.lock:
            self.received.append(str(event.dataset.SOPInstanceUID))
        return 0

    @property
    def peer(self) -> Peer:
        return Peer(self.aet, "127.0.0.1", self.port)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return generate(
        tmp_path_factory.mktemp("data"),
        SyntheticOptions(patients=3, ct_slices=4, fractions=3, cbct_slices=2, mim_every=1, seed=11),
    )


@pytest.fixture(scope="module")
def sink() -> Iterator[StoreSink]:
    s = StoreSink("SINK")
    yield s
    s.ae.shutdown()


@pytest.fixture(scope="module")
def mim(tmp_path_factory: pytest.TempPathFactory, data: Manifest, sink: StoreSink) -> Iterator[MimSimulator]:
    sim = MimSimulator(
        tmp_path_factory.mktemp("mim"), "MIM_T", free_port(), data.source_dir("MIM"), {"sink": sink.peer}
    )
    with sim:
        yield sim
    assert sim.pid is not None and not pid_alive(sim.pid)


def find(peer: Peer, **keys: str) -> tuple[int, list[Dataset]]:
    ae = make_ae("TESTER")
    ae.add_requested_context(FIND)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet)
    assert assoc.is_established
    rows, final = [], -1
    try:
        ident = Dataset()
        for k, v in keys.items():
            setattr(ident, k, v)
        for status, row in assoc.send_c_find(ident, FIND):
            if int(status.Status) == 0xFF00:
                rows.append(row)
            else:
                final = int(status.Status)
    finally:
        assoc.release()
    return final, rows


def test_echo(mim: MimSimulator) -> None:
    assert echo_ok(mim.peer)
    assert not echo_ok(Peer("NOT_MIM", "127.0.0.1", mim.port))


def test_find_study_level_with_date_range(mim: MimSimulator, data: Manifest) -> None:
    status, rows = find(
        mim.peer,
        QueryRetrieveLevel="STUDY",
        StudyInstanceUID="",
        StudyDate="",
        NumberOfStudyRelatedInstances="",
        ModalitiesInStudy="",
    )
    assert status == 0
    assert {r.StudyInstanceUID for r in rows} == {r.study_instance_uid for r in data}
    counts = {r.StudyInstanceUID: int(r.NumberOfStudyRelatedInstances) for r in rows}
    for uid, n in counts.items():
        assert n == sum(1 for r in data if r.study_instance_uid == uid)
    days = sorted({r.date for r in data})
    lo, hi = days[1], days[3]
    _, ranged = find(mim.peer, QueryRetrieveLevel="STUDY", StudyInstanceUID="", StudyDate=f"{lo}-{hi}")
    assert {r.StudyInstanceUID for r in ranged} == {r.study_instance_uid for r in data if lo <= r.date <= hi}
    _, single = find(mim.peer, QueryRetrieveLevel="STUDY", StudyInstanceUID="", StudyDate=lo)
    assert {r.StudyDate for r in single} == {lo}
    _, open_end = find(mim.peer, QueryRetrieveLevel="STUDY", StudyInstanceUID="", StudyDate=f"{hi}-")
    assert all(r.StudyDate >= hi for r in open_end) and open_end
    _, wild = find(mim.peer, QueryRetrieveLevel="STUDY", StudyInstanceUID="", PatientID="SBX000*")
    assert len(wild) == len(rows)
    _, none = find(mim.peer, QueryRetrieveLevel="STUDY", StudyInstanceUID="", PatientID="NOBODY")
    assert none == []


def test_find_series_and_image_are_hierarchical(mim: MimSimulator, data: Manifest) -> None:
    rec = next(r for r in data if r.modality == "CT")
    status, _ = find(mim.peer, QueryRetrieveLevel="SERIES", SeriesInstanceUID="")
    assert status == 0xC000  # no StudyInstanceUID
    status, series = find(
        mim.peer,
        QueryRetrieveLevel="SERIES",
        StudyInstanceUID=rec.study_instance_uid,
        SeriesInstanceUID="",
        Modality="",
        NumberOfSeriesRelatedInstances="",
    )
    assert status == 0
    assert {s.SeriesInstanceUID for s in series} == {
        r.series_instance_uid for r in data if r.study_instance_uid == rec.study_instance_uid
    }
    status, _ = find(
        mim.peer, QueryRetrieveLevel="IMAGE", StudyInstanceUID=rec.study_instance_uid, SOPInstanceUID=""
    )
    assert status == 0xC000  # no SeriesInstanceUID
    status, images = find(
        mim.peer,
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID=rec.study_instance_uid,
        SeriesInstanceUID=rec.series_instance_uid,
        SOPInstanceUID="",
        SOPClassUID="",
    )
    assert status == 0
    expected = {
        r.sop_instance_uid: r.sop_class_uid for r in data if r.series_instance_uid == rec.series_instance_uid
    }
    assert {i.SOPInstanceUID: i.SOPClassUID for i in images} == expected
    # UID list matching
    two = sorted(expected)[:2]
    _, listed = find(
        mim.peer,
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID=rec.study_instance_uid,
        SeriesInstanceUID=rec.series_instance_uid,
        SOPInstanceUID="\\".join(two),
    )
    assert sorted(i.SOPInstanceUID for i in listed) == two


def test_move_to_known_and_unknown_destination(mim: MimSimulator, data: Manifest, sink: StoreSink) -> None:
    rec = next(r for r in data if r.modality == "RTPLAN")
    expected = {r.sop_instance_uid for r in data if r.study_instance_uid == rec.study_instance_uid}
    ae = make_ae("TESTER")
    ae.add_requested_context(MOVE)
    assoc = ae.associate("127.0.0.1", mim.port, ae_title=mim.aet)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = rec.study_instance_uid
    responses = list(assoc.send_c_move(q, "SINK", MOVE))
    final = responses[-1][0]
    refused = [int(s.Status) for s, _ in assoc.send_c_move(q, "UNKNOWN_AE", MOVE)]
    assoc.release()
    assert int(final.Status) == 0
    assert int(final.NumberOfCompletedSuboperations) == len(expected)
    assert int(final.get("NumberOfFailedSuboperations", 0)) == 0
    assert expected <= set(sink.received)
    assert refused[-1] == 0xA801


def test_get_series(mim: MimSimulator, data: Manifest) -> None:
    rec = next(r for r in data if r.modality == "CT")
    expected = {r.sop_instance_uid for r in data if r.series_instance_uid == rec.series_instance_uid}
    got: list[str] = []

    def on_store(event: Any) -> int:
        got.append(str(event.dataset.SOPInstanceUID))
        return 0

    ae = make_ae("GETTER")
    ae.add_requested_context(GET)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        "127.0.0.1",
        mim.port,
        ae_title=mim.aet,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = rec.study_instance_uid
    q.SeriesInstanceUID = rec.series_instance_uid
    final = list(assoc.send_c_get(q, GET))[-1][0]
    assoc.release()
    assert int(final.Status) == 0
    assert set(got) == expected


def test_store_then_find(mim: MimSimulator, data: Manifest, tmp_path: Path) -> None:
    rec = next(r for r in data if r.modality == "CT")
    ds = dcmread(rec.path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1234567890123"
    ae = make_ae("STORER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", mim.port, ae_title=mim.aet)
    assert int(assoc.send_c_store(ds).Status) == 0
    assoc.release()
    _, images = find(
        mim.peer,
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID=rec.study_instance_uid,
        SeriesInstanceUID=rec.series_instance_uid,
        SOPInstanceUID="2.25.1234567890123",
    )
    assert len(images) == 1


def test_minimal_responses_omit_optional_keys_in_process(data: Manifest) -> None:
    from dicom_backup_dagster.sandbox.mim import MimServer

    server = MimServer(data.source_dir("MIM"), "MIM_MIN", free_port(), minimal_responses=True)
    server.load()
    server.start()
    try:
        rec = next(r for r in data if r.modality == "CT")
        status, rows = find(
            server_peer(server),
            QueryRetrieveLevel="IMAGE",
            StudyInstanceUID=rec.study_instance_uid,
            SeriesInstanceUID=rec.series_instance_uid,
            SOPInstanceUID="",
            SOPClassUID="",
            NumberOfSeriesRelatedInstances="",
        )
        assert status == 0 and rows
        assert all("SOPClassUID" not in r and "NumberOfSeriesRelatedInstances" not in r for r in rows)
        assert all(r.SOPInstanceUID for r in rows)
    finally:
        server.shutdown()


def server_peer(server: object) -> Peer:
    return Peer(server.aet, "127.0.0.1", server.port)  # type: ignore[attr-defined]
