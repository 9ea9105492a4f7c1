"""Anomaly rules against a trailing baseline: the median of the previous N partitions.

The median (not the mean) so that one failed or backfilled night does not move the baseline. Both rules
pass while there is too little history to judge (a new site, the first days of a backfill) and say so.

- volume: far fewer instances than usual (a significant drop against the history of the same job)
  suggests a source that answers queries but lost or hides data.
- duration: more than `max_ratio` x the usual time (default 2x) suggests a slow network, a struggling
  PACS or the Nagle trap (~40 ms per C-STORE, dicom/network.py). Runs shorter than `floor_seconds`
  never warn: at that scale the noise is bigger than the signal.
The volume rule likewise needs a baseline median of at least `floor_instances`: a handful of instances a
day (a small site, a test system) varies by more than half from one day to the next without anything
being wrong. A day with nothing is legitimately empty, and passes without being judged, when the trailing
median is 0 too, or when it is a Saturday or Sunday and no earlier weekend day of the window had data
(the baseline then describes weekdays: a clinic closed at weekends produces nothing on them).
A verdict says whether it judged (`judged`): a pass that was not judged does not mean "back within the
baseline" (the alert sensor resolves nothing with it).
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_WINDOW = 7  # partitions: one week, so weekdays and weekends both count
DEFAULT_MIN_HISTORY = 3
DEFAULT_MIN_VOLUME_RATIO = 0.5
DEFAULT_MAX_DURATION_RATIO = 2.0
DEFAULT_DURATION_FLOOR_SECONDS = 60.0
DEFAULT_VOLUME_FLOOR_INSTANCES = 50


@dataclass(frozen=True)
class BaselineRules:
    """The thresholds of both rules (a site may tune them; docs/decisions/monitoring.md has the defaults)."""

    window: int = DEFAULT_WINDOW
    min_history: int = DEFAULT_MIN_HISTORY
    min_volume_ratio: float = DEFAULT_MIN_VOLUME_RATIO
    max_duration_ratio: float = DEFAULT_MAX_DURATION_RATIO
    duration_floor_seconds: float = DEFAULT_DURATION_FLOOR_SECONDS
    volume_floor_instances: int = DEFAULT_VOLUME_FLOOR_INSTANCES

    def volume(
        self,
        current: float,
        history: Sequence[float],
        *,
        day: dt.date | None = None,
        history_days: Sequence[dt.date] = (),
        noun: str = "instances",
    ) -> Verdict:
        return volume_verdict(
            int(current),
            history,
            day=day,
            history_days=history_days,
            noun=noun,
            min_history=self.min_history,
            min_ratio=self.min_volume_ratio,
            floor_instances=self.volume_floor_instances,
        )

    def duration(self, current_seconds: float, history: Sequence[float], **_: object) -> Verdict:
        """(The day and its history's days do not matter for the duration: accepted for one call shape.)"""
        return duration_verdict(
            current_seconds,
            history,
            min_history=self.min_history,
            max_ratio=self.max_duration_ratio,
            floor_seconds=self.duration_floor_seconds,
        )


@dataclass(frozen=True)
class Verdict:
    passed: bool
    current: float
    baseline: float | None  # the median, None without enough history
    history: tuple[float, ...]
    threshold: float | None  # the value that would have flipped the verdict
    reason: str
    judged: bool = True  # False: passed because there was nothing to judge it by (or nothing to judge)


def not_judged(current: float, baseline: float | None, history: tuple[float, ...], reason: str) -> Verdict:
    return Verdict(True, current, baseline, history, None, reason, judged=False)


def quiet_weekend(day: dt.date | None, history: Sequence[float], history_days: Sequence[dt.date]) -> bool:
    """`day` is a Saturday or Sunday and no earlier weekend day of the history had data."""
    if day is None or day.weekday() < 5 or len(history_days) != len(history):
        return False
    return not any(v > 0 for d, v in zip(history_days, history, strict=True) if d.weekday() >= 5)


def volume_verdict(
    current: int,
    history: Sequence[float],
    *,
    day: dt.date | None = None,
    history_days: Sequence[dt.date] = (),
    noun: str = "instances",
    min_history: int = DEFAULT_MIN_HISTORY,
    min_ratio: float = DEFAULT_MIN_VOLUME_RATIO,
    floor_instances: int = DEFAULT_VOLUME_FLOOR_INSTANCES,
) -> Verdict:
    """Fails when `current` < min_ratio x median(history), once that median is at least `floor_instances`.
    `history_days` (the dates of `history`, same order) and `day` let an empty weekend pass unjudged."""
    hist = tuple(float(h) for h in history)
    median = statistics.median(hist) if hist else None
    if current == 0 and median == 0:
        return not_judged(
            current, median, hist, f"0 {noun}, and the median of the previous {len(hist)} partitions is 0 too"
        )
    if current == 0 and day is not None and quiet_weekend(day, hist, history_days):
        return not_judged(
            current, median, hist,
            f"0 {noun} on a {day:%A}; no earlier weekend day of the window had data (the baseline is "
            "the weekdays')",
        )  # fmt: skip
    if len(hist) < min_history or median is None:
        return not_judged(current, None, hist, f"only {len(hist)} earlier partitions (need {min_history})")
    threshold = min_ratio * median
    if median < floor_instances:
        return not_judged(
            current, median, hist,
            f"{current} {noun}; the median of the previous {len(hist)} partitions ({median:g}) is below "
            f"{floor_instances}, too few to judge",
        )  # fmt: skip
    if current < threshold:
        return Verdict(
            False, current, median, hist, threshold,
            f"{current} {noun} is below {min_ratio:g} x the median of the previous {len(hist)} partitions "
            f"({median:g})",
        )  # fmt: skip
    return Verdict(True, current, median, hist, threshold, f"{current} {noun} vs median {median:g}")


def duration_verdict(
    current_seconds: float,
    history: Sequence[float],
    *,
    min_history: int = DEFAULT_MIN_HISTORY,
    max_ratio: float = DEFAULT_MAX_DURATION_RATIO,
    floor_seconds: float = DEFAULT_DURATION_FLOOR_SECONDS,
) -> Verdict:
    """Fails when `current_seconds` > max(max_ratio x median(history), floor_seconds)."""
    hist = tuple(float(h) for h in history)
    if len(hist) < min_history:
        return not_judged(
            current_seconds, None, hist, f"only {len(hist)} earlier partitions (need {min_history})"
        )
    median = statistics.median(hist)
    threshold = max(max_ratio * median, floor_seconds)
    if current_seconds > threshold:
        return Verdict(
            False, current_seconds, median, hist, threshold,
            f"{current_seconds:.1f} s is more than {max_ratio:g} x the median of the previous {len(hist)} "
            f"partitions ({median:.1f} s)",
        )  # fmt: skip
    return Verdict(
        True, current_seconds, median, hist, threshold, f"{current_seconds:.1f} s vs median {median:.1f} s"
    )
