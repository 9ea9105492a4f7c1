"""One alert per cause: failures of several sources that share a cause fold into one incident.

Pure Python (no Dagster): the sensors in defs/alerts.py turn each final failure into a `Signal` (the
structured fields `defs/common.backup_failure` puts in a Failure's metadata: the peer as AE@host:port, the
operation, the DICOM status, the error's class, where an association failed, a C-MOVE's unreachable
destination, an OSError's errno) and ask the `CauseBook` what to do with it. Text is never parsed.

Causes (each is an alert kind with its runbook, docs/runbooks/<kind>.md):

- `archive_down`: the failing peer is the main archive (any DICOM failure of ours against it), or a
  C-MOVE's destination, the archive, did not answer a C-ECHO;
- `staging_down`: the failing peer is a staging SCP and no TCP connection could be opened;
- `backup_host_network`: within the window, at least two different peers refused TCP connections and
  none answered (or connectivity_check found every peer down);
- `dagster_storage_errors`: the error class is a database driver's connection or operational error;
- `spool_full`: an OSError with errno ENOSPC or EDQUOT on the backup host.

A failure with such evidence opens (or joins) the cause's incident. The incident is *held* (no page) until
every source that depends on the cause has failed with it, or `hold_s` has passed since its first failure:
a night's sources usually fail within seconds of each other, and one page naming all of them beats a page
per source. Once paged, further failures fold in (counted, recorded, not sent). The confidence grows with
the number of sources that failed the same way within the window (1 - 0.3^n: 0.70, 0.91, 0.97), and is
0.95 or more when connectivity_check confirms the component is down. The incident resolves when the cause
has cleared (a successful backup of an affected source, or connectivity_check finding the component up)
and every affected source has succeeded again. A failure with no such evidence is not the book's: the
caller pages per source as before.

State lives in one value of a key-value store (Dagster's run storage `get_cursor_values` /
`set_cursor_values`), so every sensor process sees the same incidents.
"""

from __future__ import annotations

import errno as errno_codes
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

from dicom_backup_dagster.notify.dispatch import KeyValueStore

STATE_KEY = "dicom_backup/alerts/causes"
DEFAULT_WINDOW_S = 15 * 60.0
DEFAULT_HOLD_S = 120.0
_KEEP_SIGNALS = 200  # recent peer observations kept for the network rule
_KEEP_RUNS = 50  # run IDs per incident, so a run evaluated twice counts once

#: Error classes of the database drivers behind Dagster's storage (SQLAlchemy, psycopg2, sqlite3) that mean
#: the storage itself failed, not our code.
STORAGE_ERROR_CLASSES = frozenset(
    {"OperationalError", "InterfaceError", "DatabaseError", "DisconnectionError", "DagsterStorageError"}
)
SPOOL_FULL_ERRNOS = frozenset({errno_codes.ENOSPC, errno_codes.EDQUOT})


class Cause(StrEnum):
    ARCHIVE_DOWN = "archive_down"
    STAGING_DOWN = "staging_down"
    NETWORK = "backup_host_network"
    DAGSTER_STORAGE = "dagster_storage_errors"
    SPOOL_FULL = "spool_full"


@dataclass(frozen=True)
class Topology:
    """Who depends on what: the archive (alias, address), the staging SCPs (alias -> address and the
    sources that stage there), every peer's address, and the sources."""

    archive: str
    archive_address: str
    staging: Mapping[str, str]
    staged_sources: Mapping[str, frozenset[str]]
    peers: Mapping[str, str]
    sources: frozenset[str]

    def alias_of(self, address: str | None) -> str | None:
        return next((a for a, addr in self.peers.items() if addr == address), None)

    def addresses_of(self, source: str) -> list[str]:
        """The peers a successful backup of `source` reached: its own, the archive, its staging."""
        staged = [self.staging[a] for a, srcs in self.staged_sources.items() if source in srcs]
        own = [self.peers[source]] if source in self.peers else []
        return [*own, self.archive_address, *staged]

    def dependents(self, cause: Cause, component: str) -> frozenset[str]:
        if cause == Cause.STAGING_DOWN:
            return self.staged_sources.get(component, frozenset())
        return self.sources


