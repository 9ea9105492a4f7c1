"""Two sites' nights on two Celery workers at once vs the same two nights one after the other in process.

    .venv/bin/python benchmarks/celery_sites.py              # ~2,000 ARIA + ~2,000 MIM instances, one day
    .venv/bin/python benchmarks/celery_sites.py --patients 20 --ct-slices 50 --help

One sandbox with two sites (SANDBOX: ARIA; SANDBOX_B: MIM_B on MIM_SIM) and every instance dated on one
day, so each site's night is one partition of a few thousand instances. Baseline: `ARIA_backup` then
`MIM_B_backup` for that day, `executor = "in_process"`, in this process. Then main is cleared and the same
two nights run at once with `executor = "celery"`, each on its site's worker (real Redis, two workers
started with dagster-celery's task module, one per queue). Both phases start from an empty main, an empty
storage directory and a fresh Dagster instance. Prints wall times, their ratio, and the overhead Celery
adds per step. Benchmarks README: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dagster import DagsterEventType, DagsterInstance, execute_job  # noqa: E402
from dagster._core.definitions.reconstruct import ReconstructableRepository  # noqa: E402

from dicom_backup_dagster import sites  # noqa: E402
from dicom_backup_dagster.defs import BACKEND_ENV_VAR, BROKER_ENV_VAR  # noqa: E402
from dicom_backup_dagster.sandbox.processes import ManagedProcess, wait_until  # noqa: E402
from dicom_backup_dagster.sandbox.sandbox import ENVIRONMENT, SECOND_SITE, Sandbox, SandboxOptions  # noqa: E402
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions  # noqa: E402

JOBS = {ENVIRONMENT: "ARIA_backup", SECOND_SITE: "MIM_B_backup"}
SOURCES = {ENVIRONMENT: "ARIA", SECOND_SITE: "MIM"}
QUEUES = {ENVIRONMENT: "dicom-backup-sandbox", SECOND_SITE: "dicom-backup-sandbox_b"}


def run_night(instance: DagsterInstance, site: str, day: str) -> str:
    recon = ReconstructableRepository.for_module(
        "dicom_backup_dagster.sites", site, working_directory=str(REPO)
    ).get_reconstructable_job(JOBS[site])
    with execute_job(recon, instance, tags={"dagster/partition": day}, raise_on_error=False) as result:
        if not result.success:
            raise SystemExit(f"{JOBS[site]} {day} failed (run {result.run_id})")
        return result.run_id


def run_seconds(instance: DagsterInstance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    assert record is not None and record.start_time and record.end_time
    return record.end_time - record.start_time


def step_figures(instance: DagsterInstance, run_id: str) -> dict[str, dict[str, float]]:
    """step key -> timestamps of submit (Celery only), start and success."""
    out: dict[str, dict[str, float]] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        times = out.setdefault(entry.step_key, {})
        if event.event_type == DagsterEventType.ENGINE_EVENT and "Submitting celery task" in (
            event.message or ""
        ):
            times["submit"] = entry.timestamp
        elif event.event_type == DagsterEventType.STEP_START:
            times["start"] = entry.timestamp
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            times["end"] = entry.timestamp
    return out


def fresh_phase(
    root: Path, name: str, sandbox: Sandbox, executor: str, env: dict[str, str]
) -> DagsterInstance:
    """An empty main, storage and instance; the sandbox TOML with `executor` for both sites."""
    assert sandbox.main is not None
    sandbox.main.clear()
    config = root / f"environments-{name}.toml"
    config.write_text(sandbox.toml_text().replace('executor = "celery"', f'executor = "{executor}"'))
    home = root / f"home-{name}"
    for old in (home, root / f"storage-{name}"):  # a fresh instance and storage each run
        shutil.rmtree(old, ignore_errors=True)
    home.mkdir(parents=True)
    env.update(
        {"DICOM_BACKUP_CONFIG": str(config), "DICOM_BACKUP_STORAGE_DIR": str(root / f"storage-{name}")}
    )
    os.environ.update(env)
    sites._built.clear()
    return DagsterInstance.from_config(str(home))


def start_worker(root: Path, site: str, broker: str, env: dict[str, str]) -> ManagedProcess:
    celery = str(Path(sys.executable).with_name("celery"))
    argv = [
        *(celery, "--app", "dagster_celery.app", "--broker", broker, "--result-backend", broker, "worker"),
        *("--queues", QUEUES[site], "--hostname", f"{site}@%h", "--concurrency", "1", "--loglevel", "INFO"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
    ]
    process = ManagedProcess(f"worker-{site}", argv, root / f"worker-{site}.log", env=env, cwd=REPO)
    process.start()
    return process


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--root", type=Path, default=Path(tempfile.gettempdir()) / f"dicom-backup-celery-{os.getuid()}"
    )
    ap.add_argument("--patients", type=int, default=40, help="every other one on MIM (default 40)")
    ap.add_argument("--ct-slices", type=int, default=100)
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/12", help="Redis database for this run")
    args = ap.parse_args(argv)
    import redis

    redis.Redis.from_url(args.broker).flushdb()
    day = dt.date(2026, 1, 5)
    data = SyntheticOptions(
        patients=args.patients,
        ct_slices=args.ct_slices,
        fractions=0,
        span_days=1,
        mim_every=2,
        start_date=day,
    )
    options = SandboxOptions(data=data, second_site=True, executor="celery", cache_dir=args.root / "cache")
    args.root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    workers: list[ManagedProcess] = []
    with Sandbox(args.root / "sandbox", options) as sandbox:
        assert sandbox.manifest is not None
        counts = {s: sum(1 for r in sandbox.manifest if r.source == src) for s, src in SOURCES.items()}
        print(f"data: {counts[ENVIRONMENT]} ARIA + {counts[SECOND_SITE]} MIM instances, all dated {day}")
        env = {
            **os.environ,
            **sandbox.env_vars(),
            BROKER_ENV_VAR: args.broker,
            BACKEND_ENV_VAR: args.broker,
            "PYTHONPATH": str(REPO),
        }
        env.pop("DICOM_BACKUP_ENVIRONMENT", None)
        assert sandbox.main is not None

        # 1. In process, one night after the other.
        instance = fresh_phase(args.root, "in_process", sandbox, "in_process", env)
        t0 = time.monotonic()
        baseline_runs = {site: run_night(instance, site, day.isoformat()) for site in JOBS}
        sequential = time.monotonic() - t0
        baseline = {s: run_seconds(instance, r) for s, r in baseline_runs.items()}
        baseline_steps = {s: step_figures(instance, r) for s, r in baseline_runs.items()}
        on_main_1 = sandbox.main.count_instances()

        # 2. Celery, both nights at once, each on its site's worker.
        instance = fresh_phase(args.root, "celery", sandbox, "celery", env)
        workers = [start_worker(args.root, site, args.broker, env) for site in JOBS]
        for site in JOBS:
            log = args.root / f"worker-{site}.log"
            wait_until(
                lambda log=log: log.exists() and "ready." in log.read_text(errors="replace"), 120, site
            )
        celery_runs: dict[str, str] = {}
        threads = [
            threading.Thread(
                target=lambda s=site: celery_runs.update({s: run_night(instance, s, day.isoformat())})
            )
            for site in JOBS
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        parallel = time.monotonic() - t0
        on_main_2 = sandbox.main.count_instances()
        for w in workers:
            w.stop(timeout=5)
        if set(celery_runs) != set(JOBS):
            print("a Celery night failed (see above)")
            return 1
        celery = {s: run_seconds(instance, r) for s, r in celery_runs.items()}
        celery_steps = {s: step_figures(instance, r) for s, r in celery_runs.items()}

    expected = sum(counts.values())
    print_results(sequential, parallel, baseline, celery, baseline_steps, celery_steps)
    print(
        f"on main: {on_main_1} after the in-process nights, {on_main_2} after the Celery nights "
        f"(expected {expected}); harness {time.monotonic() - started:.0f} s; load {os.getloadavg()[0]:.1f}"
    )
    return 0 if on_main_1 == on_main_2 == expected else 1


def print_results(
    sequential: float,
    parallel: float,
    baseline: dict[str, float],
    celery: dict[str, float],
    baseline_steps: dict[str, Any],
    celery_steps: dict[str, Any],
) -> None:
    print(f"two nights in process, one after the other: {sequential:.1f} s")
    print(f"two nights on two Celery workers at once:   {parallel:.1f} s")
    print(f"ratio (in-process sequential / Celery parallel): {sequential / parallel:.2f}")
    for site in JOBS:
        steps = len(celery_steps[site])
        body_b, body_c = bodies(baseline_steps[site]), bodies(celery_steps[site])
        # What a run spends outside its step bodies, per step: orchestration in process; on Celery also
        # task submission, the worker's step process, job import and the orchestrator's 1 s result polling.
        outside_b, outside_c = (baseline[site] - body_b) / steps, (celery[site] - body_c) / steps
        waits = [
            t["start"] - t["submit"] for t in celery_steps[site].values() if {"start", "submit"} <= set(t)
        ]
        print(
            f"{JOBS[site]}: {steps} steps; run {baseline[site]:.1f} s in process (step bodies "
            f"{body_b:.1f} s), {celery[site]:.1f} s on Celery (bodies {body_c:.1f} s); outside the bodies "
            f"{outside_b:.2f} s/step in process, {outside_c:.2f} s/step on Celery: Celery adds "
            f"{outside_c - outside_b:.2f} s/step; "
            f"mean submit -> start {sum(waits) / max(1, len(waits)):.1f} s (checks queue behind each other "
            "on a worker of concurrency 1)"
        )


def bodies(steps: dict[str, dict[str, float]]) -> float:
    return sum(t["end"] - t["start"] for t in steps.values() if {"start", "end"} <= set(t))


if __name__ == "__main__":
    sys.exit(main())
