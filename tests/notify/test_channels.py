"""Alert model, notifiers and dispatch against real loopback servers (HTTP for Slack and PagerDuty,
aiosmtpd for SMTP)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dicom_backup_dagster.notify import (
    Alert,
    AlertKind,
    Dispatcher,
    EmailNotifier,
    EmailSettings,
    IncidentBook,
    MemoryStore,
    NotifierError,
    PagerDutyNotifier,
    PagerDutySettings,
    SlackNotifier,
    SlackSettings,
    resolve,
    trigger,
)
from tests.notify.servers import Answer, CaptureServer, SmtpServer

SECRET_HOOK_PATH = "/services/T000/B000/s3cr3tw3bh00k"


def _alert(**fields: object) -> Alert:
    base: dict[str, object] = dict(
        kind=AlertKind.BACKUP_FAILED,
        severity="critical",
        environment="SITE",
        subject="ARIA",
        partition="2026-01-14",
        job="ARIA_backup",
        run_id="0f1e2d3c-aaaa-bbbb-cccc-000000000001",
        run_url="http://dagster.example:3000/runs/0f1e2d3c-aaaa-bbbb-cccc-000000000001",
        failed_step="ARIA__archived",
        peer="ORTHANC_MAIN@127.0.0.1:4242",
        operation="C-MOVE",
        dicom_status="0xA801",
        status_meaning="Refused: Move Destination unknown",
        counts={"instances_found": 12, "moved": 10, "failed": 2},
        runbook_url="docs/runbooks/backup_failed.md",
    )
    base.update(fields)
    return Alert(**base)  # type: ignore[arg-type]


@pytest.fixture
def http() -> CaptureServer:
    with CaptureServer() as server:
        yield server


def test_alert_fields_dedup_key_and_payloads():
    alert = _alert()
    assert alert.dedup_key == "dicom-backup/SITE/ARIA/backup-failed"
    # The dedup key is per source and kind: another run, partition or step does not change it.
    assert (
        _alert(run_id="other", partition="2026-01-15", failed_step="ARIA__inventory").dedup_key
        == alert.dedup_key
    )
    assert _alert(kind=AlertKind.CONTENT_NOT_VERIFIED, check="content_verified").dedup_key.endswith(
        "/ARIA/check/content_verified"
    )
    assert alert.headline == "[CRITICAL] SITE: ARIA backup failed"
    text = alert.text()
    for expected in ("2026-01-14", "ARIA_backup", "ARIA__archived", "0xA801", "Move Destination unknown",
                     "moved=10", "backup_failed.md", alert.run_url):  # fmt: skip
        assert expected in text
    pd = alert.pagerduty_event("KEY")
    assert pd["event_action"] == "trigger" and pd["dedup_key"] == alert.dedup_key
    assert pd["payload"]["severity"] == "critical"  # type: ignore[index]
    assert pd["links"] == [{"href": alert.run_url, "text": "Dagster run"}]  # the runbook link is relative
    resolved = alert.pagerduty_event("KEY") | {}
    assert _alert(action="resolve").pagerduty_event("KEY") == {
        "routing_key": "KEY", "event_action": "resolve", "dedup_key": alert.dedup_key,
    }  # fmt: skip
    assert resolved["dedup_key"] == alert.dedup_key
    slack = json.dumps(alert.slack_payload())
    assert "ARIA backup failed" in slack and "open in Dagster" in slack


def test_text_fields_cannot_carry_a_person_name_or_attribute_dump():
    alert = _alert(subject="DOE^JANE", peer="PatientName=DOE^JANE", counts={"moved": 1, "PatientID": "123"})
    text = alert.text() + json.dumps(alert.pagerduty_event("k")) + json.dumps(alert.slack_payload())
    assert "DOE^JANE" not in text and "PatientName=" not in text
    assert "PatientID" not in text  # counts keep numbers only
    assert _alert(run_url="javascript: alert(1)").run_url is None


def test_slack_webhook_and_bot_token_paths(http, monkeypatch):
    monkeypatch.setenv("TEST_SLACK_WEBHOOK", http.url + SECRET_HOOK_PATH)
    SlackNotifier(SlackSettings(webhook_url_env="TEST_SLACK_WEBHOOK"), timeout_s=2).send(_alert())
    (hook,) = http.on(SECRET_HOOK_PATH)
    assert hook.json["text"] == "[CRITICAL] SITE: ARIA backup failed"
    assert any("0xA801" in b["text"]["text"] for b in hook.json["blocks"])

    monkeypatch.setenv("TEST_SLACK_TOKEN", "xoxb-test-token")
    http.answers["/api/chat.postMessage"] = Answer(200, b'{"ok": true}')
    SlackNotifier(
        SlackSettings(token_env="TEST_SLACK_TOKEN", channel="#backup", base_url=http.url + "/api/")
    ).send(_alert())
    (post,) = http.on("/api/chat.postMessage")
    assert post.headers["Authorization"] == "Bearer xoxb-test-token"
    assert post.json["channel"] == "#backup"

    http.answers["/api/chat.postMessage"] = Answer(200, b'{"ok": false, "error": "channel_not_found"}')
    with pytest.raises(NotifierError, match="channel_not_found"):
        SlackNotifier(
            SlackSettings(token_env="TEST_SLACK_TOKEN", channel="#gone", base_url=http.url + "/api/")
        ).send(_alert())


def test_errors_never_show_the_webhook_url_or_a_key(http, monkeypatch):
    monkeypatch.setenv("TEST_SLACK_WEBHOOK", http.url + SECRET_HOOK_PATH)
    http.answers[SECRET_HOOK_PATH] = Answer(500, b"no")
    with pytest.raises(NotifierError) as failed:
        SlackNotifier(SlackSettings(webhook_url_env="TEST_SLACK_WEBHOOK"), timeout_s=2).send(_alert())
    assert "HTTP 500" in str(failed.value) and "s3cr3t" not in str(failed.value)
    closed = CaptureServer()  # never started: connection refused
    monkeypatch.setenv("TEST_SLACK_WEBHOOK", closed.url + SECRET_HOOK_PATH)
    closed.server.server_close()
    with pytest.raises(NotifierError, match="cannot reach") as refused:
        SlackNotifier(SlackSettings(webhook_url_env="TEST_SLACK_WEBHOOK"), timeout_s=2).send(_alert())
    assert "s3cr3t" not in str(refused.value)
    monkeypatch.delenv("TEST_PD_KEY", raising=False)
    with pytest.raises(NotifierError, match="TEST_PD_KEY is not set"):
        PagerDutyNotifier(PagerDutySettings("TEST_PD_KEY", http.url + "/v2/enqueue")).send(_alert())


def test_pagerduty_trigger_and_resolve_share_the_dedup_key(http, monkeypatch):
    monkeypatch.setenv("TEST_PD_KEY", "R0UT1NGKEY")
    http.answers["/v2/enqueue"] = Answer(202, b'{"status": "success"}')
    pd = PagerDutyNotifier(PagerDutySettings("TEST_PD_KEY", http.url + "/v2/enqueue"), timeout_s=2)
    pd.send(_alert())
    pd.send(_alert(action="resolve"))
    trig, res = (r.json for r in http.on("/v2/enqueue"))
    assert (trig["event_action"], res["event_action"]) == ("trigger", "resolve")
    assert trig["dedup_key"] == res["dedup_key"] == "dicom-backup/SITE/ARIA/backup-failed"
    assert trig["routing_key"] == "R0UT1NGKEY"
    http.answers["/v2/enqueue"] = Answer(400, b'{"status": "invalid event"}')
    with pytest.raises(NotifierError, match="HTTP 400"):
        pd.send(_alert())


def test_email_through_a_real_smtp_server():
    with SmtpServer() as smtp:
        settings = EmailSettings(
            "127.0.0.1", "backup@example.org", ("it@example.org",), smtp.port, starttls=False
        )
        EmailNotifier(settings, timeout_s=5).send(_alert(severity="high"))
        (message,) = smtp.capture.messages
        assert message["Subject"] == "[dicom-backup] [HIGH] SITE: ARIA backup failed"
        assert message["To"] == "it@example.org"
        assert "0xA801" in message.get_payload()
        # STARTTLS demanded from a relay that does not offer it: a clear, logged failure.
        strict = EmailSettings(
            "127.0.0.1", "backup@example.org", ("it@example.org",), smtp.port, starttls=True
        )
        with pytest.raises(NotifierError, match=f"127.0.0.1:{smtp.port}"):
            EmailNotifier(strict, timeout_s=5).send(_alert())


def test_routing_defaults_and_resolves_reach_the_trigger_channels(http, monkeypatch):
    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name
            self.sent: list[Alert] = []

        def send(self, alert: Alert) -> None:
            self.sent.append(alert)

    notifiers = {n: Recorder(n) for n in ("slack", "pagerduty", "email")}
    d = Dispatcher(notifiers, timeout_s=1)  # type: ignore[arg-type]
    assert d.channels_for(_alert()) == ["slack", "pagerduty"]
    assert d.channels_for(_alert(severity="high")) == ["slack", "email"]
    assert d.channels_for(_alert(severity="low")) == ["email"]
    assert d.channels_for(_alert(action="resolve")) == ["slack", "pagerduty", "email"]
    custom = Dispatcher(notifiers, {"critical": ("slack",), "high": (), "low": ()}, timeout_s=1)  # type: ignore[arg-type]
    assert custom.channels_for(_alert()) == ["slack"] and custom.channels_for(_alert(severity="high")) == []

    book = IncidentBook(MemoryStore())
    assert trigger(d, book, _alert()) is not None
    assert trigger(d, book, _alert(run_id="second")) is None  # once per outage
    assert book.get(_alert().dedup_key).failures == 2  # type: ignore[union-attr]
    deliveries = resolve(d, book, _alert(severity="low", run_id="third"))
    assert deliveries is not None and {x.channel for x in deliveries} == {"slack", "pagerduty", "email"}
    (resolved,) = notifiers["pagerduty"].sent[1:]
    assert resolved.resolving and resolved.dedup_key == _alert().dedup_key
    assert resolved.counts["failures_in_incident"] == 2
    assert resolve(d, book, _alert()) is None  # nothing open any more


def test_a_channel_that_times_out_delays_no_other(monkeypatch):
    with CaptureServer() as slow, CaptureServer() as fast, SmtpServer() as smtp:
        slow.default = Answer(200, b"ok", delay_s=8)  # Slack hangs past its 2 s timeout
        fast.default = Answer(202, b"{}")
        monkeypatch.setenv("TEST_SLACK_WEBHOOK", slow.url + "/hook")
        monkeypatch.setenv("TEST_PD_KEY", "k")
        notifiers = {
            "slack": SlackNotifier(SlackSettings(webhook_url_env="TEST_SLACK_WEBHOOK"), timeout_s=2),
            "pagerduty": PagerDutyNotifier(
                PagerDutySettings("TEST_PD_KEY", fast.url + "/v2/enqueue"), timeout_s=1
            ),
            "email": EmailNotifier(
                EmailSettings("127.0.0.1", "b@example.org", ("it@example.org",), smtp.port, starttls=False),
                timeout_s=1,
            ),
        }
        d = Dispatcher(notifiers, {"critical": ("slack", "pagerduty", "email")}, timeout_s=2)  # type: ignore[arg-type]
        started = time.monotonic()
        deliveries = {x.channel: x for x in d.send(_alert())}
        took = time.monotonic() - started
        assert not deliveries["slack"].ok and "within 2 s" in str(deliveries["slack"].error)
        assert deliveries["pagerduty"].ok and deliveries["email"].ok
        # PagerDuty and email were delivered while Slack was still hanging ...
        # (bounds leave room for a loaded CI machine, and stay below Slack's 2 s timeout)
        assert fast.requests[0].at - started < 1.5
        assert deliveries["pagerduty"].seconds < 1.5 and deliveries["email"].seconds < 1.5
        # ... and the whole send took about one timeout, not the hang.
        assert 1.9 < took < 6.0  # Slack hangs for 8 s
        assert len(smtp.capture.messages) == 1
        # The next alert of the same sensor tick does not wait for the hung channel again.
        started = time.monotonic()
        again = {x.channel: x for x in d.send(_alert(run_id="next"))}
        assert time.monotonic() - started < 1.5
        assert "skipped" in str(again["slack"].error) and again["pagerduty"].ok and again["email"].ok


def test_a_notifier_bug_is_logged_and_other_channels_still_send(caplog):
    class Broken:
        name = "slack"

        def send(self, alert: Alert) -> None:
            raise KeyError("DOE^JANE")  # even a buggy notifier's message text is not logged

    class Ok:
        name = "pagerduty"
        sent = 0

        def send(self, alert: Alert) -> None:
            Ok.sent += 1

    d = Dispatcher({"slack": Broken(), "pagerduty": Ok()}, timeout_s=1)  # type: ignore[dict-item]
    with caplog.at_level("INFO"):
        result = {x.channel: x.ok for x in d.send(_alert())}
    assert result == {"slack": False, "pagerduty": True} and Ok.sent == 1
    assert "NOT sent: slack: KeyError" in caplog.text and "DOE^JANE" not in caplog.text


def test_every_alert_kind_has_a_runbook():
    runbooks = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
    for kind in AlertKind:
        page = runbooks / f"{kind.value}.md"
        assert page.is_file(), f"missing runbook {page}"
        assert page.read_text().startswith(f"# {kind.value}")
