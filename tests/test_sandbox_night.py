"""The README's first command, end to end, and what an operator then reads in the Dagster UI.

One sandbox night (peers + `dagster dev` + runs launched over GraphQL), started in the background as a
shell would (SIGINT ignored), serving its UI. Headless Chromium (Debian's, driven by Playwright) then opens
the pages an operator opens; screenshots go to the test's temp dir (SCREENSHOTS). With ARIA stopped, a
nightly run fails and both the run's page and the alert name the peer. SIGINT then stops everything.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dicom_backup_dagster.sandbox import sinks
from dicom_backup_dagster.sandbox.night import DagsterGraphQL
from dicom_backup_dagster.sandbox.processes import free_port, pid_alive, stop_pid

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SERVING = "Serving the Dagster UI at"


class BackgroundNight:
    """`sandbox night` as `cmd &` in a shell starts it: SIGINT ignored, output collected line by line."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port, self.lines = root, port, []
        argv = [sys.executable, "-m", "dicom_backup_dagster.sandbox", "night", "--port", str(port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOM_BACKUP_", "DAGSTER_"))}
        self.process = subprocess.Popen(
            [*argv, "--root", str(root), "--patients", "2"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} (exit {self.process.poll()}):\n{self.output[-6000:]}")
            time.sleep(1)

    def state(self) -> dict:
        return json.loads((self.root / "state.json").read_text())


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundNight]:
    run = BackgroundNight(tmp_path_factory.mktemp("night") / "root", free_port())
    try:
        run.wait_for(SERVING, timeout_s=900)
        yield run
    finally:
        if run.process.poll() is None:
            stop_pid(run.process.pid, timeout=30)


@pytest.fixture(scope="module")
def browser(night: BackgroundNight) -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: scripts/setup.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"],
        )
        yield chromium
        chromium.close()


SCREENSHOTS: list[Path] = []


def _step_failures(client: DagsterGraphQL, run_id: str) -> list[str]:
    """The error messages of the run's STEP_FAILURE events, oldest first."""
    data = client.query(
        """query($id: ID!) { logsForRun(runId: $id, limit: 5000) { ... on EventConnection { events {
             __typename ... on ExecutionStepFailureEvent { error { message } } } } } }""",
        {"id": run_id},
    )
    events = data["logsForRun"].get("events", [])
    return [e["error"]["message"] for e in events if e.get("__typename") == "ExecutionStepFailureEvent"]


def _page_text(browser: object, night: BackgroundNight, path: str, shot: Path, expect: str) -> str:
    """Open a UI page as an operator would, wait until `expect` shows, save a screenshot, return its text."""
    page = browser.new_page(viewport={"width": 1600, "height": 1100})  # type: ignore[attr-defined]
    try:
        page.goto(f"http://127.0.0.1:{night.port}{path}", wait_until="networkidle", timeout=120_000)
        skip = page.get_by_role("button", name="Skip")  # Dagster's "join the community" dialog
        if skip.count():
            skip.first.click()
        page.get_by_text(expect, exact=False).first.wait_for(timeout=60_000)
        page.screenshot(path=str(shot), full_page=True)
        SCREENSHOTS.append(shot)
        return str(page.inner_text("body"))
    finally:
        page.close()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_night_summary_and_the_ui_say_last_night_is_complete_and_verified(night, browser, tmp_path):
    output = night.output
    assert "== Sandbox night summary ==" in output
    assert re.search(r"connectivity_check: SUCCESS\s+\(http://127\.0\.0\.1:\d+/runs/[0-9a-f-]{36}\)", output)
    assert len(re.findall(r"^\s+UP\s+\S+: (C-ECHO|ODBC connect) ", output, re.M)) == 5
    # Every day of every source backed up by a backfill of the source's own job, every check green.
    for job in ("ARIA_backup", "MIM_backup", "MOSAIQ_backup"):
        assert re.search(rf"^{job} backfill \S+\.\.\S+: COMPLETED_SUCCESS, \d+ runs", output, re.M), job
    partitions = re.findall(
        r"^\s+(ARIA|MIM)\s+(\d{4}-\d{2}-\d{2})\s+instances_found=(\d+).*failed=(\d+)", output, re.M
    )
    assert {source for source, *_ in partitions} == {"ARIA", "MIM"}
    assert all(failed == "0" for *_, failed in partitions)
    records = re.findall(r"^\s+MOSAIQ\s+\d{4}-\d{2}-\d{2}\s+records=(\d+).*failed=(\d+)", output, re.M)
    assert records and sum(int(n) for n, _ in records) > 0 and all(f == "0" for _, f in records)
    assert re.search(r"checks: [1-9]\d* passed, 0 failed", output)
    assert re.search(r"^sensors on: .*backup_failure_alerts", output, re.M)
    assert "overall: OK" in output
    # The data ends last night (site time): the UI's latest partition is last night's.
    last_day = re.search(r"dates \d{4}-\d{2}-\d{2} \.\. (\d{4}-\d{2}-\d{2})", output).group(1)
    yesterday = dt.datetime.now(zoneinfo.ZoneInfo("America/New_York")).date() - dt.timedelta(days=1)
    assert yesterday - dt.timedelta(days=2) <= dt.date.fromisoformat(last_day) <= yesterday
    assert f"SANDBOX {last_day}: 3 of 3 sources complete and verified" in output

    # What the operator reads: the night's summary table, first.
    text = _page_text(browser, night, "/assets/nightly_summary", tmp_path / "1-summary.png", "sources_green")
    assert f"SANDBOX {last_day}: 3 of 3 sources complete and verified" in text
    for source in ("ARIA", "MIM", "MOSAIQ"):
        assert re.search(rf"{source}\s+(complete and verified|nothing that day)", text), source
    # Each source's partitions: none missing (they start at the sandbox's first day), all materialized.
    for source in ("ARIA", "MOSAIQ"):
        text = _page_text(
            browser,
            night,
            f"/assets/{source}/archived?view=partitions",
            tmp_path / f"2-{source}.png",
            "Missing",
        )
        assert re.search(r"Missing \(0\)", text) and re.search(r"Failed \(0\)", text), source
        assert last_day in text
    # The checks of the source's archive copy: passed.
    text = _page_text(
        browser, night, "/assets/ARIA/archived?view=checks", tmp_path / "3-checks.png", "complete_in_archive"
    )
    assert "complete_in_archive" in text and "content_verified" in text
    assert "Passed" in text
    print("screenshots:", *SCREENSHOTS, sep="\n  ")


def _main_patients(night: BackgroundNight) -> dict[str, int]:
    """PatientID -> instances on main, read from Orthanc's REST API (independently of the restore)."""
    env = dict(
        line.removeprefix("export ").split("=", 1)
        for line in (night.root / "sandbox.env").read_text().splitlines()
        if line.startswith("export ")
    )
    base = f"http://127.0.0.1:{night.state()['ports']['main_http']}"
    auth = ("backup", env["SANDBOX_ORTHANC_PASSWORD"])
    out = {}
    for pid in requests.get(f"{base}/patients", auth=auth, timeout=30).json():
        tags = requests.get(f"{base}/patients/{pid}", auth=auth, timeout=30).json()["MainDicomTags"]
        out[tags["PatientID"]] = len(
            requests.get(f"{base}/patients/{pid}/instances", auth=auth, timeout=30).json()
        )
    return out


def _output_metadata(client: DagsterGraphQL, run_id: str) -> dict[str, int]:
    data = client.query(
        """query($id: ID!) { logsForRun(runId: $id, limit: 5000) { ... on EventConnection { events {
             __typename ... on ExecutionStepOutputEvent { metadataEntries { label
               ... on IntMetadataEntry { intValue } } } } } } }""",
        {"id": run_id},
    )
    out: dict[str, int] = {}
    for event in data["logsForRun"]["events"]:
        for entry in event.get("metadataEntries") or []:
            if entry.get("intValue") is not None:
                out[entry["label"]] = entry["intValue"]
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_patient_restored_through_the_launchpad_path_is_verified_at_the_standby(night, browser, tmp_path):
    """Issue 15's "done when": after the night, the `restore` job launched over GraphQL (launchRun with
    runConfigData, as the Launchpad does) for one sandbox patient to the standby SCP; every instance of the
    patient on main is found there and its digest equals main's. The night's restore drill passed too."""
    output = night.output
    assert re.search(r"^restore_drill_job: SUCCESS", output, re.M), output[-3000:]
    assert re.search(r"^\s+check restore_verified: passed", output, re.M)
    patients = _main_patients(night)
    assert len(patients) == 2, sorted(patients.values())
    patient_id, instances = sorted(patients.items())[0]
    client = DagsterGraphQL(f"http://127.0.0.1:{night.port}")
    config = {"destination": "STANDBY_SIM", "patient_id": patient_id}
    run_id = client.launch_job("restore", run_config={"ops": {"restore_studies": {"config": config}}})
    run = client.wait_for_run(run_id, timeout_s=300)
    assert run["status"] == "SUCCESS", _step_failures(client, run_id)
    counts = _output_metadata(client, run_id)
    assert counts["instances"] == counts["present_at_destination"] == counts["digests_matched"] == instances
    # The PatientID the operator typed is in no message of the run.
    messages = " ".join(e.get("message") or "" for e in client.run_messages(run_id))
    assert patient_id not in messages
    text = _page_text(browser, night, f"/runs/{run_id}", tmp_path / "5-restore-run.png", "digests_matched")
    assert "present_at_destination" in text and patient_id not in text
    text = _page_text(
        browser,
        night,
        "/assets/restore_drill?view=checks",
        tmp_path / "6-drill-check.png",
        "restore_verified",
    )
    assert "restore_verified" in text and "Passed" in text
    print("screenshots:", *SCREENSHOTS, sep="\n  ")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_with_aria_stopped_the_run_and_the_alert_name_the_peer(night, browser, tmp_path):
    state = night.state()
    aria_pid, aria_port = state["processes"]["ARIA"]["pid"], state["ports"]["aria"]
    peer = f"ARIA_SIM@127.0.0.1:{aria_port}"
    assert stop_pid(int(aria_pid), timeout=15)
    client = DagsterGraphQL(f"http://127.0.0.1:{night.port}")
    yesterday = dt.datetime.now(zoneinfo.ZoneInfo("America/New_York")).date() - dt.timedelta(days=1)
    run_id = client.launch_job(
        "ARIA_backup",
        tags={"dagster/partition": yesterday.isoformat(), "dicom_backup/ignore_bulk_hours": "true"},
    )
    run = client.wait_for_run(run_id, timeout_s=600)
    assert run["status"] == "FAILURE"
    # The run's page names the peer and what failed, after the retries too.
    text = _page_text(browser, night, f"/runs/{run_id}", tmp_path / "4-failed-run.png", peer)
    assert peer in text
    # The step's final failure (after its retries) carries the cause itself, not "Exceeded max_retries".
    failures = _step_failures(client, run_id)
    assert failures and peer in failures[-1] and "max_retries" not in failures[-1], failures
    # The alert (PagerDuty sink) names the peer too.
    deadline = time.monotonic() + 180
    alerts: list[dict] = []
    while time.monotonic() < deadline and not alerts:
        alerts = [a for a in sinks.read(night.root / "alerts", "pagerduty") if peer in json.dumps(a)]
        time.sleep(2)
    assert alerts, sinks.read(night.root / "alerts", "pagerduty")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigint_stops_every_process_the_night_started(night):
    pids = [int(info["pid"]) for info in night.state()["processes"].values()]
    assert len(pids) >= 6  # two Orthancs, ARIA, MIM, the alert sinks, Dagster
    os.kill(night.process.pid, signal.SIGINT)
    night.process.wait(timeout=120)
    time.sleep(2)
    assert [p for p in pids if pid_alive(p)] == []
    assert night.state()["running"] is False
    assert (night.root / "dagster_home" / "history" / "runs.db").exists()
