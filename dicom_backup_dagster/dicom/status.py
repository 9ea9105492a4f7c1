"""DIMSE status codes: meaning and category (PS3.7 Annex C, PS3.4 Annexes B, C and J).

`status_meaning(code, service)` gives the standard's wording for a status, `status_category(code)` the
Success/Warning/Failure/Cancel/Pending class, and `status_advice(code, service)` a short hint that tells an
operator what to check next. Services are the DIMSE operation names: "C-ECHO", "C-FIND", "C-MOVE", "C-GET",
"C-STORE", "N-ACTION", "N-EVENT-REPORT".
"""

from __future__ import annotations

SUCCESS = "Success"
WARNING = "Warning"
FAILURE = "Failure"
CANCEL = "Cancel"
PENDING = "Pending"

# PS3.7 C.1-C.5: statuses common to every DIMSE service.
_GENERAL: dict[int, str] = {
    0x0000: "Success",
    0x0001: "Warning: Requested optional Attributes are not supported",
    0x0105: "Failure: No such attribute",
    0x0106: "Failure: Invalid attribute value",
    0x0107: "Warning: Attribute list error",
    0x0110: "Failure: Processing failure",
    0x0111: "Failure: Duplicate SOP Instance",
    0x0112: "Failure: No such object instance",
    0x0113: "Failure: No such event type",
    0x0114: "Failure: No such argument",
    0x0115: "Failure: Invalid argument value",
    0x0116: "Warning: Attribute value out of range",
    0x0117: "Failure: Invalid object instance",
    0x0118: "Failure: No such SOP Class",
    0x0119: "Failure: Class-instance conflict",
    0x0120: "Failure: Missing attribute",
    0x0121: "Failure: Missing attribute value",
    0x0122: "Refused: SOP Class not supported",
    0x0123: "Failure: No such action",
    0x0124: "Refused: Not authorized",
    0x0210: "Failure: Duplicate invocation",
    0x0211: "Failure: Unrecognized operation",
    0x0212: "Failure: Mistyped argument",
    0x0213: "Failure: Resource limitation",
    0xFE00: "Cancel",
}

# PS3.4 B.2.3: Storage Service Class (C-STORE).
_STORE: dict[int, str] = {
    0xB000: "Warning: Coercion of Data Elements",
    0xB006: "Warning: Elements Discarded",
    0xB007: "Warning: Data Set does not match SOP Class",
}

# PS3.4 C.4.1.1.4: Query/Retrieve C-FIND.
_FIND: dict[int, str] = {
    0xFF00: "Pending: Matches are continuing",
    0xFF01: "Pending: Matches are continuing, optional keys not supported",
    0xFE00: "Cancel: Matching terminated due to Cancel request",
}

# PS3.4 C.4.2.1.5 (C-MOVE) and C.4.3.1.4 (C-GET).
_RETRIEVE: dict[int, str] = {
    0xA701: "Refused: Out of resources - Unable to calculate number of matches",
    0xA702: "Refused: Out of resources - Unable to perform sub-operations",
    0xAA00: "Failed: None of the frames requested were found in the SOP Instance",
    0xAA01: "Failed: Unable to create new object for this SOP class",
    0xAA02: "Failed: Unable to extract frames",
    0xAA03: "Failed: Time-based request received for a non-time-based original SOP Instance",
    0xAA04: "Failed: Invalid request",
    0xB000: "Warning: Sub-operations complete, one or more failures or warnings",
    0xFE00: "Cancel: Sub-operations terminated due to Cancel indication",
    0xFF00: "Pending: Sub-operations are continuing",
}
_MOVE: dict[int, str] = {0xA801: "Refused: Move Destination unknown", **_RETRIEVE}

# PS3.4 J.3 (Storage Commitment) uses the general N-ACTION / N-EVENT-REPORT statuses of PS3.7 C.

_SERVICE_TABLES: dict[str, dict[int, str]] = {
    "C-STORE": _STORE,
    "C-FIND": _FIND,
    "C-MOVE": _MOVE,
    "C-GET": _RETRIEVE,
}


def _range_meaning(code: int, service: str | None) -> str | None:
    """Ranges defined per service: PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4."""
    if 0xA700 <= code <= 0xA7FF:
        return "Refused: Out of resources"
    if 0xA900 <= code <= 0xA9FF:
        if service == "C-STORE":
            return "Error: Data Set does not match SOP Class"
        return "Failed: Identifier does not match SOP Class"
    if 0xC000 <= code <= 0xCFFF:
        if service == "C-STORE":
            return "Error: Cannot understand"
        return "Failed: Unable to process"
    return None


