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
