"""Nightly-run benchmark: ARIA's nightly job launched through the run queue vs dcmtk `movescu`, same day.

    .venv/bin/python benchmarks/nightly.py [--patients N] [--ct-slices N] [--root DIR] ...

1. Start a Sandbox whose ARIA holds one 5,000-instance treatment day (default: 100 patients x one planning
   study of 47 CT slices + RTSTRUCT + RTPLAN + RTDOSE, all dated the same day; no CBCT fractions, so the
   day is the whole data set). The dcmqrscp index is cached under --root (keep it stable between runs).
2. Physical limit: dcmtk `storescu` of ARIA's files to ORTHANC_MAIN over one association
   (TCP_NODELAY=1): the ingest ceiling of main on this host. Main is cleared afterwards.
3. Baseline: one `movescu -S` process per study (STUDY-level C-MOVE, ARIA_SIM -> ORTHANC_MAIN), one at a
   time (benchmarks/qr_backfill.py's `run_baseline`). Main is cleared afterwards.
4. `dagster dev` with a fresh DAGSTER_HOME; `ARIA_backup` is launched for the day's partition through
   GraphQL `launchRun` with the `dagster/partition` tag, so it goes through the QueuedRunCoordinator as a
   schedule tick's run does, with the look-back (`lookback_days`), the late-data scan and all four checks
   on ARIA/archived. Timed from launch to the run's end; per-step seconds from the run's step stats.
5. Re-run: the same launch again (every instance is on main: it must move 0) and timed.
6. With --profile, after the timed parts: main cleared, the same job run twice in this process
   (`execute_in_process`, a fresh instance and storage) under cProfile, first run and re-run, each with its
   steps' seconds and the top functions of the main thread by cumulative and by own time. pynetdicom's
   DUL threads are not profiled: the main thread's waits on their queues are the peers' time.

Exit status 0 when every step worked and the counts are right (all instances on main after each part,
the re-run moved 0, every check passed); 1 otherwise. A ratio below its goal is a result, not an error.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # runnable as a plain script from a checkout
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from mosaiq_records import report, step_seconds  # noqa: E402
from qr_backfill import Baseline, load, log, print_table, run_baseline, storescu_to_main  # noqa: E402

from dicom_backup_dagster.sandbox.night import DagsterDev, DagsterGraphQL, sandbox_environment  # noqa: E402
from dicom_backup_dagster.sandbox.sandbox import Sandbox, SandboxOptions  # noqa: E402
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions  # noqa: E402

SOURCE = "ARIA"
JOB = f"{SOURCE}_backup"
GOAL_NIGHTLY = 0.8  # x movescu of the same studies (issue 19)
GOAL_RERUN_S = 10.0
CHECKS = {"complete_in_archive", "content_verified", "volume_vs_baseline", "duration_vs_baseline"}
NO_MIM_PATIENTS = 10_000
PHASES = ("seconds_find", "seconds_plan", "seconds_transfer", "seconds_confirm")


@dataclass
class NightRun:
    run_id: str = ""
    status: str = ""
    seconds: float = 0.0  # launch -> the run's end as GraphQL reports it
    queued_s: float | None = None  # launch -> the run's start
    run_s: float | None = None  # the run's start -> end
    steps: dict[str, float] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    metadata: dict[str, float] = field(default_factory=dict)  # ARIA/archived of the day (int and float)
    instances_on_main: int = 0


def step_stats(client: DagsterGraphQL, run_id: str) -> dict[str, float]:
    data = client.query(
        """query($id: ID!) { runOrError(runId: $id) { __typename
             ... on Run { stepStats { stepKey startTime endTime } } } }""",
        {"id": run_id},
    )
    out: dict[str, float] = {}
    for s in data["runOrError"].get("stepStats", []):
        if s.get("startTime") and s.get("endTime"):
            out[s["stepKey"]] = float(s["endTime"]) - float(s["startTime"])
    return out


def archived_metadata(client: DagsterGraphQL, run_id: str) -> dict[str, float]:
    for event in client.materializations([SOURCE, "archived"]):
        if event.get("runId") == run_id:
            out: dict[str, float] = {}
            for e in event["metadataEntries"]:
                value = e.get("intValue", e.get("floatValue"))
                if isinstance(value, (int, float)):
                    out[e["label"]] = value
            return out
    return {}


def launch_night(client: DagsterGraphQL, sandbox: Sandbox, day: str, timeout_s: float) -> NightRun:
    result = NightRun()
    launched_wall = time.time()
    launched = time.perf_counter()
    result.run_id = client.launch_job(
        JOB, tags={"dagster/partition": day, "dicom_backup/launched_by": "benchmark"}
    )
    run = client.wait_for_run(result.run_id, timeout_s)
    result.seconds = time.perf_counter() - launched
    result.status = str(run.get("status"))
    if run.get("startTime") and run.get("endTime"):
        result.queued_s = float(run["startTime"]) - launched_wall
        result.run_s = float(run["endTime"]) - float(run["startTime"])
    result.steps = step_stats(client, result.run_id)
    result.checks = {
        str(e["checkName"]): bool(e["success"])
        for e in client.check_evaluations(result.run_id)
        if e.get("partition") == day
    }
    result.metadata = archived_metadata(client, result.run_id)
    assert sandbox.main is not None
    result.instances_on_main = sandbox.main.count_instances()
    return result


def profile_nights(sandbox: Sandbox, day: str, home: Path, lines: int) -> list[str]:
    """cProfile of the nightly job run in this process, first run and re-run; the problems found."""
    import dagster as dg

    from dicom_backup_dagster.config import load_config
    from dicom_backup_dagster.defs import build_definitions

    assert sandbox.main is not None
    sandbox.main.clear()
    os.environ.update(sandbox_environment(sandbox.config_path, sandbox.env_vars()))
    os.environ.pop("DICOM_BACKUP_STORAGE_DIR", None)  # the fresh instance's own storage: nothing reused
    job = build_definitions(load_config(sandbox.config_path, "SANDBOX")).resolve_job_def(JOB)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    problems: list[str] = []
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        for name in ("first run", "re-run"):
            log(f"profile: {JOB} for {day} in process ({name}, load {load()}) ...")
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            result = job.execute_in_process(partition_key=day, instance=instance, raise_on_error=False)
            profiler.disable()
            seconds = time.perf_counter() - started
            status = "SUCCESS" if result.success else "FAILURE"
            print(f"\n==== profile, {name}: {status} in {seconds:.1f} s ====")
            for key, step_s in sorted(step_seconds(instance, result.run_id).items(), key=lambda kv: -kv[1]):
                print(f"    {key:<50} {step_s:7.2f} s")
            for order in ("cumulative", "tottime"):
                report(profiler, f"{JOB} in process, {name}", lines, order)
            if not result.success:
                problems.append(f"profile {name}: the in-process run failed")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--root", type=Path, default=Path(tempfile.gettempdir()) / f"dicom-backup-nightly-{os.getuid()}"
    )
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--patients", type=int, default=100)
    ap.add_argument("--ct-slices", type=int, default=47, help="instances per patient = ct-slices + 3")
    ap.add_argument("--day", type=dt.date.fromisoformat, default=dt.date(2026, 1, 5), help="a weekday")
    ap.add_argument("--min-instances", type=int, default=5000)
    ap.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    ap.add_argument("--profile", action="store_true", help="then cProfile the job in process (step 6)")
    ap.add_argument("--profile-lines", type=int, default=30, help="functions per cProfile listing")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    data = SyntheticOptions(
        patients=args.patients,
        ct_slices=args.ct_slices,
        fractions=0,
        cbct_slices=0,
        span_days=1,
        start_date=args.day,
        mim_every=NO_MIM_PATIENTS,
    )
    root = args.root.resolve()
    sandbox = Sandbox(root, SandboxOptions(data=data, cache_dir=args.cache_dir))
    dagster: DagsterDev | None = None
    problems: list[str] = []
    baseline: Baseline | None = None
    limit_s: float | None = None
    first: NightRun | None = None
    rerun: NightRun | None = None
    loads = {"start": load()}
    day = args.day.isoformat()
    instances = 0
    studies: list[str] = []
    try:
        log(f"starting the sandbox under {root} (load {loads['start']}) ...")
        sandbox.start()
        assert sandbox.manifest is not None and sandbox.main is not None
        records = list(sandbox.manifest.for_source(SOURCE))
        instances = len(records)
        studies = sorted(Counter(r.study_instance_uid for r in records))
        log(f"ARIA: {instances} instances in {len(studies)} studies on {day}, backend {sandbox.aria_backend}")
        if instances < args.min_instances:
            raise SystemExit(f"ARIA holds {instances} instances < --min-instances {args.min_instances}")
        sandbox.main.clear()

        loads["limit"] = load()
        log(f"physical limit: storescu of {instances} files to main (load {loads['limit']}) ...")
        limit_s = storescu_to_main(sandbox, [Path(r.path) for r in records], sandbox.run_dir / "storescu")
        if sandbox.main.count_instances() != instances:
            problems.append(f"storescu: {sandbox.main.count_instances()} on main, expected {instances}")
        sandbox.main.clear()

        loads["baseline"] = load()
        log(f"baseline: movescu -S per study (load {loads['baseline']}) ...")
        baseline = run_baseline(sandbox, studies, 1, sandbox.run_dir / "baseline")
        if baseline.instances_on_main != instances or baseline.failed_processes:
            problems.append(f"movescu: {baseline.instances_on_main} on main, {baseline.failed_processes[:3]}")
        sandbox.main.clear()

        shutil.rmtree(root / "dagster_home", ignore_errors=True)
        dagster = DagsterDev(root, sandbox_environment(sandbox.config_path, sandbox.env_vars()))
        client = dagster.start()
        for name in ("first", "rerun"):
            loads[name] = load()
            log(f"{JOB} for {day} through the run queue ({name}, load {loads[name]}) ...")
            night = launch_night(client, sandbox, day, args.timeout)
            log(f"  {night.status} in {night.seconds:.1f} s, moved {night.metadata.get('moved')}")
            if night.status != "SUCCESS" or set(night.checks) != CHECKS or not all(night.checks.values()):
                problems.append(f"{name}: {night.status}, checks {night.checks}")
            if night.instances_on_main != instances:
                problems.append(f"{name}: {night.instances_on_main} on main, expected {instances}")
            if name == "first":
                first = night
            else:
                rerun = night
        if rerun is not None and rerun.metadata.get("moved"):
            problems.append(f"re-run moved {rerun.metadata.get('moved')} (expected 0)")
        if args.profile:
            dagster.stop()
            dagster = None
            problems += profile_nights(sandbox, day, root / "profile_home", args.profile_lines)
    finally:
        log("stopping dagster dev and the sandbox ...")
        if dagster is not None:
            dagster.stop()
        sandbox.stop()

    print()
    print(
        f"== ARIA nightly run: {instances} instances in {len(studies)} studies on {day}, "
        f"{os.cpu_count()} cores =="
    )
    b_s = baseline.seconds if baseline else None
    rows = [
        ("physical limit: storescu -> main, s", f"{limit_s:.1f}" if limit_s else "-",
         f"{b_s:.1f}" if b_s else "-", f"{b_s / limit_s:.2f}" if b_s and limit_s else "-"),
    ]  # fmt: skip
    for label, night in (("nightly run, launch -> end", first), ("re-run of the finished night", rerun)):
        if night is None or not b_s:
            continue
        rows.append((f"{label}, s", f"{night.seconds:.1f}", f"{b_s:.1f}", f"{b_s / night.seconds:.2f}"))
        if night.run_s:
            rows.append(("  the run alone (start -> end), s", f"{night.run_s:.1f}", f"{b_s:.1f}",
                         f"{b_s / night.run_s:.2f}"))  # fmt: skip
    print_table(rows)
    print(
        f"ratios: movescu seconds / figure seconds (goal nightly >= {GOAL_NIGHTLY}); re-run goal < "
        f"{GOAL_RERUN_S:.0f} s"
    )
    for label, night in (("first run", first), ("re-run", rerun)):
        if night is None:
            continue
        meta = night.metadata
        counts = ", ".join(
            f"{k} {int(meta[k])}"
            for k in ("instances_found", "already_archived", "moved", "failed")
            if k in meta
        )
        phases = ", ".join(f"{k} {meta[k]:.2f}" for k in PHASES if k in meta)
        print(f"  {label}: queued {night.queued_s or 0:.1f} s after launch; {counts}; phases s: {phases}")
        for key, seconds in sorted(night.steps.items(), key=lambda kv: -kv[1]):
            print(f"    {key:<50} {seconds:7.2f} s")
        print(f"    checks: {night.checks}")
    print(f"  load average (1/5/15 min): {', '.join(f'{k} {v}' for k, v in loads.items())}")
    print(f"  harness wall time {time.perf_counter() - began:.0f} s")
    if problems:
        print("PROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
