"""Reuse of earlier content verification (backup.verify): what a re-run retrieves, what it records."""

from __future__ import annotations

from pathlib import Path

from dicom_backup_dagster.backup.manifest import ALREADY_ARCHIVED, MOVED, InstanceEntry
from dicom_backup_dagster.backup.verify import read_verified_sample, record_verified_sample, split_reusable


def _e(uid: str, state: str) -> InstanceEntry:
    return InstanceEntry("1.2", "1.2.3", uid, state=state)


def test_only_instances_already_archived_and_verified_before_are_reused() -> None:
    chosen = [_e("a", ALREADY_ARCHIVED), _e("b", ALREADY_ARCHIVED), _e("c", MOVED)]
    fresh, reused = split_reusable(chosen, {"a", "c"})
    assert [e.sop_instance_uid for e in reused] == ["a"]
    assert [e.sop_instance_uid for e in fresh] == ["b", "c"]  # c was moved again by this run: retrieved


def test_record_keeps_matches_and_drops_what_was_retrieved_and_differed(tmp_path: Path) -> None:
    assert read_verified_sample(tmp_path) == set()
    record_verified_sample(tmp_path, ["a", "b"], ["a", "b"])
    record_verified_sample(tmp_path, ["b", "c"], ["c"])  # b retrieved again and differed now
    assert read_verified_sample(tmp_path) == {"a", "c"}
