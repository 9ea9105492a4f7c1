"""Routing by severity, concurrent delivery, and the book of open incidents (one alert per outage).

Every channel of an alert is sent on its own thread, so a channel that hangs until its timeout delays no
other; `send` returns once all have answered or the deadline (timeout + 2 s) has passed. A failing channel
is logged and reported, never raised: the caller (a sensor) goes on, and so do the other channels.

The incident book keeps, per dedup key, whether an incident is open, its severity and how many failures
it has seen, in a small key-value store (Dagster's run storage offers one: `get_cursor_values` /
`set_cursor_values`, in SQLite and PostgreSQL alike). It lets run sensors alert once per outage and send
the resolve to the channels that got the trigger.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, Protocol

from dicom_backup_dagster.notify.alert import Alert
from dicom_backup_dagster.notify.channels import Notifier, NotifierError
from dicom_backup_dagster.notify.settings import CHANNELS, DEFAULT_ROUTES, Channel, Severity

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    channel: Channel
    ok: bool
    seconds: float
    error: str | None = None


class KeyValueStore(Protocol):
    """What Dagster's run storage offers (`instance.run_storage`)."""

    def get_cursor_values(self, keys: set[str]) -> Mapping[str, str]: ...

    def set_cursor_values(self, pairs: Mapping[str, str]) -> None: ...


class MemoryStore:
    """A KeyValueStore in memory, for tests and scripts."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get_cursor_values(self, keys: set[str]) -> Mapping[str, str]:
        return {k: self.values[k] for k in keys if k in self.values}

    def set_cursor_values(self, pairs: Mapping[str, str]) -> None:
        self.values.update(pairs)


class Dispatcher:
    """Sends an alert to the channels its severity routes to, concurrently, never raising."""

    def __init__(
        self,
        notifiers: Mapping[Channel, Notifier],
        routes: Mapping[Severity, tuple[Channel, ...]] | None = None,
        *,
        timeout_s: float = 10.0,
        log: Any = None,
    ) -> None:
        self.notifiers = dict(notifiers)
        self.routes = dict(routes or DEFAULT_ROUTES)
        self.deadline_s = timeout_s * 2 + 2.0  # connect + read timeouts, plus scheduling slack
        self.log = log or _LOG
        # Channels that hung once are skipped for the rest of this dispatcher's life (one sensor tick):
        # a tick with many alerts must stay well inside Dagster's 60 s sensor evaluation limit.
        self.hung: set[Channel] = set()
        # Called with (event, alert, deliveries) for every trigger, repeat and resolve (notify/history.py).
        self.recorder: Callable[[str, Alert, list[Delivery]], None] | None = None

    def record(self, event: str, alert: Alert, deliveries: list[Delivery] | None = None) -> None:
        if self.recorder is not None:
            try:
                self.recorder(event, alert, deliveries or [])
            except Exception as error:  # the history must never stop an alert
                self.log.warning(f"alert {alert.dedup_key}: history not recorded ({type(error).__name__})")

    def channels_for(self, alert: Alert) -> list[Channel]:
        """Configured channels for the alert's severity; a resolve also reaches the channels of `low`
        (recoveries are low-severity news), and the channels that got the trigger, so PagerDuty closes
        the incident it opened."""
        wanted = set(self.routes.get(alert.severity, ()))
        if alert.resolving:
            wanted |= set(self.routes.get("low", ()))
        return [c for c in CHANNELS if c in wanted and c in self.notifiers]

    def send(self, alert: Alert, channels: list[Channel] | None = None) -> list[Delivery]:
        targets = (
            self.channels_for(alert) if channels is None else [c for c in channels if c in self.notifiers]
        )
        if not targets:
            self.log.info(f"alert {alert.dedup_key} ({alert.action}): no channel configured for it")
            return []
        started = time.monotonic()

        def one(channel: Channel) -> Delivery:
            t0 = time.monotonic()
            if channel in self.hung:
                return Delivery(channel, False, 0.0, f"{channel}: skipped, it timed out earlier in this tick")
            try:
                self.notifiers[channel].send(alert)
            except NotifierError as error:
                if error.timed_out:
                    self.hung.add(channel)
                return Delivery(channel, False, time.monotonic() - t0, str(error))
            except Exception as error:  # a notifier bug must not stop the other channels
                return Delivery(channel, False, time.monotonic() - t0, f"{channel}: {type(error).__name__}")
            return Delivery(channel, True, time.monotonic() - t0)

        pool = ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="notify")
        futures = {pool.submit(one, c): c for c in targets}
        done, _ = wait(futures, timeout=self.deadline_s)
        # Do not wait for a channel past the deadline: its own timeout ends its thread soon after.
        pool.shutdown(wait=False)
        out: list[Delivery] = []
        for future, channel in futures.items():
            if future in done:
                out.append(future.result())
            else:
                self.hung.add(channel)
                out.append(Delivery(channel, False, time.monotonic() - started, f"{channel}: still running"))
        for d in out:
            if d.ok:
                self.log.info(
                    f"alert {alert.dedup_key} ({alert.action}) sent to {d.channel} in {d.seconds:.2f} s"
                )
            else:
                self.log.warning(f"alert {alert.dedup_key} ({alert.action}) NOT sent: {d.error}")
        return out


# ------------------------------------------------------------------------------------------------------
# Open incidents

_PREFIX = "dicom_backup/alerts/open/"


@dataclass(frozen=True)
class Incident:
    severity: Severity
    opened_at: float
    failures: int = 1
    last_run_id: str | None = None  # a run evaluated twice (daemon restart) counts once

    def to_json(self) -> str:
        return json.dumps(
            {
                "severity": self.severity,
                "opened_at": self.opened_at,
                "failures": self.failures,
                "last_run_id": self.last_run_id,
            }
        )


class IncidentBook:
    """Open incidents by dedup key, in a KeyValueStore. A closed incident is stored as an empty value."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    def get(self, dedup_key: str) -> Incident | None:
        raw = self.store.get_cursor_values({_PREFIX + dedup_key}).get(_PREFIX + dedup_key)
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return Incident(
                data["severity"], float(data["opened_at"]), int(data["failures"]), data.get("last_run_id")
            )
        except (ValueError, KeyError, TypeError):
            return None

    def put(self, dedup_key: str, incident: Incident | None) -> None:
        self.store.set_cursor_values({_PREFIX + dedup_key: incident.to_json() if incident else ""})


