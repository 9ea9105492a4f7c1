"""Trailing-median rules for volume and duration."""

from __future__ import annotations

from dicom_backup_dagster.backup.baseline import duration_verdict, volume_verdict


def test_volume_far_below_the_median_fails() -> None:
    verdict = volume_verdict(40, [100, 120, 0, 110, 90])  # one empty night does not move the median
    assert not verdict.passed and verdict.baseline == 100 and verdict.threshold == 50
    assert "below" in verdict.reason


def test_volume_near_the_median_passes() -> None:
    assert volume_verdict(60, [100, 120, 110]).passed


def test_volume_passes_without_enough_history() -> None:
    verdict = volume_verdict(0, [100, 100])
    assert verdict.passed and verdict.baseline is None and "only 2" in verdict.reason


def test_volume_of_a_small_site_is_not_judged() -> None:
    verdict = volume_verdict(0, [16, 20, 24])  # a drop to zero, but from a median of 20 instances
    assert verdict.passed and verdict.threshold is None and "too few to judge" in verdict.reason
    assert not volume_verdict(0, [16, 20, 24], floor_instances=10).passed


def test_duration_more_than_twice_the_median_fails() -> None:
    verdict = duration_verdict(700, [300, 320, 310])
    assert not verdict.passed and verdict.baseline == 310 and verdict.threshold == 620


def test_duration_under_the_floor_never_warns() -> None:
    assert duration_verdict(50, [1, 2, 3]).passed  # 50 s > 2 x 2 s, but below the 60 s floor
    assert not duration_verdict(50, [1, 2, 3], floor_seconds=10).passed


def test_rules_carry_site_thresholds() -> None:
    from dicom_backup_dagster.backup.baseline import BaselineRules

    strict = BaselineRules(
        min_history=1, min_volume_ratio=0.9, max_duration_ratio=1.5, duration_floor_seconds=0
    )
    assert not strict.volume(80, [100]).passed and BaselineRules().volume(80, [100, 100, 100]).passed
    assert not strict.duration(160, [100]).passed and BaselineRules().duration(160, [100, 100, 100]).passed


def test_an_empty_day_with_an_empty_baseline_is_not_judged() -> None:
    verdict = volume_verdict(0, [0, 0, 0, 0], floor_instances=0)
    assert (
        verdict.passed and not verdict.judged and "median of the previous 4 partitions is 0" in verdict.reason
    )


def test_a_quiet_weekend_against_a_weekday_baseline_is_not_judged() -> None:
    import datetime as dt

    saturday = dt.date(2026, 11, 28)
    days = [saturday - dt.timedelta(days=n) for n in range(7, 0, -1)]  # Sat..Fri before it
    volumes = [0 if d.weekday() >= 5 else 100 for d in days]
    verdict = volume_verdict(0, volumes, day=saturday, history_days=days)
    assert verdict.passed and not verdict.judged and "Saturday" in verdict.reason
    # A site that works at weekends: an empty Saturday is judged (and fails).
    busy = volume_verdict(0, [100] * 7, day=saturday, history_days=days)
    assert not busy.passed and busy.judged
    # An empty weekday is judged against the same history.
    friday = saturday - dt.timedelta(days=1)
    assert not volume_verdict(0, volumes, day=friday, history_days=days).passed


def test_judged_verdicts_say_so() -> None:
    assert volume_verdict(60, [100, 120, 110]).judged
    assert not volume_verdict(0, [100, 100]).judged  # too little history
    assert not duration_verdict(700, [300]).judged
    assert duration_verdict(700, [300, 320, 310]).judged
