"""bulk_hours windows: parsing, midnight crossing, weekends, daylight-saving days, errors."""

import datetime as dt
import zoneinfo

import pytest

from dicom_backup_dagster.backup.hours import ALWAYS, WorkWindowError, parse_work_window

NY = "America/New_York"
TZ = zoneinfo.ZoneInfo(NY)
CLINIC = ["Mon-Fri 19:00-07:00", "Sat-Sun 00:00-24:00"]


def at(year: int, month: int, day: int, hour: int, minute: int = 0, fold: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=TZ, fold=fold)


def test_unset_window_always_allows_and_never_waits() -> None:
    now = at(2026, 12, 2, 10)  # a Wednesday morning
    for window in (ALWAYS, parse_work_window(None, NY), parse_work_window([], NY)):
        assert window.always
        assert window.allows(now)
        assert window.next_opening(now) is None
    assert ALWAYS.describe() == "at any time (no bulk_hours set)"


@pytest.mark.parametrize(
    ("when", "allowed"),
    [
        (at(2026, 12, 2, 6, 59), True),  # Wed early morning: Tuesday's night window
        (at(2026, 12, 2, 7, 0), False),  # end is exclusive
        (at(2026, 12, 2, 12, 0), False),
        (at(2026, 12, 2, 18, 59), False),
        (at(2026, 12, 2, 19, 0), True),  # start is inclusive
        (at(2026, 12, 5, 6, 0), True),  # Sat 06:00: Friday night and the weekend entry
        (at(2026, 12, 5, 15, 0), True),  # Sat afternoon
        (at(2026, 12, 6, 23, 59), True),  # Sun night
        (at(2026, 12, 7, 3, 0), False),  # Mon 03:00: days name the start; no Sunday-night entry here
    ],
)
def test_weeknights_and_weekend(when: dt.datetime, allowed: bool) -> None:
    assert parse_work_window(CLINIC, NY).allows(when) is allowed


def test_judged_by_site_wall_clock_whatever_the_timezone_of_now() -> None:
    window = parse_work_window(CLINIC, NY)
    noon_utc = dt.datetime(2026, 12, 2, 17, 0, tzinfo=dt.UTC)  # 12:00 in New York
    assert not window.allows(noon_utc)
    assert window.allows(noon_utc + dt.timedelta(hours=7))  # 19:00 in New York
    with pytest.raises(ValueError, match="timezone-aware"):
        window.allows(dt.datetime(2026, 12, 2, 12, 0))


def test_next_opening_is_this_evening_then_none_inside() -> None:
    window = parse_work_window(CLINIC, NY)
    opening = window.next_opening(at(2026, 12, 2, 13, 48))
    assert opening == at(2026, 12, 2, 19, 0)
    assert opening is not None and opening.tzinfo is not None
    assert window.next_opening(at(2026, 12, 2, 19, 0)) is None


def test_span_entry_covers_the_weekend_including_monday_morning() -> None:
    window = parse_work_window(["Mon-Thu 19:00-07:00", "Fri 19:00 - Mon 07:00"], NY)
    assert window.allows(at(2026, 12, 7, 3, 0))  # Mon 03:00
    assert not window.allows(at(2026, 12, 7, 7, 0))
    assert not window.allows(at(2026, 12, 4, 18, 0))  # Fri before the span
    assert window.next_opening(at(2026, 12, 4, 12, 0)) == at(2026, 12, 4, 19, 0)
    assert window.describe() == "Mon-Thu 19:00-07:00 next day and Fri 19:00 to Mon 07:00, America/New_York"


def test_span_wrapping_the_end_of_the_week() -> None:
    window = parse_work_window("Sun 20:00 - Mon 06:00", "UTC")
    utc = dt.UTC
    assert window.allows(dt.datetime(2026, 12, 6, 23, 0, tzinfo=utc))  # Sunday
    assert window.allows(dt.datetime(2026, 12, 7, 5, 59, tzinfo=utc))  # Monday
    assert not window.allows(dt.datetime(2026, 12, 7, 6, 0, tzinfo=utc))
    assert window.next_opening(dt.datetime(2026, 12, 7, 6, 0, tzinfo=utc)) == dt.datetime(
        2026, 12, 13, 20, 0, tzinfo=utc
    )


