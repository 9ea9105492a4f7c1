"""On-demand backup of given studies: the operator's list of Study Instance UIDs, checked and inventoried.

The transfer and the verification are the nightly ones (backup/archive.py, backup/verify.py); this module
adds what only an operator-typed list needs: UID syntax (PS3.5 9.1) and a STUDY-level C-FIND per UID at
the source (PS3.4 C.6.2.1, unique key matching), so that a study the source does not know is named.

Nothing is recorded beside the main archive for the nightly runs to trust: their plan asks the archive
which instances it holds (`ArchiveLookup`), so an instance backed up on demand is ALREADY_ARCHIVED there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dicom_backup_dagster.dicom.find import FindSession, StudyRecord

from .inventory import InventorySummary, inventory_studies, split_query_keys

# PS3.5 9.1: components of digits separated by ".", no leading zero in a component of more than one digit,
# at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
MAX_UID_LENGTH = 64


class StudyListError(ValueError):
    """The operator's list cannot be used; the message says which entries and how to write them."""


def uid_problem(value: str) -> str | None:
    """Why `value` is not a UID (PS3.5 9.1), or None when it is one."""
    if not value:
        return "empty"
    if len(value) > MAX_UID_LENGTH:
        return f"{len(value)} characters (a UID has at most {MAX_UID_LENGTH})"
    if not _UID.fullmatch(value):
        if re.search(r"[^0-9.]", value):
            return "letters or other characters: a UID has only digits and dots (a PatientID is not one)"
        return "not a UID: dot-separated numbers, none empty or with a leading zero (1.2.840.10008...)"
    return None


def validate_study_uids(values: Sequence[str]) -> tuple[str, ...]:
    """The distinct Study Instance UIDs of `values` (surrounding blanks removed), in the given order;
    StudyListError naming every bad entry by position."""
    if not values:
        raise StudyListError(
            "study_uids is empty: list at least one Study Instance UID (0020,000D), e.g. "
            "study_uids: ['1.2.840.113619.2.55.3.604688119.969.1268071029.320']"
        )
    cleaned = [v.strip() for v in values]
    # Entries are named by position, never quoted: a PatientID pasted by mistake is patient data, and this
    # message reaches logs and alerts.
    bad = [f"entry {i + 1}: {why}" for i, v in enumerate(cleaned) if (why := uid_problem(v))]
    if bad:
        raise StudyListError(
            f"{len(bad)} of {len(cleaned)} entries of study_uids are not Study Instance UIDs (not shown: "
            "they may be patient data): "
            + "; ".join(bad[:10])
            + ". Copy the StudyInstanceUID (0020,000D) from the study's DICOM header or the source's "
            "study list."
        )
    return tuple(dict.fromkeys(cleaned))


@dataclass(frozen=True)
class RequestedInventory:
    summary: InventorySummary
    found: tuple[StudyRecord, ...]
    unknown: tuple[str, ...]  # requested UIDs the source has no study for


def inventory_requested(
    session: FindSession,
    study_uids: Sequence[str],
    out_path: str | os.PathLike[str],
    *,
    query_keys: Mapping[str, str] | None = None,
    by_study: bool = True,
    cap: int | None = None,
) -> RequestedInventory:
    """One STUDY-level C-FIND per UID (a strictly hierarchical SCP answers unique-key matching; UID lists
    it may not), then every instance of the studies found, written like the nightly inventory."""
    study_keys = split_query_keys(query_keys or {})[0]
    found: list[StudyRecord] = []
    for uid in study_uids:
        found += [
            s
            for s in session.studies(study_instance_uid=uid, extra_keys=study_keys)
            if s.study_instance_uid == uid
        ]
    known = {s.study_instance_uid for s in found}
    summary = inventory_studies(session, found, out_path, query_keys=query_keys, by_study=by_study, cap=cap)
    return RequestedInventory(summary, tuple(found), tuple(u for u in study_uids if u not in known))
