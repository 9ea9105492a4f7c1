"""Study Root Query/Retrieve C-MOVE SCU (PS3.4 C.4.2, PS3.7 9.1.4).

The source opens its own association to the Move Destination (which must be registered on the source and
must accept the source's AE title) and reports sub-operation counts; see retrieve.py for the accounting.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from .association import association
from .network import Peer, Timeouts, make_ae
from .retrieve import RetrieveResult, collect_responses, evaluate, retrieve_identifier

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
    started = time.monotonic()
    with association(
        ae, peer, timeouts=timeouts, operation="C-MOVE", required_abstract_syntaxes=[MOVE_SOP_CLASS]
    ) as assoc:
        responses = assoc.send_c_move(identifier, move_destination, MOVE_SOP_CLASS)
        final, final_identifier, last_pending = collect_responses(responses, assoc, peer, "C-MOVE", timeouts)
    return evaluate(
        peer,
        "C-MOVE",
        final,
        final_identifier,
        last_pending,
        seconds=time.monotonic() - started,
        expected_count=expected_count,
        allow_warnings=allow_warnings,
        advice=advice,
    )
