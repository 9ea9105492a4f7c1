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
being wrong.
"""

from __future__ import annotations

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

    def volume(self, current: float, history: Sequence[float]) -> Verdict:
        return volume_verdict(
            int(current),
            history,
            min_history=self.min_history,
            min_ratio=self.min_volume_ratio,
            floor_instances=self.volume_floor_instances,
        )

    def duration(self, current_seconds: float, history: Sequence[float]) -> Verdict:
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


def volume_verdict(
    current: int,
    history: Sequence[float],
    *,
    min_history: int = DEFAULT_MIN_HISTORY,
    min_ratio: float = DEFAULT_MIN_VOLUME_RATIO,
    floor_instances: int = DEFAULT_VOLUME_FLOOR_INSTANCES,
) -> Verdict:
    """Fails when `current` < min_ratio x median(history), once that median is at least `floor_instances`."""
    hist = tuple(float(h) for h in history)
    if len(hist) < min_history:
        return Verdict(
            True, current, None, hist, None, f"only {len(hist)} earlier partitions (need {min_history})"
        )
    median = statistics.median(hist)
    threshold = min_ratio * median
    if median < floor_instances:
        return Verdict(
            True, current, median, hist, None,
            f"{current} instances; the median of the previous {len(hist)} partitions ({median:g}) is below "
            f"{floor_instances}, too few to judge",
        )  # fmt: skip
    if current < threshold:
        return Verdict(
            False, current, median, hist, threshold,
            f"{current} instances is below {min_ratio:g} x the median of the previous {len(hist)} partitions "
            f"({median:g})",
        )  # fmt: skip
    return Verdict(True, current, median, hist, threshold, f"{current} instances vs median {median:g}")


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
        return Verdict(
            True,
            current_seconds,
            None,
            hist,
            None,
            f"only {len(hist)} earlier partitions (need {min_history})",
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
