"""Runs that cover several daily partitions: the dates a run queries, and which partition counts what.

A nightly run covers one day (its partition) and looks back `lookback_days` for late series on older
studies. A backfill run may cover a range of days (Dagster's BackfillPolicy.multi_run); it queries the
whole range in one C-FIND and its metadata is split per partition so that every day keeps its own figures:

- `attribute`: each instance is counted in exactly one partition of the run: its StudyDate's, or the
  first partition for studies dated before the range (the look-back), or the last partition for studies
  without a usable date. Summing a figure over partitions therefore gives the run's total, never more.
- `dated`: instances whose StudyDate is the partition's own day, whatever run found them. This is the
  volume a day really produced, the same whether the day was backed up alone or inside a range, and what
  volume_vs_baseline compares (docs/decisions/monitoring.md).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from dicom_backup_dagster.backup.inventory import window
from dicom_backup_dagster.backup.manifest import InstanceEntry


@dataclass(frozen=True)
class RunDays:
    """The partitions (ISO dates, ascending) one run covers."""

    partitions: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.partitions:
            raise ValueError("a run covers at least one partition")
        if list(self.partitions) != sorted(set(self.partitions)):
            raise ValueError(f"partitions must be distinct and ascending: {self.partitions}")

    @property
    def first(self) -> dt.date:
        return dt.date.fromisoformat(self.partitions[0])

    @property
    def last(self) -> dt.date:
        return dt.date.fromisoformat(self.partitions[-1])

    @property
    def label(self) -> str:
        """A folder name for the run's manifests: the day, or `first..last` for a range."""
        if len(self.partitions) == 1:
            return self.partitions[0]
        return f"{self.partitions[0]}..{self.partitions[-1]}"

    def uid_limit(self, max_uids_per_run: int) -> int:
        """What one run of these days may retrieve: `max_uids_per_run` per day, so a ranged backfill run
        takes what the same days' nightly runs would have taken (and defers no more)."""
        return max_uids_per_run * len(self.partitions)

    def study_dates(self, lookback_days: int) -> tuple[dt.date, dt.date]:
        """First and last StudyDate to query: the range, and the look-back before its first day."""
        return window(self.first, lookback_days)[0], self.last

    def attribute(self, study_date: str | None) -> str:
        """The partition that counts an instance with this StudyDate (YYYYMMDD, as the source gave it)."""
        day = iso_date(study_date)
        if day is None:
            return self.partitions[-1]
        if day <= self.partitions[0]:
            return self.partitions[0]
        return day if day in self.partitions else self.partitions[-1]


@dataclass
class PartitionCounts:
    """What one partition of a run counts: instances attributed to it by state, and instances dated on it."""

    found: int = 0
    dated: int = 0
    states: Counter[str] = field(default_factory=Counter)


def counts_by_partition(entries: Iterable[InstanceEntry], days: RunDays) -> dict[str, PartitionCounts]:
    counts = {p: PartitionCounts() for p in days.partitions}
    for entry in entries:
        own = counts[days.attribute(entry.study_date)]
        own.found += 1
        own.states[entry.state] += 1
        dated = counts.get(iso_date(entry.study_date) or "")
        if dated is not None:
            dated.dated += 1
    return counts


def iso_date(study_date: str | None) -> str | None:
    if not study_date or len(study_date) != 8 or not study_date.isdigit():
        return None
    try:
        return dt.date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:])).isoformat()
    except ValueError:
        return None
