"""The plan: inventory minus archived, oldest first, max_uids_per_run cut with the rest deferred."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_backup_dagster.backup.manifest import (
    ALREADY_ARCHIVED,
    DEFERRED,
    PENDING,
    InstanceEntry,
    read_manifest,
    write_manifest,
)
from dicom_backup_dagster.backup.plan import make_plan

INVENTORY = [
    InstanceEntry("S1", "S1.1", "a", study_date="20260101"),
    InstanceEntry("S1", "S1.1", "b", study_date="20260101"),
    InstanceEntry("S1", "S1.2", "c", study_date="20260101"),
    InstanceEntry("S2", "S2.1", "d", study_date="20260102"),
    InstanceEntry("S2", "S2.1", "e", study_date="20260102"),
]


def plan(
    tmp_path: Path, archived: dict[str, set[str]], max_uids: int, level: str = "IMAGE"
) -> tuple[object, list[tuple[str, str]]]:
    asked: list[str] = []

    def lookup(study: str) -> set[str]:
        asked.append(study)
        return archived.get(study, set())

    out = tmp_path / "plan.jsonl"
    summary = make_plan(iter(INVENTORY), lookup, max_uids, out, level)
    assert asked == ["S1", "S2"]  # one archive query per study
    return summary, [(e.sop_instance_uid, e.state) for e in read_manifest(out)]


def test_archived_instances_are_skipped_and_the_rest_is_pending(tmp_path: Path) -> None:
    summary, states = plan(tmp_path, {"S1": {"b"}, "S2": {"d", "e"}}, 100)
    assert states == [("a", PENDING), ("b", ALREADY_ARCHIVED), ("c", PENDING), ("d", ALREADY_ARCHIVED),
                      ("e", ALREADY_ARCHIVED)]  # fmt: skip
    assert (summary.found, summary.already_archived, summary.pending, summary.deferred) == (5, 3, 2, 0)
    assert summary.studies_with_work == ("S1",)


def test_the_cut_takes_the_oldest_first_and_defers_the_rest(tmp_path: Path) -> None:
    summary, states = plan(tmp_path, {"S1": {"a"}}, 2)
    assert states == [
        ("a", ALREADY_ARCHIVED),
        ("b", PENDING),
        ("c", PENDING),
        ("d", DEFERRED),
        ("e", DEFERRED),
    ]
    assert (summary.pending, summary.deferred) == (2, 2)
    # The next run (b and c now archived) takes exactly the deferred ones.
    summary2, states2 = plan(tmp_path, {"S1": {"a", "b", "c"}}, 2)
    assert states2[3:] == [("d", PENDING), ("e", PENDING)] and summary2.deferred == 0


@pytest.mark.parametrize(
    ("level", "max_units", "expected"),
    [
        # One series: a and b (S1.1); c is the next series and waits, as does study S2.
        ("SERIES", 1, [PENDING, PENDING, DEFERRED, DEFERRED, DEFERRED]),
        ("SERIES", 2, [PENDING, PENDING, PENDING, DEFERRED, DEFERRED]),
        # One study: all of S1, never half of it.
        ("STUDY", 1, [PENDING, PENDING, PENDING, DEFERRED, DEFERRED]),
        ("IMAGE", 1, [PENDING, DEFERRED, DEFERRED, DEFERRED, DEFERRED]),
    ],
)
def test_query_level_sets_the_unit_the_cut_counts(
    tmp_path: Path, level: str, max_units: int, expected: list[str]
) -> None:
    summary, states = plan(tmp_path, {}, max_units, level)
    assert [state for _, state in states] == expected
    assert summary.pending + summary.deferred == 5


def test_everything_archived_means_nothing_to_do(tmp_path: Path) -> None:
    summary, _ = plan(tmp_path, {"S1": {"a", "b", "c"}, "S2": {"d", "e"}}, 10)
    assert summary.pending == 0 and summary.studies_with_work == ()


def test_zero_budget_defers_everything_missing(tmp_path: Path) -> None:
    summary, states = plan(tmp_path, {}, 0)
    assert {s for _, s in states} == {DEFERRED} and summary.deferred == 5


def test_negative_budget_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_plan(iter(INVENTORY), lambda s: set(), -1, tmp_path / "p.jsonl")


def test_plan_streams_from_a_manifest_file(tmp_path: Path) -> None:
    write_manifest(tmp_path / "inv.jsonl", INVENTORY)
    summary = make_plan(read_manifest(tmp_path / "inv.jsonl"), lambda s: set(), 3, tmp_path / "p.jsonl")
    assert (summary.pending, summary.deferred) == (3, 2)