def status_meaning(code: int, service: str | None = None) -> str:
    """The standard's wording for a DIMSE status `code` (PS3.7 Annex C, PS3.4 B.2.3/C.4/J.3)."""
    if service is not None and code in _SERVICE_TABLES.get(service, {}):
        return _SERVICE_TABLES[service][code]
    ranged = _range_meaning(code, service)
    if ranged is not None:
        return ranged
    if code in _GENERAL:
        return _GENERAL[code]
    for table in (_MOVE, _FIND, _STORE):
        if code in table:
            return table[code]
    return f"{status_category(code)}: status not defined by the standard"


def status_category(code: int) -> str:
    """PS3.7 C.1-C.5 category of a status: Success, Warning, Failure, Cancel or Pending."""
    if code == 0x0000:
        return SUCCESS
    if code in (0xFF00, 0xFF01):
        return PENDING
    if code == 0xFE00:
        return CANCEL
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return WARNING
    return FAILURE


def is_success(code: int) -> bool:
    return code == 0x0000


def is_warning(code: int) -> bool:
    return status_category(code) == WARNING


def is_pending(code: int) -> bool:
    return status_category(code) == PENDING


def _retrieve_advice(code: int, service: str | None) -> str | None:
    """Hints for C-MOVE / C-GET statuses: a C-MOVE's sub-operations run against its move destination."""
    if 0xA700 <= code <= 0xA7FF and service == "C-MOVE":
        return (
            "the source could not run the sub-operations: check that the move destination is up and "
            "accepts associations from the source's AE title, and the source's disk, load and logs; "
            "retry later"
        )
    if 0xA700 <= code <= 0xA7FF and service == "C-GET":
        return "the source could not run the sub-operations: check its disk, load and logs; retry later"
    if 0xC000 <= code <= 0xCFFF and service == "C-MOVE":
        # Orthanc answers 0xC000 with no sub-operation counts when it cannot open an association to the
        # move destination (measured: staging -> main with main stopped).
        return (
            "the peer could not process the request: check that the move destination is up and "
            "reachable from the peer, then the peer's log (a strictly hierarchical SCP also refuses "
            "requests without the parent UIDs)"
        )
    if code == 0xB000 and service == "C-MOVE":
        return (
            "some sub-operations failed: check that the move destination is up, then the listed SOP "
            "Instance UIDs and the destination's log"
        )
    if code == 0xB000 and service == "C-GET":
        return "some sub-operations failed: check the listed SOP Instance UIDs and the destination's log"
    return None


def status_advice(code: int, service: str | None = None) -> str:
    """What an operator should check next for `code`; generic (the error adds AE titles and addresses)."""
    if code == 0xA801:
        return "register the move destination AE (its AE title, host and port) on the source"
    retrieve = _retrieve_advice(code, service)
    if retrieve is not None:
        return retrieve
    if 0xA700 <= code <= 0xA7FF:
        return "the peer is out of resources (disk full, too many associations): check it and retry later"
    if 0xA900 <= code <= 0xA9FF:
        return "the request or data set does not match the SOP Class: check the query keys or the file"
    if 0xC000 <= code <= 0xCFFF:
        if service == "C-STORE":
            return "the peer could not parse or store the instance: check its log for the reason"
        return (
            "the peer could not process the request: check its log; a strictly hierarchical SCP needs "
            "the parent UIDs (Study, Series) at lower query levels"
        )
    if code == 0xFE00:
        return "the operation was cancelled: run it again"
    if code == 0x0122:
        return "the peer does not accept this SOP Class: enable it in the peer's configuration"
    if code == 0x0124:
        return "the peer refused us: register our AE title (and host) on the peer"
    if code == 0x0112:
        return "the instance is not on the peer: send it (again) and re-check"
    if code == 0x0111:
        return "the peer already has this SOP Instance"
    if code in (0x0110, 0x0213):
        return "the peer failed to process the request: check its log and retry"
    if status_category(code) == WARNING:
        return "the operation completed with a warning: check the peer's log"
    return "check the peer's log"


def destination_unreachable_advice(destination: str, cause: str) -> str:
    """The hint for a C-MOVE whose sub-operations failed because the move destination could not be reached
    (the caller found it so, e.g. by C-ECHO): the source is fine, the destination is not."""
    return (
        f"the move destination {destination} cannot be reached ({cause}): the sub-operations failed "
        f"there, not on the source; start {destination} (or fix its address on the source), then run again"
    )
