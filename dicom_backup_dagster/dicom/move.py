"""Study Root Query/Retrieve C-MOVE SCU (PS3.4 C.4.2, PS3.7 9.1.4).

The source opens its own association to the Move Destination (which must be registered on the source and
must accept the source's AE title) and reports sub-operation counts; see retrieve.py for the accounting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_backup_dagster.dicom.sop_classes import StudyRootQueryRetrieveInformationModelMove

from .association import association
from .network import Peer, Timeouts, make_ae
from .retrieve import RetrieveResult, collect_responses, evaluate, retrieve_identifier
from .spool import ReceivedInstance

MOVE_SOP_CLASS = StudyRootQueryRetrieveInformationModelMove


def c_move(
    peer: Peer,
    calling_aet: str,
    move_destination: str,
    *,
    study_instance_uid: str,
    series_instance_uid: str | None = None,
    sop_instance_uids: Sequence[str] = (),
    expected_count: int | None = None,
    allow_warnings: bool = False,
    timeouts: Timeouts | None = None,
) -> RetrieveResult:
    """Ask `peer` to send a study, series or instances to the AE `move_destination`.

    The level is STUDY, SERIES or IMAGE depending on the most specific UID given. Returns the counts and
    seconds. Raises SubOperationError (carrying `.result` and the Failed SOP Instance UID List) for any
    refusal or failure status, failed or (unless `allow_warnings`) warning sub-operations, or fewer
    completed than `expected_count`; AssociationError / DimseTimeout when the exchange breaks.
    """
    timeouts = timeouts or Timeouts()
    ae = make_ae(calling_aet, timeouts)
    ae.add_requested_context(MOVE_SOP_CLASS)
    _, identifier = retrieve_identifier(study_instance_uid, series_instance_uid, sop_instance_uids)
    advice = {
        0xA801: (
            f"register the move destination AE {move_destination} (AE title, host and port) on "
            f"{peer.aet}; for a move to ourselves, that is our AE title and listening port"
        ),
        0xA700: (
            f"{peer.aet} could not run the sub-operations: check that {move_destination} accepts "
            f"associations from calling AE {peer.aet}, and {peer.aet}'s disk, load and logs"
        ),
    }
    return run_retrieve(
        ae,
        peer,
        "C-MOVE",
        MOVE_SOP_CLASS,
        lambda assoc: assoc.send_c_move(identifier, move_destination, MOVE_SOP_CLASS),
        timeouts=timeouts,
        expected_count=expected_count,
        allow_warnings=allow_warnings,
        advice=advice,
    )


def run_retrieve(
    ae: AE,
    peer: Peer,
    operation: str,
    sop_class: str,
    send: Callable[[Association], Iterator[tuple[Dataset, Dataset | None]]],
    *,
    timeouts: Timeouts,
    expected_count: int | None,
    allow_warnings: bool,
    advice: dict[int, str],
    received: Sequence[ReceivedInstance] = (),
    **association_options: Any,
) -> RetrieveResult:
    """One C-MOVE or C-GET exchange, shared by c_move() and c_get(): open an association that must accept
    `sop_class`, send the request (`send`), drain the responses and account the sub-operations (evaluate()).

    `association_options` go to association() (C-GET: ext_neg and evt_handlers). `received` is read only
    after the exchange, so C-GET passes the list its C-STORE handler fills.
    """
    started = time.monotonic()
    with association(
        ae,
        peer,
        timeouts=timeouts,
        operation=operation,
        required_abstract_syntaxes=[sop_class],
        **association_options,
    ) as assoc:
        final, final_identifier, last_pending = collect_responses(
            send(assoc), assoc, peer, operation, timeouts
        )
    return evaluate(
        peer,
        operation,
        final,
        final_identifier,
        last_pending,
        seconds=time.monotonic() - started,
        expected_count=expected_count,
        allow_warnings=allow_warnings,
        received=received,
        advice=advice,
    )
