"""The DICOM layer against a real Orthanc 1.10 (sandbox OrthancServer): echo, store, find, move, get,
storage commitment, and the content digest across a round trip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicom_backup_dagster.dicom.commitment import request_storage_commitment
from dicom_backup_dagster.dicom.digest import content_digest
from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.errors import AssociationError, SubOperationError
from dicom_backup_dagster.dicom.find import FindSession, find_instances, find_series, find_studies
from dicom_backup_dagster.dicom.get import c_get
from dicom_backup_dagster.dicom.move import c_move
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.dicom.scp import StorageSCP
from dicom_backup_dagster.dicom.store import c_store_files
from dicom_backup_dagster.sandbox.orthanc import OrthancServer
from dicom_backup_dagster.sandbox.processes import free_port

from .conftest import CALLING_AET, FAST, ORTHANC_PASSWORD, ORTHANC_USER
from .synthetic import SyntheticInstance, make_patient

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


@pytest.fixture(scope="module")
def our_scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageSCP]:
    with StorageSCP(CALLING_AET, tmp_path_factory.mktemp("our-scp"), port=free_port(), timeouts=FAST) as scp:
        yield scp


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, our_scp: StorageSCP) -> Iterator[OrthancServer]:
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc"),
        "ORTHANC_TEST",
        free_port(),
        free_port(),
        ORTHANC_USER,
        ORTHANC_PASSWORD,
        modalities={"backup": our_scp.peer},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stored(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> list[SyntheticInstance]:
    """A synthetic patient (Implicit VR files, so C-GET may come back re-encoded) stored over C-STORE."""
    patient = make_patient(
        tmp_path_factory.mktemp("orthanc-patient"), patient_id="SANDBOX_ORT", implicit_vr=True
    )
    result = c_store_files(orthanc.peer, CALLING_AET, [p.path for p in patient], timeouts=FAST)
    assert len(result.stored) == len(patient)
    return patient


def test_echo(orthanc: OrthancServer) -> None:
    assert 0 < c_echo(orthanc.peer, CALLING_AET, FAST) < 2


def test_unknown_calling_aet(orthanc: OrthancServer, stored: list[SyntheticInstance]) -> None:
    # With DicomAlwaysAllowEcho, Orthanc 1.10 accepts the association of an unknown AE and aborts it at the
    # first C-STORE / C-FIND ("This AET is not listed in DicomModalities" in its log).
    with pytest.raises(AssociationError) as info:
        c_store_files(orthanc.peer, "STRANGER", [stored[0].path], timeouts=FAST)
    text = str(info.value)
    assert f"C-STORE to ORTHANC_TEST@127.0.0.1:{orthanc.dicom_port} failed" in text
    assert "aborted" in text and "our AE title STRANGER" in text
    with pytest.raises(AssociationError, match="aborted by the peer or the network during C-FIND"):
        find_studies(orthanc.peer, "STRANGER", timeouts=FAST)


def test_store_one_association(orthanc: OrthancServer, stored: list[SyntheticInstance]) -> None:
    assert orthanc.count_instances() == len(stored)
    assert all(orthanc.has_instance(p.sop_instance_uid) for p in stored)


def test_find_three_levels(orthanc: OrthancServer, stored: list[SyntheticInstance]) -> None:
    study_uid = stored[0].study_instance_uid
    studies = find_studies(
        orthanc.peer,
        CALLING_AET,
        study_date="20240101-20240131",
        extra_keys={"PatientID": "SANDBOX_ORT"},
        timeouts=FAST,
    )
    assert [s.study_instance_uid for s in studies] == [study_uid]
    assert studies[0].number_of_study_related_instances == len(stored)  # Orthanc returns counts
    series = find_series(orthanc.peer, CALLING_AET, study_uid, timeouts=FAST)
    assert {s.modality for s in series} == {"CT", "RTSTRUCT", "RTPLAN", "RTDOSE"}
    ct = next(s for s in series if s.modality == "CT")
    instances = find_instances(orthanc.peer, CALLING_AET, study_uid, ct.series_instance_uid, timeouts=FAST)
    assert {i.sop_instance_uid for i in instances} == {
        p.sop_instance_uid for p in stored if p.modality == "CT"
    }
    assert {i.sop_class_uid for i in instances} == {"1.2.840.10008.5.1.4.1.1.2"}
    with FindSession(orthanc.peer, CALLING_AET, FAST) as session:
        walked = session.walk(studies)
    assert {i.sop_instance_uid for i in walked} == {p.sop_instance_uid for p in stored}


def test_move_to_our_scp(
    orthanc: OrthancServer, stored: list[SyntheticInstance], our_scp: StorageSCP
) -> None:
    our_scp.clear()
    result = c_move(
        orthanc.peer,
        CALLING_AET,
        CALLING_AET,
        study_instance_uid=stored[0].study_instance_uid,
        expected_count=len(stored),
        timeouts=FAST,
    )
    assert result.completed == len(stored) and result.failed == 0
    assert {r.sop_instance_uid for r in our_scp.received} == {p.sop_instance_uid for p in stored}
    by_uid = {r.sop_instance_uid: r for r in our_scp.received}
    for p in stored:
        assert content_digest(by_uid[p.sop_instance_uid].path) == content_digest(p.path)


def test_move_to_unregistered_destination_fails(
    orthanc: OrthancServer, stored: list[SyntheticInstance]
) -> None:
    with pytest.raises(SubOperationError) as info:
        c_move(
            orthanc.peer,
            CALLING_AET,
            "NOWHERE",
            study_instance_uid=stored[0].study_instance_uid,
            timeouts=FAST,
        )
    # Orthanc 1.10 answers an unknown destination with a 0xC000-range failure, not 0xA801 (research 2.3).
    assert info.value.status is not None and info.value.status != 0
    assert "C-MOVE to ORTHANC_TEST@" in str(info.value)


def test_get_and_digest_round_trip(
    orthanc: OrthancServer, stored: list[SyntheticInstance], tmp_path: Path
) -> None:
    result = c_get(
        orthanc.peer,
        CALLING_AET,
        tmp_path,
        study_instance_uid=stored[0].study_instance_uid,
        expected_count=len(stored),
        timeouts=FAST,
    )
    assert result.completed == len(stored) and len(result.received) == len(stored)
    sent = {p.sop_instance_uid: content_digest(p.path) for p in stored}
    got = {r.sop_instance_uid: content_digest(r.path) for r in result.received}
    assert got == sent
    # The file bytes differ (meta rewritten, maybe re-encoded): only the content digest matches.
    assert any(
        r.path.read_bytes()
        != next(p.path for p in stored if p.sop_instance_uid == r.sop_instance_uid).read_bytes()
        for r in result.received
    )


def test_get_series_level(orthanc: OrthancServer, stored: list[SyntheticInstance], tmp_path: Path) -> None:
    plan = next(p for p in stored if p.modality == "RTPLAN")
    result = c_get(
        orthanc.peer,
        CALLING_AET,
        tmp_path,
        study_instance_uid=plan.study_instance_uid,
        series_instance_uid=plan.series_instance_uid,
        expected_count=1,
        timeouts=FAST,
    )
    assert [r.sop_instance_uid for r in result.received] == [plan.sop_instance_uid]
    assert result.received[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.481.5"


def test_storage_commitment(
    orthanc: OrthancServer, stored: list[SyntheticInstance], our_scp: StorageSCP
) -> None:
    refs = [(p.sop_class_uid, p.sop_instance_uid) for p in stored]
    result = request_storage_commitment(
        orthanc.peer, CALLING_AET, refs, our_scp, report_timeout=15, timeouts=FAST
    )
    assert result.committed_uids == {p.sop_instance_uid for p in stored} and not result.failed


def test_storage_commitment_unknown_uid(
    orthanc: OrthancServer, stored: list[SyntheticInstance], our_scp: StorageSCP
) -> None:
    unknown = generate_uid()
    refs = [(stored[0].sop_class_uid, stored[0].sop_instance_uid), ("1.2.840.10008.5.1.4.1.1.2", unknown)]
    result = request_storage_commitment(
        orthanc.peer, CALLING_AET, refs, our_scp, report_timeout=15, timeouts=FAST
    )
    assert result.committed_uids == {stored[0].sop_instance_uid}
    assert [(f.sop_instance_uid, f.failure_reason) for f in result.failed] == [(unknown, 0x0112)]
    assert result.failed[0].meaning == "Failure: No such object instance"


def test_echo_wrong_port_names_peer() -> None:
    peer = Peer("ORTHANC_TEST", "127.0.0.1", free_port())
    with pytest.raises(AssociationError, match="connection refused"):
        c_echo(peer, CALLING_AET, FAST)
