"""Pure helpers of the sandbox night (the night itself runs in tests/test_sandbox_night.py)."""

import datetime as dt

from dicom_backup_dagster.sandbox.night import date_ranges


def test_night_backfills_only_the_days_with_data() -> None:
    days = [dt.date(2026, 1, d) for d in (9, 5, 6, 7, 12, 14, 13, 6)]
    assert date_ranges(days) == [
        ("2026-01-05", "2026-01-07"),
        ("2026-01-09", "2026-01-09"),
        ("2026-01-12", "2026-01-14"),
    ]
    assert date_ranges([]) == []
