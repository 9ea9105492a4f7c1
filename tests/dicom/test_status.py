"""Status meanings (PS3.4 / PS3.7 Annex C) and how errors read to an operator."""

from __future__ import annotations

import pytest

from dicom_backup_dagster.dicom.errors import DicomError, SubOperationError
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.dicom.status import status_category, status_meaning


@pytest.mark.parametrize(
    ("code", "service", "meaning"),
    [
        (0xA801, "C-MOVE", "Refused: Move Destination unknown"),
        (0xA701, "C-MOVE", "Refused: Out of resources - Unable to calculate number of matches"),
        (0xA702, "C-GET", "Refused: Out of resources - Unable to perform sub-operations"),
        (0xA700, "C-STORE", "Refused: Out of resources"),
        (0xA7FF, "C-FIND", "Refused: Out of resources"),
        (0xB000, "C-MOVE", "Warning: Sub-operations complete, one or more failures or warnings"),
        (0xB000, "C-STORE", "Warning: Coercion of Data Elements"),
        (0xC000, "C-MOVE", "Failed: Unable to process"),
        (0xCFFF, "C-STORE", "Error: Cannot understand"),
        (0xA900, "C-FIND", "Failed: Identifier does not match SOP Class"),
        (0xFE00, "C-GET", "Cancel: Sub-operations terminated due to Cancel indication"),
        (0x0122, "C-STORE", "Refused: SOP Class not supported"),
        (0x0112, "N-ACTION", "Failure: No such object instance"),
        (0x0112, None, "Failure: No such object instance"),
    ],
)
def test_status_meanings(code: int, service: str | None, meaning: str) -> None:
    assert status_meaning(code, service) == meaning


@pytest.mark.parametrize(
    ("code", "category"),
    [
        (0x0000, "Success"),
        (0xFF00, "Pending"),
        (0xFF01, "Pending"),
        (0xFE00, "Cancel"),
        (0xB000, "Warning"),
        (0x0107, "Warning"),
        (0xA801, "Failure"),
        (0xC123, "Failure"),
        (0x0122, "Failure"),
    ],
)
def test_status_categories(code: int, category: str) -> None:
    assert status_category(code) == category


def test_unknown_status_still_reads() -> None:
    assert status_meaning(0x1234) == "Failure: status not defined by the standard"


def test_error_message_shape() -> None:
    peer = Peer("ARIA_SIM", "127.0.0.1", 11112)
    err = SubOperationError(
        peer,
        "C-MOVE",
        "completed 0, failed 0, warning 0",
        result=None,
        status=0xA801,
        advice="register DICOM_BACKUP on ARIA_SIM",
    )
    assert str(err).startswith(
        "C-MOVE to ARIA_SIM@127.0.0.1:11112 failed: 0xA801 Refused: Move Destination unknown"
    )
    assert str(err).endswith("— register DICOM_BACKUP on ARIA_SIM")
    assert isinstance(err, DicomError)
    assert (err.peer, err.operation, err.status) == (peer, "C-MOVE", 0xA801)
    assert err.status_meaning == "Refused: Move Destination unknown"
    assert err.failed_sop_instance_uids == ()


def test_error_lists_at_most_five_failed_uids() -> None:
    uids = [f"1.2.3.{i}" for i in range(8)]
    err = DicomError(Peer("X", "h", 1), "C-GET", status=0xB000, failed_sop_instance_uids=uids)
    assert "1.2.3.4" in str(err) and "1.2.3.5" not in str(err) and "(+3 more)" in str(err)
    assert err.failed_sop_instance_uids == tuple(uids)


def test_errors_survive_pickling() -> None:
    import pickle

    from dicom_backup_dagster.dicom.errors import AssociationError

    peer = Peer("ARIA_SIM", "127.0.0.1", 11112)
    err = SubOperationError(peer, "C-GET", "x", result=None, status=0xB000, failed_sop_instance_uids=["1.2"])
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is SubOperationError and str(copy) == str(err)
    assert (copy.peer, copy.status, copy.failed_sop_instance_uids) == (peer, 0xB000, ("1.2",))
    rejected = AssociationError(peer, "rejected", reject_reason="Called AE title not recognised")
    assert pickle.loads(pickle.dumps(rejected)).reject_reason == "Called AE title not recognised"


def test_retrieve_hints_point_at_the_move_destination() -> None:
    from dicom_backup_dagster.dicom.status import destination_unreachable_advice, status_advice

    # A C-MOVE's sub-operations run against its destination: its failure hints name it first.
    for code in (0xC000, 0xA702, 0xB000):
        assert "move destination is up" in status_advice(code, "C-MOVE")
    # A C-GET has no destination; C-FIND keeps the hierarchical-SCP hint.
    assert "move destination" not in status_advice(0xA702, "C-GET")
    assert "parent UIDs (Study, Series)" in status_advice(0xC000, "C-FIND")
    text = destination_unreachable_advice("ORTHANC_MAIN@127.0.0.1:4242", "connection refused")
    assert text.startswith("the move destination ORTHANC_MAIN@127.0.0.1:4242 cannot be reached")
    assert "(connection refused)" in text and "not on the source" in text
