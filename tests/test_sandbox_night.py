"""The README's first command, end to end: sandbox peers + `dagster dev` + runs launched over GraphQL."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import zoneinfo
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_sandbox_night_runs_every_job_and_cleans_up(tmp_path):
    root = tmp_path / "night"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicom_backup_dagster.sandbox",
            "night",
            "--no-serve",
            "--root",
            str(root),
            "--patients",
            "2",
        ],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith(("DICOM_BACKUP_", "DAGSTER_"))},
        capture_output=True,
        text=True,
        timeout=540,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "== Sandbox night summary ==" in output
    assert re.search(r"connectivity_check: SUCCESS\s+\(http://127\.0\.0\.1:\d+/runs/[0-9a-f-]{36}\)", output)
    assert len(re.findall(r"^\s+UP\s+\S+: (C-ECHO|ODBC connect) ", output, re.M)) == 5
    # Every ARIA, MIM and Mosaiq date was backed up by a backfill of the source's own job, every check green.
    for job in ("ARIA_backup", "MIM_backup", "MOSAIQ_backup"):
        assert re.search(rf"^{job} backfill \S+\.\.\S+: COMPLETED_SUCCESS, \d+ runs", output, re.M), job
    # The data ends last night (site time): the UI's latest partition is last night's.
    last_day = re.search(r"dates \d{4}-\d{2}-\d{2} \.\. (\d{4}-\d{2}-\d{2})", output).group(1)
    yesterday = dt.datetime.now(zoneinfo.ZoneInfo("America/New_York")).date() - dt.timedelta(days=1)
    assert yesterday - dt.timedelta(days=2) <= dt.date.fromisoformat(last_day) <= yesterday
    assert re.search(r"^sensors on: .*backup_failure_alerts", output, re.M)
    partitions = re.findall(
        r"^\s+(ARIA|MIM)\s+(\d{4}-\d{2}-\d{2})\s+instances_found=(\d+).*failed=(\d+)", output, re.M
    )
    assert {source for source, *_ in partitions} == {"ARIA", "MIM"}
    assert all(failed == "0" for *_, failed in partitions)
    assert sum(int(found) for _, _, found, _ in partitions) > 0
    records = re.findall(r"^\s+MOSAIQ\s+\d{4}-\d{2}-\d{2}\s+records=(\d+).*failed=(\d+)", output, re.M)
    assert records and sum(int(n) for n, _ in records) > 0
    assert all(failed == "0" for _, failed in records)
    assert re.search(r"checks: [1-9]\d* passed, 0 failed", output)
    assert "overall: OK" in output
    # Runs were recorded in the night's own Dagster instance, and nothing is left running.
    assert (root / "dagster_home" / "history" / "runs.db").exists()
    assert not (root / "state.json").exists() or '"running": false' in (root / "state.json").read_text()
