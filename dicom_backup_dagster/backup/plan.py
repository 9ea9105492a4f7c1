"""The plan: inventory minus what the archive already holds, cut at max_uids_per_run.

The inventory is already in oldest-first order, so the plan is a single streaming pass: each study's
archived UIDs are looked up once, instances already there are marked ALREADY_ARCHIVED, the missing ones
of the next `max_uids` units PENDING and the rest DEFERRED. The unit is the source's `query_level`: IMAGE
counts instances, SERIES and STUDY count whole series or studies, so a cut never splits one (the
inventory itself always reaches IMAGE level: the proof is per instance). Deferred instances are written to
the plan (and so reported), never dropped: the next run of the partition finds them still missing and
takes them first.
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


_UNIT_OF: dict[str, Callable[[InstanceEntry], str]] = {
    "IMAGE": lambda e: e.sop_instance_uid,
    "SERIES": lambda e: e.series_instance_uid,
    "STUDY": lambda e: e.study_instance_uid,
}


def make_plan(
    inventory: Iterable[InstanceEntry],
    archived_uids: Callable[[str], set[str]],
    max_uids: int,
    out_path: str | os.PathLike[str],
    level: str = "IMAGE",
) -> PlanSummary:
    """Write the plan manifest. `archived_uids(study_uid)` returns the SOP Instance UIDs on the archive;
    `max_uids` counts units of `level` (IMAGE, SERIES or STUDY)."""
    if max_uids < 0:
        raise ValueError("max_uids must be >= 0")
    unit_of = _UNIT_OF[level]
    admitted: set[str] = set()  # at most max_uids units
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
                elif unit_of(entry) in admitted or budget > 0:
                    if unit_of(entry) not in admitted:
                        admitted.add(unit_of(entry))
                        budget -= 1
                    writer.write(entry.with_state(PENDING))
                    pending += 1
                    study_has_work = True
                else:
                    writer.write(entry.with_state(DEFERRED))
                    deferred += 1
            if study_has_work:
                with_work.append(study_uid)
    return PlanSummary(found, archived, pending, deferred, tuple(with_work))
