"""One sandbox night, end to end: start the sandbox, serve Dagster on 127.0.0.1, launch every job a night
runs through the Dagster GraphQL API (so the runs appear in the UI exactly as an operator's would),
print a summary, then keep serving the UI until Ctrl-C.

Dagster is driven as a separate process (`dagster dev`) and over HTTP, so this module imports no dagster.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from dicom_backup_dagster.sandbox.processes import ManagedProcess, SandboxError, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCATION = "dicom_backup"  # workspace.yaml
REPOSITORY = "__repository__"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_UNFINISHED = {"REQUESTED", "CANCELING", "FAILING"}
# Counts shown per source and day, from the `archived` asset's metadata (each source kind has some of them).
SUMMARY_COUNTS = (
    "instances_found",
    "records",
    "already_archived",
    "moved",
    "sub_operations_completed",
    "failed",
    "deferred",
)


class DagsterGraphQL:
    """The few GraphQL calls a night needs (the same API the UI uses)."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, location: str = LOCATION) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.location = location  # the code location's name in the workspace

    def query(self, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = requests.post(
            f"{self.base_url}/graphql",
            json={"query": document, "variables": variables or {}},
            timeout=self.timeout_s,
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise SandboxError(f"Dagster GraphQL error: {body['errors'][0].get('message')}")
        return body["data"]

    def location_status(self) -> tuple[str, str | None]:
        """(load status, error message) of our code location."""
        data = self.query(
            """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
                 locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
        )
        for entry in data["workspaceOrError"]["locationEntries"]:
            if entry["name"] == self.location:
                error = entry.get("locationOrLoadError") or {}
                return entry["loadStatus"], error.get("message")
        return "MISSING", None

    def launch_job(
        self, job_name: str, tags: dict[str, str] | None = None, run_config: dict[str, Any] | None = None
    ) -> str:
        data = self.query(
            """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
                 ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
                 ... on RunConfigValidationInvalid { errors { message } } } }""",
            {
                "p": {
                    "selector": {
                        "repositoryLocationName": self.location,
                        "repositoryName": REPOSITORY,
                        "jobName": job_name,
                    },
                    "runConfigData": run_config or {},
                    "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
                }
            },
        )
        result = data["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise SandboxError(f"could not launch {job_name}: {result}")
        return result["run"]["runId"]

    def start_all_sensors(self) -> list[str]:
        """Turn on every sensor of the code location (as the Automation page's toggles do)."""
        repository = {"repositoryLocationName": self.location, "repositoryName": REPOSITORY}
        data = self.query(
            """query($r: RepositorySelector!) { sensorsOrError(repositorySelector: $r) {
                 __typename ... on Sensors { results { name sensorState { status } } } } }""",
            {"r": repository},
        )
        started = []
        for sensor in data["sensorsOrError"].get("results", []):
            if sensor["sensorState"]["status"] != "RUNNING":
                self.query(
                    """mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename
                         ... on PythonError { message } } }""",
                    {"s": {**repository, "sensorName": sensor["name"]}},
                )
            started.append(sensor["name"])
        return started

    def run(self, run_id: str) -> dict[str, Any]:
        data = self.query(
            """query($id: ID!) { runOrError(runId: $id) { __typename
                 ... on Run { runId jobName status startTime endTime } } }""",
            {"id": run_id},
        )
        return data["runOrError"]

    def run_messages(self, run_id: str) -> list[dict[str, Any]]:
        data = self.query(
            """query($id: ID!) { logsForRun(runId: $id, limit: 5000) { __typename
                 ... on EventConnection { events { __typename
                   ... on MessageEvent { message level } } } } }""",
            {"id": run_id},
        )
        return data["logsForRun"].get("events", [])

    def launch_job_backfill(
        self, job_name: str, partition_names: list[str], title: str, tags: dict[str, str]
    ) -> str:
        """A backfill of `job_name` over the given days, as the job's Partitions tab launches it: its runs
        are runs of that job (several days per run where the job's backfill policy allows)."""
        data = self.query(
            """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
                 __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
                 ... on PartitionSetNotFoundError { message } ... on UnauthorizedError { message } } }""",
            {
                "p": {
                    "selector": {
                        "partitionSetName": f"{job_name}_partition_set",
                        "repositorySelector": {
                            "repositoryLocationName": self.location,
                            "repositoryName": REPOSITORY,
                        },
                    },
                    "partitionNames": partition_names,
                    "title": title,
                    "tags": [{"key": k, "value": v} for k, v in tags.items()],
                }
            },
        )
        result = data["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise SandboxError(f"could not launch the backfill {title!r}: {result}")
        return result["backfillId"]

    def launch_backfill(
        self, asset_paths: list[list[str]], ranges: list[tuple[str, str]], title: str, tags: dict[str, str]
    ) -> str:
        """An asset backfill over the partition ranges [start, end], as the UI's Materialize dialog makes."""
        data = self.query(
            """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
                 __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
                 ... on InvalidSubsetError { message } ... on UnauthorizedError { message } } }""",
            {
                "p": {
                    "partitionsByAssets": [
                        {
                            "assetKey": {"path": path},
                            "partitions": {"ranges": [{"start": a, "end": b} for a, b in ranges]},
                        }
                        for path in asset_paths
                    ],
                    "title": title,
                    "tags": [{"key": k, "value": v} for k, v in tags.items()],
                }
            },
        )
        result = data["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise SandboxError(f"could not launch the backfill {title!r}: {result}")
        return result["backfillId"]

    def wait_for_backfill(self, backfill_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            data = self.query(
                """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
                     ... on PartitionBackfill { id status numPartitions
                       runs { runId status tags { key value } } } } }""",
                {"id": backfill_id},
            )
            backfill = data["partitionBackfillOrError"]
            if backfill.get("status") not in BACKFILL_UNFINISHED:
                return backfill
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"backfill {backfill_id} still {backfill.get('status')} after {timeout_s:.0f} s"
                )
            time.sleep(1.0)

    def materializations(self, path: list[str]) -> list[dict[str, Any]]:
        """Every materialization of an asset: partition, run and integer metadata."""
        data = self.query(
            """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename
                 ... on AssetNode { assetMaterializations(limit: 10000) { partition runId
                   metadataEntries { label __typename ... on IntMetadataEntry { intValue }
                     ... on FloatMetadataEntry { floatValue } ... on TextMetadataEntry { text } } } } } }""",
            {"key": {"path": path}},
        )
        return data["assetNodeOrError"].get("assetMaterializations", [])

    def check_evaluations(self, run_id: str) -> list[dict[str, Any]]:
        data = self.query(
            """query($id: ID!) { logsForRun(runId: $id, limit: 5000) { __typename
                 ... on EventConnection { events { __typename ... on AssetCheckEvaluationEvent {
                   evaluation { checkName success severity partition } } } } } }""",
            {"id": run_id},
        )
        events = data["logsForRun"].get("events", [])
        return [e["evaluation"] for e in events if e.get("__typename") == "AssetCheckEvaluationEvent"]

    def wait_for_run(self, run_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.run(run_id)
            if run.get("status") in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise SandboxError(f"run {run_id} still {run.get('status')} after {timeout_s:.0f} s")
            time.sleep(0.5)


@dataclass
class Night:
    """What one night's steps share: the Dagster API, what the sandbox holds, and the summary so far."""

    client: DagsterGraphQL
    ui_url: str
    dates: list[dt.date]
    backup_assets: dict[str, list[str]]  # source alias -> its assets, upstream first
    runs: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    failed_checks: int = 0

    @property
    def ok(self) -> bool:
        return self.failed_checks == 0 and all(r["status"] == "SUCCESS" for r in self.runs)


def date_ranges(dates: list[dt.date]) -> list[tuple[str, str]]:
    """Consecutive dates merged into inclusive (start, end) ISO ranges: the days that have sandbox data."""
    ranges: list[list[dt.date]] = []
    for day in sorted(set(dates)):
        if ranges and day - ranges[-1][1] == dt.timedelta(days=1):
            ranges[-1][1] = day
        else:
            ranges.append([day, day])
    return [(a.isoformat(), b.isoformat()) for a, b in ranges]


def _sensors_step(night: Night) -> None:
    """Sensors on, as in production: a failed run or check of the night raises a real alert."""
    names = night.client.start_all_sensors()
    night.lines.append(f"sensors on: {', '.join(sorted(names))}")


def _connectivity_step(night: Night) -> None:
    client = night.client
    run_id = client.launch_job("connectivity_check", tags={"dicom_backup/launched_by": "sandbox-night"})
    run = client.wait_for_run(run_id, timeout_s=300)
    night.runs.append(run)
    night.lines.append(f"connectivity_check: {run['status']}  ({night.ui_url}/runs/{run_id})")
    for event in client.run_messages(run_id):
        message = event.get("message") or ""
        if message.startswith(("UP ", "DOWN ")):
            night.lines.append(f"  {message}")


def _backup_backfill_step(night: Night) -> None:
    """Back up every sandbox day, source by source, as a backfill of the source's own job (`ARIA_backup`
    ...): the runs appear under that job in the UI, as when an operator backfills from its Partitions tab."""
    if not night.backup_assets or not night.dates:
        return
    client = night.client
    start, end = min(night.dates).isoformat(), max(night.dates).isoformat()
    days = [(min(night.dates) + dt.timedelta(days=n)).isoformat() for n in range(_span_days(night.dates))]
    backfills = {
        alias: client.launch_job_backfill(
            f"{alias}_backup",
            days,
            title=f"Sandbox night: {alias} {start}..{end}",
            tags={"dicom_backup/launched_by": "sandbox-night"},
        )
        for alias in night.backup_assets
    }
    for alias, backfill_id in backfills.items():
        backfill = client.wait_for_backfill(backfill_id, timeout_s=1800)
        runs = backfill.get("runs") or []
        night.runs.extend(runs)
        night.lines.append(
            f"{alias}_backup backfill {start}..{end}: {backfill['status']}, {len(runs)} runs  "
            f"({night.ui_url}/runs/b/{backfill_id})"
        )
        _day_lines(night, alias)
        _check_lines(night, runs)


def _span_days(dates: list[dt.date]) -> int:
    return (max(dates) - min(dates)).days + 1


def _day_lines(night: Night, alias: str) -> None:
    events = night.client.materializations([alias, "archived"])
    for event in sorted(events, key=lambda e: e["partition"] or ""):
        counts = {e["label"]: e.get("intValue") for e in event["metadataEntries"]}
        if not any(counts.get(label) for label in SUMMARY_COUNTS):
            continue  # an empty day (a weekend): counted, not listed
        night.lines.append(
            f"  {alias:<8} {event['partition']}  "
            + "  ".join(f"{label}={counts[label]}" for label in SUMMARY_COUNTS if label in counts)
        )


def _check_lines(night: Night, runs: list[dict[str, Any]]) -> None:
    failed = []
    passed = 0
    for run in runs:
        tags = {t["key"]: t["value"] for t in run.get("tags", [])}
        # Ranged runs carry their first and last day (up to backfill_days_per_run for ARIA/MIM).
        first = tags.get("dagster/asset_partition_range_start", "?")
        last = tags.get("dagster/asset_partition_range_end", first)
        partition = tags.get("dagster/partition") or (first if first == last else f"{first}..{last}")
        for evaluation in night.client.check_evaluations(run["runId"]):
            if evaluation["success"]:
                passed += 1
            else:
                failed.append((partition, evaluation))
    night.failed_checks += sum(1 for _, e in failed if e["severity"] == "ERROR")
    night.lines.append(f"  checks: {passed} passed, {len(failed)} failed")
    for partition, e in failed:  # each evaluation is one day's (a ranged run evaluates every day)
        night.lines.append(
            f"    FAILED {e['checkName']} ({e['severity']}) partition {e.get('partition') or partition}"
        )


SWEEP_COUNTS = (
    "studies_in_window",
    "studies_checked_tonight",
    "instances_compared",
    "instances_missed",
    "coverage_percent",
    "nights_to_cover",
)


def _sweep_step(night: Night) -> None:
    """The reconciliation sweep of every Q/R source, as if tonight were the day after the sandbox data."""
    if not night.dates:
        return
    client = night.client
    as_of = (max(night.dates) + dt.timedelta(days=1)).isoformat()
    for alias, assets in night.backup_assets.items():
        if "inventory" not in assets:
            continue  # Mosaiq has no sweep
        job = f"{alias}_reconciliation_sweep"
        run_id = client.launch_job(
            job,
            tags={"dicom_backup/launched_by": "sandbox-night"},
            run_config={"ops": {f"{alias}__reconciled": {"config": {"as_of": as_of}}}},
        )
        run = client.wait_for_run(run_id, timeout_s=600)
        night.runs.append(run)
        night.lines.append(f"{job} (as of {as_of}): {run['status']}  ({night.ui_url}/runs/{run_id})")
        events = [e for e in client.materializations([alias, "reconciled"]) if e["runId"] == run_id]
        for event in events:
            values = {e["label"]: e.get("intValue", e.get("floatValue")) for e in event["metadataEntries"]}
            night.lines.append(
                "  " + "  ".join(f"{label}={values[label]}" for label in SWEEP_COUNTS if label in values)
            )
        for evaluation in client.check_evaluations(run_id):
            mark = "passed" if evaluation["success"] else f"FAILED ({evaluation['severity']})"
            night.lines.append(f"  check {evaluation['checkName']}: {mark}")


def _summary_step(night: Night) -> None:
    """nightly_summary for the last night, as its morning schedule would build it."""
    if not night.dates:
        return
    day = max(night.dates).isoformat()
    client = night.client
    run_id = client.launch_job(
        "summarize_night", tags={"dagster/partition": day, "dicom_backup/launched_by": "sandbox-night"}
    )
    run = client.wait_for_run(run_id, timeout_s=300)
    night.runs.append(run)
    night.lines.append(f"summarize_night {day}: {run['status']}  ({night.ui_url}/assets/nightly_summary)")
    events = [e for e in client.materializations(["nightly_summary"]) if e["runId"] == run_id]
    for event in events:
        texts = {e["label"]: e.get("text") for e in event["metadataEntries"] if e.get("text") is not None}
        night.lines.append(f"  {texts.get('summary')}")
        night.lines += [
            f"  {label[: -len('_status')]:<8} {text}"
            for label, text in texts.items()
            if label.endswith("_status")
        ]


def _drill_step(night: Night) -> None:
    """The restore drill (its schedule is weekly): a random sample of main restored to the standby SCP."""
    client = night.client
    run_id = client.launch_job("restore_drill_job", tags={"dicom_backup/launched_by": "sandbox-night"})
    run = client.wait_for_run(run_id, timeout_s=300)
    night.runs.append(run)
    night.lines.append(
        f"restore_drill_job: {run['status']}  ({night.ui_url}/assets/restore_drill?view=checks)"
    )
    events = [e for e in client.materializations(["restore_drill"]) if e["runId"] == run_id]
    for event in events:
        values = {e["label"]: e.get("intValue") for e in event["metadataEntries"] if "intValue" in e}
        night.lines.append("  " + "  ".join(f"{k}={values[k]}" for k in DRILL_COUNTS if k in values))
    for evaluation in client.check_evaluations(run_id):
        night.failed_checks += 0 if evaluation["success"] else 1
        mark = "passed" if evaluation["success"] else f"FAILED ({evaluation['severity']})"
        night.lines.append(f"  check {evaluation['checkName']}: {mark}")


DRILL_COUNTS = ("seed", "studies", "instances", "present", "digests_matched", "missing", "digests_differ")

# What one night runs, in order. Each later feature adds its step here.
NIGHT_STEPS: list[Callable[[Night], None]] = [
    _sensors_step,
    _connectivity_step,
    _backup_backfill_step,
    _sweep_step,
    _summary_step,
    _drill_step,
]


class DagsterDev:
    """`dagster dev` (webserver + daemon + code server) on 127.0.0.1 with its own DAGSTER_HOME."""

    def __init__(self, root: Path, env: dict[str, str], port: int | None = None) -> None:
        self.home = root / "dagster_home"
        self.port = port or free_port()
        self.env = env
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(
        self, on_started: Callable[[ManagedProcess], None] | None = None, timeout_s: float = 180.0
    ) -> DagsterGraphQL:
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", self.home / "dagster.yaml")
        argv = [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        env = {**self.env, "DAGSTER_HOME": str(self.home)}
        self.process = ManagedProcess(
            "dagster-dev", argv, self.home / "dagster-dev.log", env=env, cwd=REPO_ROOT
        )
        self.process.start()
        try:
            if on_started is not None:
                on_started(self.process)
            return self._wait_until_loaded(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_until_loaded(self, timeout_s: float) -> DagsterGraphQL:
        client = DagsterGraphQL(self.url)
        wait_until(
            lambda: requests.get(f"{self.url}/server_info", timeout=2).ok,
            timeout_s,
            f"Dagster webserver on {self.url}",
            process=self.process,
        )

        def location_loaded() -> bool:
            status, error = client.location_status()
            if error:
                raise SandboxError(f"the code location failed to load:\n{error}")
            return status == "LOADED"

        wait_until(location_loaded, timeout_s, "the dicom_backup code location", process=self.process)
        return client

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=15)


def run_night(
    sandbox_env: dict[str, str],
    root: Path,
    serve: bool,
    port: int | None = None,
    dates: list[dt.date] | None = None,
    backup_assets: dict[str, list[str]] | None = None,
    on_started: Callable[[ManagedProcess], None] | None = None,
) -> Night:
    """Serve Dagster against an already started sandbox, run one night, print the summary.

    `on_started` receives the `dagster dev` process as soon as it runs (the CLI records its PID for
    `sandbox down`)."""
    dagster = DagsterDev(root, sandbox_env, port)
    started = time.perf_counter()
    client = dagster.start(on_started)
    night = Night(client, dagster.url, sorted(dates or []), dict(backup_assets or {}))
    print(f"Dagster UI: {dagster.url} (ready in {time.perf_counter() - started:.1f} s)", flush=True)
    try:
        for step in NIGHT_STEPS:
            step(night)
        print("\n== Sandbox night summary ==")
        for line in night.lines:
            print(line)
        print(f"overall: {'OK' if night.ok else 'FAILED'}", flush=True)
        if serve:
            print(f"\nServing the Dagster UI at {dagster.url} - press Ctrl-C to stop everything.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while dagster.process and dagster.process.alive:
                    time.sleep(1)
    finally:
        dagster.stop()
    return night


def sandbox_environment(config_path: Path, env_vars: dict[str, str]) -> dict[str, str]:
    """Environment for processes that use the sandbox's site config."""
    return {
        **env_vars,
        "DICOM_BACKUP_CONFIG": str(config_path),
        "DICOM_BACKUP_ENVIRONMENT": "SANDBOX",
        "PYTHONUNBUFFERED": "1",
        **({"PATH": os.environ["PATH"]} if "PATH" in os.environ else {}),
    }