def trigger(
    dispatcher: Dispatcher, book: IncidentBook, alert: Alert, *, once_per_outage: bool = True
) -> list[Delivery] | None:
    """Send `alert` unless (once_per_outage) its incident is already open; None when suppressed.

    The incident is recorded as open before sending: a channel that fails now is not retried by the next
    failure of the same outage (the failure is logged, and the UI still shows the failed run)."""
    incident = book.get(alert.dedup_key)
    if incident is not None and alert.run_id is not None and incident.last_run_id == alert.run_id:
        dispatcher.log.info(f"alert {alert.dedup_key}: run {alert.run_id} already handled")
        return None
    if incident is not None:
        book.put(alert.dedup_key, replace(incident, failures=incident.failures + 1, last_run_id=alert.run_id))
        if once_per_outage:
            dispatcher.record("repeat", alert)
            dispatcher.log.info(
                f"alert {alert.dedup_key}: incident already open since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(incident.opened_at))} UTC "
                f"({incident.failures + 1} failures); not sent again"
            )
            return None
    else:
        book.put(alert.dedup_key, Incident(alert.severity, time.time(), last_run_id=alert.run_id))
    deliveries = dispatcher.send(alert)
    dispatcher.record("trigger" if incident is None else "repeat", alert, deliveries)
    return deliveries


def resolve(dispatcher: Dispatcher, book: IncidentBook, alert: Alert) -> list[Delivery] | None:
    """Send the resolve of an open incident (same dedup key, the trigger's severity for routing) and close
    it; None when no incident is open for that key."""
    incident = book.get(alert.dedup_key)
    if incident is None:
        return None
    book.put(alert.dedup_key, None)
    counts = {**alert.counts, "failures_in_incident": incident.failures}
    resolved = replace(alert, action="resolve", severity=incident.severity, counts=counts)
    deliveries = dispatcher.send(resolved)
    dispatcher.record("resolve", resolved, deliveries)
    return deliveries
