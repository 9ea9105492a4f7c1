"""Restore drill: restore a small random sample of the studies on main to a scratch AE and prove the copies
identical there (backup/restore.py does the move and the verification).

A backup that has never been restored is not known to be a backup. The sample is drawn from every study on
main (one STUDY-level C-FIND, StudyInstanceUID only) by a seeded `random.Random`: the seed is a number, so
it can go into logs and metadata and the same sample can be drawn again (run config `seed`); the sampled
UIDs go nowhere but the C-MOVE and the verification.

A drill passes only when every sampled instance is found at the scratch AE AND its content digest equals
main's: the scratch AE must serve C-GET (presence alone proves a copy exists, not that it is the data).
Results are counts; the texts name AE titles, counts and the fix, never UIDs or patient data.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.network import Peer, Timeouts

from .restore import RestoreResult, Selection, resolve, restore

RUNBOOK = "docs/runbooks/restore_drill.md"


def new_seed() -> int:
    return secrets.randbelow(2**31 - 1) + 1


def sample_studies(main: FindSession, count: int, seed: int) -> tuple[list[str], int]:
    """`count` Study Instance UIDs drawn from every study on main with `seed`, and how many studies main
    has. The draw depends only on the seed and the set of studies (sorted first)."""
    uids = sorted({s.study_instance_uid for s in main.studies()})
    return random.Random(seed).sample(uids, min(count, len(uids))), len(uids)


@dataclass
class DrillResult:
    """One drill's counts and verdict (no UIDs, no patient data)."""

    seed: int
    scratch: str  # AE@host:port
    studies_on_main: int = 0
    studies: int = 0
    instances: int = 0
    moved: int = 0
    refused: int = 0  # failed C-STORE sub-operations main reported for the C-MOVE
    present: int = 0
    digests_compared: int = 0
    digests_matched: int = 0
    problems: list[str] = field(default_factory=list)  # what failed, with the fix

    @property
    def missing(self) -> int:
        return self.instances - self.present

    @property
    def digests_differ(self) -> int:
        return self.digests_compared - self.digests_matched

    @property
    def passed(self) -> bool:
        return not self.problems and self.instances > 0 and self.digests_matched == self.instances

    def counts(self) -> dict[str, int]:
        names = ("seed", "studies_on_main", "studies", "instances", "moved", "refused", "present")
        out = {n: int(getattr(self, n)) for n in names}
        out.update(
            missing=self.missing, digests_matched=self.digests_matched, digests_differ=self.digests_differ
        )
        return out

    def summary(self) -> str:
        if self.passed:
            return (
                f"restore drill passed: {self.instances} instances of {self.studies} studies (seed "
                f"{self.seed}) restored to {self.scratch}, {self.digests_matched} digests equal to main's"
            )
        return f"restore drill FAILED (seed {self.seed}, scratch {self.scratch}): " + "; ".join(self.problems)


def judge(result: DrillResult, restored: RestoreResult) -> None:
    """Fill `result` from the restore's result, naming each failure by count with the fix."""
    outcome = restored.outcome
    result.moved = outcome.completed if outcome else 0
    result.refused = len(outcome.reported_failed_uids) if outcome else 0
    result.present = restored.present
    content = restored.content
    if content is not None:
        result.digests_compared, result.digests_matched = content.compared, content.matched
    scratch = result.scratch
    if restored.errors:
        statuses = sorted({f"0x{e.status:04X}" for e in (outcome.errors if outcome else []) if e.status})
        where = "nothing arrived" if not result.present else f"{result.present} instances arrived"
        result.problems.append(
            f"the C-MOVE from main to {scratch} reported {len(restored.errors)} errors (DICOM status "
            f"{', '.join(statuses) or 'none'}; {where}): with nothing arrived, check that main lists the "
            f"scratch AE in its DicomModalities; otherwise the scratch AE refused a C-STORE (Orthanc then "
            f"stops that study's C-MOVE): read the scratch AE's log"
        )
    if result.missing:
        result.problems.append(
            f"{result.missing} of {result.instances} instances not found at {scratch} after the C-MOVE: the "
            f"scratch AE refused or lost them (read its log for the C-STORE status), free space or accept "
            f"their SOP classes there, then run the drill again with the same seed"
        )
    if content is None:
        reason = "; ".join(restored.notes) or "no instance to compare"
        result.problems.append(
            f"no digest compared ({reason}): the scratch AE must serve C-GET so that the restored content "
            f"can be proven equal to main's"
        )
    elif content.mismatched_uids or content.errors or content.missing_on_source:
        differ = len(content.mismatched_uids)
        unread = len(content.missing_on_source) + len(content.errors)
        result.problems.append(
            f"{differ} of {result.present} restored instances differ from main by content digest"
            + (f" and {unread} could not be read back from {scratch}" if unread else "")
            + ": the copy the scratch AE holds is not what main archived; restore those studies again "
            f"(same seed) and, if they still differ, check main's storage ({RUNBOOK})"
        )


def run_drill(
    *,
    main: Peer,
    scratch: Peer,
    calling_aet: str,
    timeouts: Timeouts,
    count: int,
    seed: int,
    spool_dir: Path,
) -> DrillResult:
    """Sample `count` studies of main with `seed`, restore them to `scratch`, verify presence and digests.
    DICOM failures become problems of the result (the drill reports; it does not raise)."""
    result = DrillResult(seed, str(scratch))
    try:
        with FindSession(main, calling_aet, timeouts) as session:
            uids, result.studies_on_main = sample_studies(session, count, seed)
            entries = resolve(session, Selection(study_instance_uids=tuple(uids))) if uids else []
    except DicomError as error:
        result.problems.append(f"sampling studies on main {main} failed: {error}; check main with C-ECHO")
        return result
    result.studies, result.instances = len(uids), len(entries)
    if not entries:
        result.problems.append(f"main {main} holds no study to restore: back something up first")
        return result
    restored = restore(
        entries,
        main=main,
        destination=scratch,
        calling_aet=calling_aet,
        timeouts=timeouts,
        verify_digests=True,
        spool_dir=spool_dir,
    )
    judge(result, restored)
    return result