@dataclass(frozen=True)
class Signal:
    """One final failure of one source, as structured fields (see the module docstring)."""

    source: str
    at: float
    partition: str | None = None
    run_id: str | None = None
    peer: str | None = None  # AE@host:port
    operation: str | None = None
    dicom_status: str | None = None
    error_class: str | None = None
    association_stage: str | None = None
    destination_unreachable: str | None = None
    errno: int | None = None

    @classmethod
    def of(
        cls,
        source: str,
        fields: Mapping[str, object],
        *,
        at: float,
        partition: str | None = None,
        run_id: str | None = None,
    ) -> Signal:
        def text(key: str) -> str | None:
            value = fields.get(key)
            return value if isinstance(value, str) and value and value != "none" else None

        raw_errno = fields.get("errno")
        return cls(
            source=source,
            at=at,
            partition=partition,
            run_id=run_id,
            peer=text("peer"),
            operation=text("operation"),
            dicom_status=text("dicom_status"),
            error_class=text("error_class") or text("error"),
            association_stage=text("association_stage"),
            destination_unreachable=text("destination_unreachable"),
            errno=raw_errno if isinstance(raw_errno, int) and not isinstance(raw_errno, bool) else None,
        )

    @property
    def unreachable(self) -> bool:
        """No TCP connection to `peer` could be opened."""
        return self.association_stage == "connect"

    @property
    def peer_answered(self) -> bool:
        """`peer` spoke DICOM to us (a status, a rejection, a C-MOVE that failed elsewhere)."""
        answered = self.dicom_status is not None or self.association_stage == "rejected"
        return self.peer is not None and answered


@dataclass(frozen=True)
class Finding:
    cause: Cause
    component: str  # peer alias, or "backup-host", "dagster-storage", "spool"
    address: str | None
    mode: str  # unreachable | refusing | errors | full


def findings(signal: Signal, topology: Topology) -> list[Finding]:
    """The causes one failure is evidence of, best first (the network rule needs the window: CauseBook)."""
    out: list[Finding] = []
    if signal.errno in SPOOL_FULL_ERRNOS:
        out.append(Finding(Cause.SPOOL_FULL, "spool", None, "full"))
    if signal.error_class in STORAGE_ERROR_CLASSES and signal.peer is None:
        out.append(Finding(Cause.DAGSTER_STORAGE, "dagster-storage", None, "errors"))
    archive = topology.archive_address
    if signal.peer == archive and signal.error_class is not None:
        mode = "unreachable" if signal.unreachable else "refusing"
        out.append(Finding(Cause.ARCHIVE_DOWN, topology.archive, archive, mode))
    elif signal.destination_unreachable == archive:
        out.append(Finding(Cause.ARCHIVE_DOWN, topology.archive, archive, "unreachable"))
    staging = next((a for a, addr in topology.staging.items() if addr == signal.peer), None)
    if staging is not None and signal.unreachable:
        out.append(Finding(Cause.STAGING_DOWN, staging, signal.peer, "unreachable"))
    return out


def confidence(sources: int, confirmed: bool = False) -> float:
    value = 1.0 - 0.3 ** max(sources, 1)
    return round(max(value, 0.95) if confirmed else value, 2)


def confidence_label(value: float) -> str:
    return "high" if value >= 0.9 else "medium" if value >= 0.6 else "low"


State = Literal["held", "open"]


