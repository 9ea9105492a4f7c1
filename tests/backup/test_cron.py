"""Cron fields as Dagster schedules take them, and which nightly ticks fall outside a source's bulk hours."""

from __future__ import annotations

import pytest

from dicom_backup_dagster.backup.cron import cron_fields
from dicom_backup_dagster.backup.hours import parse_work_window


def test_fields_ranges_steps_lists_and_names() -> None:
    minutes, hours, days, months, weekdays = cron_fields("5-59/20 8-10 1,15 jan-mar MON-fri")
    assert (minutes, hours, days) == ({5, 25, 45}, {8, 9, 10}, {1, 15})
    assert (months, weekdays) == ({1, 2, 3}, {1, 2, 3, 4, 5})
    assert cron_fields("*/15 * * * 7")[0] == {0, 15, 30, 45} and cron_fields("0 0 * * 7")[4] == {7}
    assert cron_fields("5/30 * * * *")[0] == {5, 35}  # from 5 every 30


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("30 1 * *", "4 fields; a cron expression needs 5"),
        ("61 1 * * *", "minute value '61' is outside 0-59"),
        ("*/0 * * * *", "step '0' in the minute field must be a positive integer"),
        ("5-1 * * * *", "minute range '5-1' runs backwards"),
        ("1- * * * *", "minute field item '1-' is malformed"),
        ("0 0 * * funday", "day of week value 'funday' is outside 0-7"),
    ],
)
def test_bad_expressions_say_what(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cron_fields(expression)


def test_closed_tick_finds_a_nightly_tick_outside_the_window() -> None:
    window = parse_work_window(["Mon-Fri 19:00-07:00"], "America/New_York")
    assert window.closed_tick("30 1 * * 2-6") is None  # Tuesday to Saturday 01:30: the night before opened
    tick = window.closed_tick("30 1 * * *")  # Monday 01:30 follows Sunday, which has no window
    assert tick is not None and f"{tick:%a %H:%M}" == "Mon 01:30"
    noon = window.closed_tick("0 12 * * 0,7")
    assert noon is not None and f"{noon:%a %H:%M}" == "Sun 12:00"
