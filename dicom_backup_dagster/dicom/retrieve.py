"""Sub-operation accounting shared by C-MOVE and C-GET (PS3.4 C.4.2.1.4-5, C.4.3.1.3-4, PS3.7 9.1.3-4).

The final response's status and counts decide the outcome; a "Success" that moved fewer instances than a
prior C-FIND counted is a failure too (measured: dcmqrscp answered Success with zero sub-operations to a
PATIENT-level C-MOVE on the Study Root model; docs/decisions/dicom-peers.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from . import stats
from .association import no_response_error
from .errors import SubOperationError
from .network import Peer, Timeouts
from .spool import ReceivedInstance
from .status import CANCEL, FAILURE, PENDING, status_category

RetrieveLevel = Literal["STUDY", "SERIES", "IMAGE"]

#: SOP Instance UIDs per identifier (list of UID matching, PS3.4 C.2.2.2.2): 200 UIs of up to 64 bytes keep
#: an identifier well below typical PDU and SCP limits.
MAX_UIDS_PER_REQUEST = 200


@dataclass(frozen=True)
class RetrieveResult:
    """Outcome of a C-MOVE or C-GET. `received` is filled by C-GET (files written to the spool)."""

    status: int
    completed: int
    failed: int
    warning: int
    seconds: float
    failed_sop_instance_uids: tuple[str, ...] = ()
    received: tuple[ReceivedInstance, ...] = ()


def retrieve_identifier(
    study_instance_uid: str,
    series_instance_uid: str | None = None,
    sop_instance_uids: Sequence[str] = (),
) -> tuple[RetrieveLevel, Dataset]:
    """Study Root retrieve identifier with the unique keys only (PS3.4 C.4.2.2.1): the level follows from
    the most specific key given; several SOP Instance UIDs use list-of-UID matching."""
    ds = Dataset()
    ds.StudyInstanceUID = study_instance_uid
    level: RetrieveLevel = "STUDY"
    if series_instance_uid:
        ds.SeriesInstanceUID = series_instance_uid
        level = "SERIES"
    if sop_instance_uids:
        if not series_instance_uid:
            raise ValueError("an IMAGE-level retrieve needs the SeriesInstanceUID (hierarchical SCPs)")
        ds.SOPInstanceUID = list(sop_instance_uids) if len(sop_instance_uids) > 1 else sop_instance_uids[0]
        level = "IMAGE"
    ds.QueryRetrieveLevel = level
    return level, ds


def instance_list_identifier(sop_instance_uids: Sequence[str]) -> Dataset:
    """IMAGE-level identifier naming instances by SOP Instance UID alone, across series and studies.

    The relational form of a retrieve identifier (PS3.4 C.4.2.2.1: no higher-level unique keys) with list
    of UID matching (C.2.2.2.2). Orthanc resolves IMAGE-level requests by SOP Instance UID without
    relational-retrieve negotiation, so it is used only towards Orthanc targets (the main archive, an
    Orthanc staging); a strictly hierarchical SCP gets `retrieve_identifier` per series."""
    if not sop_instance_uids:
        raise ValueError("an instance-list identifier needs at least one SOP Instance UID")
    if len(sop_instance_uids) > MAX_UIDS_PER_REQUEST:
        raise ValueError(f"at most {MAX_UIDS_PER_REQUEST} SOP Instance UIDs per identifier")
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = list(sop_instance_uids) if len(sop_instance_uids) > 1 else sop_instance_uids[0]
    return ds


def chunks(uids: list[str], size: int = MAX_UIDS_PER_REQUEST) -> list[list[str]]:
    """`uids` in consecutive slices of at most `size` (one identifier each)."""
    return [uids[i : i + size] for i in range(0, len(uids), size)]


def _count(ds: Dataset | None, keyword: str) -> int | None:
    if ds is None or keyword not in ds:
        return None
    value = ds.get(keyword)
    return int(value) if value not in (None, "") else None


def _uid_list(ds: Dataset | None) -> tuple[str, ...]:
    if ds is None or "FailedSOPInstanceUIDList" not in ds:
        return ()
    value = ds.FailedSOPInstanceUIDList
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split("\\") if v)
    return tuple(str(v) for v in value if str(v))


def collect_responses(
    responses: Iterator[tuple[Dataset, Dataset | None]],
    assoc: Association,
    peer: Peer,
    operation: str,
    timeouts: Timeouts,
) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """Drain a send_c_move/send_c_get generator: (final status, final identifier, last pending status)."""
    started = waited_from = time.monotonic()
    last_pending: Dataset | None = None
    for status, identifier in responses:
        if "Status" not in status:
            stats.record_failure(peer.aet, operation, time.monotonic() - started)
            raise no_response_error(assoc, peer, operation, timeouts, time.monotonic() - waited_from)
        waited_from = time.monotonic()
        if status_category(int(status.Status)) == PENDING:
            last_pending = status
            continue
        stats.record(peer.aet, operation, int(status.Status), time.monotonic() - started)
        return status, identifier, last_pending
    stats.record_failure(peer.aet, operation, time.monotonic() - started)
    raise no_response_error(assoc, peer, operation, timeouts, 0.0)


def evaluate(
    peer: Peer,
    operation: str,
    final: Dataset,
    identifier: Dataset | None,
    last_pending: Dataset | None,
    *,
    seconds: float,
    expected_count: int | None,
    allow_warnings: bool,
    received: Sequence[ReceivedInstance] = (),
    advice: dict[int, str] | None = None,
) -> RetrieveResult:
    """Build the RetrieveResult and raise SubOperationError unless every expected sub-operation succeeded."""
    code = int(final.Status)
    completed = _count(final, "NumberOfCompletedSuboperations")
    failed = _count(final, "NumberOfFailedSuboperations")
    warning = _count(final, "NumberOfWarningSuboperations")
    if completed is None:
        # Some SCPs omit the counts on the final response (optional for Success, PS3.4 C.4.2.1.5).
        pending_completed = _count(last_pending, "NumberOfCompletedSuboperations") or 0
        completed = len(received) if received else pending_completed
    result = RetrieveResult(
        status=code,
        completed=completed,
        failed=failed or 0,
        warning=warning or 0,
        seconds=seconds,
        failed_sop_instance_uids=_uid_list(identifier),
        received=tuple(received),
    )
    counts = f"completed {result.completed}, failed {result.failed}, warning {result.warning}"
    advice = advice or {}
    hint = advice.get(code)
    if hint is None and 0xA700 <= code <= 0xA7FF:
        hint = advice.get(0xA700)
    category = status_category(code)
    only_warnings = code == 0xB000 and not result.failed and not result.failed_sop_instance_uids
    if category in (FAILURE, CANCEL) or (code == 0xB000 and not (allow_warnings and only_warnings)):
        raise SubOperationError(
            peer,
            operation,
            counts,
            result=result,
            status=code,
            failed_sop_instance_uids=result.failed_sop_instance_uids,
            advice=hint,
        )
    if result.failed or (result.warning and not allow_warnings):
        raise SubOperationError(
            peer,
            operation,
            f"{counts} despite final status 0x{code:04X}",
            result=result,
            failed_sop_instance_uids=result.failed_sop_instance_uids,
            advice="check the listed SOP Instance UIDs and the destination's log",
        )
    if operation == "C-GET" and len(received) < result.completed:
        raise SubOperationError(
            peer,
            operation,
            f"the peer reported {result.completed} completed but only {len(received)} instances arrived",
            result=result,
            advice="the peer's accounting is wrong: check its log and retrieve again",
        )
    if expected_count is not None and result.completed + result.warning < expected_count:
        raise SubOperationError(
            peer,
            operation,
            f"final status 0x{code:04X} Success but only {result.completed + result.warning} of "
            f"{expected_count} expected instances were retrieved ({counts})",
            result=result,
            advice="the source matched fewer instances than the C-FIND counted: check the retrieve level "
            "and keys, then verify on the destination",
        )
    return result
