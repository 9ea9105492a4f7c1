"""The lifecycle of every alert: trigger, repeats (and failures folded into a cause), acknowledgements and
resolutions, without patient data.

Pure Python: one JSON value in the key-value store the incident book uses (Dagster's run storage), so every
sensor process and the exporter read the same ledger. defs/alerts.py also writes each evaluation's events
as an observation of the `alerts/history` asset, with tables, so the Dagster UI shows them.

An entry holds only what an `Alert` holds after its own filtering (names, partitions, channel names, the
runbook link): nothing here is free text.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dicom_backup_dagster.notify.alert import Alert
from dicom_backup_dagster.notify.dispatch import Delivery, KeyValueStore
from dicom_backup_dagster.notify.settings import SEVERITIES, Severity

HISTORY_KEY = "dicom_backup/alerts/history"
KEEP_ENTRIES = 200  # alert entries kept (newest); the observations in the event log keep the rest

Event = Literal["trigger", "repeat", "fold", "acknowledge", "resolve"]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Entry:
    """One alert, from its trigger to its resolve (a later trigger of the same key is a new entry)."""

    key: str  # the dedup key
    kind: str
    severity: Severity
    subject: str
    opened_at: float
    state: Literal["open", "acknowledged", "resolved"] = "open"
    cause: str | None = None
    confidence: str | None = None
    check: str | None = None  # a check alert's check (part of its dedup key)
    sources: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)  # channels that received it (any event)
    runbook: str | None = None
    repeats: int = 0
    acknowledged_at: float | None = None
    resolved_at: float | None = None
    resolved_by: str | None = None  # "recovery", "manual" (the resolve_alert job)

    def row(self) -> dict[str, str | int | None]:
        """The table row the UI shows."""
        return {
            "alert": self.key,
            "kind": self.kind,
            "severity": self.severity,
            "state": self.state,
            "cause": self.cause or "",
            "confidence": self.confidence or "",
            "sources": ", ".join(self.sources) or self.subject,
            "partitions": ", ".join(self.partitions),
            "opened": iso(self.opened_at),
            "acknowledged": iso(self.acknowledged_at) or "",
            "resolved": iso(self.resolved_at) or "",
            "repeats": self.repeats,
            "channels": ", ".join(self.channels),
            "runbook": self.runbook or "",
        }


@dataclass(frozen=True)
class Happened:
    """One lifecycle event, as recorded (for the observation of this evaluation)."""

    event: Event
    key: str
    severity: str
    at: float
    channels: tuple[str, ...]
    failed_channels: tuple[str, ...]
    sources: tuple[str, ...]
    runbook: str | None

    def row(self) -> dict[str, str | None]:
        return {
            "at": iso(self.at),
            "event": self.event,
            "alert": self.key,
            "severity": self.severity,
            "sources": ", ".join(self.sources),
            "channels": ", ".join(self.channels),
            "not_delivered": ", ".join(self.failed_channels),
            "runbook": self.runbook or "",
        }


class History:
    """The alert ledger in a key-value store; `happened` collects this process's events since the last
    `drain()` (a sensor evaluation writes them to the UI)."""

    def __init__(
        self, store: KeyValueStore, clock: Callable[[], float] = time.time, *, site: str = ""
    ) -> None:
        # One ledger per site when several sites share the instance: each site's sensors rewrite it whole.
        self.store, self.clock, self.key = store, clock, f"{HISTORY_KEY}/{site}" if site else HISTORY_KEY
        self.happened: list[Happened] = []

    def entries(self) -> list[Entry]:
        raw = self.store.get_cursor_values({self.key}).get(self.key)
        try:
            return [Entry(**e) for e in json.loads(raw)] if raw else []
        except (ValueError, TypeError):
            return []

    def _save(self, entries: list[Entry]) -> None:
        kept = sorted(entries, key=lambda e: e.opened_at)[-KEEP_ENTRIES:]
        self.store.set_cursor_values({self.key: json.dumps([asdict(e) for e in kept])})

    def current(self, key: str) -> Entry | None:
        """The latest entry of `key` that is not resolved."""
        return next((e for e in reversed(self.entries()) if e.key == key and e.state != "resolved"), None)

    def record(
        self, event: Event, alert: Alert, deliveries: Iterable[Delivery] = (), *, by: str | None = None
    ) -> Happened:
        now = self.clock()
        sent = tuple(sorted(d.channel for d in deliveries if d.ok))
        failed = tuple(sorted(d.channel for d in deliveries if not d.ok))
        entries = self.entries()
        live = [e for e in entries if e.key == alert.dedup_key and e.state != "resolved"]
        entry = live[-1] if live else None
        if entry is None and event in ("trigger", "repeat", "fold"):
            entry = Entry(alert.dedup_key, alert.kind.value, alert.severity, alert.subject, now)
            entries.append(entry)
        if entry is not None:
            self._apply(entry, event, alert, sent, now, by)
            self._save(entries)
        happened = Happened(
            event,
            alert.dedup_key,
            alert.severity,
            now,
            sent,
            failed,
            alert.sources or (alert.subject,),
            alert.runbook_url,
        )
        self.happened.append(happened)
        return happened

    @staticmethod
    def _apply(
        entry: Entry, event: Event, alert: Alert, sent: tuple[str, ...], now: float, by: str | None
    ) -> None:
        if event in ("repeat", "fold"):
            entry.repeats += 1
        elif event == "acknowledge":
            entry.state, entry.acknowledged_at = "acknowledged", now
        elif event == "resolve":
            entry.state, entry.resolved_at, entry.resolved_by = "resolved", now, by or "recovery"
        if alert.sources:
            entry.sources = sorted(set(entry.sources) | set(alert.sources))
        if alert.partitions:
            entry.partitions = sorted(set(entry.partitions) | set(alert.partitions))
        entry.cause = alert.cause or entry.cause
        entry.check = alert.check or entry.check
        entry.confidence = alert.confidence or entry.confidence
        entry.runbook = alert.runbook_url or entry.runbook
        entry.channels = sorted(set(entry.channels) | set(sent))

    def drain(self) -> list[Happened]:
        out, self.happened = self.happened, []
        return out

    def open_by_severity(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
        for entry in self.entries():
            if entry.state != "resolved":
                counts[entry.severity] = counts.get(entry.severity, 0) + 1
        return counts

    def recent(self, limit: int = 50) -> list[Entry]:
        return sorted(self.entries(), key=lambda e: e.opened_at, reverse=True)[:limit]

    @staticmethod
    def rows(entries: Iterable[Entry]) -> list[dict[str, Any]]:
        return [e.row() for e in entries]
