"""Verification SOP Class SCU: C-ECHO (PS3.4 Annex A, PS3.7 9.1.5)."""

from __future__ import annotations

import time

from dicom_backup_dagster.dicom.sop_classes import Verification

from . import stats
from .association import association, no_response_error
from .errors import DicomError
from .network import Peer, Timeouts, make_ae


def c_echo(peer: Peer, calling_aet: str, timeouts: Timeouts | None = None) -> float:
    """Open an association, send one C-ECHO, release; return the seconds for the whole round trip.

    Raises AssociationError (no association) or DicomError (non-success status).
    """
    timeouts = timeouts or Timeouts()
    ae = make_ae(calling_aet, timeouts)
    ae.add_requested_context(Verification)
    started = time.monotonic()
    with association(
        ae, peer, timeouts=timeouts, operation="C-ECHO", required_abstract_syntaxes=[Verification]
    ) as assoc:
        sent = time.monotonic()
        rsp = assoc.send_c_echo()
        stats.record(peer.aet, "C-ECHO", rsp.get("Status"), time.monotonic() - sent)
        if "Status" not in rsp:
            raise no_response_error(assoc, peer, "C-ECHO", timeouts, time.monotonic() - sent)
        if rsp.Status != 0x0000:
            raise DicomError(peer, "C-ECHO", status=int(rsp.Status))
    return time.monotonic() - started
