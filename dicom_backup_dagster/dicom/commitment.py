"""Storage Commitment Push Model SCU (PS3.4 Annex J; N-ACTION PS3.7 10.1.4, N-EVENT-REPORT 10.1.1).

We send an N-ACTION (Action Type 1, "Request Storage Commitment") listing SOP Class/Instance UID pairs to
the well-known SOP Instance 1.2.840.10008.1.20.1.1; the SCP answers later with an N-EVENT-REPORT (Event
Type 1 all committed, 2 some failed with a Failure Reason each, PS3.4 J.3.3.1). Orthanc sends it on a new
association to our AE's host and port in its DicomModalities (docs/decisions/orthanc.md), so a listening
StorageSCP receives it.
Commitment proves presence only, not content: use digest.py for that.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt

from dicom_backup_dagster.dicom.sop_classes import StorageCommitmentPushModel

from . import stats
from .association import association, no_response_error
from .errors import StorageCommitmentError
from .network import Peer, Timeouts, make_ae
from .scp import StorageSCP
from .status import status_meaning

STORAGE_COMMITMENT_INSTANCE_UID = "1.2.840.10008.1.20.1.1"  # Well-known SOP Instance (PS3.4 J.3.5)
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID (PS3.4 J.3.2.1)


@dataclass(frozen=True)
class CommitmentFailure:
    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int | None
    meaning: str


@dataclass(frozen=True)
class CommitmentResult:
    transaction_uid: str
    committed: tuple[tuple[str, str], ...]  # (SOP Class UID, SOP Instance UID)
    failed: tuple[CommitmentFailure, ...]
    seconds: float

    @property
    def committed_uids(self) -> frozenset[str]:
        return frozenset(uid for _, uid in self.committed)

    @property
    def failed_uids(self) -> frozenset[str]:
        return frozenset(f.sop_instance_uid for f in self.failed)


def request_storage_commitment(
    peer: Peer,
    calling_aet: str,
    references: Iterable[tuple[str, str]],
    listener: StorageSCP,
    *,
    report_timeout: float = 30.0,
    timeouts: Timeouts | None = None,
) -> CommitmentResult:
    """Ask `peer` to commit (SOP Class UID, SOP Instance UID) pairs; wait for its report on `listener`.

    `listener` must run with AE title `calling_aet` and be registered on the peer (Orthanc:
    DicomModalities). Returns committed and failed references with the failure reason (e.g. 0x0112 "No such
    object instance"). Raises StorageCommitmentError if the N-ACTION fails or no report arrives within
    `report_timeout`; AssociationError / DimseTimeout when the exchange breaks.
    """
    timeouts = timeouts or Timeouts()
    if listener.aet != calling_aet:
        raise ValueError(
            f"the report goes to the AE registered for {calling_aet} on the peer, "
            f"but the listener is {listener.aet}"
        )
    refs = list(references)
    if not refs:
        raise ValueError("nothing to commit")
    transaction_uid = generate_uid()
    request = Dataset()
    request.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        items.append(item)
    request.ReferencedSOPSequence = items

    ae = make_ae(calling_aet, timeouts)
    ae.add_requested_context(StorageCommitmentPushModel)
    started = time.monotonic()
    with association(
        ae,
        peer,
        timeouts=timeouts,
        operation="N-ACTION",
        required_abstract_syntaxes=[StorageCommitmentPushModel],
        # PS3.4 J.3.3 allows the report on this association too; Orthanc opens a new one.
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, listener.handle_n_event_report)],
    ) as assoc:
        sent = time.monotonic()
        status, _reply = assoc.send_n_action(
            request, REQUEST_STORAGE_COMMITMENT, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE_UID
        )
        stats.record(peer.aet, "N-ACTION", status.get("Status"), time.monotonic() - sent)
        if "Status" not in status:
            raise no_response_error(assoc, peer, "N-ACTION", timeouts, time.monotonic() - sent)
        if int(status.Status) != 0x0000:
            raise StorageCommitmentError(
                peer, "N-ACTION", "storage commitment request refused", status=int(status.Status)
            )

    report = listener.wait_for_commitment_report(transaction_uid, report_timeout)
    if report is None:
        raise StorageCommitmentError(
            peer,
            "N-ACTION",
            f"no N-EVENT-REPORT for transaction {transaction_uid} within {report_timeout:g} s at "
            f"{listener.peer}",
            advice=f"register our AE {listener.aet} with host {listener.host} port {listener.port} on "
            f"{peer.aet} (it reports on a new association), and check its log",
        )
    info = report.event_information
    committed = tuple(
        (str(i.get("ReferencedSOPClassUID", "")), str(i.ReferencedSOPInstanceUID))
        for i in info.get("ReferencedSOPSequence", [])
    )
    failed = []
    for i in info.get("FailedSOPSequence", []):
        reason = i.get("FailureReason")
        failed.append(
            CommitmentFailure(
                sop_class_uid=str(i.get("ReferencedSOPClassUID", "")),
                sop_instance_uid=str(i.ReferencedSOPInstanceUID),
                failure_reason=int(reason) if reason is not None else None,
                meaning=status_meaning(int(reason)) if reason is not None else "no failure reason given",
            )
        )
    # Anything the SCP neither committed nor listed as failed counts as failed.
    reported = {uid for _, uid in committed} | {f.sop_instance_uid for f in failed}
    for sop_class, sop_uid in refs:
        if sop_uid not in reported:
            failed.append(CommitmentFailure(sop_class, sop_uid, None, "missing from the commitment report"))
    return CommitmentResult(transaction_uid, committed, tuple(failed), time.monotonic() - started)
