"""C-ECHO/FIND/MOVE/GET/STORE and Storage Commitment against a pynetdicom peer that answers with chosen
statuses (tests/dicom/fault_scp.py)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_backup_dagster.dicom.commitment import request_storage_commitment
from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.errors import (
    AssociationError,
    DicomError,
    StorageCommitmentError,
    StoreError,
    SubOperationError,
    UnreadableResponse,
)
from dicom_backup_dagster.dicom.find import (
    FindSession,
    find_instances,
    find_series,
    find_studies,
    study_date_range,
)
from dicom_backup_dagster.dicom.get import c_get
from dicom_backup_dagster.dicom.move import c_move
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.dicom.scp import StorageSCP
from dicom_backup_dagster.dicom.store import c_store_files
from dicom_backup_dagster.sandbox.processes import free_port

from .conftest import CALLING_AET, FAST
from .fault_scp import FaultSCP, RetrievePlan
from .synthetic import SyntheticInstance

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


def _datasets(patient: list[SyntheticInstance], n: int = 3) -> list[Dataset]:
    return [dcmread(p.path) for p in patient[:n]]


def _assert_names_peer(exc: DicomError, peer: Peer) -> None:
    text = str(exc)
    assert f"{peer.aet}@127.0.0.1:{peer.port}" in text
    assert exc.peer == peer


# --- association -------------------------------------------------------------------------------------------
def test_echo_returns_latency(fault_scp: FaultSCP) -> None:
    seconds = c_echo(fault_scp.peer, CALLING_AET, FAST)
    assert 0 < seconds < 2


def test_wrong_called_aet_is_rejected_with_reason(fault_scp: FaultSCP) -> None:
    wrong = Peer("NOT_THERE", "127.0.0.1", fault_scp.peer.port)
    with pytest.raises(AssociationError) as info:
        c_echo(wrong, CALLING_AET, FAST)
    assert info.value.reject_reason == "Called AE title not recognised"
    assert "rejected" in str(info.value) and "Called AE title not recognised" in str(info.value)
    _assert_names_peer(info.value, wrong)


def test_unknown_calling_aet_is_rejected_with_reason() -> None:
    scp = FaultSCP(allowed_calling_aets=["SOMEONE_ELSE"])
    try:
        with pytest.raises(AssociationError) as info:
            c_echo(scp.peer, CALLING_AET, FAST)
        assert info.value.reject_reason == "Calling AE title not recognised"
        assert f"register our AE title {CALLING_AET}" in str(info.value)
        _assert_names_peer(info.value, scp.peer)
    finally:
        scp.stop()


def test_connection_refused() -> None:
    peer = Peer("NOBODY", "127.0.0.1", free_port())
    with pytest.raises(AssociationError) as info:
        c_echo(peer, CALLING_AET, FAST)
    assert "connection refused" in str(info.value)
    _assert_names_peer(info.value, peer)


# --- C-FIND ------------------------------------------------------------------------------------------------
def _row(**keys: str) -> Dataset:
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def test_find_series_dedupes_rows_and_tolerates_missing_optional_keys(fault_scp: FaultSCP) -> None:
    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    # pynetdicom's qrscp answers SERIES with one row per instance, and without optional keys.
    fault_scp.find_rows["SERIES"] = [
        _row(SeriesInstanceUID=s1, Modality="CT"),
        _row(SeriesInstanceUID=s1, Modality="CT"),
        _row(SeriesInstanceUID=s2),
        _row(SeriesInstanceUID=s1),
        _row(Modality="RTPLAN"),  # no unique key: ignored
    ]
    series = find_series(fault_scp.peer, CALLING_AET, study, timeouts=FAST)
    assert [s.series_instance_uid for s in series] == [s1, s2]
    assert series[0].modality == "CT" and series[1].modality is None
    assert all(s.study_instance_uid == study for s in series)
    assert all(s.number_of_series_related_instances is None for s in series)
    sent = fault_scp.find_requests[-1]
    assert sent.QueryRetrieveLevel == "SERIES" and sent.StudyInstanceUID == study


def test_find_instances_without_sop_class(fault_scp: FaultSCP) -> None:
    study, series, i1, i2 = (generate_uid() for _ in range(4))
    fault_scp.find_rows["IMAGE"] = [
        _row(SOPInstanceUID=i1),
        _row(SOPInstanceUID=i2, SOPClassUID="1.2.3"),
        _row(SOPInstanceUID=i1),
    ]
    records = find_instances(fault_scp.peer, CALLING_AET, study, series, timeouts=FAST)
    assert [(r.sop_instance_uid, r.sop_class_uid) for r in records] == [(i1, None), (i2, "1.2.3")]
    assert {r.series_instance_uid for r in records} == {series}


def test_find_studies_date_range_and_extra_keys(fault_scp: FaultSCP) -> None:
    s1 = generate_uid()
    fault_scp.find_rows["STUDY"] = [
        _row(
            StudyInstanceUID=s1,
            StudyDate="20240115",
            ModalitiesInStudy=["CT", "RTPLAN"],
            NumberOfStudyRelatedInstances="6",
        ),
        _row(StudyInstanceUID=s1, StudyDate="20240115"),
    ]
    rng = study_date_range(date(2024, 1, 1), date(2024, 1, 31))
    studies = find_studies(
        fault_scp.peer, CALLING_AET, study_date=rng, extra_keys={"PatientID": "SANDBOX001"}, timeouts=FAST
    )
    assert len(studies) == 1
    assert studies[0].study_date == "20240115"
    assert studies[0].modalities_in_study == ("CT", "RTPLAN")
    assert studies[0].number_of_study_related_instances == 6
    sent = fault_scp.find_requests[-1]
    assert sent.StudyDate == "20240101-20240131" and sent.PatientID == "SANDBOX001"


def test_walk_goes_study_series_image(fault_scp: FaultSCP) -> None:
    study, series = generate_uid(), generate_uid()
    fault_scp.find_rows = {
        "SERIES": [_row(SeriesInstanceUID=series)],
        "IMAGE": [_row(SOPInstanceUID=generate_uid()) for _ in range(3)],
    }
    with FindSession(fault_scp.peer, CALLING_AET, FAST) as session:
        records = session.walk([study])
    assert len(records) == 3
    levels = [str(r.QueryRetrieveLevel) for r in fault_scp.find_requests]
    assert levels == ["SERIES", "IMAGE"]
    assert fault_scp.find_requests[-1].SeriesInstanceUID == series
    assert fault_scp.associations == 1


def test_find_failure_status(fault_scp: FaultSCP) -> None:
    fault_scp.find_final_status = 0xC001
    with pytest.raises(DicomError) as info:
        find_studies(fault_scp.peer, CALLING_AET, timeouts=FAST)
    assert info.value.status == 0xC001
    assert info.value.status_meaning == "Failed: Unable to process"
    assert "C-FIND to" in str(info.value) and "0xC001 Failed: Unable to process" in str(info.value)
    _assert_names_peer(info.value, fault_scp.peer)


# --- C-MOVE ------------------------------------------------------------------------------------------------
@pytest.fixture
def move_peer(fault_scp: FaultSCP, listener: StorageSCP) -> FaultSCP:
    fault_scp.move_destinations[CALLING_AET] = ("127.0.0.1", listener.port)
    return fault_scp


def test_move_to_self_success(
    move_peer: FaultSCP, listener: StorageSCP, patient: list[SyntheticInstance]
) -> None:
    move_peer.move_plan = RetrievePlan(datasets=_datasets(patient))
    result = c_move(
        move_peer.peer,
        CALLING_AET,
        CALLING_AET,
        study_instance_uid=patient[0].study_instance_uid,
        expected_count=3,
        timeouts=FAST,
    )
    assert (result.status, result.completed, result.failed, result.warning) == (0, 3, 0, 0)
    assert result.seconds > 0
    assert {r.sop_instance_uid for r in listener.received} == {p.sop_instance_uid for p in patient[:3]}
    assert all(r.path.exists() and r.calling_aet == move_peer.aet for r in listener.received)


def test_move_unknown_destination(move_peer: FaultSCP) -> None:
    move_peer.move_plan = RetrievePlan(unknown_destination=True)
    with pytest.raises(SubOperationError) as info:
        c_move(move_peer.peer, CALLING_AET, "NOWHERE", study_instance_uid=generate_uid(), timeouts=FAST)
    err = info.value
    assert err.status == 0xA801 and err.operation == "C-MOVE"
    text = str(err)
    assert "0xA801 Refused: Move Destination unknown" in text
    assert "register the move destination AE NOWHERE" in text and f"on {move_peer.aet}" in text
    _assert_names_peer(err, move_peer.peer)


def test_move_partial_failure_carries_failed_uids(
    move_peer: FaultSCP, patient: list[SyntheticInstance]
) -> None:
    missing = patient[2].sop_instance_uid
    move_peer.move_plan = RetrievePlan(
        datasets=_datasets(patient), stop_after=2, final_status=0xB000, failed_uids=[missing]
    )
    with pytest.raises(SubOperationError) as info:
        c_move(
            move_peer.peer,
            CALLING_AET,
            CALLING_AET,
            study_instance_uid=patient[0].study_instance_uid,
            timeouts=FAST,
        )
    err = info.value
    assert err.status == 0xB000
    assert err.failed_sop_instance_uids == (missing,)
    assert (err.result.completed, err.result.failed) == (2, 1)
    assert "Sub-operations complete, one or more failures" in str(err) and missing in str(err)


@pytest.mark.parametrize("code", [0xA700, 0xA702], ids=["A700", "A702"])
def test_move_out_of_resources(move_peer: FaultSCP, code: int) -> None:
    move_peer.move_plan = RetrievePlan(announce=2, stop_after=0, final_status=code)
    with pytest.raises(SubOperationError) as info:
        c_move(move_peer.peer, CALLING_AET, CALLING_AET, study_instance_uid=generate_uid(), timeouts=FAST)
    err = info.value
    assert err.status == code
    assert "Refused: Out of resources" in err.status_meaning
    assert f"accepts associations from calling AE {move_peer.aet}" in str(err)
    _assert_names_peer(err, move_peer.peer)


def test_move_success_with_nothing_moved_is_a_failure(move_peer: FaultSCP) -> None:
    move_peer.move_plan = RetrievePlan(datasets=[])
    with pytest.raises(SubOperationError) as info:
        c_move(
            move_peer.peer,
            CALLING_AET,
            CALLING_AET,
            study_instance_uid=generate_uid(),
            expected_count=5,
            timeouts=FAST,
        )
    assert info.value.result.completed == 0
    assert "only 0 of 5 expected" in str(info.value)
    # Without an expectation the same answer is a plain success.
    result = c_move(
        move_peer.peer, CALLING_AET, CALLING_AET, study_instance_uid=generate_uid(), timeouts=FAST
    )
    assert result.completed == 0


# --- C-GET -------------------------------------------------------------------------------------------------
def test_get_streams_to_spool(fault_scp: FaultSCP, tmp_path: Path, patient: list[SyntheticInstance]) -> None:
    fault_scp.get_plan = RetrievePlan(datasets=_datasets(patient, 4))
    result = c_get(
        fault_scp.peer,
        CALLING_AET,
        tmp_path / "spool",
        study_instance_uid=patient[0].study_instance_uid,
        expected_count=4,
        timeouts=FAST,
    )
    assert result.completed == 4 and len(result.received) == 4
    for received in result.received:
        ds = dcmread(received.path)
        assert ds.SOPInstanceUID == received.sop_instance_uid
        assert ds.file_meta.TransferSyntaxUID == received.transfer_syntax_uid
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == sorted(
        f"{p.sop_instance_uid}.dcm" for p in patient[:4]
    )


def test_get_writes_each_instance_as_it_arrives(
    fault_scp: FaultSCP, tmp_path: Path, patient: list[SyntheticInstance]
) -> None:
    spool = tmp_path / "spool"
    on_disk: list[int] = []
    fault_scp.get_plan = RetrievePlan(
        datasets=_datasets(patient, 3),
        before_send=lambda i: on_disk.append(len(list(spool.glob("*.dcm")))),
    )
    c_get(fault_scp.peer, CALLING_AET, spool, study_instance_uid=patient[0].study_instance_uid, timeouts=FAST)
    assert on_disk == [0, 1, 2]  # instance n was a file before instance n+1 was sent
    assert not list(spool.glob(".*.part"))


def test_get_partial_failure(fault_scp: FaultSCP, tmp_path: Path, patient: list[SyntheticInstance]) -> None:
    fault_scp.get_plan = RetrievePlan(
        datasets=_datasets(patient),
        stop_after=1,
        final_status=0xB000,
        failed_uids=[patient[1].sop_instance_uid, patient[2].sop_instance_uid],
    )
    with pytest.raises(SubOperationError) as info:
        c_get(
            fault_scp.peer,
            CALLING_AET,
            tmp_path,
            study_instance_uid=patient[0].study_instance_uid,
            timeouts=FAST,
        )
    err = info.value
    assert err.operation == "C-GET" and err.status == 0xB000
    assert err.failed_sop_instance_uids == (patient[1].sop_instance_uid, patient[2].sop_instance_uid)
    assert len(err.result.received) == 1 and err.result.failed == 2


def test_get_success_with_nothing_is_a_failure(fault_scp: FaultSCP, tmp_path: Path) -> None:
    fault_scp.get_plan = RetrievePlan(datasets=[])
    with pytest.raises(SubOperationError, match="only 0 of 2 expected"):
        c_get(
            fault_scp.peer,
            CALLING_AET,
            tmp_path,
            study_instance_uid=generate_uid(),
            expected_count=2,
            timeouts=FAST,
        )


# --- C-STORE -----------------------------------------------------------------------------------------------
def test_store_over_one_association(fault_scp: FaultSCP, patient: list[SyntheticInstance]) -> None:
    result = c_store_files(fault_scp.peer, CALLING_AET, [p.path for p in patient], timeouts=FAST)
    assert len(result.stored) == len(patient) and not result.failed
    assert fault_scp.associations == 1
    assert fault_scp.stored == [p.sop_instance_uid for p in patient]


def test_store_failures_are_collected(fault_scp: FaultSCP, patient: list[SyntheticInstance]) -> None:
    fault_scp.store_status = {
        patient[0].sop_instance_uid: 0xA700,
        patient[1].sop_instance_uid: 0xC000,
        patient[2].sop_instance_uid: 0xB000,
    }
    with pytest.raises(StoreError) as info:
        c_store_files(fault_scp.peer, CALLING_AET, [p.path for p in patient], timeouts=FAST)
    err = info.value
    assert set(err.failed_sop_instance_uids) == {patient[0].sop_instance_uid, patient[1].sop_instance_uid}
    text = str(err)
    assert "2 of 6 instances failed" in text
    assert "0xA700 Refused: Out of resources" in text and "0xC000 Error: Cannot understand" in text
    _assert_names_peer(err, fault_scp.peer)
    assert len(fault_scp.stored) == len(patient)  # kept going after the first failure
    result = c_store_files(
        fault_scp.peer, CALLING_AET, [p.path for p in patient], raise_on_failure=False, timeouts=FAST
    )
    assert [o.sop_instance_uid for o in result.warnings] == [patient[2].sop_instance_uid]
    assert len(result.stored) == 4


# --- Storage Commitment ------------------------------------------------------------------------------------
def test_storage_commitment_report_on_new_association(
    fault_scp: FaultSCP, listener: StorageSCP, patient: list[SyntheticInstance]
) -> None:
    fault_scp.commitment_destination = (CALLING_AET, "127.0.0.1", listener.port)
    fault_scp.commitment_failed_uids = {patient[1].sop_instance_uid}
    refs = [(p.sop_class_uid, p.sop_instance_uid) for p in patient[:3]]
    result = request_storage_commitment(
        fault_scp.peer, CALLING_AET, refs, listener, report_timeout=5, timeouts=FAST
    )
    assert result.committed_uids == {patient[0].sop_instance_uid, patient[2].sop_instance_uid}
    assert [(f.sop_instance_uid, f.failure_reason) for f in result.failed] == [
        (patient[1].sop_instance_uid, 0x0112)
    ]
    assert result.failed[0].meaning == "Failure: No such object instance"


def test_storage_commitment_without_report(fault_scp: FaultSCP, listener: StorageSCP) -> None:
    fault_scp.commitment_report = False
    with pytest.raises(StorageCommitmentError) as info:
        request_storage_commitment(
            fault_scp.peer,
            CALLING_AET,
            [("1.2.840.10008.5.1.4.1.1.2", generate_uid())],
            listener,
            report_timeout=0.3,
            timeouts=FAST,
        )
    assert "no N-EVENT-REPORT" in str(info.value) and f"port {listener.port}" in str(info.value)
    _assert_names_peer(info.value, fault_scp.peer)


# --- logging and role negotiation --------------------------------------------------------------------------
def test_identifiers_are_not_logged(fault_scp: FaultSCP, caplog: pytest.LogCaptureFixture) -> None:
    fault_scp.find_rows["STUDY"] = [_row(StudyInstanceUID=generate_uid(), PatientID="SANDBOX_SECRET_ID")]
    with caplog.at_level("DEBUG", logger="pynetdicom"):
        find_studies(
            fault_scp.peer, CALLING_AET, extra_keys={"PatientID": "SANDBOX_SECRET_ID"}, timeouts=FAST
        )
    assert "C-FIND" in caplog.text or "Find" in caplog.text  # pynetdicom did log the exchange ...
    assert "SANDBOX_SECRET_ID" not in caplog.text  # ... but not the identifiers


def test_get_offers_rt_classes_within_the_context_limit() -> None:
    from dicom_backup_dagster.dicom.spool import retrieve_storage_classes

    classes = retrieve_storage_classes()
    assert len(classes) == 127 == len(set(classes))
    for uid in (
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.4",
        "1.2.840.10008.5.1.4.1.1.128",
        "1.2.840.10008.5.1.4.1.1.481.1",
        "1.2.840.10008.5.1.4.1.1.481.2",
        "1.2.840.10008.5.1.4.1.1.481.3",
        "1.2.840.10008.5.1.4.1.1.481.4",
        "1.2.840.10008.5.1.4.1.1.481.5",
        "1.2.840.10008.5.1.4.1.1.66.1",
        "1.2.840.10008.5.1.4.1.1.66.3",
        "1.2.840.10008.5.1.4.1.1.66.4",
    ):
        assert uid in classes[:40]


def test_store_file_without_file_meta(fault_scp: FaultSCP) -> None:
    path = get_testdata_file("rtstruct.dcm")  # ships without File Meta Information
    assert "TransferSyntaxUID" not in dcmread(path, force=True).file_meta
    result = c_store_files(fault_scp.peer, CALLING_AET, [path], timeouts=FAST)
    assert len(result.stored) == 1 and fault_scp.stored == [result.outcomes[0].sop_instance_uid]


def test_unknown_query_keyword_is_refused(fault_scp: FaultSCP) -> None:
    with pytest.raises(ValueError, match="'PatientIdentifier' is not a DICOM keyword"):
        find_studies(fault_scp.peer, CALLING_AET, extra_keys={"PatientIdentifier": "X"}, timeouts=FAST)


def test_commitment_listener_must_be_our_ae(fault_scp: FaultSCP, listener: StorageSCP) -> None:
    with pytest.raises(ValueError, match="listener is DICOM_BACKUP"):
        request_storage_commitment(fault_scp.peer, "OTHER_AE", [("1.2", "1.2.3")], listener, timeouts=FAST)


def test_find_pending_response_without_identifier_fails_instead_of_dropping_a_match(
    fault_scp: FaultSCP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A match the SCU cannot read must fail the query (and be retried), never vanish from the inventory.

    pynetdicom yields (status, None) when it cannot decode a response identifier. A real peer cannot be
    made to send bytes that pydicom's lazy reader refuses, so the decode of the second match is made to fail.
    """
    import pynetdicom.association

    real_decode = pynetdicom.association.decode
    calls = []

    def decode_failing_once(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("truncated identifier")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(pynetdicom.association, "decode", decode_failing_once)
    study, series, i1, i2, i3 = (generate_uid() for _ in range(5))
    fault_scp.find_rows["IMAGE"] = [_row(SOPInstanceUID=uid) for uid in (i1, i2, i3)]
    with pytest.raises(UnreadableResponse) as info:
        find_instances(fault_scp.peer, CALLING_AET, study, series, timeouts=FAST)
    assert "pending response 2 carried no readable identifier" in str(info.value)
    _assert_names_peer(info.value, fault_scp.peer)
