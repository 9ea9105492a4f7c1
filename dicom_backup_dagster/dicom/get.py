"""Study Root Query/Retrieve C-GET SCU (PS3.4 C.4.3, PS3.7 9.1.3).

The sub-operation C-STOREs come back on our own association, so we must propose every storage class we may
receive, each with SCP/SCU Role Selection (PS3.7 D.3.3.4) granting us the SCP role: a source C-FIND may not
even return SOPClassUID (dcmqrscp), so the list is broad, prioritised for radiation oncology and capped by
the 128-context limit. Each instance is written to the spool directory as it arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pynetdicom import build_role, evt
from pynetdicom.events import Event

from dicom_backup_dagster.dicom.sop_classes import StudyRootQueryRetrieveInformationModelGet

from .move import run_retrieve
from .network import Peer, Timeouts, make_ae
from .retrieve import RetrieveResult, retrieve_identifier
from .spool import STORAGE_TRANSFER_SYNTAXES, ReceivedInstance, retrieve_storage_classes, write_received

log = logging.getLogger(__name__)

GET_SOP_CLASS = StudyRootQueryRetrieveInformationModelGet


def c_get(
    peer: Peer,
    calling_aet: str,
    spool_dir: str | Path,
    *,
    study_instance_uid: str,
    series_instance_uid: str | None = None,
    sop_instance_uids: Sequence[str] = (),
    expected_count: int | None = None,
    allow_warnings: bool = False,
    storage_sop_classes: Sequence[str] | None = None,
    timeouts: Timeouts | None = None,
) -> RetrieveResult:
    """Retrieve a study, series or instances from `peer` into `spool_dir` (one file per SOP Instance).

    `result.received` lists the files written (SOP Instance UID, SOP Class, transfer syntax, path).
    Raises like c_move(); a C-STORE sub-operation we could not write to disk is answered with 0xA700 (out of
    resources), so the peer counts it as failed.
    """
    timeouts = timeouts or Timeouts()
    spool = Path(spool_dir)
    spool.mkdir(parents=True, exist_ok=True)
    classes = list(storage_sop_classes) if storage_sop_classes is not None else retrieve_storage_classes()
    if len(classes) > 127:
        raise ValueError(f"{len(classes)} storage classes: at most 127 fit next to the C-GET context")
    ae = make_ae(calling_aet, timeouts)
    ae.add_requested_context(GET_SOP_CLASS)
    for uid in classes:
        ae.add_requested_context(uid, STORAGE_TRANSFER_SYNTAXES)
    roles = [build_role(uid, scp_role=True) for uid in classes]
    received: list[ReceivedInstance] = []

    def on_c_store(event: Event) -> int:
        try:
            received.append(write_received(event, spool))
        except OSError:
            log.exception("C-GET from %s: could not write a received instance to %s", peer, spool)
            return 0xA700
        return 0x0000

    _, identifier = retrieve_identifier(study_instance_uid, series_instance_uid, sop_instance_uids)
    return run_retrieve(
        ae,
        peer,
        "C-GET",
        GET_SOP_CLASS,
        lambda assoc: assoc.send_c_get(identifier, GET_SOP_CLASS),
        timeouts=timeouts,
        expected_count=expected_count,
        allow_warnings=allow_warnings,
        advice={0xA700: f"{peer.aet} could not run the sub-operations: check its log, disk and load"},
        received=received,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_c_store)],
    )
