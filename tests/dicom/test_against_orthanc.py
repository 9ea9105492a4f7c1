"""The DICOM layer against a real Orthanc 1.10 (sandbox OrthancServer): echo, store, find, move, get,
storage commitment, and the content digest across a round trip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicom_backup_dagster.backup.transfer import RetrieveSession
from dicom_backup_dagster.dicom.commitment import request_storage_commitment
from dicom_backup_dagster.dicom.digest import content_digest
from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.errors import AssociationError, SubOperationError
from dicom_backup_dagster.dicom.find import FindSession, find_instances, find_series, find_studies
from dicom_backup_dagster.dicom.get import c_get
from dicom_backup_dagster.dicom.move import c_move
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.dicom.retrieve import MAX_UIDS_PER_REQUEST
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


@pytest.fixture
def second_patient(orthanc: OrthancServer, tmp_path: Path) -> Iterator[list[SyntheticInstance]]:
    """Another study on the same Orthanc, removed again after the test (the module's counts stay true)."""
    patient = make_patient(tmp_path / "second", patient_id="SANDBOX_ORT2", ct_slices=2)
    c_store_files(orthanc.peer, CALLING_AET, [p.path for p in patient], timeouts=FAST)
    yield patient
    for p in patient:
        orthanc.delete_instance(p.sop_instance_uid)


def test_instances_by_uid_across_studies_and_chunks(
    orthanc: OrthancServer, stored: list[SyntheticInstance], second_patient: list[SyntheticInstance]
) -> None:
    # Two studies, several series, an unknown UID, and more UIDs than one identifier carries: the known
    # instance after position 400 must be found by the third request.
    unknown = [f"1.2.826.0.1.3680043.10.999.{i}" for i in range(450)]
    chosen = [stored[0], stored[-1], second_patient[0]]
    wanted = [chosen[0].sop_instance_uid, *unknown[:200], chosen[1].sop_instance_uid, *unknown[200:]]
    wanted.append(chosen[2].sop_instance_uid)
    with FindSession(orthanc.peer, CALLING_AET, FAST) as session:
        found = session.instances_by_uid(wanted)
    assert len(wanted) > 2 * MAX_UIDS_PER_REQUEST
    assert {(r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid) for r in found} == {
        (p.study_instance_uid, p.series_instance_uid, p.sop_instance_uid) for p in chosen
    }


def test_retrieve_instances_across_studies(
    orthanc: OrthancServer,
    stored: list[SyntheticInstance],
    second_patient: list[SyntheticInstance],
    our_scp: StorageSCP,
    tmp_path: Path,
) -> None:
    chosen = [stored[0], stored[-1], *second_patient[:2]]
    uids = [p.sop_instance_uid for p in chosen]
    assert len({p.series_instance_uid for p in chosen}) >= 3
    our_scp.clear()
    with RetrieveSession(
        orthanc.peer, CALLING_AET, FAST, operation="C-MOVE", move_destination=CALLING_AET
    ) as session:
        moved = session.retrieve_instances(uids, expected_count=len(uids))
        # A UID Orthanc does not hold is a short count, not a silent success.
        with pytest.raises(SubOperationError, match="only 1 of 2 expected"):
            session.retrieve_instances([uids[0], "1.2.826.0.1.3680043.10.999.1"], expected_count=2)
    assert moved.completed == len(uids) and moved.failed == 0
    assert sorted(r.sop_instance_uid for r in our_scp.received) == sorted([*uids, uids[0]])
    with RetrieveSession(orthanc.peer, CALLING_AET, FAST, operation="C-GET") as session:
        got = session.retrieve_instances(uids, expected_count=len(uids), spool_dir=tmp_path)
    by_uid = {r.sop_instance_uid: r for r in got.received}
    assert sorted(by_uid) == sorted(uids)
    for p in chosen:
        assert content_digest(by_uid[p.sop_instance_uid].path) == content_digest(p.path)
