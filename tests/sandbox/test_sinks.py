"""The sandbox's loopback notification sinks: what a channel receives lands in its JSON-lines file."""

from __future__ import annotations

import datetime as dt
import smtplib
import sys
from dataclasses import replace
from email.message import EmailMessage

import requests

from dicom_backup_dagster.sandbox import sinks
from dicom_backup_dagster.sandbox.processes import ManagedProcess, free_port, port_open, wait_until
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, all_dates, start_date_ending


def test_slack_pagerduty_and_email_are_recorded_per_channel(tmp_path):
    http, smtp = free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "dicom_backup_dagster.sandbox.sinks",
        str(tmp_path / "alerts"),
        str(http),
        str(smtp),
    ]
    with ManagedProcess("sinks", argv, tmp_path / "sinks.log") as process:
        wait_until(lambda: port_open(http) and port_open(smtp), 20, "the sinks", process=process)
        assert (
            requests.post(f"http://127.0.0.1:{http}/slack", json={"text": "ARIA_backup failed"}).text == "ok"
        )
        answer = requests.post(
            f"http://127.0.0.1:{http}/pagerduty", json={"dedup_key": "k1", "event_action": "trigger"}
        )
        assert answer.status_code == 202 and answer.json()["dedup_key"] == "k1"
        assert requests.post(f"http://127.0.0.1:{http}/other", json={}).status_code == 404
        message = EmailMessage()
        message["Subject"], message["From"], message["To"] = (
            "[CRITICAL] ARIA_backup failed",
            "a@x.invalid",
            "b@x.invalid",
        )
        message.set_content("ARIA_SIM@127.0.0.1:1234 refused the association")
        with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as client:
            client.send_message(message)
    directory = tmp_path / "alerts"
    assert [m["payload"]["text"] for m in sinks.read(directory, "slack")] == ["ARIA_backup failed"]
    assert [m["payload"]["dedup_key"] for m in sinks.read(directory, "pagerduty")] == ["k1"]
    (mail,) = sinks.read(directory, "email")
    assert mail["subject"] == "[CRITICAL] ARIA_backup failed" and "refused the association" in mail["text"]
    assert mail["to"] == ["b@x.invalid"]


def test_sandbox_data_ends_on_the_night_asked_for_or_the_weekday_before():
    options = SyntheticOptions()
    for last_day, expected_last in (
        (dt.date(2026, 12, 1), dt.date(2026, 12, 1)),  # a Tuesday: the data ends that day
        (dt.date(2026, 11, 29), dt.date(2026, 11, 27)),  # a Sunday: the Friday before (weekends are empty)
    ):
        days = all_dates(replace(options, start_date=start_date_ending(options, last_day)))
        assert days[-1] == expected_last
        assert len(days) == len(all_dates(options))  # the same amount of data, only moved
