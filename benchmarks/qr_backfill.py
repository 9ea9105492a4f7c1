"""ARIA backfill benchmark: Dagster asset backfill vs dcmtk `movescu`, same studies, same sandbox, same run.

    .venv/bin/python benchmarks/qr_backfill.py [--patients N] [--cache-dir DIR] [--root DIR] ...
    .venv/bin/python benchmarks/qr_backfill.py --sizes 5000,20000,100000 --summary-json sizes.jsonl
    .venv/bin/python benchmarks/qr_backfill.py --compare sizes.jsonl   # the side-by-side table again

--sizes runs the whole benchmark once per size (patients = size / 125 rounded up, each size under
ROOT/<size>) and prints, after every size, a table of the sizes side by side: rates, ratio, per-phase
seconds, daemon ticks, physical limit, re-run and the run processes' peak RSS, with the load average.

1. Start a Sandbox (Orthanc main + staging, ARIA_SIM, MIM_SIM, Mosaiq DB) sized so that ARIA holds at
   least --min-instances instances (default options: 40 patients x 125 instances = 5,000, 240 studies,
   which the "auto" ARIA backend serves with dcmqrscp).
2. Baseline: for every ARIA study, one `movescu -S` process (= one association, one STUDY-level C-MOVE)
   from ARIA_SIM to ORTHANC_MAIN, TCP_NODELAY=1 in its environment (Orthanc and dcmqrscp run with it too:
   without it every DIMSE message waits ~40 ms for a delayed ACK; docs/decisions/dicom-peers.md).
   Wall time over all studies; instances counted on main by REST; peak RSS of the movescu processes
   (GNU time's %M).
3. Clear main, start `dagster dev` against the sandbox environment, launch ONE asset backfill of
   [ARIA, inventory] + [ARIA, archived] over every sandbox date through GraphQL (as the UI does), wait for
   it. Wall time from launch to the backfill's completion; instances on main by REST; the RSS high-water
   mark (VmHWM) of every run worker (Dagster 1.13 starts them as multiprocessing-spawn children of the
   code server; `dagster api execute_run` children are matched too), sampled from /proc.
4. Launch the same backfill again (re-run of a finished backfill: must move 0 instances) and time it.
5. Print a table (figure, value, baseline, ratio) and some diagnostics; stop everything by PID.

Exit status: 0 when every step completed and the counts are right (all ARIA instances on main after the
baseline and after the backfill, 0 moved by the re-run); 1 otherwise. A ratio below the goal is reported,
not an error. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from dicom_backup_dagster.sandbox.night import (  # noqa: E402
    DagsterDev,
    DagsterGraphQL,
    sandbox_environment,
)
from dicom_backup_dagster.sandbox.sandbox import (  # noqa: E402
    ARIA_AET,
    DCMQRSCP_MAX_INSTANCES,
    MAIN_AET,
    Sandbox,
    SandboxOptions,
)
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions  # noqa: E402

MOVESCU = shutil.which("movescu") or "/usr/bin/movescu"
STORESCU = shutil.which("storescu") or "/usr/bin/storescu"
TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None  # GNU time, for movescu's peak RSS
GOAL_RATIO = 0.8
SOURCE = "ARIA"  # the ARIA source alias in the sandbox TOML
ASSETS = [[SOURCE, "inventory"], [SOURCE, "archived"]]
NO_MIM_PATIENTS = 10_000  # SyntheticOptions.mim_every above the patient count: every patient on ARIA
RUN_WORKER_MARKERS = ("spawn_main", "execute_run")  # how a Dagster run process shows up in its cmdline
SUCCESS_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# --------------------------------------------------------------------------------------------------
# Memory: RSS high-water marks of processes below a PID, from /proc (no psutil needed)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _status_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0])
    except OSError:
        pass
    return values


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class RssSampler:
    """Every `interval` s: VmHWM of each run worker below `root_pid`, and the RSS sum of the whole tree."""

    def __init__(self, root_pid: int, interval: float = 0.2) -> None:
        self.root_pid = root_pid
        self.interval = interval
        self.worker_hwm_kib: dict[int, int] = {}  # pid -> highest VmHWM seen
        self.tree_peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._is_worker: dict[int, bool] = {}

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = _status_kib(self.root_pid).get("VmRSS", 0)
            for pid in descendants(self.root_pid):
                status = _status_kib(pid)
                total += status.get("VmRSS", 0)
                if pid not in self._is_worker:
                    cmd = _cmdline(pid)
                    self._is_worker[pid] = (
                        any(m in cmd for m in RUN_WORKER_MARKERS) and "resource_tracker" not in cmd
                    )
                if self._is_worker[pid] and "VmHWM" in status:
                    self.worker_hwm_kib[pid] = max(self.worker_hwm_kib.get(pid, 0), status["VmHWM"])
            self.tree_peak_kib = max(self.tree_peak_kib, total)
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_worker_kib(self) -> int:
        return max(self.worker_hwm_kib.values(), default=0)


# --------------------------------------------------------------------------------------------------
# Baseline: movescu per study


@dataclass
class Baseline:
    studies: int = 0
    processes: int = 0
    jobs: int = 1
    seconds: float = 0.0
    instances_on_main: int = 0
    failed_processes: list[str] = field(default_factory=list)
    peak_rss_kib: int = 0


def run_baseline(sandbox: Sandbox, studies: list[str], jobs: int, log_dir: Path) -> Baseline:
    aria = sandbox.peers()["ARIA"]
    env = {**os.environ, "TCP_NODELAY": "1"}
    log_dir.mkdir(parents=True, exist_ok=True)
    result = Baseline(studies=len(studies), jobs=jobs)
    lock = threading.Lock()

    def move(index_uid: tuple[int, str]) -> None:
        index, uid = index_uid
        argv = [
            MOVESCU, "-S", "-aet", sandbox.options.script_aet, "-aec", ARIA_AET, "-aem", MAIN_AET,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}", aria.host, str(aria.port),
        ]  # fmt: skip
        rss_file = log_dir / f"movescu-{index:04d}.maxrss"
        if TIME:
            # GNU time reports movescu's own peak RSS. (wait4's ru_maxrss of a child of this process would
            # include the RSS of the forked Python before exec: ~130 MiB instead of ~9.)
            argv = [TIME, "-f", "%M", "-o", str(rss_file), *argv]
        with open(log_dir / f"movescu-{index:04d}.log", "wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
            proc.wait()
        peak = 0
        if TIME:
            with contextlib.suppress(OSError, ValueError, IndexError):
                peak = int(rss_file.read_text().split()[-1])
        with lock:
            result.processes += 1
            result.peak_rss_kib = max(result.peak_rss_kib, peak)
            if proc.returncode != 0:
                result.failed_processes.append(f"study #{index} rc {proc.returncode} (see {out.name})")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(move, enumerate(studies)))
    result.seconds = time.perf_counter() - started
    assert sandbox.main is not None
    result.instances_on_main = sandbox.main.count_instances()
    return result


def storescu_to_main(sandbox: Sandbox, files: list[Path], folder: Path) -> float:
    """storescu of `files` to main over one association (TCP_NODELAY=1), from one folder of links."""
    assert sandbox.main is not None
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, path in enumerate(files):
        (folder / f"{i:06d}.dcm").symlink_to(path)
    main = sandbox.main
    cmd = [STORESCU, "-aet", sandbox.options.script_aet, "-aec", main.aet, "+sd", "+r", "127.0.0.1",
           str(main.dicom_port), str(folder)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"})
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"storescu to main failed ({done.returncode}): {done.stderr[-500:]}")
    return seconds


# --------------------------------------------------------------------------------------------------
# Dagster backfill


@dataclass
class BackfillResult:
    backfill_id: str = ""
    status: str = ""
    seconds: float = 0.0
    runs: int = 0
    run_status: Counter[str] = field(default_factory=Counter)
    first_run_start_s: float | None = None  # after launch
    last_run_end_s: float | None = None  # after launch
    run_seconds_sum: float = 0.0
    run_seconds_max: float = 0.0
    instances_on_main: int = 0
    metadata_sums: Counter[str] = field(default_factory=Counter)
    seconds_sums: Counter[str] = field(default_factory=Counter)
    step_retries: list[str] = field(default_factory=list)  # "<step> (<partition>)" per retry
    materializations: int = 0


SUMMED_SECONDS = (
    "seconds_find",
    "seconds_plan",
    "seconds_transfer",
    "seconds_confirm",
    "seconds_total",  # a ranged run's run_seconds_total counts here (the prefix is dropped below)
)
# Per-partition counts (each instance counted by one partition of its run) are summed over every
# materialization; run-level figures, which a ranged run repeats on each of its partitions, once per run.
PER_PARTITION = ("instances_found", "already_archived", "moved", "failed", "deferred")
PER_RUN = ("sub_operations_completed", "requests", "associations")  # a ranged run: run_<key>
SUMMED = PER_PARTITION + PER_RUN


def archived_materializations(client: DagsterGraphQL) -> list[dict[str, Any]]:
    """Every materialization of ARIA/archived with its int and float metadata (the phase seconds)."""
    data = client.query(
        """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename
             ... on AssetNode { assetMaterializations(limit: 10000) { partition runId
               metadataEntries { label __typename ... on IntMetadataEntry { intValue }
                 ... on FloatMetadataEntry { floatValue } } } } } }""",
        {"key": {"path": [SOURCE, "archived"]}},
    )
    return list(data["assetNodeOrError"].get("assetMaterializations", []))


def step_retries(client: DagsterGraphQL, run_id: str) -> list[str]:
    """Steps of a run that failed and were retried by their RetryPolicy (each a delay in the wall time)."""
    data = client.query(
        """query($id: ID!) { logsForRun(runId: $id, limit: 5000) { __typename
             ... on EventConnection { events { __typename ... on StepEvent { stepKey } } } } }""",
        {"id": run_id},
    )
    events = data["logsForRun"].get("events", [])
    return [str(e.get("stepKey")) for e in events if e.get("__typename") == "ExecutionStepUpForRetryEvent"]


def run_backfill(
    client: DagsterGraphQL, sandbox: Sandbox, start: str, end: str, title: str, timeout_s: float
) -> BackfillResult:
    result = BackfillResult()
    launched_wall = time.time()
    launched = time.perf_counter()
    result.backfill_id = client.launch_backfill(
        ASSETS, [(start, end)], title=title, tags={"dicom_backup/launched_by": "benchmark"}
    )
    backfill = client.wait_for_backfill(result.backfill_id, timeout_s=timeout_s)
    result.seconds = time.perf_counter() - launched
    result.status = str(backfill.get("status"))
    runs = backfill.get("runs") or []
    result.runs = len(runs)
    run_ids = set()
    starts, ends = [], []
    for r in runs:
        run_ids.add(r["runId"])
        info = client.run(r["runId"])
        result.step_retries += step_retries(client, r["runId"])
        result.run_status[str(info.get("status"))] += 1
        if info.get("startTime") and info.get("endTime"):
            starts.append(float(info["startTime"]))
            ends.append(float(info["endTime"]))
            duration = float(info["endTime"]) - float(info["startTime"])
            result.run_seconds_sum += duration
            result.run_seconds_max = max(result.run_seconds_max, duration)
    if starts:
        result.first_run_start_s = min(starts) - launched_wall
        result.last_run_end_s = max(ends) - launched_wall
    counted_runs: set[str] = set()
    for event in archived_materializations(client):
        if event.get("runId") not in run_ids:
            continue
        result.materializations += 1
        first_of_run = event["runId"] not in counted_runs
        counted_runs.add(event["runId"])
        for entry in event["metadataEntries"]:
            label = entry["label"].removeprefix("run_") if entry["label"] != "run_partitions" else ""
            if label in PER_PARTITION and entry["label"] != label:
                continue  # a ranged run's totals of its days: the days are summed already
            if entry["__typename"] == "IntMetadataEntry" and label in SUMMED:
                if label in PER_PARTITION or first_of_run:
                    result.metadata_sums[label] += int(entry["intValue"])
            elif entry["__typename"] == "FloatMetadataEntry" and label in SUMMED_SECONDS and first_of_run:
                result.seconds_sums[label] += float(entry["floatValue"] or 0.0)
    assert sandbox.main is not None
    result.instances_on_main = sandbox.main.count_instances()
    return result


# --------------------------------------------------------------------------------------------------
# Report


def _fmt(value: float | int | str | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, baseline: float | None) -> str:
    if value is None or not baseline:
        return "-"
    return f"{value / baseline:.2f}"


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("figure", "value", "baseline (movescu)", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    print(line)
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(line, flush=True)


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = SyntheticOptions()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--root",
        type=Path,
        default=Path(tempfile.gettempdir()) / f"dicom-backup-bench-{os.getuid()}",
        help="sandbox directory; run/ and dagster_home/ are recreated each time (default: %(default)s). "
        "Keep it stable between runs: the dcmqrscp index cache is keyed by the storage path under it.",
    )
    ap.add_argument("--cache-dir", type=Path, default=None, help="generated data cache (default ROOT/cache)")
    g = ap.add_argument_group("synthetic data (ARIA instances = patients x (ct + 3 + fractions x cbct))")
    g.add_argument("--patients", type=int, default=40)
    g.add_argument("--ct-slices", type=int, default=42)
    g.add_argument("--fractions", type=int, default=5)
    g.add_argument("--cbct-slices", type=int, default=16)
    g.add_argument("--image-size", type=int, default=d.image_size)
    g.add_argument("--span-days", type=int, default=d.span_days)
    g.add_argument("--start-date", type=dt.date.fromisoformat, default=d.start_date)
    g.add_argument(
        "--mim-every", type=int, default=0, help="every N-th patient on MIM instead (default 0: none)"
    )
    ap.add_argument(
        "--aria-backend",
        choices=("auto", "dcmqrscp", "pynetdicom"),
        default="auto",
        help=f"ARIA_SIM implementation (auto: dcmqrscp up to {DCMQRSCP_MAX_INSTANCES} instances/500 studies)",
    )
    ap.add_argument("--min-instances", type=int, default=5000, help="refuse smaller ARIA data sets")
    ap.add_argument("--baseline-jobs", type=int, default=1, help="movescu processes at a time (default 1)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per backfill, seconds")
    ap.add_argument(
        "--instances",
        type=int,
        default=None,
        help="ARIA instances wanted: sets --patients to the smallest count giving at least this many",
    )
    ap.add_argument(
        "--sizes",
        type=lambda v: [int(x) for x in v.replace("_", "").split(",") if x],
        default=None,
        help="comma-separated instance counts (e.g. 5000,20000,100000): one benchmark per size, one after "
        "the other, each under ROOT/<size>, then a side-by-side table of how the cost grows",
    )
    ap.add_argument(
        "--summary-json",
        type=Path,
        default=None,
        help="append each size's figures to this JSON-lines file (for --compare)",
    )
    ap.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=None,
        help="only print the side-by-side table from --summary-json files of earlier runs",
    )
    return ap.parse_args(argv)


def run_one(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """One benchmark at one size; returns the exit status and the figures for the side-by-side table."""
    harness_started = time.perf_counter()
    data = SyntheticOptions(
        patients=args.patients,
        ct_slices=args.ct_slices,
        fractions=args.fractions,
        cbct_slices=args.cbct_slices,
        image_size=args.image_size,
        span_days=args.span_days,
        start_date=args.start_date,
        mim_every=args.mim_every or NO_MIM_PATIENTS,
    )
    options = SandboxOptions(data=data, cache_dir=args.cache_dir, aria_backend=args.aria_backend)
    root = args.root.resolve()
    sandbox = Sandbox(root, options)
    dagster: DagsterDev | None = None
    sampler: RssSampler | None = None
    problems: list[str] = []
    baseline: Baseline | None = None
    first: BackfillResult | None = None
    rerun: BackfillResult | None = None
    dagster_error: str | None = None
    aria_instances, studies, partitions = 0, [], 0
    limit_s: float | None = None
    loads = {"start": load()}
    log(f"load average {loads['start']} on {os.cpu_count()} cores; root {root}")
    try:
        log("starting the sandbox (generates data on first use) ...")
        sandbox.start()
        assert sandbox.manifest is not None and sandbox.main is not None
        per_study: Counter[str] = Counter(r.study_instance_uid for r in sandbox.manifest.for_source(SOURCE))
        aria_instances = sum(per_study.values())
        studies = sorted(per_study)
        dates = sandbox.dates
        start, end = min(dates).isoformat(), max(dates).isoformat()
        partitions = (max(dates) - min(dates)).days + 1
        steps = ", ".join(f"{k} {v}s" for k, v in sandbox.timings.items())
        log(f"sandbox up in {sandbox.start_seconds:.1f} s ({steps})")
        log(
            f"ARIA: {aria_instances} instances in {len(studies)} studies, backend {sandbox.aria_backend}; "
            f"dates {start}..{end} ({len(dates)} with data, {partitions} partitions)"
        )
        if aria_instances < args.min_instances:
            raise SystemExit(f"ARIA holds {aria_instances} instances < --min-instances {args.min_instances}")

        loads["limit"] = load()
        log(f"physical limit: storescu of {aria_instances} files to main (load {loads['limit']}) ...")
        files = [Path(r.path) for r in sandbox.manifest.for_source(SOURCE)]
        limit_s = storescu_to_main(sandbox, files, sandbox.run_dir / "storescu")
        if sandbox.main.count_instances() != aria_instances:
            problems.append(f"storescu: {sandbox.main.count_instances()} on main, expected {aria_instances}")
        sandbox.main.clear()

        loads["baseline"] = load()
        log(f"baseline: movescu -S per study, {args.baseline_jobs} at a time (load {loads['baseline']}) ...")
        baseline = run_baseline(sandbox, studies, args.baseline_jobs, sandbox.run_dir / "baseline")
        log(
            f"baseline: {baseline.instances_on_main} instances on main in {baseline.seconds:.1f} s "
            f"({baseline.instances_on_main / baseline.seconds:.1f}/s)"
        )
        if baseline.failed_processes:
            problems.append(
                f"{len(baseline.failed_processes)} movescu failed: {baseline.failed_processes[:3]}"
            )
        if baseline.instances_on_main != aria_instances:
            problems.append(f"baseline: {baseline.instances_on_main} on main, expected {aria_instances}")
        t = time.perf_counter()
        sandbox.main.clear()
        left = sandbox.main.count_instances()
        log(f"main cleared in {time.perf_counter() - t:.1f} s ({left} instances left)")
        if left:
            raise RuntimeError(f"main still holds {left} instances after clear()")

        try:
            shutil.rmtree(root / "dagster_home", ignore_errors=True)  # a fresh instance every time
            env = sandbox_environment(sandbox.config_path, sandbox.env_vars())
            dagster = DagsterDev(root, env)
            t = time.perf_counter()
            client = dagster.start()
            log(f"dagster dev ready in {time.perf_counter() - t:.1f} s at {dagster.url}")
            assert dagster.process is not None and dagster.process.pid is not None
            sampler = RssSampler(dagster.process.pid).start()
            loads["backfill"] = load()
            log(f"backfill {start}..{end} of {SOURCE}/inventory+archived (load {loads['backfill']}) ...")
            first = run_backfill(client, sandbox, start, end, f"benchmark {start}..{end}", args.timeout)
            log(
                f"backfill {first.status}: {first.instances_on_main} instances on main in "
                f"{first.seconds:.1f} s, {first.runs} runs {dict(first.run_status)}"
            )
            loads["rerun"] = load()
            log(f"re-run of the same backfill (load {loads['rerun']}) ...")
            rerun = run_backfill(
                client, sandbox, start, end, f"benchmark re-run {start}..{end}", args.timeout
            )
            log(f"re-run {rerun.status} in {rerun.seconds:.1f} s, moved {rerun.metadata_sums['moved']}")
            for name, r in (("backfill", first), ("re-run", rerun)):
                if r.status not in SUCCESS_BACKFILL or set(r.run_status) != {"SUCCESS"}:
                    problems.append(f"{name}: status {r.status}, runs {dict(r.run_status)}")
                if r.instances_on_main != aria_instances:
                    problems.append(f"{name}: {r.instances_on_main} on main, expected {aria_instances}")
            if rerun.metadata_sums["moved"] != 0:
                problems.append(f"re-run moved {rerun.metadata_sums['moved']} instances (expected 0)")
        except Exception as exc:  # report the baseline anyway
            dagster_error = f"{type(exc).__name__}: {exc}"
            problems.append(f"Dagster part failed: {dagster_error}")
        finally:
            if sampler is not None:
                sampler.stop()
        loads["end"] = load()
    finally:
        log("stopping dagster dev and the sandbox ...")
        if sampler is not None:
            sampler.stop()
        if dagster is not None:
            try:
                dagster.stop()
            except Exception as exc:
                problems.append(f"stopping dagster dev: {exc}")
        try:
            sandbox.stop()
        except Exception as exc:
            problems.append(f"stopping the sandbox: {exc}")

    harness_seconds = time.perf_counter() - harness_started
    print()
    print(
        f"== ARIA backfill benchmark: {aria_instances} instances, {len(studies)} studies, "
        f"{partitions} daily partitions, ARIA_SIM backend {sandbox.aria_backend}, {os.cpu_count()} cores =="
    )
    b = baseline
    b_rate = b.instances_on_main / b.seconds if b and b.seconds else None
    f_rate = first.instances_on_main / first.seconds if first and first.seconds else None
    moved, t_seconds = (
        (first.metadata_sums["moved"], first.seconds_sums["seconds_transfer"]) if first else (0, 0)
    )
    t_rate = moved / t_seconds if t_seconds else None  # sum of "moved" / sum of the C-MOVE phase seconds
    # Data on main and verified, before the backfill daemon's next tick marks the backfill complete.
    d_rate = first.instances_on_main / first.last_run_end_s if first and first.last_run_end_s else None
    # The runs alone: from the first run's start to the last run's end, without the daemon's ticks before
    # and after (Dagster 1.13's backfill daemon loop is a fixed 30 s).
    span = (
        first.last_run_end_s - first.first_run_start_s
        if first and first.last_run_end_s and first.first_run_start_s is not None
        else None
    )
    r_rate = first.instances_on_main / span if first and span else None
    worker_mib = sampler.peak_worker_kib / 1024 if sampler and sampler.worker_hwm_kib else None
    movescu_mib = b.peak_rss_kib / 1024 if b and b.peak_rss_kib else None
    rows = [
        ("instances on main", _fmt(first.instances_on_main if first else None),
         _fmt(b.instances_on_main if b else None),
         _ratio(first.instances_on_main if first else None, b.instances_on_main if b else None)),
        ("wall seconds (launch -> backfill complete)", _fmt(first.seconds if first else None),
         _fmt(b.seconds if b else None), _ratio(first.seconds if first else None, b.seconds if b else None)),
        (f"instances/s (goal ratio >= {GOAL_RATIO})", _fmt(f_rate), _fmt(b_rate), _ratio(f_rate, b_rate)),
        ("  launch -> last run's end (diagnostic)", _fmt(d_rate), _fmt(b_rate), _ratio(d_rate, b_rate)),
        ("  first run's start -> last run's end", _fmt(r_rate), _fmt(b_rate), _ratio(r_rate, b_rate)),
        ("  of which C-MOVE phase only (diagnostic)", _fmt(t_rate), _fmt(b_rate), _ratio(t_rate, b_rate)),
        ("physical limit: storescu -> main, instances/s", _fmt(aria_instances / limit_s if limit_s else None),
         _fmt(b_rate), _ratio(aria_instances / limit_s if limit_s else None, b_rate)),
        ("re-run of the finished backfill, s (vs the backfill)", _fmt(rerun.seconds if rerun else None),
         _fmt(first.seconds if first else None),
         _ratio(rerun.seconds if rerun else None, first.seconds if first else None)),
        ("re-run: instances moved", _fmt(rerun.metadata_sums["moved"] if rerun else None), "-", "-"),
        ("peak RSS of one run process, MiB", _fmt(worker_mib), _fmt(movescu_mib),
         _ratio(worker_mib, movescu_mib)),
    ]  # fmt: skip
    print_table(rows)
    if f_rate and b_rate:
        verdict = "met" if f_rate / b_rate >= GOAL_RATIO else "NOT met"
        print(f"goal (instances/s ratio >= {GOAL_RATIO}): {verdict}")
    print("details:")
    if b:
        print(
            f"  baseline: {b.processes} movescu processes (one association, one STUDY-level C-MOVE each), "
            f"{b.jobs} at a time, TCP_NODELAY=1, under {TIME or 'no'} for the peak RSS"
        )
    for name, r in (("backfill", first), ("re-run", rerun)):
        if r is None:
            continue
        sums = ", ".join(f"{k} {r.metadata_sums[k]}" for k in SUMMED if k in r.metadata_sums)
        marked = r.seconds - r.last_run_end_s if r.last_run_end_s is not None else None
        print(
            f"  {name}: {r.status}, {r.runs} runs {dict(r.run_status)}; first run started "
            f"{_fmt(r.first_run_start_s)} s after launch, last run ended {_fmt(r.last_run_end_s)} s after "
            f"launch, backfill marked done {_fmt(marked)} s later; run durations: sum "
            f"{r.run_seconds_sum:.1f} s, max {r.run_seconds_max:.1f} s"
        )
        print(f"    {r.materializations} ARIA/archived materializations; metadata sums: {sums}")
        retried = ", ".join(f"{k} x{v}" for k, v in Counter(r.step_retries).items()) or "none"
        print(f"    steps retried by their RetryPolicy: {retried}")
        secs = ", ".join(f"{k} {r.seconds_sums[k]:.1f}" for k in SUMMED_SECONDS if k in r.seconds_sums)
        print(f"    phase seconds summed over runs: {secs}")
        if first is r and r.last_run_end_s:
            rate = r.instances_on_main / r.last_run_end_s
            print(f"    instances/s from launch to the last run's end: {rate:.1f}")
    if sampler is not None:
        print(
            f"  memory: {len(sampler.worker_hwm_kib)} run processes sampled (VmHWM every "
            f"{sampler.interval} s); peak RSS sum of the whole dagster dev tree "
            f"{sampler.tree_peak_kib / 1024:.0f} MiB"
        )
    print(f"  load average (1/5/15 min): {', '.join(f'{k} {v}' for k, v in loads.items())}")
    print(f"  harness wall time {harness_seconds:.0f} s (sandbox start {sandbox.start_seconds or 0:.0f} s)")
    if problems:
        print("PROBLEMS:")
        for p in problems:
            print(f"  - {p}")
    summary: dict[str, Any] = {
        "instances": aria_instances,
        "studies": len(studies),
        "partitions": partitions,
        "backend": sandbox.aria_backend,
        "movescu_s": b.seconds if b else None,
        "movescu_rate": b_rate,
        "movescu_jobs": b.jobs if b else None,
        "backfill_s": first.seconds if first else None,
        "backfill_rate": f_rate,
        "runs_alone_rate": r_rate,
        "limit_s": limit_s,
        "limit_rate": aria_instances / limit_s if limit_s else None,
        "rerun_s": rerun.seconds if rerun else None,
        "rerun_moved": rerun.metadata_sums["moved"] if rerun else None,
        "runs": first.runs if first else None,
        "first_run_start_s": first.first_run_start_s if first else None,
        "marked_done_after_last_run_s": (
            first.seconds - first.last_run_end_s if first and first.last_run_end_s is not None else None
        ),
        "run_seconds_sum": first.run_seconds_sum if first else None,
        "phase_s": dict(first.seconds_sums) if first else {},
        "step_retries": len(first.step_retries) if first else None,
        "peak_run_rss_mib": worker_mib,
        "run_processes_sampled": len(sampler.worker_hwm_kib) if sampler else 0,
        "movescu_rss_mib": movescu_mib,
        "loads": loads,
        "harness_s": harness_seconds,
        "problems": problems,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    return (1 if problems else 0), summary


def instances_per_patient(args: argparse.Namespace) -> int:
    return args.ct_slices + 3 + args.fractions * args.cbct_slices  # CT + RTSTRUCT/RTPLAN/RTDOSE + CBCTs


def print_sizes(summaries: list[dict[str, Any]]) -> None:
    """The sizes side by side: how the rates, the ratio, the phases and the run processes' RSS grow."""
    if not summaries:
        return
    summaries = sorted(summaries, key=lambda s: s["instances"])

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or not b else f"{a / b:.2f}"

    def phase(s: dict[str, Any], key: str) -> str:
        value = s["phase_s"].get(key)
        return "-" if value is None else f"{value:,.1f}"

    rows: list[tuple[str, list[str]]] = [
        ("instances", [f"{s['instances']:,}" for s in summaries]),
        ("studies / daily partitions / runs",
         [f"{s['studies']} / {s['partitions']} / {s['runs'] if s['runs'] is not None else '-'}"
          for s in summaries]),
        ("ARIA_SIM backend", [str(s["backend"]) for s in summaries]),
        ("movescu s (jobs at a time)",
         [f"{rate(s['movescu_s'])} ({s['movescu_jobs']})" for s in summaries]),
        ("movescu instances/s", [rate(s["movescu_rate"]) for s in summaries]),
        ("backfill s (launch -> complete)", [rate(s["backfill_s"]) for s in summaries]),
        ("backfill instances/s", [rate(s["backfill_rate"]) for s in summaries]),
        (f"ratio backfill / movescu (goal >= {GOAL_RATIO})",
         [ratio(s["backfill_rate"], s["movescu_rate"]) for s in summaries]),
        ("  runs alone (first start -> last end) ratio",
         [ratio(s["runs_alone_rate"], s["movescu_rate"]) for s in summaries]),
        ("  daemon ticks s (before first run + after last)",
         [rate((s["first_run_start_s"] or 0) + (s["marked_done_after_last_run_s"] or 0))
          if s["first_run_start_s"] is not None else "-" for s in summaries]),
        ("  run durations summed s", [rate(s["run_seconds_sum"]) for s in summaries]),
        *[(f"  phase {k.removeprefix('seconds_')} s (summed over runs)",
           [phase(s, k) for s in summaries]) for k in SUMMED_SECONDS],
        ("  step retries", [str(s["step_retries"]) for s in summaries]),
        ("physical limit: storescu -> main, instances/s", [rate(s["limit_rate"]) for s in summaries]),
        ("  ratio to movescu", [ratio(s["limit_rate"], s["movescu_rate"]) for s in summaries]),
        ("re-run s (instances moved)",
         [f"{rate(s['rerun_s'])} ({s['rerun_moved']})" for s in summaries]),
        ("peak RSS of one run process, MiB (max over runs)",
         [f"{rate(s['peak_run_rss_mib'])} ({s['run_processes_sampled']} sampled)" for s in summaries]),
        ("load average at baseline / backfill",
         [f"{s['loads'].get('baseline', '-').split()[0]} / {s['loads'].get('backfill', '-').split()[0]}"
          for s in summaries]),
        ("problems", [str(len(s["problems"])) for s in summaries]),
    ]  # fmt: skip
    width0 = max(len(r[0]) for r in rows)
    widths = [max(len(r[1][i]) for r in rows) for i in range(len(summaries))]
    line = "  ".join("-" * w for w in [width0, *widths])
    print()
    print("== sizes side by side ==")
    print(line)
    for name, cells in rows:
        print("  ".join([name.ljust(width0), *(c.rjust(w) for c, w in zip(cells, widths, strict=True))]))
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        summaries = [
            json.loads(line)
            for path in args.compare
            for line in path.read_text().splitlines()
            if line.strip()
        ]
        print_sizes(summaries)
        return 0
    sizes = args.sizes or ([args.instances] if args.instances else [])
    if not sizes:
        rc, summary = run_one(args)
        if args.summary_json:
            with args.summary_json.open("a") as f:
                f.write(json.dumps(summary) + "\n")
        return rc
    status, summaries = 0, []
    base_root = args.root
    for size in sizes:
        one = argparse.Namespace(**vars(args))
        one.patients = -(-size // instances_per_patient(args))
        one.min_instances = min(args.min_instances, size)
        if args.sizes:
            one.root = base_root / str(size)
        log(f"== size {size:,}: {one.patients} patients x {instances_per_patient(args)} instances ==")
        rc, summary = run_one(one)
        status = max(status, rc)
        summaries.append(summary)
        if args.summary_json:
            with args.summary_json.open("a") as f:
                f.write(json.dumps(summary) + "\n")
        print_sizes(summaries)  # after every size, so a later size that does not finish loses nothing
    return status


if __name__ == "__main__":
    sys.exit(main())
