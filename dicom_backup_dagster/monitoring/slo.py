"""Backup SLOs per source, from the day-partitioned records the exporter folds (no dagster).

A day of a source is *complete and verified* when its latest `<source>/archived` materialization has
nothing failed or deferred, `complete_in_archive` and `content_verified` passed for that day, and no other
ERROR check of the source failed for it (WARN checks, such as the baselines, do not count). The SLIs:

- recovery point: seconds since the end (midnight, site time) of the newest complete and verified day: the
  data a loss of the sources now would leave unprotected. +Inf while no day is verified.
- nights verified: of the last N nights whose deadline has passed (day D's deadline is D+1 at
  `slo_verified_by_hour`, site time), those that became complete and verified by their deadline and still
  are. Nights before the source's first recorded day (or `first_day`) are not counted, so a new source
  does not start in breach. Served for the last night, the last 7 nights and the SLO window.

Targets come from the site settings (`slo_*`, config/models.py) and are served beside the SLIs, so the
Prometheus rules compare with them instead of repeating numbers (docs/decisions/monitoring.md "SLOs").
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

REQUIRED_CHECKS = ("complete_in_archive", "content_verified")
WINDOWS = {"night": 1, "week": 7}  # plus "slo": the configured window


@dataclass(frozen=True)
class SloTargets:
    """The site's SLO settings (config Settings.slo_*), and what the nights are counted from."""

    timezone: str = "UTC"
    recovery_point_hours: float = 36.0
    verified_by_hour: int = 7
    target_ratio: float = 0.95
    window_nights: int = 30
    first_day: dt.date = dt.date(2020, 1, 1)

    @classmethod
    def from_settings(cls, settings: Any) -> SloTargets:
        return cls(
            timezone=settings.timezone,
            recovery_point_hours=settings.slo_recovery_point_hours,
            verified_by_hour=settings.slo_verified_by_hour,
            target_ratio=settings.slo_target_ratio,
            window_nights=settings.slo_window_nights,
            first_day=settings.first_day,
        )

    @property
    def windows(self) -> dict[str, int]:
        return {**WINDOWS, "slo": self.window_nights}


@dataclass
class DayState:
    complete: bool | None = None  # None: no archived materialization for the day yet
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)  # name -> (passed, severity)
    verified_at: float | None = None  # when the day first became complete and verified

    @property
    def verified(self) -> bool:
        if not self.complete or any(name not in self.checks for name in REQUIRED_CHECKS):
            return False
        return all(passed or severity != "ERROR" for passed, severity in self.checks.values())


@dataclass(frozen=True)
class SloFigures:
    recovery_point_seconds: float
    counted: Mapping[str, int]  # window -> nights counted
    verified: Mapping[str, int]  # window -> nights verified by their deadline

    def ratio(self, window: str = "slo") -> float | None:
        return self.verified[window] / self.counted[window] if self.counted[window] else None


def _day(partition: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(partition) if partition else None
    except ValueError:
        return None  # not a day partition (the sweep, the on-demand backup)


@dataclass
class Nights:
    """Per (source, day) state, folded from events in storage order."""

    days: dict[tuple[str, dt.date], DayState] = field(default_factory=dict)

    def _update(self, source: str, partition: str | None, timestamp: float, change: Any) -> None:
        day = _day(partition)
        if day is None:
            return
        state = self.days.setdefault((source, day), DayState())
        change(state)
        if state.verified_at is None and state.verified:
            state.verified_at = timestamp

    def archived(
        self, source: str, partition: str | None, timestamp: float, metadata: Mapping[str, Any]
    ) -> None:
        def change(state: DayState) -> None:
            state.complete = not metadata.get("failed") and not metadata.get("deferred")

        self._update(source, partition, timestamp, change)

    def check(
        self, source: str, partition: str | None, name: str, passed: bool, severity: str, timestamp: float
    ) -> None:
        def change(state: DayState) -> None:
            state.checks[name] = (passed, severity)

        self._update(source, partition, timestamp, change)

    def sources(self) -> set[str]:
        return {source for source, _ in self.days}

    def figures(
        self, sources: Iterable[str], targets: SloTargets, now: float, since: dt.date | None = None
    ) -> dict[str, SloFigures]:
        """Per source, as of `now`; nights are counted from `since` (default: the first recorded day)."""
        tz = zoneinfo.ZoneInfo(targets.timezone)
        local = dt.datetime.fromtimestamp(now, tz)
        # The latest night whose deadline (the next day at verified_by_hour) has passed.
        last = local.date() - dt.timedelta(days=1 if local.hour >= targets.verified_by_hour else 2)
        out = {}
        for source in sorted(set(sources)):
            states = {day: s for (src, day), s in self.days.items() if src == source}
            verified = [day for day, s in states.items() if s.verified]
            if verified:
                end = dt.datetime.combine(max(verified) + dt.timedelta(days=1), dt.time(), tz).timestamp()
                recovery = max(0.0, now - end)
            else:
                recovery = math.inf
            start = max([targets.first_day, since or min(states, default=last + dt.timedelta(days=1))])
            counted, on_time = {}, {}
            for window, nights in targets.windows.items():
                days = [last - dt.timedelta(days=i) for i in range(nights)]
                days = [d for d in days if d >= start]
                counted[window] = len(days)
                on_time[window] = sum(1 for d in days if _on_time(states.get(d), d, targets, tz))
            out[source] = SloFigures(recovery, counted, on_time)
        return out


def _on_time(state: DayState | None, day: dt.date, targets: SloTargets, tz: dt.tzinfo) -> bool:
    if state is None or state.verified_at is None or not state.verified:
        return False
    deadline = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(targets.verified_by_hour), tz)
    return state.verified_at <= deadline.timestamp()
