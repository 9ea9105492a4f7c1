"""`python -m dicom_backup_dagster.config check`: summary without secrets, errors with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_backup_dagster.config import main

from .conftest import SECRETS, valid_config

Writer = Callable[..., Path]


def test_check_prints_a_summary_without_secrets(
    write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(valid_config())
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    for fragment in (
        "environment: SITE_A",
        "also defined: SITE_B",
        "DICOM_BACKUP listening on port 11113",
        "ARIA (default): aria ARIA_SIM@127.0.0.1:40001",
        "MIM: mim MIM_SIM@mim.example.org:40002",
        "password from $SITE_A_MOSAIQ_PW",
        "ORTHANC_MAIN (main): orthanc ORTHANC_MAIN@127.0.0.1:40003",
        "staging -> ORTHANC_STAGE",
        "configuration OK",
    ):
        assert fragment in out
    for secret in SECRETS.values():
        assert secret not in out


def test_check_reports_errors_with_exit_status_2(
    write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA"]["port"] = 0
    data["SITE_A"]["sources"]["ARIA"]["aet_title"] = "X"
    path = write_config(data)
    assert main(["check", "--config", str(path), "--environment", "SITE_A"]) == 2
    err = capsys.readouterr().err
    assert "configuration INVALID" in err and "2 configuration errors" in err
    assert "SITE_A.sources.ARIA.port" in err and "did you mean 'aet'?" in err


def test_check_warns_about_a_missing_odbc_driver(
    write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["MOSAIQ"]["odbc_driver"] = "No Such ODBC Driver"
    assert main(["check", "--config", str(write_config(data))]) == 0
    out = capsys.readouterr().out
    assert "warning: SITE_A.sources.MOSAIQ.odbc_driver" in out and "SQLite3" in out


def test_module_entry_point_uses_the_environment_variables(write_config: Writer) -> None:
    path = write_config(valid_config())
    env = {**os.environ, "DICOM_BACKUP_CONFIG": str(path), "DICOM_BACKUP_ENVIRONMENT": "SITE_B"}
    env.pop("SITE_B_MAIN_PW", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_backup_dagster.config", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "SITE_B_MAIN_PW is not set" in proc.stderr and "environment SITE_B" in proc.stderr
    env["SITE_B_MAIN_PW"] = "b-secret-value"
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_backup_dagster.config", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "B_ORTHANC@10.1.1.2:4242" in proc.stdout and "b-secret-value" not in proc.stdout + proc.stderr


def test_check_shows_bulk_hours_and_warns_when_the_nightly_tick_is_outside(
    write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    data = valid_config()
    data["SITE_A"]["settings"] = {"timezone": "America/Chicago", "schedule": "30 1 * * *"}
    data["SITE_A"]["sources"]["ARIA"]["bulk_hours"] = ["Mon-Thu 19:00-07:00", "Fri 19:00 - Mon 07:00"]
    data["SITE_A"]["sources"]["MIM"]["bulk_hours"] = ["Mon-Fri 19:00-07:00", "Sat-Sun 00:00-24:00"]
    assert main(["check", "--config", str(write_config(data))]) == 0
    out = capsys.readouterr().out
    assert (
        "backfills, sweeps and manual runs only Mon-Thu 19:00-07:00 next day and Fri 19:00 to Mon 07:00, "
        "America/Chicago" in out
    )
    # MIM's "Mon-Fri 19:00-07:00" leaves Monday 01:30 (Sunday night) outside; ARIA's window covers it.
    assert "warning: SITE_A.sources.MIM.bulk_hours: the nightly schedule '30 1 * * *'" in out
    assert "(e.g. Mon 01:30)" in out and "move settings.schedule into the window" in out
    assert "sources.ARIA.bulk_hours" not in out
    assert "configuration OK" in out
