"""Typed DICOM errors that say what failed, where (AE@host:port), the DIMSE status and what to do next.

Messages never carry patient data: only AE titles, addresses, status codes and UIDs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .network import Peer
from .status import status_advice, status_meaning


class DicomError(Exception):
    """A DICOM operation against `peer` failed.

    `unreachable_destination` (AE@host:port) is set when a C-MOVE failed because its move destination does
    not answer a C-ECHO (the sub-operations failed there, not on `peer`).

    str() reads like "C-MOVE to ARIA_SIM@127.0.0.1:11112 failed: 0xA801 Refused: Move Destination unknown
    — register ...".
    """

    unreachable_destination: str | None = None

    def __init__(
        self,
        peer: Peer,
        operation: str,
        detail: str = "",
        *,
        status: int | None = None,
        status_meaning_text: str | None = None,
        advice: str | None = None,
        failed_sop_instance_uids: Sequence[str] = (),
    ) -> None:
        self.peer = peer
        self.operation = operation
        self.status = status
        service = operation if operation != "association" else None
        if status_meaning_text is None:
            status_meaning_text = status_meaning(status, service) if status is not None else ""
        self.status_meaning = status_meaning_text
        if advice is None:
            advice = status_advice(status, service) if status is not None else ""
        self.advice = advice
        self.detail = detail
        self.failed_sop_instance_uids: tuple[str, ...] = tuple(failed_sop_instance_uids)
        super().__init__(self._format())

    def _format(self) -> str:
        where = "association with" if self.operation == "association" else f"{self.operation} to"
        parts = []
        if self.status is not None:
            parts.append(f"0x{self.status:04X} {self.status_meaning}")
        if self.detail:
            parts.append(self.detail)
        text = f"{where} {self.peer} failed: " + "; ".join(parts)
        if self.failed_sop_instance_uids:
            shown = ", ".join(self.failed_sop_instance_uids[:5])
            more = len(self.failed_sop_instance_uids) - 5
            text += f"; failed SOP Instance UIDs: {shown}" + (f" (+{more} more)" if more > 0 else "")
        if self.advice:
            text += f" — {self.advice}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclass __init__ signatures differ from Exception.args: rebuild from the instance state so the
        # error survives pickling (multiprocessing, run workers).
        return (_restore, (type(self), dict(self.__dict__), str(self)))


def _restore(cls: type[DicomError], state: dict[str, Any], message: str) -> DicomError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class AssociationError(DicomError):
    """No usable association: connection refused or timed out, A-ASSOCIATE-RJ (PS3.8 9.3.4), A-ABORT, ACSE
    timeout, or the peer accepted none of the presentation contexts we need.

    `stage` says where it failed, for code that must not read the text: "connect" (no TCP connection),
    "rejected" (A-ASSOCIATE-RJ), "acse_timeout", "aborted" (A-ABORT or closed during negotiation or a
    request), "contexts" (no acceptable presentation context), None when not known."""

    def __init__(
        self,
        peer: Peer,
        detail: str,
        *,
        advice: str = "",
        operation: str = "association",
        reject_reason: str | None = None,
        stage: str | None = None,
    ) -> None:
        self.reject_reason = reject_reason
        self.stage = stage
        super().__init__(peer, operation, detail, advice=advice)


class DimseTimeout(DicomError):
    """No DIMSE response within Timeouts.dimse (the association was aborted)."""


class UnreadableResponse(DicomError):
    """A response arrived but its data set could not be decoded (pynetdicom then yields no identifier).
    Dropping it would silently lose a C-FIND match, so the operation fails and may be retried."""


class SubOperationError(DicomError):
    """A C-MOVE / C-GET did not retrieve everything (PS3.4 C.4.2.1.5, C.4.3.1.4): a refusal or failure status,
    failed or warning sub-operations, or fewer completed than expected.

    `result` (a retrieve.RetrieveResult) carries the counts and any files received;
    `failed_sop_instance_uids` the Failed SOP Instance UID List (0008,0058) when the SCP reported it.
    """

    def __init__(
        self,
        peer: Peer,
        operation: str,
        detail: str,
        *,
        result: Any,
        status: int | None = None,
        advice: str | None = None,
        failed_sop_instance_uids: Sequence[str] = (),
    ) -> None:
        self.result = result
        super().__init__(
            peer,
            operation,
            detail,
            status=status,
            advice=advice,
            failed_sop_instance_uids=failed_sop_instance_uids,
        )


class StoreError(DicomError):
    """One or more C-STOREs failed (PS3.4 B.2.3); `result` (a store.StoreResult) holds every outcome."""

    def __init__(
        self,
        peer: Peer,
        detail: str,
        *,
        result: Any,
        status: int | None = None,
        failed_sop_instance_uids: Sequence[str] = (),
    ) -> None:
        self.result = result
        super().__init__(
            peer,
            "C-STORE",
            detail,
            status=status,
            failed_sop_instance_uids=failed_sop_instance_uids,
            advice="see each failed instance's status in .result; check the peer's log"
            if status is None
            else None,
        )


class StorageCommitmentError(DicomError):
    """The N-ACTION was refused, or no N-EVENT-REPORT arrived in time (PS3.4 J.3)."""
