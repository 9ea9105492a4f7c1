"""Cause grouping and the alert history without Dagster: the structured fields of a failure decide the cause,
the hold gathers the sources, the resolve waits for every one of them."""

from __future__ import annotations

from dicom_backup_dagster.notify import Alert, AlertKind, Delivery, MemoryStore
from dicom_backup_dagster.notify.causes import Cause, CauseBook, Grouping, Signal, Topology, findings
from dicom_backup_dagster.notify.history import History

MAIN = "ORTHANC_MAIN@10.0.0.5:4242"
STAGE = "ORTHANC_STAGE@10.0.0.6:4242"
ARIA = "ARIA_SCP@10.0.1.1:104"
MIM = "MIM_SCP@10.0.1.2:104"
TOPOLOGY = Topology(
    archive="ORTHANC_MAIN",
    archive_address=MAIN,
    staging={"ORTHANC_STAGE": STAGE},
    staged_sources={"ORTHANC_STAGE": frozenset({"MOSAIQ"})},
    peers={"ARIA": ARIA, "MIM": MIM, "ORTHANC_MAIN": MAIN, "ORTHANC_STAGE": STAGE},
    sources=frozenset({"ARIA", "MIM", "MOSAIQ"}),
)
REFUSED = {"error_class": "AssociationError", "association_stage": "connect", "operation": "C-FIND"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _book(store: MemoryStore | None = None, clock: Clock | None = None, hold_s: float = 120) -> CauseBook:
    return CauseBook(store or MemoryStore(), TOPOLOGY, Grouping(900, hold_s), clock or Clock())


def _signal(source: str, at: float, run: str, **fields: object) -> Signal:
    return Signal.of(source, fields, at=at, partition="2026-01-05", run_id=run)


def test_the_archive_named_by_three_sources_is_held_then_paged_once_with_all_of_them():
    clock = Clock()
    book = _book(clock=clock)
    t = clock.now
    assert book.on_failure(_signal("ARIA", t, "r1", peer=MAIN, **REFUSED)).action == "hold"
    assert book.on_failure(_signal("MIM", t + 5, "r2", peer=MAIN, **REFUSED)).action == "hold"
    # Mosaiq's C-MOVE from staging failed because its destination, the archive, did not answer a C-ECHO.
    mosaiq = _signal(
        "MOSAIQ", t + 9, "r3", peer=STAGE, operation="C-MOVE", dicom_status="0xC000",
        error_class="SubOperationError", destination_unreachable=MAIN,
    )  # fmt: skip
    outcome = book.on_failure(mosaiq)
    assert outcome.action == "page" and outcome.incident is not None
    incident = outcome.incident
    assert incident.cause == Cause.ARCHIVE_DOWN and incident.component == "ORTHANC_MAIN"
    assert incident.affected == ["ARIA", "MIM", "MOSAIQ"] and incident.failures == 3
    assert incident.confidence(900, t + 9) == 0.97
    book.mark_paged(incident)
    again = book.on_failure(_signal("ARIA", t + 60, "r4", peer=MAIN, **REFUSED))
    assert again.action == "fold"  # no second page
    assert book.on_failure(_signal("ARIA", t + 61, "r4", peer=MAIN, **REFUSED)).action == "seen"

    # Resolves only once the cause cleared and every affected source succeeded again.
    assert book.on_success("ARIA", TOPOLOGY.addresses_of("ARIA"), t + 100) == []
    assert book.on_success("MIM", TOPOLOGY.addresses_of("MIM"), t + 110) == []
    (done,) = book.on_success("MOSAIQ", TOPOLOGY.addresses_of("MOSAIQ"), t + 120)
    assert done.key == "archive_down/ORTHANC_MAIN" and book.incidents == {}


def test_the_book_survives_a_new_process_and_the_hold_expires():
    store, clock = MemoryStore(), Clock()
    book = _book(store, clock)
    assert book.on_failure(_signal("ARIA", clock.now, "r1", peer=MAIN, **REFUSED)).action == "hold"
    book.save()
    later = _book(store, clock)  # another sensor process
    assert later.due() == []
    clock.now += 121
    (due,) = later.due()
    assert due.affected == ["ARIA"] and due.confidence(900, clock.now) == 0.7


def test_a_source_peer_alone_is_no_shared_cause():
    book = _book()
    assert book.on_failure(_signal("MIM", 1.0, "r1", peer=MIM, **REFUSED)).action == "none"
    # A status from the archive (refusing) is the archive's; a status from a source is the source's.
    assert (
        findings(
            _signal("MIM", 2.0, "r2", peer=MIM, dicom_status="0xA801", error_class="DicomError"), TOPOLOGY
        )
        == []
    )
    (finding,) = findings(
        _signal("MIM", 2.0, "r2", peer=MAIN, dicom_status="0xA700", error_class="StoreError"), TOPOLOGY
    )
    assert finding.cause == Cause.ARCHIVE_DOWN and finding.mode == "refusing"


def test_two_peers_unreachable_and_none_answering_is_the_backup_hosts_network():
    book = _book(hold_s=0)
    assert book.on_failure(_signal("MIM", 1.0, "r1", peer=MIM, **REFUSED)).action == "none"
    outcome = book.on_failure(_signal("ARIA", 2.0, "r2", peer=ARIA, **REFUSED))
    assert outcome.action == "page" and outcome.incident is not None
    assert outcome.incident.cause == Cause.NETWORK and outcome.incident.component == "backup-host"
    # A peer that answered after the first one went down rules the network out.
    other = _book(hold_s=0)
    other.on_failure(_signal("MIM", 1.0, "r1", peer=MIM, **REFUSED))
    other.on_failure(
        _signal("MOSAIQ", 2.0, "r0", peer=STAGE, dicom_status="0xC000", error_class="DicomError")
    )
    assert other.on_failure(_signal("ARIA", 3.0, "r2", peer=ARIA, **REFUSED)).action == "none"


def test_connectivity_check_with_every_peer_down_opens_the_network_alert_and_clears_it():
    book = _book()
    to_page, resolved = book.on_peer_states(dict.fromkeys(TOPOLOGY.peers, False), 10.0)
    (incident,) = to_page
    assert incident.cause == Cause.NETWORK and incident.confirmed and resolved == []
    assert book.covering_peer("MIM") is incident  # the per-peer pages fold into it
    to_page, resolved = book.on_peer_states(dict.fromkeys(TOPOLOGY.peers, True), 20.0)
    assert to_page == [] and [i.key for i in resolved] == ["backup_host_network/backup-host"]


def test_storage_spool_and_staging_causes_come_from_structured_fields():
    storage = findings(_signal("ARIA", 1.0, "r", error_class="OperationalError"), TOPOLOGY)
    assert [f.cause for f in storage] == [Cause.DAGSTER_STORAGE]
    spool = findings(_signal("ARIA", 1.0, "r", error_class="OSError", errno=28), TOPOLOGY)
    assert [f.cause for f in spool] == [Cause.SPOOL_FULL]
    staging = findings(_signal("MOSAIQ", 1.0, "r", peer=STAGE, **REFUSED), TOPOLOGY)
    assert [(f.cause, f.component) for f in staging] == [(Cause.STAGING_DOWN, "ORTHANC_STAGE")]
    # The staging's only dependent source is MOSAIQ: it pages at once.
    assert _book().on_failure(_signal("MOSAIQ", 1.0, "r", peer=STAGE, **REFUSED)).action == "page"
    # Text is never read: an OSError without errno 28/122 is no spool problem.
    assert findings(_signal("ARIA", 1.0, "r", error_class="OSError", errno=13), TOPOLOGY) == []


def test_history_records_open_repeat_acknowledge_resolve_with_times_and_channels():
    store, clock = MemoryStore(), Clock()
    history = History(store, clock)
    alert = Alert(
        kind=AlertKind.ARCHIVE_DOWN, severity="critical", environment="PROD", subject="ORTHANC_MAIN",
        sources=("ARIA", "MIM"), partitions=("ARIA 2026-01-05", "SANDBOX^PATIENT0001"),
        runbook_url="docs/runbooks/archive_down.md",
    )  # fmt: skip
    history.record("trigger", alert, [Delivery("pagerduty", True, 0.1), Delivery("slack", False, 3.0, "x")])
    clock.now += 60
    history.record("repeat", alert)
    assert history.open_by_severity() == {"critical": 1, "high": 0, "low": 0}
    history.record("acknowledge", alert)
    clock.now += 60
    history.record("resolve", alert, [Delivery("pagerduty", True, 0.1)], by="manual")
    (entry,) = History(store).entries()
    assert entry.state == "resolved" and entry.repeats == 1 and entry.resolved_by == "manual"
    assert entry.resolved_at is not None and entry.resolved_at - entry.opened_at == 120
    row = entry.row()
    assert row["opened"] == "1970-01-12T13:46:40Z" and row["resolved"] == "1970-01-12T13:48:40Z"
    assert row["channels"] == "pagerduty" and row["runbook"] == "docs/runbooks/archive_down.md"
    assert "SANDBOX^" not in str(row)  # a Person Name is mangled on its way into the Alert
    assert history.open_by_severity()["critical"] == 0
    assert [h.event for h in history.drain()] == ["trigger", "repeat", "acknowledge", "resolve"]


def test_a_cause_alert_names_component_and_sources_and_can_be_acknowledged():
    alert = Alert(
        kind=AlertKind.SPOOL_FULL, severity="critical", environment="PROD", subject="spool",
        sources=("ARIA", "MIM"), confidence="0.91 (high)", cause="spool full",
    )  # fmt: skip
    assert alert.dedup_key == "dicom-backup/PROD/spool/cause/spool_full"
    assert alert.headline == "[CRITICAL] PROD: the backup host's spool is full: backups of ARIA, MIM failed"
    event = alert.pagerduty_event("key")
    assert event["payload"]["custom_details"]["sources"] == ["ARIA", "MIM"]  # type: ignore[index]
    ack = Alert(**{**alert.__dict__, "action": "acknowledge"}).pagerduty_event("key")
    assert ack == {"routing_key": "key", "event_action": "acknowledge", "dedup_key": alert.dedup_key}
