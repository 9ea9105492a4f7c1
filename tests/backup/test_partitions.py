"""Which partition of a (ranged) run counts each instance: backup/partitions.py."""

import datetime as dt

import pytest

from dicom_backup_dagster.backup.manifest import FOUND, MOVED, InstanceEntry
from dicom_backup_dagster.backup.partitions import RunDays, counts_by_partition


def _entry(uid: str, study_date: str | None, state: str = MOVED) -> InstanceEntry:
    return InstanceEntry("1.2.3", "1.2.3.4", uid, study_date=study_date, state=state)


def test_single_day_label_and_dates_with_lookback():
    days = RunDays(("2026-01-14",))
    assert days.label == "2026-01-14"
    assert days.study_dates(3) == (dt.date(2026, 1, 11), dt.date(2026, 1, 14))
    assert days.study_dates(0) == (dt.date(2026, 1, 14), dt.date(2026, 1, 14))


def test_range_label_and_dates():
    days = RunDays(("2026-01-12", "2026-01-13", "2026-01-14"))
    assert days.label == "2026-01-12..2026-01-14"
    assert days.study_dates(2) == (dt.date(2026, 1, 10), dt.date(2026, 1, 14))


@pytest.mark.parametrize("bad", [(), ("2026-01-13", "2026-01-12"), ("2026-01-12", "2026-01-12")])
def test_partitions_must_be_distinct_and_ascending(bad):
    with pytest.raises(ValueError):
        RunDays(bad)


@pytest.mark.parametrize(
    ("study_date", "partition"),
    [
        ("20260113", "2026-01-13"),  # its own day
        ("20260109", "2026-01-12"),  # the look-back, before the range: the first day
        ("20260112", "2026-01-12"),
        ("20260120", "2026-01-14"),  # after the range (a source ignoring the date filter): the last day
        (None, "2026-01-14"),
        ("", "2026-01-14"),
        ("2026013", "2026-01-14"),  # malformed
        ("20261332", "2026-01-14"),  # not a date
    ],
)
def test_attribute(study_date, partition):
    assert RunDays(("2026-01-12", "2026-01-13", "2026-01-14")).attribute(study_date) == partition


def test_counts_sum_to_the_run_and_dated_counts_only_the_own_day():
    days = RunDays(("2026-01-12", "2026-01-13", "2026-01-14"))
    entries = [
        _entry("a", "20260110", FOUND),  # look-back: counted by 01-12, dated on no partition
        _entry("b", "20260112"),
        _entry("c", "20260113"),
        _entry("d", "20260113"),
        _entry("e", None),
    ]
    counts = counts_by_partition(entries, days)
    assert {p: c.found for p, c in counts.items()} == {"2026-01-12": 2, "2026-01-13": 2, "2026-01-14": 1}
    assert {p: c.dated for p, c in counts.items()} == {"2026-01-12": 1, "2026-01-13": 2, "2026-01-14": 0}
    assert sum(c.found for c in counts.values()) == len(entries)
    assert counts["2026-01-12"].states == {FOUND: 1, MOVED: 1}
    assert counts["2026-01-13"].states[MOVED] == 2


def test_uid_limit_is_per_day_of_the_run() -> None:
    assert RunDays(("2026-01-12",)).uid_limit(5000) == 5000
    assert RunDays(("2026-01-12", "2026-01-13", "2026-01-14")).uid_limit(5000) == 15000
