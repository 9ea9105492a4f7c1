"""A DIMSE response taken by pynetdicom's reactor thread during a request is put back, not dropped
(dicom/association.keep_responses; pydicom/pynetdicom#875)."""

from __future__ import annotations

from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from dicom_backup_dagster.dicom.find import FindSession

from .conftest import CALLING_AET, FAST
from .fault_scp import FaultSCP


def _pending_response(message_id: int) -> C_FIND:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
    rsp.Status = 0xFF00
    return rsp


def test_response_taken_during_a_request_goes_back_to_the_head_of_the_queue(fault_scp: FaultSCP) -> None:
    with FindSession(fault_scp.peer, CALLING_AET, FAST) as session:
        assoc = session._assoc
        assert assoc is not None
        queue = assoc.dimse.msg_queue
        queue.put((1, _pending_response(7)))  # a later response already waiting
        stolen = _pending_response(6)
        assoc._reactor_checkpoint.clear()  # what send_c_find() does while it waits for responses
        try:
            assoc._serve_request(stolen, 1)  # what the racing reactor does with what it took
            assert queue.qsize() == 2
            assert queue.get_nowait() == (1, stolen)  # first in line again, order kept
            assert queue.get_nowait()[1].MessageIDBeingRespondedTo == 7
        finally:
            assoc._reactor_checkpoint.set()


def test_response_outside_a_request_is_not_requeued(fault_scp: FaultSCP) -> None:
    # No request in flight (checkpoint set): a stray response is dropped as pynetdicom always did, rather
    # than left at the head of the queue for the next request to misread.
    with FindSession(fault_scp.peer, CALLING_AET, FAST) as session:
        assoc = session._assoc
        assert assoc is not None
        assoc._serve_request(_pending_response(9), 1)
        assert assoc.dimse.msg_queue.qsize() == 0
        # The session still works afterwards.
        assert session.find("STUDY", {"StudyInstanceUID": "", "StudyDate": ""}) is not None
