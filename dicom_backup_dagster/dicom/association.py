"""Opening and closing associations with errors an operator can act on (PS3.8 7.1, 9.3.3-9.3.4).

pynetdicom reports a failed association only as `is_established == False`; this module tells apart
connection refused, TCP connect timeout, A-ASSOCIATE-RJ (with the reject reason), ACSE timeout and A-ABORT,
and raises AssociationError naming the peer.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association

from . import stats
from .errors import AssociationError, DicomError, DimseTimeout
from .network import Peer, Timeouts

# Orthanc 1.10 rejects an unknown *calling* AE with the reason "Called AE Title Not Recognized"
# (docs/decisions/orthanc.md); advice covers both AE titles.
_REJECT_ADVICE = {
    "Calling AE title not recognised": "register our AE title {calling} (with our host) on the peer",
    "Called AE title not recognised": (
        "check the peer's AE title ({called}) in our configuration, and that our AE title {calling} is "
        "registered on the peer (Orthanc reports an unknown calling AE this way)"
    ),
    "Application context name not supported": "the peer is not a DICOM application entity",
    "Temporary congestion": "the peer is busy: retry later",
    "Local limit exceeded": "the peer has too many associations open: lower our concurrency or retry later",
}


def _probe_tcp(peer: Peer, timeout: float) -> str:
    """Why a TCP connection failed; pynetdicom logs the OSError but does not expose it."""
    try:
        with socket.create_connection((peer.host, peer.port), timeout=timeout):
            return "TCP connection could not be opened (it works now: transient)"
    except TimeoutError:
        return f"TCP connect timed out after {timeout:g} s"
    except ConnectionRefusedError:
        return "connection refused (nothing listening on that port)"
    except OSError as exc:
        return f"TCP connect failed: {exc.strerror or exc}"


def keep_responses(assoc: Association) -> None:
    """Never lose a DIMSE response to pynetdicom's reactor thread.

    While a send_c_*() call waits for responses, the association's reactor thread is meant to be paused,
    but the pause handshake is racy (pynetdicom 3.0 Association._run_reactor; pydicom/pynetdicom#875): the
    reactor can take a response off the DIMSE queue and drop it as "Received unexpected C-FIND service
    message". For a C-FIND that is a match lost without any error: under load, backups inventoried one
    instance or one series fewer than the source holds. Measured: 3 parallel inventories of 5,000
    instances beside a movescu loop lost 1 instance each; with this hook, none.

    A response the reactor takes while a request of ours is in flight (the reactor checkpoint is cleared)
    goes back to the head of the queue, where the waiting send_c_*() finds it; requests from the peer
    (C-STOREs on a C-GET association, N-EVENT-REPORTs) are served as before.
    """
    serve = assoc._serve_request

    def serve_or_requeue(msg: Any, context_id: int) -> None:
        if msg.is_valid_request or assoc._reactor_checkpoint.is_set():
            serve(msg, context_id)
            return
        queue = assoc.dimse.msg_queue
        with queue.mutex:
            queue.queue.appendleft((context_id, msg))
            queue.not_empty.notify()

    assoc._serve_request = serve_or_requeue  # type: ignore[method-assign]


def associate(
    ae: AE,
    peer: Peer,
    *,
    timeouts: Timeouts,
    operation: str = "association",
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: list[Any] | None = None,
    required_abstract_syntaxes: Sequence[str] = (),
) -> Association:
    """Request an association (PS3.8 7.1.1) or raise AssociationError explaining why there is none.

    `required_abstract_syntaxes` must be accepted by the peer, else the association is released and
    AssociationError says which SOP class was refused.
    """
    opened: list[bool] = []
    handlers = [*(evt_handlers or []), (evt.EVT_CONN_OPEN, lambda event: opened.append(True))]
    started = time.monotonic()
    # max_pdu=0: no limit on what we receive (measured +10 % on 531 KB CT files from Orthanc, whose own
    # maximum PDU is 16384; pynetdicom's default is 16382).
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.aet,
        max_pdu=0,
        ext_neg=list(ext_neg) if ext_neg else None,
        evt_handlers=handlers,
    )
    if assoc.is_established:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        missing = [uid for uid in required_abstract_syntaxes if uid not in accepted]
        if missing:
            assoc.release()
            stats.record_failure(peer.aet, operation, time.monotonic() - started)
            raise AssociationError(
                peer,
                f"the peer accepted no presentation context for SOP Class {', '.join(missing)}",
                operation=operation,
                advice="enable that SOP Class (and a transfer syntax we offer) on the peer",
                stage="contexts",
            )
        keep_responses(assoc)
        return assoc
    elapsed = time.monotonic() - started
    stats.record_failure(peer.aet, operation, elapsed)  # no association: the request failed
    calling = ae.ae_title
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        reason = rsp.reason_str if rsp is not None else "unknown reason"
        result = rsp.result_str if rsp is not None else ""
        source = rsp.source_str if rsp is not None else ""
        advice = _REJECT_ADVICE.get(reason, "check the peer's log for why it rejected us").format(
            calling=calling, called=peer.aet
        )
        raise AssociationError(
            peer,
            f"association rejected ({result}, source {source}): {reason}; calling AE {calling}",
            operation=operation,
            advice=advice,
            reject_reason=reason,
            stage="rejected",
        )
    if not opened:
        reason = _probe_tcp(peer, timeouts.connect)
        raise AssociationError(
            peer,
            reason,
            operation=operation,
            advice="check that the peer is running and its host/port in our configuration, and firewalls",
            stage="connect",
        )
    if elapsed >= timeouts.acse * 0.9:
        raise AssociationError(
            peer,
            f"no A-ASSOCIATE response within the ACSE timeout ({timeouts.acse:g} s)",
            operation=operation,
            advice="the port accepts TCP but the peer does not answer DICOM: check that it is a DICOM "
            "service and not hung; raise the ACSE timeout if it is just slow",
            stage="acse_timeout",
        )
    raise AssociationError(
        peer,
        "the peer aborted or closed the connection during association negotiation",
        operation=operation,
        advice=f"check the peer's log; it may not know our AE title {calling} or our host address",
        stage="aborted",
    )


@contextmanager
def association(
    ae: AE,
    peer: Peer,
    *,
    timeouts: Timeouts,
    operation: str = "association",
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: list[Any] | None = None,
    required_abstract_syntaxes: Sequence[str] = (),
) -> Iterator[Association]:
    """`associate()` as a context manager: A-RELEASE on exit, A-ABORT if the body raised."""
    assoc = associate(
        ae,
        peer,
        timeouts=timeouts,
        operation=operation,
        ext_neg=ext_neg,
        evt_handlers=evt_handlers,
        required_abstract_syntaxes=required_abstract_syntaxes,
    )
    try:
        yield assoc
    except BaseException:
        if assoc.is_established:
            assoc.abort()
        raise
    else:
        if assoc.is_established:
            assoc.release()


def no_response_error(
    assoc: Association, peer: Peer, operation: str, timeouts: Timeouts, waited: float
) -> DicomError:
    """The error for a DIMSE request that got no response (pynetdicom yields an empty status)."""
    if waited >= timeouts.dimse * 0.9:
        return DimseTimeout(
            peer,
            operation,
            f"no response within the DIMSE timeout ({timeouts.dimse:g} s); association aborted",
            advice="the peer is slow or hung: check it; raise the DIMSE timeout for large retrievals",
        )
    calling = str(assoc.requestor.ae_title).strip()
    return AssociationError(
        peer,
        f"association aborted by the peer or the network during {operation} (no response)",
        operation=operation,
        advice=f"check the peer's log: it may not allow our AE title {calling} (or our host) to use "
        f"{operation}; register us there",
        stage="aborted",
    )