def test_day_syntax_lists_ranges_groups_and_every_day() -> None:
    assert (
        parse_work_window("Mon,Wed, Fri-Sat 08:00-09:00").describe() == "Mon, Wed, Fri-Sat 08:00-09:00, UTC"
    )
    assert parse_work_window("Fri-Mon 22:00-23:00").describe() == "Mon, Fri-Sun 22:00-23:00, UTC"
    assert parse_work_window("weekends 00:00-24:00").describe() == "all weekend, UTC"
    assert parse_work_window("19:00-07:00").describe() == "every day 19:00-07:00 next day, UTC"
    assert parse_work_window("daily 00:00-24:00").describe() == "at any time, UTC"
    assert parse_work_window("Saturday 8:00-12:00").describe() == "Sat 08:00-12:00, UTC"
    window = parse_work_window("WEEKDAYS 12:00-13:00", NY)
    assert window.allows(at(2026, 12, 4, 12, 30)) and not window.allows(at(2026, 12, 5, 12, 30))


def test_fall_back_night_is_an_hour_longer() -> None:
    # 2026-11-01 01:00-02:00 happens twice in New York; the night still ends at 07:00 wall time, 13 h on.
    window = parse_work_window("Sat 19:00-07:00", NY)
    opened = at(2026, 10, 31, 19, 0).astimezone(dt.UTC)
    assert window.allows(at(2026, 11, 1, 1, 30, fold=1))  # the second 01:30
    assert window.allows(opened + dt.timedelta(hours=12, minutes=59))  # 06:59 EST
    assert not window.allows(opened + dt.timedelta(hours=13))  # 07:00 EST


def test_spring_forward_start_in_the_gap_opens_when_clocks_jump() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT: 02:30 does not exist; the window opens at 03:00 EDT (07:00 UTC).
    window = parse_work_window("Sun 02:30-05:00", NY)
    opening = window.next_opening(at(2026, 3, 8, 0, 0))
    assert opening is not None
    assert opening.astimezone(dt.UTC) == dt.datetime(2026, 3, 8, 7, 0, tzinfo=dt.UTC)
    assert opening.utcoffset() == dt.timedelta(hours=-4)


def test_next_opening_across_spring_forward_keeps_wall_time() -> None:
    window = parse_work_window(["Mon-Fri 19:00-07:00"], NY)
    opening = window.next_opening(at(2026, 3, 7, 12, 0))  # Saturday before the change
    assert opening == at(2026, 3, 9, 19, 0)  # Monday 19:00 EDT, not 18:00 or 20:00
    assert opening is not None and opening.utcoffset() == dt.timedelta(hours=-4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("Mon-Fri 7pm-7am", "is not a window; write DAYS HH:MM-HH:MM"),
        ("Mon-Fri 19:00", "is not a window"),
        ("Mon-Fry 19:00-07:00", "'Fry' is not a day; use Mon, Tue"),
        ("Mon-Fri 25:00-07:00", "'25:00' is not a time of day; use 24-hour HH:MM from 00:00 to 23:59"),
        ("Mon-Fri 19:00-07:60", "'07:60' is not a time of day; use 24-hour HH:MM from 00:00 to 24:00"),
        ("Mon 24:00-07:00", "'24:00' is not a time of day"),
        ("Mon 07:00-07:00", "for a whole day write 00:00-24:00"),
        ("Fri 19:00 - Fri 19:00", "starts and ends at the same time"),
        ("Mon,,Tue 01:00-02:00", "empty day in the list"),
    ],
)
def test_bad_entries_say_what_and_how(spec: str, message: str) -> None:
    with pytest.raises(WorkWindowError, match=message) as caught:
        parse_work_window([spec], NY)
    assert repr(spec) in str(caught.value)


def test_bad_types_and_timezone() -> None:
    with pytest.raises(WorkWindowError, match="is not a string; write each window in quotes"):
        parse_work_window([19], NY)  # type: ignore[list-item]
    with pytest.raises(WorkWindowError, match="unknown time zone 'Mars/Base'"):
        parse_work_window(CLINIC, "Mars/Base")


def test_sunday_night_crosses_into_monday_and_spacing_is_forgiven() -> None:
    utc = dt.UTC
    window = parse_work_window(["Sun 22:00-02:00", "Mon - Fri 12:00-13:00", "Fri 19:00-Sat 07:00"], "UTC")
    assert window.allows(dt.datetime(2026, 12, 7, 1, 0, tzinfo=utc))  # Monday 01:00, from Sunday
    assert not window.allows(dt.datetime(2026, 12, 7, 2, 0, tzinfo=utc))
    assert window.allows(dt.datetime(2026, 12, 4, 12, 30, tzinfo=utc))  # Friday noon
    assert window.allows(dt.datetime(2026, 12, 5, 6, 0, tzinfo=utc))  # Saturday 06:00, from the span
    assert window.describe() == (
        "Sun 22:00-02:00 next day, weekdays 12:00-13:00 and Fri 19:00 to Sat 07:00, UTC"
    )
