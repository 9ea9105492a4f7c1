"""Clinic hours: the weekly window in which bulk work may load a clinical source (a source's bulk_hours).

A window is a list of entries in the site's wall-clock time, each in one of two forms:

- ``"Mon-Fri 19:00-07:00"``: on each listed day, from the first time to the second. An end at or before
  the start runs overnight into the next day ("Fri 19:00-07:00" ends Saturday 07:00): the days are the
  days a window *starts*. ``"24:00"`` ends a day (``"Sat-Sun 00:00-24:00"``). Days: Mon..Sun or full
  names, ranges (``Mon-Fri``, ``Fri-Mon``), lists (``Mon,Wed``), ``daily``, ``weekdays``, ``weekends``;
  no days means every day (``"19:00-07:00"``).
- ``"Fri 19:00 - Mon 07:00"``: one span across days (a whole weekend, Monday early morning included).

Times are wall-clock in the site timezone (zoneinfo): on a daylight-saving day a 19:00-07:00 window lasts
11 or 13 hours, and a start that does not exist that day (02:30 when clocks jump 02:00 -> 03:00) opens at
the first existing minute after it. No entries (the default) means always allowed.

Pure: no Dagster here (defs/hours.py does the pausing).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass

from dicom_backup_dagster.backup.cron import cron_fields

__all__ = ["ALWAYS", "WorkWindow", "WorkWindowError", "parse_work_window"]

_DAY = 24 * 3600
_WEEK = 7 * _DAY
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_GROUPS = {
    "daily": tuple(range(7)),
    "everyday": tuple(range(7)),
    "weekdays": tuple(range(5)),
    "weekends": (5, 6),
    "weekend": (5, 6),
}
EXAMPLE = 'bulk_hours = ["Mon-Thu 19:00-07:00", "Fri 19:00 - Mon 07:00"]'

_TIME = r"\d{1,2}:\d{2}"
_SPAN_RE = re.compile(rf"^(?P<d1>[A-Za-z]+)\s+(?P<t1>{_TIME})\s*-\s*(?P<d2>[A-Za-z]+)\s+(?P<t2>{_TIME})$")
_DAILY_RE = re.compile(rf"^(?:(?P<days>[A-Za-z][A-Za-z ,\-]*?)\s+)?(?P<t1>{_TIME})\s*-\s*(?P<t2>{_TIME})$")


class WorkWindowError(ValueError):
    """A bulk_hours entry that cannot be read; the message quotes it and says how to write it."""


def _day(token: str, entry: str) -> int:
    word = token.strip().lower()
    for index, (short, full) in enumerate(zip(_DAY_NAMES, _FULL_NAMES, strict=True)):
        if word in (short.lower(), full):
            return index
    raise WorkWindowError(
        f"{entry!r}: {token.strip()!r} is not a day; use Mon, Tue, Wed, Thu, Fri, Sat, Sun (or full names), "
        "ranges like Mon-Fri, lists like Mon,Wed, or daily / weekdays / weekends"
    )


def _days(text: str, entry: str) -> tuple[int, ...]:
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise WorkWindowError(f"{entry!r}: empty day in the list {text!r}; write e.g. Mon,Wed,Fri")
        group = _GROUPS.get(item.lower().replace(" ", ""))
        if group is not None:
            out.extend(group)
            continue
        first, dash, last = item.partition("-")
        if not dash:
            out.append(_day(first, entry))
            continue
        a, b = _day(first, entry), _day(last, entry)
        out.extend((a + i) % 7 for i in range((b - a) % 7 + 1))  # Fri-Mon wraps over the weekend
    return tuple(sorted(set(out)))


def _seconds(text: str, entry: str, *, end: bool) -> int:
    hours, _, minutes = text.partition(":")
    h, m = int(hours), int(minutes)
    if (h, m) == (24, 0) and end:
        return _DAY
    if not (0 <= h <= 23 and 0 <= m <= 59):
        allowed = "00:00 to 24:00" if end else "00:00 to 23:59"
        raise WorkWindowError(f"{entry!r}: {text!r} is not a time of day; use 24-hour HH:MM from {allowed}")
    return h * 3600 + m * 60


def _hhmm(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


@dataclass(frozen=True)
class _Entry:
    """One entry: on `days` from `start` for `length` seconds (a span entry has one day)."""

    days: tuple[int, ...]
    start: int  # seconds after midnight of each day
    length: int  # seconds, 1 .. one week
    span_end_day: int | None = None  # set for "Fri 19:00 - Mon 07:00"

    def intervals(self) -> Iterable[tuple[int, int]]:
        """(start, length) in seconds after Monday 00:00 of the wall-clock week."""
        for day in self.days:
            yield day * _DAY + self.start, self.length

    def describe(self) -> str:
        if self.span_end_day is not None:
            end = (self.start + self.length) % _DAY
            return (
                f"{_DAY_NAMES[self.days[0]]} {_hhmm(self.start)} to "
                f"{_DAY_NAMES[self.span_end_day]} {_hhmm(end)}"
            )
        days = set(self.days)
        whole_day = self.start == 0 and self.length == _DAY
        if days == {5, 6} and whole_day:
            return "all weekend"
        if len(days) == 7 and whole_day:
            return "at any time"
        named = (
            "every day"
            if len(days) == 7
            else "weekdays"
            if days == set(range(5))
            else "weekends"
            if days == {5, 6}
            else _day_list(self.days)
        )
        if whole_day:
            return f"{named} all day"
        end = self.start + self.length
        if end > _DAY:
            return f"{named} {_hhmm(self.start)}-{_hhmm(end - _DAY)} next day"
        return f"{named} {_hhmm(self.start)}-{_hhmm(end)}"


def _day_list(days: tuple[int, ...]) -> str:
    """Mon-Wed, Fri: runs of consecutive days as ranges."""
    runs: list[list[int]] = []
    for day in days:
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ", ".join(
        _DAY_NAMES[r[0]] if len(r) == 1 else f"{_DAY_NAMES[r[0]]}-{_DAY_NAMES[r[-1]]}" for r in runs
    )


def _parse_entry(entry: str) -> _Entry:
    text = " ".join(entry.split())
    span = _SPAN_RE.match(text)
    if span:
        d1, d2 = _day(span["d1"], entry), _day(span["d2"], entry)
        t1, t2 = _seconds(span["t1"], entry, end=False), _seconds(span["t2"], entry, end=True)
        start, stop = d1 * _DAY + t1, d2 * _DAY + t2
        length = (stop - start) % _WEEK
        if length == 0:
            raise WorkWindowError(
                f"{entry!r}: starts and ends at the same time; for no restriction remove bulk_hours"
            )
        return _Entry((d1,), t1, length, span_end_day=d2 if t2 < _DAY else (d2 + 1) % 7)
    daily = _DAILY_RE.match(text)
    if not daily:
        raise WorkWindowError(
            f'{entry!r} is not a window; write DAYS HH:MM-HH:MM (e.g. "Mon-Fri 19:00-07:00") or '
            'DAY HH:MM - DAY HH:MM (e.g. "Fri 19:00 - Mon 07:00"), 24-hour times in the site timezone'
        )
    days = _days(daily["days"], entry) if daily["days"] else tuple(range(7))
    t1, t2 = _seconds(daily["t1"], entry, end=False), _seconds(daily["t2"], entry, end=True)
    if t1 == t2:
        raise WorkWindowError(
            f"{entry!r}: starts and ends at {daily['t1']}; for a whole day write 00:00-24:00"
        )
    # An end at or before the start crosses midnight into the next day.
    return _Entry(days, t1, t2 - t1 if t2 > t1 else _DAY - t1 + t2)


@dataclass(frozen=True)
class WorkWindow:
    """When bulk work may run against a source, in the site timezone; no entries: always."""

    entries: tuple[_Entry, ...] = ()
    timezone: str = "UTC"

    @property
    def always(self) -> bool:
        return not self.entries

    @property
    def tzinfo(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def _week_seconds(self, when: dt.datetime) -> int:
        if when.tzinfo is None:
            raise ValueError("WorkWindow needs a timezone-aware time (e.g. datetime.now(timezone.utc))")
        local = when.astimezone(self.tzinfo)
        return local.weekday() * _DAY + local.hour * 3600 + local.minute * 60 + local.second

    def allows(self, now: dt.datetime) -> bool:
        """Whether bulk work may run at `now` (aware), judged by the site's wall clock."""
        if self.always:
            return True
        second = self._week_seconds(now)
        return any((second - start) % _WEEK < length for e in self.entries for start, length in e.intervals())

    def next_opening(self, now: dt.datetime) -> dt.datetime | None:
        """The first moment at or after `now` the window allows, in the site timezone; None if it allows
        `now` already (nothing to wait for)."""
        if self.allows(now):
            return None
        tz = self.tzinfo
        today = now.astimezone(tz).date()
        candidates: list[dt.datetime] = []
        for offset in range(-1, 9):
            day = today + dt.timedelta(days=offset)
            for entry in self.entries:
                if day.weekday() in entry.days:
                    wall = dt.datetime.combine(day, dt.time(), tzinfo=tz) + dt.timedelta(seconds=entry.start)
                    # Normalise: a start inside a spring-forward gap lands after it.
                    candidates.append(wall.astimezone(dt.UTC).astimezone(tz))
            candidates.extend(_transitions(day, tz))  # the wall clock may jump into the window
        allowed = [c for c in candidates if c >= now and self.allows(c)]
        if not allowed:  # cannot happen for a parsed window: every entry allows some time each week
            raise ValueError(f"bulk_hours {self.describe()} never opens")
        return min(allowed)

    def closed_tick(self, schedule: str) -> dt.datetime | None:
        """A time at which the cron ``schedule`` fires while the window is closed, in a week without DST
        changes (north), or None; the day-of-month and month fields are not considered."""
        minutes, hours, _day, _month, weekdays = cron_fields(schedule)
        monday = dt.datetime(2026, 1, 5, tzinfo=self.tzinfo)
        ticks = [
            monday + dt.timedelta(days=day, hours=hour, minutes=minute)
            for day in range(7)
            if (day + 1) % 7 in {d % 7 for d in weekdays}  # cron: 0 and 7 are Sunday
            for hour in sorted(hours)
            for minute in sorted(minutes)
        ]
        return next((tick for tick in ticks if not self.allows(tick)), None)

    def describe(self) -> str:
        """The window in an operator's words, e.g. 'weekdays 19:00-07:00 next day and all weekend,
        America/New_York'."""
        if self.always:
            return "at any time (no bulk_hours set)"
        parts = [e.describe() for e in self.entries]
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{text}, {self.timezone}"