@dataclass
class CauseIncident:
    cause: Cause
    component: str
    address: str | None
    mode: str
    first_at: float
    last_at: float
    state: State = "held"
    paged_at: float | None = None
    sources: dict[str, list[str]] = field(default_factory=dict)  # source -> partitions
    failed_at: dict[str, float] = field(default_factory=dict)  # source -> its latest failure
    recovered: list[str] = field(default_factory=list)
    failures: int = 0
    confirmed: bool = False  # connectivity_check found the component down
    cleared_at: float | None = None
    run_ids: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.cause.value}/{self.component}"

    def confidence(self, window_s: float, now: float) -> float:
        recent = [s for s, at in self.failed_at.items() if now - at <= window_s]
        return confidence(len(recent) or 1, self.confirmed)

    @property
    def affected(self) -> list[str]:
        return sorted(self.sources)

    @property
    def partitions(self) -> list[str]:
        return sorted({f"{s} {p}" for s, parts in self.sources.items() for p in parts})

    @property
    def resolvable(self) -> bool:
        return self.cleared_at is not None and set(self.recovered) >= set(self.sources)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cause"] = self.cause.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CauseIncident:
        return cls(**{**data, "cause": Cause(data["cause"])})


Action = Literal["page", "fold", "hold", "none", "seen"]


@dataclass(frozen=True)
class Outcome:
    """What to do with a failure: page the incident now, fold it into a paged one, hold it, or none
    (no shared cause: page per source); `seen`: this run was already counted."""

    action: Action
    incident: CauseIncident | None = None


@dataclass(frozen=True)
class Grouping:
    window_s: float = DEFAULT_WINDOW_S
    hold_s: float = DEFAULT_HOLD_S


