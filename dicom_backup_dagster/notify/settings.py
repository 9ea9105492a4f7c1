"""What the `[<ENV>.notifications]` table of the site configuration becomes (config.py parses it).

Pure data: no I/O, no Dagster. Secrets are never values here, only the NAMES of the environment variables
that hold them (a Slack webhook URL carries its token, so it is a secret too); the notifiers read them at
send time, so a missing variable fails that one channel, not the code location.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["critical", "high", "low"]
Channel = Literal["slack", "pagerduty", "email"]

SEVERITIES: tuple[Severity, ...] = ("critical", "high", "low")
CHANNELS: tuple[Channel, ...] = ("slack", "pagerduty", "email")

# Seeds 001/003: critical pages and posts; high posts and mails; low (recoveries, summaries) mails.
DEFAULT_ROUTES: dict[Severity, tuple[Channel, ...]] = {
    "critical": ("pagerduty", "slack"),
    "high": ("slack", "email"),
    "low": ("email",),
}

SLACK_API_URL = "https://slack.com/api/"
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SlackSettings:
    """Either an incoming webhook (`webhook_url_env`, the primary path) or a bot token posting
    chat.postMessage (https://api.slack.com/methods/chat.postMessage) to `channel` at `base_url`."""

    webhook_url_env: str | None = None
    token_env: str | None = None
    channel: str | None = None
    base_url: str = SLACK_API_URL


@dataclass(frozen=True)
class PagerDutySettings:
    """PagerDuty Events API v2 (https://developer.pagerduty.com/docs/events-api-v2/overview/)."""

    routing_key_env: str
    events_url: str = PAGERDUTY_EVENTS_URL


@dataclass(frozen=True)
class EmailSettings:
    """SMTP submission (RFC 5321) with optional STARTTLS (RFC 3207) and AUTH (RFC 4954)."""

    smtp_host: str
    sender: str
    recipients: tuple[str, ...]
    smtp_port: int = 587
    starttls: bool = True
    username: str | None = None
    password_env: str | None = None


@dataclass(frozen=True)
class NotificationSettings:
    """Routing, channels and links. With no channel configured, alerts are only logged."""

    dagster_ui_url: str | None = None
    runbook_base_url: str = "docs/runbooks"
    timeout_s: float = DEFAULT_TIMEOUT_S
    routes: dict[Severity, tuple[Channel, ...]] = field(default_factory=lambda: dict(DEFAULT_ROUTES))
    slack: SlackSettings | None = None
    pagerduty: PagerDutySettings | None = None
    email: EmailSettings | None = None

    @property
    def configured_channels(self) -> tuple[Channel, ...]:
        return tuple(c for c in CHANNELS if getattr(self, c) is not None)

    @property
    def enabled(self) -> bool:
        return bool(self.configured_channels)

    def env_vars(self) -> dict[str, str]:
        """dotted key -> environment variable name, for every secret this configuration reads."""
        out: dict[str, str] = {}
        if self.slack is not None:
            for key in ("webhook_url_env", "token_env"):
                if getattr(self.slack, key):
                    out[f"notifications.slack.{key}"] = getattr(self.slack, key)
        if self.pagerduty is not None:
            out["notifications.pagerduty.routing_key_env"] = self.pagerduty.routing_key_env
        if self.email is not None and self.email.password_env:
            out["notifications.email.password_env"] = self.email.password_env
        return out
