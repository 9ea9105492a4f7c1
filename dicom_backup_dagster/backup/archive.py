"""Archive what an inventory found and the main archive lacks: plan, transfer, confirm.

The nightly `archived` step and the reconciliation sweep both run this chain over an inventory manifest:
`make_plan` (inventory minus the archive, cut at the run's UID limit) -> `transfer` (C-MOVE, or C-GET +
C-STORE) -> `finalize` (each pending instance confirmed on the archive by C-FIND, MOVED or FAILED).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.network import Peer, Timeouts

from .inventory import ArchiveLookup
from .manifest import PENDING, read_manifest
from .plan import PlanSummary, make_plan
from .transfer import FinalSummary, Transfer, TransferOutcome, finalize, transfer


class ArchivePhaseError(Exception):
    """A C-FIND on the archive failed: `phase` says which one, in operator words."""

    def __init__(self, phase: str, error: DicomError) -> None:
        super().__init__(f"{phase}: {error}")
        self.phase = phase
        self.error = error


@dataclass(frozen=True)
class ArchiveResult:
    plan: PlanSummary
    outcome: TransferOutcome
    final: FinalSummary
    seconds_plan: float
    seconds_transfer: float
    seconds_confirm: float


def archive_missing(
    inventory_path: str | os.PathLike[str],
    folder: Path,
    *,
    archive_session: Callable[[], FindSession],
    source: Peer,
    archive: Peer,
    calling_aet: str,
    timeouts: Timeouts,
    mode: Transfer,
    level: str,
    uid_limit: int,
    spool_dir: Path,
    between_requests: Callable[[Callable[[], None]], None] | None = None,
) -> ArchiveResult:
    """Write `plan.jsonl` and `archived.jsonl` in `folder` for the inventory at `inventory_path`.

    Raises ArchivePhaseError when the archive cannot be asked (before or after the transfer); DICOM errors
    of the transfer itself are in `outcome.errors`, and the instances they concern are FAILED.
    `between_requests`: the transfer's hook before every request but the first (the clinic-hours pause)."""
    plan_path, out_path = folder / "plan.jsonl", folder / "archived.jsonl"
    started = time.monotonic()
    try:
        with archive_session() as main:
            plan = make_plan(
                read_manifest(inventory_path),
                ArchiveLookup(main, read_manifest(inventory_path)),
                uid_limit,
                plan_path,
                level=level,
            )
    except DicomError as error:
        raise ArchivePhaseError("archive lookup (C-FIND)", error) from error
    planned = time.monotonic()
    outcome = transfer(
        read_manifest(plan_path),
        source=source,
        archive=archive,
        calling_aet=calling_aet,
        timeouts=timeouts,
        mode=mode,
        spool_dir=spool_dir,
        between_requests=between_requests,
    )
    transferred = time.monotonic()
    try:
        with archive_session() as main:
            final = finalize(
                read_manifest(plan_path),
                ArchiveLookup(main, (e for e in read_manifest(plan_path) if e.state == PENDING)),
                out_path,
                received=outcome.received,
            )
    except DicomError as error:
        raise ArchivePhaseError("confirmation on the archive (C-FIND)", error) from error
    return ArchiveResult(
        plan, outcome, final, planned - started, transferred - planned, time.monotonic() - transferred
    )