class CauseBook:
    """The open and held cause incidents, and recent peer observations, in one key-value store value."""

    def __init__(
        self,
        store: KeyValueStore,
        topology: Topology,
        grouping: Grouping | None = None,
        clock: Callable[[], float] = time.time,
        *,
        site: str = "",
    ) -> None:
        self.store, self.topology = store, topology
        self.key = f"{STATE_KEY}/{site}" if site else STATE_KEY  # per site, as History
        self.grouping = grouping or Grouping()
        self.clock = clock
        raw = store.get_cursor_values({self.key}).get(self.key)
        try:
            data = json.loads(raw) if raw else {}
            self.incidents = {k: CauseIncident.from_dict(v) for k, v in data.get("incidents", {}).items()}
            self.observations: list[list[Any]] = list(data.get("observations", []))
        except (ValueError, TypeError, KeyError):  # another version's state: start over
            self.incidents, self.observations = {}, []

    def save(self) -> None:
        data = {
            "incidents": {k: v.to_dict() for k, v in self.incidents.items()},
            "observations": self.observations[-_KEEP_SIGNALS:],
        }
        self.store.set_cursor_values({self.key: json.dumps(data, sort_keys=True)})

    # --------------------------------------------------------------------------------------------------
    # Peer observations for the network rule: [address, reachable, at]

    def observe(self, address: str, reachable: bool, at: float) -> None:
        self.observations.append([address, reachable, at])

    def _network(self, now: float) -> bool:
        """At least two different peers unreachable within the window and none reachable since the first."""
        recent = [o for o in self.observations if now - o[2] <= self.grouping.window_s]
        down = {o[0] for o in recent if not o[1]}
        if len(down) < 2:
            return False
        first_down = min(o[2] for o in recent if not o[1])
        return not any(o[1] for o in recent if o[2] >= first_down)

    # --------------------------------------------------------------------------------------------------

    def on_failure(self, signal: Signal) -> Outcome:
        now = signal.at
        if signal.peer is not None:
            if signal.unreachable:
                self.observe(signal.peer, False, now)
            elif signal.peer_answered:
                self.observe(signal.peer, True, now)
        if signal.destination_unreachable:
            self.observe(signal.destination_unreachable, False, now)
        candidates = findings(signal, self.topology)
        if (signal.unreachable or signal.destination_unreachable) and self._network(now):
            candidates.insert(0, Finding(Cause.NETWORK, "backup-host", None, "unreachable"))
        if not candidates:
            return Outcome("none")
        by_key = {f"{c.cause.value}/{c.component}": c for c in candidates}
        open_key = next((k for k in by_key if k in self.incidents), None)
        key = open_key or next(iter(by_key))
        finding = by_key[key]
        incident = self.incidents.get(key) or CauseIncident(
            finding.cause, finding.component, finding.address, finding.mode, now, now
        )
        if signal.run_id is not None and signal.run_id in incident.run_ids:
            return Outcome("seen", incident)
        self._add(incident, signal)
        self.incidents[key] = incident
        if incident.state == "open":
            return Outcome("fold", incident)
        return Outcome("page" if self._ready(incident, now) else "hold", incident)

    def _add(self, incident: CauseIncident, signal: Signal) -> None:
        incident.last_at = max(incident.last_at, signal.at)
        incident.failures += 1
        parts = incident.sources.setdefault(signal.source, [])
        if signal.partition and signal.partition not in parts:
            parts.append(signal.partition)
        incident.failed_at[signal.source] = signal.at
        if signal.source in incident.recovered:
            incident.recovered.remove(signal.source)
        incident.cleared_at = None
        if signal.run_id is not None:
            incident.run_ids = [*incident.run_ids, signal.run_id][-_KEEP_RUNS:]

    def _ready(self, incident: CauseIncident, now: float) -> bool:
        dependents = self.topology.dependents(incident.cause, incident.component)
        return set(incident.sources) >= dependents or now - incident.first_at >= self.grouping.hold_s

    def mark_paged(self, incident: CauseIncident) -> None:
        incident.state, incident.paged_at = "open", self.clock()

    def due(self) -> list[CauseIncident]:
        """Held incidents whose hold has passed: page them now (the caller marks them paged)."""
        now = self.clock()
        return [i for i in self.incidents.values() if i.state == "held" and self._ready(i, now)]

    def on_success(self, source: str, addresses: Iterable[str], at: float) -> list[CauseIncident]:
        """A source backed up again (its peers at `addresses` answered): the incidents now resolved, which
        the caller resolves at the channels if they were paged; they leave the book."""
        for address in addresses:
            self.observe(address, True, at)
        done = []
        for key, incident in list(self.incidents.items()):
            if source not in incident.sources:
                continue
            if source not in incident.recovered:
                incident.recovered.append(source)
            incident.cleared_at = at  # the backup reached the archive, staging, network, storage, spool
            if incident.resolvable:
                done.append(self.incidents.pop(key))
        return done

    def on_peer_states(
        self, states: Mapping[str, bool], at: float
    ) -> tuple[list[CauseIncident], list[CauseIncident]]:
        """connectivity_check's verdict per peer alias: confirms or clears the incidents of those
        components; a check that found every peer down opens the network incident. Returns (incidents to
        page now, incidents resolved and out of the book)."""
        for alias, up in states.items():
            if (address := self.topology.peers.get(alias)) is not None:
                self.observe(address, up, at)
        everyone_down = len(states) >= 2 and not any(states.values())
        for incident in self.incidents.values():
            covered = states if incident.cause != Cause.NETWORK else {"*": any(states.values())}
            if incident.component in covered or incident.cause == Cause.NETWORK:
                up = covered.get(incident.component, covered.get("*", False))
                incident.confirmed = incident.confirmed or not up
                if up:
                    incident.cleared_at = at
        to_page: list[CauseIncident] = []
        key = f"{Cause.NETWORK.value}/backup-host"
        if everyone_down and key not in self.incidents:
            incident = CauseIncident(Cause.NETWORK, "backup-host", None, "unreachable", at, at)
            incident.confirmed = True
            self.incidents[key] = incident
            to_page.append(incident)
        resolved = [self.incidents.pop(k) for k, i in list(self.incidents.items()) if i.resolvable]
        return to_page, resolved

    def covering_peer(self, alias: str) -> CauseIncident | None:
        """The open or held incident that explains `alias` being down (its own, or the network's)."""
        for incident in self.incidents.values():
            if incident.component == alias or incident.cause == Cause.NETWORK:
                return incident
        return None

    def close(self, key: str) -> CauseIncident | None:
        """Remove an incident by hand (the manual resolve job)."""
        return self.incidents.pop(key, None)
