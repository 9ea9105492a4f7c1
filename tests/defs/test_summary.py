"""nightly_summary: one row per source for a day, read from Dagster's own records."""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import replace

import dagster as dg

from dicom_backup_dagster.config import load_config
from dicom_backup_dagster.defs.qr_backup import build_qr_backup_defs
from dicom_backup_dagster.defs.resources import BackupStorage, build_resources
from dicom_backup_dagster.defs.summary import SUMMARY_JOB, build_summary_defs


def test_summary_says_which_source_is_complete_and_verified_and_links_the_runbook(
    sandbox, monkeypatch, tmp_path
):
    for name, value in sandbox.env_vars().items():
        monkeypatch.setenv(name, value)
    env = load_config(sandbox.config_path, "SANDBOX").environment
    env = replace(env, notifications=replace(env.notifications, dagster_ui_url="http://ui.example:3000"))
    day = "2026-01-12"  # ARIA data on a weekday
    backups = dg.Definitions.merge(
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(tmp_path)))),
        build_qr_backup_defs(env, retry_policy=None),
    )
    defs = dg.Definitions.merge(backups, build_summary_defs(env, backups))
    with dg.instance_for_test() as instance:
        backup = defs.resolve_job_def("ARIA_backup").execute_in_process(partition_key=day, instance=instance)
        assert backup.success
        before = time.time()
        result = defs.resolve_job_def(SUMMARY_JOB).execute_in_process(partition_key=day, instance=instance)
        assert result.success
        (event,) = result.get_asset_materialization_events()
        metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["summary"] == "SANDBOX 2026-01-12: 1 of 3 sources complete and verified"
    assert metadata["ARIA_status"] == "complete and verified"
    assert metadata["MIM_status"].startswith("not backed up")  # MIM's job never ran in this instance
    assert metadata["sources_green"] == 1 and metadata["sources_not_green"] == 2
    table = metadata["sources"]
    aria_row = next(line for line in table.splitlines() if line.startswith("| ARIA |"))
    assert f"](http://ui.example:3000/runs/{backup.run_id})" in aria_row
    assert "4 of 4" in aria_row  # every check of the day passed
    # Found instances and what became of them (already on main when an earlier test of the session moved
    # them): the non-zero outcomes only, nothing deferred or failed.
    cell = r"[1-9]\d* found: (\d+ already archived|\d+ moved|\d+ already archived, \d+ moved)"
    assert re.search(rf"\| {cell} \|", aria_row), aria_row
    mosaiq_row = next(line for line in table.splitlines() if line.startswith("| MOSAIQ |"))
    assert "([runbook](docs/runbooks/backup_failed.md))" in mosaiq_row
    assert "| 0 found |" in mosaiq_row
    assert dt.date.fromisoformat(day).weekday() < 5
    # The SLOs as of the summary's run: ARIA's day is complete and verified (its age is the recovery point)
    # but was verified long after its deadline, and every later night of the window has no backup.
    tz = env.settings.tzinfo
    end = dt.datetime.combine(dt.date.fromisoformat(day) + dt.timedelta(days=1), dt.time(), tz).timestamp()
    assert abs(metadata["ARIA_recovery_point_hours"] - (before - end) / 3600) < 0.2
    window = env.settings.slo_window_nights
    assert metadata["ARIA_nights_verified_ratio"] == 0.0
    slo = metadata["slo"].splitlines()
    aria_row = next(line for line in slo if line.startswith("| ARIA |"))
    mosaiq_row = next(line for line in slo if line.startswith("| MOSAIQ |"))
    cells = re.search(r"\| (\d+) h \| 0 of (\d+) \(0%\) \|$", aria_row)
    assert cells and abs(int(cells[1]) - (before - end) / 3600) <= 1 and int(cells[2]) == window, aria_row
    assert mosaiq_row.endswith("| none verified | - |")
    assert metadata["MIM_recovery_point_hours"] is None


def test_instances_cell_names_only_the_outcomes_that_happened():
    from dicom_backup_dagster.defs.summary import instances_cell

    zero = {"found": 0, "already_archived": 0, "moved": 0, "deferred": 0, "failed": 0}
    assert instances_cell(zero) == "0 found"
    assert instances_cell({**zero, "found": 8, "moved": 8}) == "8 found: 8 moved"
    mixed = {**zero, "found": 10, "already_archived": 5, "moved": 2, "deferred": 1, "failed": 2}
    assert instances_cell(mixed) == "10 found: 5 already archived, 2 moved, 1 deferred, 2 failed"