def _transitions(day: dt.date, tz: zoneinfo.ZoneInfo) -> list[dt.datetime]:
    """The instant(s) the UTC offset changes during local `day` (DST), found by bisection to the second."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(dt.UTC)
    stop = start + dt.timedelta(days=1, hours=2)
    if start.astimezone(tz).utcoffset() == stop.astimezone(tz).utcoffset():
        return []
    low, high = start, stop
    while high - low > dt.timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset():
            low = middle
        else:
            high = middle
    return [high.replace(microsecond=0).astimezone(tz)]


ALWAYS = WorkWindow()


def parse_work_window(spec: str | Iterable[str] | None, timezone: str = "UTC") -> WorkWindow:
    """A window from bulk_hours (one entry or a list; None or empty: always). Raises WorkWindowError
    naming the entry and the fix."""
    if spec is None:
        return WorkWindow((), timezone)
    entries = [spec] if isinstance(spec, str) else list(spec)
    parsed = []
    for entry in entries:
        if not isinstance(entry, str):
            raise WorkWindowError(f"{entry!r} is not a string; write each window in quotes, e.g. {EXAMPLE}")
        parsed.append(_parse_entry(entry))
    try:
        zoneinfo.ZoneInfo(timezone)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError) as exc:
        raise WorkWindowError(
            f"unknown time zone {timezone!r}; use an IANA name like America/New_York"
        ) from exc
    return WorkWindow(tuple(parsed), timezone)
