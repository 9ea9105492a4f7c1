"""The exporter over a PostgreSQL-backed instance keeps serving when the database goes away and resumes
(without counting anything twice) when it comes back. The outage is real: the instance reaches
PostgreSQL through a loopback TCP proxy that the test stops, cutting every connection."""

from __future__ import annotations

import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from prometheus_client import start_http_server

from dicom_backup_dagster.monitoring import metrics as m
from dicom_backup_dagster.monitoring.exporter import DagsterStateCollector, build_registry
from dicom_backup_dagster.sandbox.processes import free_port
from tests.postgres import PG, throwaway_database

REPO = Path(__file__).resolve().parents[2]


class TcpProxy:
    """127.0.0.1:<port> -> 127.0.0.1:5432; stop() closes the listener and every open connection."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self._stop.clear()
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.setblocking(False)
        self._thread = threading.Thread(target=self._serve, args=(listener,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _serve(self, listener: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is listener:
                        client, _ = listener.accept()
                        upstream = socket.create_connection(self.target)
                        for s in (client, upstream):
                            s.setblocking(False)
                            sel.register(s, selectors.EVENT_READ)
                        peers[client], peers[upstream] = upstream, client
                        continue
                    if sock not in peers:  # closed earlier in this batch with its other end
                        continue
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if data:
                        peers[sock].setblocking(True)
                        peers[sock].sendall(data)
                        peers[sock].setblocking(False)
                    else:
                        other = peers.pop(sock)
                        peers.pop(other, None)
                        for s in (sock, other):
                            sel.unregister(s)
                            s.close()
        finally:
            for s in list(peers):
                s.close()
            listener.close()
            sel.close()


@pytest.fixture
def postgres_instance(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dg.DagsterInstance, TcpProxy]]:
    with throwaway_database("dagster_exporter") as name:
        proxy = TcpProxy(free_port(), (PG["host"], PG["port"]))
        proxy.start()
        for key, value in {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(proxy.port),
            "DAGSTER_PG_USER": PG["user"],
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": name,
        }.items():
            monkeypatch.setenv(key, value)
        instance = None
        try:
            instance = dg.DagsterInstance.from_config(str(REPO / "dagster_home" / "postgres"))
            yield instance, proxy
        finally:
            proxy.stop()
            if instance is not None:
                instance.dispose()


DIMSE = {
    "ARIA_SIM": {"C-FIND": {"success": 2, "warning": 0, "failure": 1, "seconds_sum": 0.5, "buckets": {}}}
}


@dg.asset(key=["ARIA", "archived"])
def archived() -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "instances_found": 3,
            "moved": 3,
            "failed": 0,
            "deferred": 0,
            "dimse": dg.MetadataValue.json(DIMSE),
        }
    )


def _backup(instance: dg.DagsterInstance) -> None:
    job = dg.define_asset_job("ARIA_backup", tags={"dicom_backup/source": "ARIA"})
    defs = dg.Definitions(assets=[archived], jobs=[job])
    assert defs.resolve_job_def("ARIA_backup").execute_in_process(instance=instance).success


def _served(collector: DagsterStateCollector) -> dict[tuple[str, frozenset], float]:
    """The current figures, without triggering a refresh (unlike a scrape)."""
    return {(s.name, frozenset(s.labels.items())): s.value for f in collector.families() for s in f.samples}


@pytest.fixture
def fast_pg_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """dagster-postgres retries a refused connection 5 times with exponential backoff (~12 s); the
    outage tests do not need to wait for that."""
    import dagster_postgres.utils

    monkeypatch.setattr(dagster_postgres.utils, "calculate_delay", lambda **kwargs: 0.02)


def _scrape_http(collector: DagsterStateCollector) -> tuple[str, float]:
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=build_registry(collector))
    try:
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            return response.read().decode(), time.monotonic() - started
    finally:
        server.shutdown()
        thread.join(5)


RUNS = ("dicom_backup_runs_total", frozenset({"source": "ARIA", "status": "success"}.items()))
FOUND = ("dicom_backup_instances_found_total", frozenset({"source": "ARIA"}.items()))
FAILED_FINDS = (
    "dicom_dimse_requests_total",
    frozenset({"peer_ae": "ARIA_SIM", "operation": "C-FIND", "status_class": "failure"}.items()),
)
UP = (m.EXPORTER_DAGSTER_UP, frozenset())


def test_exporter_keeps_serving_through_a_storage_outage(postgres_instance, fast_pg_retries) -> None:
    instance, proxy = postgres_instance
    _backup(instance)
    collector = DagsterStateCollector(lambda: instance, cache_seconds=0, scrape_wait_seconds=20)
    assert collector.refresh()
    before = _served(collector)
    assert before[RUNS] == 1 and before[FOUND] == 3 and before[FAILED_FINDS] == 1 and before[UP] == 1

    proxy.stop()  # PostgreSQL is gone for the exporter
    body, seconds = _scrape_http(collector)
    assert f"{m.EXPORTER_DAGSTER_UP} 0.0" in body
    assert 'dicom_backup_runs_total{source="ARIA",status="success"} 1.0' in body  # the last figures
    assert 'dicom_backup_instances_found_total{source="ARIA"} 3.0' in body
    assert f"{m.EXPORTER_ERRORS} 1.0" in body
    assert collector.last_error == "DagsterPostgresException"  # the class only, never SQL parameters
    print(f"\nscrape during the outage: {seconds:.2f} s")

    proxy.start()  # back: the next refresh resumes from the cursors
    _backup(instance)
    assert collector.refresh(), collector.last_error
    after = _served(collector)
    assert after[UP] == 1
    assert after[RUNS] == 2 and after[FOUND] == 6 and after[FAILED_FINDS] == 2  # each run counted once
    assert after[(m.EXPORTER_ERRORS, frozenset())] == 1


def test_a_hanging_storage_read_does_not_hang_the_scrape(postgres_instance) -> None:
    """With dagster-postgres' real backoff a failing read takes ~12 s: the scrape answers after
    scrape_wait_seconds with the cached figures and dagster_up 0, and the read recovers by itself."""
    instance, proxy = postgres_instance
    _backup(instance)
    collector = DagsterStateCollector(lambda: instance, cache_seconds=0, scrape_wait_seconds=1)
    assert collector.refresh()
    proxy.stop()
    body, seconds = _scrape_http(collector)
    assert seconds < 5
    assert f"{m.EXPORTER_DAGSTER_UP} 0.0" in body
    assert 'dicom_backup_runs_total{source="ARIA",status="success"} 1.0' in body
    proxy.start()  # dagster-postgres' retry loop reconnects: the pending read succeeds
    assert collector._refreshing is not None
    collector._refreshing.join(30)
    assert collector.last_error is None and _served(collector)[UP] == 1


def test_exporter_started_while_storage_is_down(postgres_instance, fast_pg_retries) -> None:
    instance, proxy = postgres_instance
    proxy.stop()
    attempts = []

    def factory() -> dg.DagsterInstance:
        attempts.append(time.monotonic())
        instance.get_runs_count()  # fails while the database is unreachable
        return instance

    collector = DagsterStateCollector(factory, cache_seconds=0)
    assert not collector.refresh()
    assert _served(collector)[(m.EXPORTER_DAGSTER_UP, frozenset())] == 0
    proxy.start()
    assert collector.refresh(), collector.last_error
    assert _served(collector)[(m.EXPORTER_DAGSTER_UP, frozenset())] == 1
    assert len(attempts) == 2


class _CountingInstance:
    """Forwards to a DagsterInstance, counting the run-storage reads the exporter makes."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._instance = instance
        self.calls: list[str] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        attr = getattr(self._instance, name)
        if name in ("get_runs_count", "get_run_records", "get_run_tags"):
            self.calls.append(name)
        return attr


def test_run_storage_is_read_again_only_when_a_run_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    import dicom_backup_dagster.monitoring.exporter as exporter

    monkeypatch.setattr(exporter, "CHANGE_MARGIN_SECONDS", 0.0)  # production: 120 s for clock skew
    with dg.instance_for_test() as instance:
        _backup(instance)
        counting = _CountingInstance(instance)
        collector = DagsterStateCollector(lambda: counting, cache_seconds=0)  # type: ignore[arg-type,return-value]
        assert collector.refresh()
        full = len(counting.calls)
        assert full > 3
        counting.calls.clear()
        assert collector.refresh()  # nothing changed: one COUNT with updated_after
        assert counting.calls == ["get_runs_count"]
        assert _served(collector)[RUNS] == 1
        _backup(instance)
        counting.calls.clear()
        assert collector.refresh()
        assert (
            len(counting.calls) == full + 1 and _served(collector)[RUNS] == 2
        )  # the COUNT, then a full read
