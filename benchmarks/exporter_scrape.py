"""Benchmark: dicom-backup-exporter scrape time over a PostgreSQL-backed Dagster instance with 10,000 runs.

Goal (issue 6): a scrape under 1 s. What it does:

1. Creates a throwaway database on PostgreSQL (127.0.0.1:5432, trust auth; `--pg-*` to change) and opens
   a DagsterInstance on it with dagster_home/postgres/dagster.yaml (dagster-postgres, psycopg2).
2. Fills it through the instance's own storage API with `--runs` backup runs (default 10,000) spread over
   the ARIA, MIM and MOSAIQ sources, one a night each going back in time. Every run is what a real
   nightly run stores for monitoring: run record with the source tag and start/end time (RUN_START and
   RUN_SUCCESS/RUN_FAILURE events, 3% failures), a `<source>/inventory` and a `<source>/archived`
   materialization with the metadata contract (instances_found, moved, failed, deferred,
   already_archived, seconds_total, bytes, `dimse` for two peers), and a `content_verified` evaluation.
   Plus one connectivity observation per 10 runs. Insertion is batched; it is not what is measured.
3. Times, in this process, the exporter's collector (`DagsterStateCollector`):
   - first scrape: a fresh exporter (cursors at zero) rebuilding every counter from the whole history;
   - cached scrape: the next scrape within `cache_seconds` (serialization only);
   - steady scrape: the cache expired and one new night (3 runs) was stored: an incremental refresh;
   - idle scrape: the cache expired and nothing changed (most scrapes of a nightly system);
   - the same over HTTP (`start_http_server`, what Prometheus does), first and steady.
4. Drops the database (unless `--keep`).

Run: .venv/bin/python benchmarks/exporter_scrape.py [--runs 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dagster import (  # noqa: E402
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    MetadataValue,
)
from dagster._core.events import AssetObservationData, DagsterEvent, StepMaterializationData  # noqa: E402
from dagster._core.events.log import EventLogEntry  # noqa: E402
from prometheus_client import generate_latest, start_http_server  # noqa: E402

from dicom_backup_dagster.dicom import stats  # noqa: E402
from dicom_backup_dagster.monitoring.exporter import (  # noqa: E402
    SOURCE_TAG,
    DagsterStateCollector,
    build_registry,
)

SOURCES = {"ARIA": "ARIA_SIM", "MIM": "MIM_SIM", "MOSAIQ": "ORTHANC_STAGE"}
ARCHIVE_AET = "ORTHANC_MAIN"


def _dimse(rng: random.Random, peer: str, operation: str, n: int) -> dict:
    collected = stats.DimseStats()
    for _ in range(n):
        collected.record(
            peer, operation, "success" if rng.random() > 0.01 else "failure", rng.expovariate(20)
        )
    for _ in range(n // 2):
        collected.record(ARCHIVE_AET, "C-FIND", "success", rng.expovariate(50))
    return collected.to_metadata()


def _entry(run_id: str, job: str, ts: float, event: DagsterEvent) -> EventLogEntry:
    return EventLogEntry(
        error_info=None,
        level=logging.INFO,
        user_message="",
        run_id=run_id,
        timestamp=ts,
        step_key=event.step_key,
        job_name=job,
        dagster_event=event,
    )


def fill(instance: DagsterInstance, runs: int, seed: int = 7, nights_back: int | None = None) -> int:
    """Store `runs` backup runs (3 per night, newest last). Returns the number of events stored."""
    rng = random.Random(seed)
    now = time.time()
    nights = nights_back if nights_back is not None else runs // len(SOURCES) + 1
    events = 0
    batch: list[EventLogEntry] = []
    for i in range(runs):
        source = list(SOURCES)[i % len(SOURCES)]
        peer = SOURCES[source]
        night = nights - i // len(SOURCES)
        duration = rng.uniform(300, 1500)
        # 01:30 of each night; tonight's runs (nights_back=0) have just finished, as a live run's would.
        start = min(now - night * 86400 + 5400 + rng.uniform(0, 600), now - duration - 60)
        job = f"{source}_backup"
        partition = datetime.fromtimestamp(start - 86400, UTC).date().isoformat()
        run = DagsterRun(
            job_name=job,
            run_id=str(uuid.uuid4()),
            status=DagsterRunStatus.NOT_STARTED,
            tags={SOURCE_TAG: source, "dagster/partition": partition},
        )
        instance.add_run(run)
        failed_run = rng.random() < 0.03
        found = rng.randint(200, 2000)
        moved = 0 if failed_run else found - rng.randint(0, 20)
        start_event = DagsterEvent(DagsterEventType.PIPELINE_START.value, job_name=job)
        end_type = DagsterEventType.PIPELINE_FAILURE if failed_run else DagsterEventType.PIPELINE_SUCCESS
        instance.handle_new_event(_entry(run.run_id, job, start, start_event))
        mats = [
            AssetMaterialization(
                asset_key=AssetKey([source, "inventory"]),
                partition=partition,
                metadata={
                    "instances": found,
                    "seconds_find": round(rng.uniform(1, 30), 3),
                    "dimse": MetadataValue.json(_dimse(rng, peer, "C-FIND", rng.randint(20, 60))),
                },
            )
        ]
        if not failed_run:
            mats.append(
                AssetMaterialization(
                    asset_key=AssetKey([source, "archived"]),
                    partition=partition,
                    metadata={
                        "instances_found": found,
                        "already_archived": found - moved,
                        "moved": moved,
                        "failed": 0,
                        "deferred": 0,
                        "seconds_total": round(duration, 3),
                        "bytes": moved * 524288,
                        "dimse": MetadataValue.json(_dimse(rng, peer, "C-MOVE", rng.randint(10, 40))),
                    },
                )
            )
        for k, mat in enumerate(mats):
            event = DagsterEvent(
                DagsterEventType.ASSET_MATERIALIZATION.value,
                job_name=job,
                step_key=f"{source}__{mat.asset_key.path[-1]}",
                event_specific_data=StepMaterializationData(mat),
            )
            batch.append(_entry(run.run_id, job, start + 60 * (k + 1), event))
        if not failed_run:
            sampled = max(1, found // 50)
            evaluation = AssetCheckEvaluation(
                asset_key=AssetKey([source, "archived"]),
                check_name="content_verified",
                passed=True,
                metadata={"sampled": sampled, "matched": sampled, "partition": partition},
                severity=AssetCheckSeverity.ERROR,
            )
            # Check evaluations cannot be batch-written (dagster-postgres); one insert each.
            instance.event_log_storage.store_event(
                _entry(
                    run.run_id,
                    job,
                    start + duration - 30,
                    DagsterEvent(
                        DagsterEventType.ASSET_CHECK_EVALUATION.value,
                        job_name=job,
                        step_key=f"{source}__archived_content_verified",
                        event_specific_data=evaluation,
                    ),
                )
            )
            events += 1
        if i % 10 == 0:
            observation = AssetObservation(
                asset_key=AssetKey(["peers", source]),
                metadata={"up": 1, "latency_ms": round(rng.uniform(5, 80), 3), "check": "C-ECHO"},
            )
            batch.append(
                _entry(
                    run.run_id,
                    job,
                    start,
                    DagsterEvent(
                        DagsterEventType.ASSET_OBSERVATION.value,
                        job_name=job,
                        event_specific_data=AssetObservationData(observation),
                    ),
                )
            )
        if len(batch) >= 500:
            instance.event_log_storage.store_event_batch(batch)
            events += len(batch)
            batch = []
        end_event = DagsterEvent(end_type.value, job_name=job)
        instance.handle_new_event(_entry(run.run_id, job, start + duration, end_event))
        events += 2
    if batch:
        instance.event_log_storage.store_event_batch(batch)
        events += len(batch)
    return events


def fill_parallel(instance: DagsterInstance, runs: int, workers: int = 8) -> int:
    """fill() in `workers` threads over disjoint nights: dagster-postgres opens a connection per
    statement (NullPool, ~4 ms each here), so inserting is latency-bound and threads overlap it."""
    per = runs // len(SOURCES) // workers * len(SOURCES) or len(SOURCES)
    chunks = []
    offset = 0
    while offset < runs:
        count = min(per, runs - offset)
        nights_back = (runs - offset) // len(SOURCES) + 1  # chunk k covers older nights first
        chunks.append((count, nights_back, offset))
        offset += count
    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(lambda c: fill(instance, c[0], seed=c[2], nights_back=c[1]), chunks))


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def http_scrape(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as response:
        response.read()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions of each scrape kind")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)

    name = f"dagster_bench_exporter_{uuid.uuid4().hex[:10]}"
    pg = {"host": args.pg_host, "port": args.pg_port, "user": args.pg_user}
    admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **pg)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    os.environ.update(
        DAGSTER_PG_HOST=args.pg_host,
        DAGSTER_PG_PORT=str(args.pg_port),
        DAGSTER_PG_USER=args.pg_user,
        DAGSTER_PG_PASSWORD="",
        DAGSTER_PG_DB=name,
    )
    instance = DagsterInstance.from_config(str(REPO / "dagster_home" / "postgres"))
    try:
        print(f"database {name} on {args.pg_host}:{args.pg_port}: storing {args.runs} runs ...", flush=True)
        seconds = timed(lambda: print(f"  {fill_parallel(instance, args.runs)} events", flush=True))
        print(f"  filled in {seconds:.1f} s ({instance.get_runs_count()} runs in run storage)")

        cold = DagsterStateCollector(lambda: instance, cache_seconds=30, scrape_wait_seconds=600)
        registry = build_registry(cold)
        first = timed(lambda: generate_latest(registry))
        size = len(generate_latest(registry))
        cached = [timed(lambda: generate_latest(registry)) for _ in range(args.repeat)]
        folded = cold.totals.events
        print(f"\nexporter over {args.runs} runs ({folded} asset events folded, {size} bytes served)")
        print(f"  first scrape (rebuild from history):  {first:.3f} s (refresh {cold.refresh_seconds:.3f} s)")
        print(f"  cached scrape (within cache_seconds): median {statistics.median(cached) * 1000:.1f} ms")

        steady = []
        for night in range(args.repeat):
            fill(instance, len(SOURCES), seed=100 + night, nights_back=0)
            cold.last_refresh_attempt = 0.0  # the cache expired
            steady.append(timed(lambda: generate_latest(registry)))
        print(
            f"  steady scrape (cache expired, 1 new night): median {statistics.median(steady):.3f} s, "
            f"max {max(steady):.3f} s"
        )

        idle = []
        for _ in range(args.repeat):
            cold.last_refresh_attempt = 0.0  # the cache expired, no run changed since
            idle.append(timed(lambda: generate_latest(registry)))
        print(f"  idle scrape (cache expired, no run changed): median {statistics.median(idle):.3f} s")

        port_collector = DagsterStateCollector(lambda: instance, cache_seconds=30, scrape_wait_seconds=600)
        server, thread = start_http_server(0, addr="127.0.0.1", registry=build_registry(port_collector))
        port = server.server_address[1]
        http_first = http_scrape(port)
        http_cached = [http_scrape(port) for _ in range(args.repeat)]
        http_steady = []
        for night in range(args.repeat):
            fill(instance, len(SOURCES), seed=200 + night, nights_back=0)
            port_collector.last_refresh_attempt = 0.0
            http_steady.append(http_scrape(port))
        server.shutdown()
        thread.join(5)
        print(
            f"  HTTP /metrics: first {http_first:.3f} s, cached median "
            f"{statistics.median(http_cached) * 1000:.1f} ms, "
            f"steady median {statistics.median(http_steady):.3f} s"
        )
        goal = max(statistics.median(steady), statistics.median(http_steady))
        print(
            f"\ngoal: scrape < 1 s -> steady-state {goal:.3f} s: {'met' if goal < 1 else 'NOT met'}; "
            f"first (startup) scrape {max(first, http_first):.2f} s"
        )
    finally:
        instance.dispose()
        if args.keep:
            print(f"kept database {name}")
        else:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
