"""The DICOM layer against DCMTK's dcmqrscp (sandbox AriaSimulator): a strict, hierarchical source that omits
optional return keys. C-MOVE to Orthanc and to our own SCP, C-GET into a spool."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_backup_dagster.backup.inventory import take_inventory
from dicom_backup_dagster.dicom.digest import content_digest
from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.errors import SubOperationError
from dicom_backup_dagster.dicom.find import FindSession, find_instances, find_studies, walk_hierarchy
from dicom_backup_dagster.dicom.get import c_get
from dicom_backup_dagster.dicom.move import c_move
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.dicom.scp import StorageSCP
from dicom_backup_dagster.sandbox.aria import AriaSimulator
from dicom_backup_dagster.sandbox.orthanc import OrthancServer
from dicom_backup_dagster.sandbox.processes import free_port

from .conftest import CALLING_AET, FAST, ORTHANC_PASSWORD, ORTHANC_USER
from .synthetic import SyntheticInstance, make_patient

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> list[SyntheticInstance]:
    return make_patient(tmp_path_factory.mktemp("aria-patient"), patient_id="SANDBOX_ARIA", ct_slices=4)


@pytest.fixture(scope="module")
def peers(
    tmp_path_factory: pytest.TempPathFactory, patient: list[SyntheticInstance]
) -> Iterator[tuple[AriaSimulator, OrthancServer, StorageSCP]]:
    aria_port, orthanc_port = free_port(), free_port()
    aria_peer = Peer("ARIA_TEST", "127.0.0.1", aria_port)
    with StorageSCP(CALLING_AET, tmp_path_factory.mktemp("our-scp"), port=free_port(), timeouts=FAST) as scp:
        orthanc = OrthancServer(
            tmp_path_factory.mktemp("orthanc"),
            "ORTHANC_MAIN",
            orthanc_port,
            free_port(),
            ORTHANC_USER,
            ORTHANC_PASSWORD,
            modalities={"backup": scp.peer, "aria": aria_peer},
        )
        aria = AriaSimulator(
            tmp_path_factory.mktemp("aria"),
            "ARIA_TEST",
            aria_port,
            move_destinations={"main": orthanc.peer, "backup": scp.peer},
        )
        aria.add_files([p.path for p in patient])
        orthanc.start()
        try:
            aria.start()
            try:
                yield aria, orthanc, scp
            finally:
                aria.stop()
        finally:
            orthanc.stop()


def test_echo(peers: tuple[AriaSimulator, OrthancServer, StorageSCP]) -> None:
    aria, _, _ = peers
    assert c_echo(aria.peer, CALLING_AET, FAST) > 0


def test_find_omits_optional_keys_and_walk_works(
    peers: tuple[AriaSimulator, OrthancServer, StorageSCP], patient: list[SyntheticInstance]
) -> None:
    aria, _, _ = peers
    studies = find_studies(
        aria.peer,
        CALLING_AET,
        study_date="20240101-20240131",
        extra_keys={"PatientID": "SANDBOX_ARIA"},
        timeouts=FAST,
    )
    assert [s.study_instance_uid for s in studies] == [patient[0].study_instance_uid]
    assert studies[0].number_of_study_related_instances is None  # dcmqrscp omits it
    with FindSession(aria.peer, CALLING_AET, FAST) as session:
        series = session.series(studies[0].study_instance_uid)
        assert {s.modality for s in series} == {"CT", "RTSTRUCT", "RTPLAN", "RTDOSE"}
        assert all(s.number_of_series_related_instances is None for s in series)
        walked = session.walk(studies)
    assert sorted(i.sop_instance_uid for i in walked) == sorted(p.sop_instance_uid for p in patient)
    assert walked == walk_hierarchy(
        aria.peer, CALLING_AET, study_date="20240115", study_keys={"PatientID": "SANDBOX_ARIA"}, timeouts=FAST
    )


def test_image_query_with_universal_series_key(
    peers: tuple[AriaSimulator, OrthancServer, StorageSCP], patient: list[SyntheticInstance]
) -> None:
    """dcmqrscp is hierarchical, but an IMAGE query that *sends* SeriesInstanceUID empty (universal matching,
    PS3.4 C.2.2.2.3) is accepted, so find_instances() without a series works; SOPClassUID is omitted."""
    aria, _, _ = peers
    found = find_instances(aria.peer, CALLING_AET, patient[0].study_instance_uid, timeouts=FAST)
    assert sorted(i.sop_instance_uid for i in found) == sorted(p.sop_instance_uid for p in patient)
    by_uid = {p.sop_instance_uid: p for p in patient}
    assert all(i.series_instance_uid == by_uid[i.sop_instance_uid].series_instance_uid for i in found)


def test_move_to_orthanc(
    peers: tuple[AriaSimulator, OrthancServer, StorageSCP], patient: list[SyntheticInstance]
) -> None:
    aria, orthanc, _ = peers
    result = c_move(
        aria.peer,
        CALLING_AET,
        orthanc.aet,
        study_instance_uid=patient[0].study_instance_uid,
        expected_count=len(patient),
        timeouts=FAST,
    )
    assert (result.completed, result.failed, result.warning) == (len(patient), 0, 0)
    assert orthanc.count_instances() == len(patient)
    for p in patient:
        assert content_digest(orthanc.download(p.sop_instance_uid) or b"") == content_digest(p.path)


def test_move_series_to_our_scp(
    peers: tuple[AriaSimulator, OrthancServer, StorageSCP], patient: list[SyntheticInstance]
) -> None:
    aria, _, scp = peers
    scp.clear()
    ct = [p for p in patient if p.modality == "CT"]
    result = c_move(
        aria.peer,
        CALLING_AET,
        CALLING_AET,
        study_instance_uid=ct[0].study_instance_uid,
        series_instance_uid=ct[0].series_instance_uid,
        expected_count=len(ct),
        timeouts=FAST,
    )
    assert result.completed == len(ct)
    assert {r.sop_instance_uid for r in scp.received} == {p.sop_instance_uid for p in ct}


def test_move_image_level_uid_list(
    peers: tuple[AriaSimulator, OrthancServer, StorageSCP], patient: list[SyntheticInstance]
) -> None:
    aria, _, scp = peers
    scp.clear()
    ct = [p for p in patient if p.modality == "CT"][:2]
    result = c_move(
        aria.peer,
        CALLING_AET,
        CALLING_AET,
        study_instance_uid=ct[0].study_instance_uid,
        series_instance_uid=ct[0].series_instance_uid,
        sop_instance_uids=[p.sop_instance_uid for p in ct],
        expected_count=2,
        timeouts=FAST,
    )
    assert result.completed == 2
    assert {r.sop_instance_uid for r in scp.received} == {p.sop_instance_uid for p in ct}


def test_move_to_unknown_destination(
    peers: tuple[AriaSimulator, OrthancServer, StorageSCP], patient: list[SyntheticInstance]
) -> None:
    aria, _, _ = peers
    with pytest.raises(SubOperationError) as info:
        c_move(
            aria.peer, CALLING_AET, "NOWHERE", study_instance_uid=patient[0].study_instance_uid, timeouts=FAST
        )
    err = info.value
    assert err.status == 0xA801
    text = str(err)
    assert (
        f"C-MOVE to ARIA_TEST@127.0.0.1:{aria.port} failed: 0xA801 Refused: Move Destination unknown" in text
    )
    assert "register the move destination AE NOWHERE" in text


def test_get_into_spool(
    peers: tuple[AriaSimulator, OrthancServer, StorageSCP], patient: list[SyntheticInstance], tmp_path: Path
) -> None:
    aria, _, _ = peers
    result = c_get(
        aria.peer,
        CALLING_AET,
        tmp_path,
        study_instance_uid=patient[0].study_instance_uid,
        expected_count=len(patient),
        timeouts=FAST,
    )
    assert result.completed == len(patient)
    sent = {p.sop_instance_uid: content_digest(p.path) for p in patient}
    assert {r.sop_instance_uid: content_digest(r.path) for r in result.received} == sent


def test_inventory_by_study_equals_the_walk_with_fewer_queries(
    peers: tuple[AriaSimulator, OrthancServer, StorageSCP], patient: list[SyntheticInstance], tmp_path: Path
) -> None:
    aria, _, _ = peers
    day = dt.date(2024, 1, 15)
    manifests, queries, summaries = {}, {}, {}
    for by_study in (True, False):
        with FindSession(aria.peer, CALLING_AET, FAST) as session:
            levels: list[str] = []
            find = session.find
            session.find = lambda level, keys, find=find, levels=levels: (
                levels.append(level) or find(level, keys)
            )  # type: ignore[method-assign]
            out = tmp_path / f"by_study_{by_study}.jsonl"
            summaries[by_study] = take_inventory(session, dt.date(2024, 1, 1), day, out, by_study=by_study)
            manifests[by_study], queries[by_study] = out.read_text(), levels
    assert manifests[True] == manifests[False]  # same instances, same order: max_uids_per_run cuts alike
    assert summaries[True].instances == len(patient) and summaries[True].series == 4
    assert (summaries[True].studies_walked, summaries[False].studies_walked) == (0, 1)
    assert queries[True] == ["STUDY", "IMAGE"]
    assert queries[False] == ["STUDY", "SERIES", "IMAGE", "IMAGE", "IMAGE", "IMAGE"]
