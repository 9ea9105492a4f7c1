"""The plan: inventory minus what the archive already holds, cut at max_uids_per_run.

The inventory is already in oldest-first order, so the plan is a single streaming pass: each study's
archived UIDs are looked up once, instances already there are marked ALREADY_ARCHIVED, the next
`max_uids` missing ones PENDING and the rest DEFERRED. Deferred instances are written to the plan (and so
reported), never dropped: the next run of the partition finds them still missing and takes them first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .manifest import ALREADY_ARCHIVED, DEFERRED, PENDING, InstanceEntry, ManifestWriter, by_study


@dataclass(frozen=True)
class PlanSummary:
    found: int
    already_archived: int
    pending: int
    deferred: int
    studies_with_work: tuple[str, ...]  # studies with PENDING instances (what the transfer touches)


def make_plan(
    inventory: Iterable[InstanceEntry],
    archived_uids: Callable[[str], set[str]],
    max_uids: int,
    out_path: str | os.PathLike[str],
) -> PlanSummary:
    """Write the plan manifest. `archived_uids(study_uid)` returns the SOP Instance UIDs on the archive."""
    if max_uids < 0:
        raise ValueError("max_uids must be >= 0")
    budget = max_uids
    found = archived = pending = deferred = 0
    with_work: list[str] = []
    with ManifestWriter(out_path) as writer:
        for study_uid, entries in by_study(inventory):
            found += len(entries)
            on_archive = archived_uids(study_uid)
            study_has_work = False
            for entry in entries:
                if entry.sop_instance_uid in on_archive:
                    writer.write(entry.with_state(ALREADY_ARCHIVED))
                    archived += 1
                elif budget > 0:
                    writer.write(entry.with_state(PENDING))
                    budget -= 1
                    pending += 1
                    study_has_work = True
                else:
                    writer.write(entry.with_state(DEFERRED))
                    deferred += 1
            if study_has_work:
                with_work.append(study_uid)
    return PlanSummary(found, archived, pending, deferred, tuple(with_work))
