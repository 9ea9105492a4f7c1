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

from dicom_backup_dagster.dicom.echo import c_echo
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


def _move_problem(result: DrillResult, restored: RestoreResult, scratch_answers: bool) -> str:
    outcome = restored.outcome
    statuses = sorted({f"0x{e.status:04X}" for e in (outcome.errors if outcome else []) if e.status})
    head = f"the C-MOVE from main to {result.scratch} failed (DICOM status {', '.join(statuses) or 'none'}"
    if not scratch_answers:
        return (
            f"{head}): the scratch AE does not answer a C-ECHO: start it, or fix its restore_targets ip/port"
        )
    if not result.present:
        return (
            f"{head}, nothing arrived): check that main lists the scratch AE in its DicomModalities "
            f"(or PUT /modalities/<AE> on main's REST API)"
        )
    return (
        f"{head}, {result.present} instances arrived): the scratch AE refused a C-STORE (Orthanc then stops "
        f"that study's C-MOVE): read its log, free space or accept the SOP class there"
    )


def judge(result: DrillResult, restored: RestoreResult, scratch_answers: bool = True) -> None:
    """Fill `result` from the restore's result, naming each failure by count with the fix
    (`scratch_answers`: the scratch AE answered a C-ECHO after a failed C-MOVE)."""
    outcome = restored.outcome
    result.moved = outcome.completed if outcome else 0
    result.refused = len(outcome.reported_failed_uids) if outcome else 0
    result.present = restored.present
    content = restored.content
    if content is not None:
        result.digests_compared, result.digests_matched = content.compared, content.matched
    if restored.errors:
        result.problems.append(_move_problem(result, restored, scratch_answers))
    if result.missing:
        result.problems.append(
            f"{result.missing} of {result.instances} instances not found at {result.scratch} after the "
            f"C-MOVE; fix the above, then run the drill again with the same seed"
        )
    if content is None and result.present:
        reason = "; ".join(restored.notes) or "nothing compared"
        result.problems.append(
            f"no digest compared ({reason}): the scratch AE must serve C-GET so that the restored content "
            f"can be proven equal to main's"
        )
    elif content is not None and (content.mismatched_uids or content.errors or content.missing_on_source):
        differ = len(content.mismatched_uids)
        unread = len(content.missing_on_source) + len(content.errors)
        result.problems.append(
            f"{differ} of {result.present} restored instances differ from main by content digest"
            + (f" and {unread} could not be read back from {result.scratch}" if unread else "")
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
    answers = True
    if restored.errors and not restored.present:
        try:
            c_echo(scratch, calling_aet, timeouts)
        except DicomError:
            answers = False
    judge(result, restored, answers)
    return result
