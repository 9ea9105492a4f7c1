"""5-field cron expressions (minute hour day-of-month month day-of-week), as Dagster schedules take them:
the values each field matches, or a ValueError saying what is wrong. Pure: no Dagster here."""

from __future__ import annotations

LABELS = ("minute", "hour", "day of month", "month", "day of week")
BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))  # day of week: 0 and 7 are Sunday
_NAMES = {
    3: ["", "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}


def _number(token: str, index: int) -> int:
    label, (low, high) = LABELS[index], BOUNDS[index]
    names = _NAMES.get(index, [])
    value = int(token) if token.isdigit() else names.index(token.lower()) if token.lower() in names else None
    if value is None or not low <= value <= high:
        raise ValueError(f"{label} value {token!r} is outside {low}-{high}")
    return value


def cron_values(part: str, index: int) -> set[int]:
    """The values one field (``index`` 0..4) of a cron expression matches."""
    label, (low, high) = LABELS[index], BOUNDS[index]
    out: set[int] = set()
    for item in part.split(","):
        base, _, step = item.partition("/")
        first, dash, last = base.partition("-")
        if step and (not step.isdigit() or int(step) < 1):
            raise ValueError(f"step {step!r} in the {label} field must be a positive integer")
        if base != "*" and (not first or (dash and not last)):
            raise ValueError(f"{label} field item {item!r} is malformed")
        start = low if base == "*" else _number(first, index)
        end = high if base == "*" or (step and not dash) else _number(last if dash else first, index)
        if start > end:
            raise ValueError(f"{label} range {base!r} runs backwards")
        out.update(range(start, end + 1, int(step or 1)))  # "5/15": from 5 every 15
    return out


def cron_fields(expression: str) -> list[set[int]]:
    """The values of each of the five fields."""
    parts = expression.split()
    if len(parts) != 5:
        raise ValueError(f"{len(parts)} fields; a cron expression needs 5 (minute hour day month weekday)")
    return [cron_values(part, index) for index, part in enumerate(parts)]
