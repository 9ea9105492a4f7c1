"""Reconciliation sweep: a rolling re-inventory of older studies, compared with the archive instance by
instance, so that nothing a nightly run missed stays missed longer than a known bound (a storage scrub).

The nightly inventory sees the night's StudyDates and the older studies that visibly grew
(`backup/late.py`). What it cannot see (an instance added to an existing series on a source that reports
no counts, an instance deleted from the archive, a night whose run was green but whose source answered
short) the sweep finds: every night it lists the source's studies dated in its window (the `days` before
tonight, on days already backed up) and re-inventories a slice of them down to IMAGE level:

1. every study that the archive visibly lacks data of (absent there, or fewer instances where both report
   NumberOfStudyRelatedInstances: one STUDY-level C-FIND per 200 studies on the archive);
2. then the studies reconciled longest ago (never first, oldest StudyDate first), as many as it takes to
   cover the whole window within `nights` nights (window / nights a night), at most `max_studies`.

A study counts as reconciled when every instance the source holds is on the archive after the run (found
there, or moved by the sweep). The time of each study's last reconciliation is kept in a state file (UIDs
and times, no patient data), written after every batch, so a sweep that an outage interrupts resumes with
the studies it had not reached. Coverage: a study is overdue when it has not been reconciled within
`nights` nights (counted from the sweep's first night for studies never reconciled).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dicom_backup_dagster.dicom.find import FindSession, StudyRecord

from .inventory import study_order
from .listing import list_studies
from .manifest import ALREADY_ARCHIVED, MOVED, InstanceEntry, by_study

STATE_VERSION = 1
# A nightly schedule ticks a little later or earlier from night to night: half a day of grace before a
# study counts as overdue.
GRACE = dt.timedelta(hours=12)


@dataclass
class SweepState:
    """When the sweep first ran, and when each study was last reconciled (aware datetimes)."""

    started: dt.datetime
    reconciled: dict[str, dt.datetime] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str], now: dt.datetime) -> SweepState:
        """The saved state, or a new one that starts `now` when there is none yet."""
        p = Path(path)
        if not p.exists():
            return cls(started=now)
        data = json.loads(p.read_text(encoding="utf-8"))
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{p}: unknown sweep state version {data.get('version')!r}")
        return cls(
            started=dt.datetime.fromisoformat(data["started"]),
            reconciled={uid: dt.datetime.fromisoformat(t) for uid, t in data["reconciled"].items()},
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Written to a temporary name and renamed: a crash leaves the previous state, never half of one."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": STATE_VERSION,
            "started": self.started.isoformat(),
            "reconciled": {uid: t.isoformat() for uid, t in sorted(self.reconciled.items())},
        }
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(json.dumps(data, indent=0), encoding="utf-8")
        os.replace(tmp, p)

    def last(self, study_uid: str) -> dt.datetime | None:
        return self.reconciled.get(study_uid)


def nightly_quota(window_studies: int, nights: int, max_studies: int) -> int:
    """Studies to reconcile a night so that the window is covered within `nights` nights."""
    return min(max_studies, math.ceil(window_studies / nights)) if window_studies else 0


def by_last_reconciled(studies: Iterable[StudyRecord], state: SweepState) -> list[StudyRecord]:
    """Never reconciled first, then least recently reconciled; oldest StudyDate first among equals."""

    def key(study: StudyRecord) -> tuple[bool, dt.datetime, tuple[str, str, str]]:
        last = state.last(study.study_instance_uid)
        return (last is not None, last or state.started, study_order(study))

    return sorted(studies, key=key)


def choose_slice(
    window: Sequence[StudyRecord],
    state: SweepState,
    *,
    quota: int,
    max_studies: int,
    visibly_changed: Iterable[str] = (),
) -> list[StudyRecord]:
    """Tonight's studies: the visibly changed ones (up to max_studies), then the least recently
    reconciled (never first, then oldest StudyDate) up to `quota` studies in all."""
    changed = set(visibly_changed)
    first = [s for s in window if s.study_instance_uid in changed][:max_studies]
    taken = {s.study_instance_uid for s in first}
    rest = by_last_reconciled((s for s in window if s.study_instance_uid not in taken), state)
    return first + rest[: max(0, quota - len(first))]


@dataclass(frozen=True)
class Coverage:
    """How much of the window the sweep has reconciled in time."""

    studies: int  # studies dated in the window, on days already backed up
    reconciled_in_cycle: int  # of those, reconciled within the last `nights` nights
    never: int  # never reconciled yet
    overdue: tuple[str, ...]  # not reconciled within `nights` nights (and the sweep is older than that)
    oldest: dt.datetime | None  # the least recent reconciliation among the window's studies
    nights_to_cover: int  # nights until every study not reconciled in this cycle is, at tonight's quota

    @property
    def percent(self) -> float:
        return round(100.0 * self.reconciled_in_cycle / self.studies, 1) if self.studies else 100.0


def coverage(
    window: Sequence[StudyRecord], state: SweepState, now: dt.datetime, nights: int, quota: int
) -> Coverage:
    cycle = dt.timedelta(days=nights)
    in_cycle = never = 0
    overdue: list[str] = []
    oldest: dt.datetime | None = None
    for study in window:
        last = state.last(study.study_instance_uid)
        if last is None:
            never += 1
        else:
            oldest = last if oldest is None or last < oldest else oldest
            if now - last <= cycle + GRACE:
                in_cycle += 1
                continue
        if now - (last or state.started) > cycle + GRACE:
            overdue.append(study.study_instance_uid)
    left = len(window) - in_cycle
    return Coverage(
        len(window), in_cycle, never, tuple(overdue), oldest, math.ceil(left / quota) if quota else 0
    )


def reconciled_studies(
    entries: Iterable[InstanceEntry], studies: Iterable[str] = ()
) -> tuple[list[str], dict[str, int]]:
    """Of an archived manifest of `studies`: the studies whose every instance is on the archive (a study
    the source listed without instances has nothing to reconcile), and per study the instances the
    archive had lacked (moved by this run, failed or deferred) where there were any."""
    done: list[str] = []
    lacking: dict[str, int] = {}
    seen: set[str] = set()
    for study_uid, group in by_study(entries):
        seen.add(study_uid)
        lacked = sum(1 for e in group if e.state != ALREADY_ARCHIVED)
        if lacked:
            lacking[study_uid] = lacked
        if all(e.state in (ALREADY_ARCHIVED, MOVED) for e in group):
            done.append(study_uid)
    done += [uid for uid in studies if uid not in seen]
    return done, lacking


def batches(studies: Sequence[StudyRecord], size: int) -> list[list[StudyRecord]]:
    return [list(studies[i : i + size]) for i in range(0, len(studies), size)]


def list_window(
    session: FindSession,
    first_day: dt.date,
    last_day: dt.date,
    *,
    extra_keys: Mapping[str, str] | None = None,
    cap: int | None = None,
    days_per_query: int = 7,
) -> list[StudyRecord]:
    """The source's studies dated first_day..last_day, listed `days_per_query` days at a time (a six-month
    window in one answer is the answer a capped PACS cuts short), each part split below the source's
    C-FIND `cap` where it reaches it (listing.list_studies)."""
    out: dict[str, StudyRecord] = {}
    start = first_day
    while start <= last_day:
        end = min(last_day, start + dt.timedelta(days=days_per_query - 1))
        for study in list_studies(session, start, end, extra_keys=extra_keys, cap=cap).studies:
            out.setdefault(study.study_instance_uid, study)
        start = end + dt.timedelta(days=1)
    return sorted(out.values(), key=study_order)
