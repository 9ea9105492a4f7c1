"""The state every alert evaluation shares: the incident book, the cause book (notify/causes.py), the alert
history (notify/history.py), and the `alerts/history` asset whose observations show the history in the
Dagster UI (one observation per sensor evaluation or job run that changed anything, with two tables: the
events of that evaluation and the latest alerts with their opened/acknowledged/resolved times).

No `from __future__ import annotations`: Dagster validates the Config of the resolve op (defs/alerts.py).
"""

import time
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetKey,
    AssetObservation,
    AssetSpec,
    DagsterInstance,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.defs.keys import site_key
from dicom_backup_dagster.notify import Alert, Delivery, Dispatcher, IncidentBook
from dicom_backup_dagster.notify.causes import CauseBook, Grouping, Topology
from dicom_backup_dagster.notify.history import Entry, Happened, History

HISTORY_ASSET = AssetKey(["alerts", "history"])


def history_key(site: str = "") -> AssetKey:
    """`alerts/history`, or `alerts/history/<site>` when several sites share the instance."""
    return site_key(HISTORY_ASSET, site, multi_site=bool(site))


def history_spec(site: str = "") -> AssetSpec:
    return HISTORY_SPEC.replace_attributes(key=history_key(site))


HISTORY_SPEC = AssetSpec(
    key=HISTORY_ASSET,
    group_name="alerts",
    description=(
        "Every alert's trigger, repeats (failures folded into an open alert), acknowledgements and "
        "resolutions, without patient data: one observation per sensor evaluation that changed anything. "
        "Resolve or acknowledge an alert by hand with the resolve_alert job (run config: its key)."
    ),
    kinds={"notifications"},
)

_EVENT_COLUMNS = ("at", "event", "alert", "severity", "sources", "channels", "not_delivered", "runbook")
_ALERT_COLUMNS = (
    "alert",
    "kind",
    "severity",
    "state",
    "cause",
    "confidence",
    "sources",
    "partitions",
    "opened",
    "acknowledged",
    "resolved",
    "repeats",
    "channels",
    "runbook",
)


def topology_of(env: EnvironmentConfig) -> Topology:
    """The archive, the staging SCPs and who stages there, and every peer's address, from the config."""
    main = env.main_target
    staging: dict[str, str] = {}
    staged: dict[str, set[str]] = {}
    for alias, source in env.mosaiq_sources.items():
        target = env.staging_target(source)
        staging[target.alias] = str(target.peer)
        staged.setdefault(target.alias, set()).add(alias)
    return Topology(
        archive=main.alias,
        archive_address=str(main.peer),
        staging=staging,
        staged_sources={a: frozenset(s) for a, s in staged.items()},
        peers={alias: str(peer) for alias, peer in env.peers().items()},
        sources=frozenset(env.sources),
    )


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> Any:
    schema = TableSchema(
        columns=[TableColumn(name, "string" if name != "repeats" else "int") for name in columns]
    )
    records = [TableRecord({c: row.get(c) for c in columns}) for row in rows]
    return MetadataValue.table(records=records, schema=schema)


def history_observation(
    happened: list[Happened], recent: list[Entry], open_by_severity: dict[str, int], site: str = ""
) -> Any:
    metadata: dict[str, Any] = {
        "events": _table([h.row() for h in happened], _EVENT_COLUMNS),
        "alerts": _table([e.row() for e in recent], _ALERT_COLUMNS),
        **{f"open_{severity}": n for severity, n in open_by_severity.items()},
    }
    return AssetObservation(asset_key=history_key(site), metadata=metadata)


@dataclass
class Lifecycle:
    """One evaluation's view of the alert state; `finish()` saves the cause book and writes the history
    observation."""

    instance: DagsterInstance
    d: Dispatcher
    book: IncidentBook
    causes: CauseBook
    history: History
    resolved_by: str = "recovery"
    log: Any = None
    site: str = ""  # set when several sites share the instance: their own ledger, state and asset
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        instance: DagsterInstance,
        d: Dispatcher,
        topology: Topology,
        grouping: Grouping,
        site: str = "",
    ) -> "Lifecycle":
        store = instance.run_storage
        causes = CauseBook(store, topology, grouping, site=site)
        life = cls(instance, d, IncidentBook(store), causes, History(store, site=site), log=d.log, site=site)

        def record(event: str, alert: Alert, deliveries: list[Delivery]) -> None:
            by = life.resolved_by if event == "resolve" else None
            life.history.record(event, alert, deliveries, by=by)  # type: ignore[arg-type]

        d.recorder = record
        return life

    def finish(self) -> None:
        self.causes.save()
        happened = self.history.drain()
        if not happened:
            return
        history = self.history
        observation = history_observation(happened, history.recent(), history.open_by_severity(), self.site)
        try:
            self.instance.report_runless_asset_event(observation)
        except Exception as error:  # the history in the UI must never stop an alert
            self.d.log.warning(f"alerts/history observation not written ({type(error).__name__})")

    def now(self) -> float:
        return time.time()
