"""The [<ENV>.notifications] table: parsed into NotificationSettings, every bad input reported with its
dotted key and a fix, secrets only ever named (never read into the model or shown)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicom_backup_dagster.config import ConfigError, load_config, main
from tests.config.conftest import OTHER_SECRETS, SECRETS, dump_toml, valid_config

NOTIFICATIONS: dict[str, Any] = {
    "dagster_ui_url": "http://dagster.example.org:3000/",
    "runbook_base_url": "https://git.example.org/backup/docs/runbooks/",
    "timeout_s": 5,
    "routes": {"high": ["slack"]},
    "slack": {"webhook_url_env": "SITE_A_SLACK_HOOK"},
    "pagerduty": {"routing_key_env": "SITE_A_PD_KEY", "events_url": "http://127.0.0.1:9/v2/enqueue"},
    "email": {
        "smtp_host": "smtp.example.org",
        "smtp_port": 2525,
        "starttls": False,
        "from": "backup@example.org",
        "to": ["it@example.org", "physics@example.org"],
    },
}


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**SECRETS, **OTHER_SECRETS}.items():
        monkeypatch.setenv(name, value)


def _load(tmp_path: Path, notifications: Any) -> Any:
    data = valid_config()
    data["SITE_A"]["notifications"] = notifications
    path = tmp_path / "environments.toml"
    path.write_text(dump_toml(data))
    return load_config(path, "SITE_A").environment


def _errors(tmp_path: Path, notifications: Any) -> str:
    with pytest.raises(ConfigError) as failed:
        _load(tmp_path, notifications)
    return str(failed.value)


def test_full_table_parses(tmp_path):
    n = _load(tmp_path, NOTIFICATIONS).notifications
    assert n.dagster_ui_url == "http://dagster.example.org:3000"
    assert n.runbook_base_url == "https://git.example.org/backup/docs/runbooks"
    assert n.timeout_s == 5.0
    # Routes not written keep their defaults.
    assert n.routes == {"critical": ("pagerduty", "slack"), "high": ("slack",), "low": ("email",)}
    assert n.slack.webhook_url_env == "SITE_A_SLACK_HOOK"  # type: ignore[union-attr]
    assert n.pagerduty.events_url == "http://127.0.0.1:9/v2/enqueue"  # type: ignore[union-attr]
    assert n.email.recipients == ("it@example.org", "physics@example.org")  # type: ignore[union-attr]
    assert n.email.starttls is False and n.email.smtp_port == 2525  # type: ignore[union-attr]
    assert n.configured_channels == ("slack", "pagerduty", "email")


def test_missing_table_means_no_channels(tmp_path):
    data = valid_config()
    path = tmp_path / "environments.toml"
    path.write_text(dump_toml(data))
    n = load_config(path, "SITE_A").environment.notifications
    assert not n.enabled and n.dagster_ui_url is None


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"routes": {"critical": ["pager"]}}, "notifications.routes.critical", "did you mean 'pagerduty'"),
        ({"routes": {"urgent": ["slack"]}}, "notifications.routes.urgent", "unknown severity"),
        ({"slack": None, "routes": {"high": ["slack"]}}, "notifications.routes.high", "is not configured"),
        (
            {"slack": {"webhook_url_env": "A", "token_env": "B", "channel": "#c"}},
            "notifications.slack",
            "choose one",
        ),
        ({"slack": {"channel": "#c"}}, "notifications.slack", "no way to post"),
        ({"pagerduty": {"routing_key_env": "R0ut1ng-Key!"}}, "routing_key_env", "value not shown"),
        ({"pagerduty": {}}, "notifications.pagerduty.routing_key_env", "missing required key"),
        ({"dagster_ui_url": "dagster:3000"}, "notifications.dagster_ui_url", "not an http(s) URL"),
        (
            {"dagster_ui_url": "http://admin:pw@dagster:3000"},
            "notifications.dagster_ui_url",
            "user name or password",
        ),
        (
            {"email": {"smtp_host": "smtp.example.org", "from": "x", "to": ["it@example.org"]}},
            "email.from",
            "not an email",
        ),
        (
            {"email": {"smtp_host": "smtp.example.org", "from": "b@example.org", "to": []}},
            "email.to",
            "non-empty array",
        ),
        (
            {"email": {"smtp_host": "s.example.org", "from": "b@e.org", "to": ["a@e.org"], "username": "u"}},
            "email.password_env",
            "go together",
        ),
        ({"timeout_s": 0}, "notifications.timeout_s", "number from above 0.0"),
        ({"timeout_s": "10"}, "notifications.timeout_s", "e.g. timeout_s = 10"),
        ({"grouping_hold_s": 3601}, "notifications.grouping_hold_s", "number from 0.0 to 3600.0, got 3601"),
        (
            {"email": {**NOTIFICATIONS["email"], "smtp_port": "587"}},
            "email.smtp_port",
            "must be a TCP port (integer 1..65535), got '587'",
        ),
        (
            {"email": {**NOTIFICATIONS["email"], "starttls": "yes"}},
            "email.starttls",
            "got a string. Fix: write starttls = true or starttls = false (no quotes)",
        ),
        ({"slak": {}}, "notifications.slak", "did you mean 'slack'"),
    ],
)
def test_bad_input_is_reported_with_key_and_fix(tmp_path, change, key, words):
    notifications = {**NOTIFICATIONS, **change}
    notifications = {k: v for k, v in notifications.items() if v is not None}
    message = _errors(tmp_path, notifications)
    assert f"SITE_A.{key}" in message or key in message, message
    assert words in message, message
    assert "Fix:" in message
    assert "R0ut1ng-Key!" not in message and "admin:pw" not in message


def test_check_cli_warns_about_unset_secrets_without_failing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SITE_A_SLACK_HOOK", raising=False)
    monkeypatch.setenv("SITE_A_PD_KEY", "set")
    data = valid_config()
    data["SITE_A"]["notifications"] = NOTIFICATIONS
    path = tmp_path / "environments.toml"
    path.write_text(dump_toml(data))
    assert main(["check", "--config", str(path), "--environment", "SITE_A"]) == 0
    out = capsys.readouterr().out
    assert "SITE_A_SLACK_HOOK is not set" in out and "SITE_A_PD_KEY" not in out
    assert "notifications: critical -> pagerduty+slack" in out
