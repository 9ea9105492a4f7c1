"""Thin notifiers: Slack, PagerDuty Events API v2 and SMTP email, each one call with a timeout.

Secrets are read from environment variables at send time (the configuration holds only their names), so
a missing variable fails that channel alone. A `NotifierError` names the channel, the endpoint's host
and the exception CLASS, never a URL (a Slack webhook URL is a credential), a key or a response body.
"""

from __future__ import annotations

import os
import smtplib
import ssl
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import requests

from dicom_backup_dagster.notify.alert import Alert
from dicom_backup_dagster.notify.settings import (
    DEFAULT_TIMEOUT_S,
    Channel,
    EmailSettings,
    NotificationSettings,
    PagerDutySettings,
    SlackSettings,
)


class NotifierError(RuntimeError):
    """A channel could not deliver; the message is safe to log (no secrets, no payload)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Notifier(Protocol):
    name: Channel

    def send(self, alert: Alert) -> None: ...


def _secret(channel: str, env_var: str) -> str:
    value = os.environ.get(env_var, "")
    if not value:
        raise NotifierError(
            f"{channel}: environment variable {env_var} is not set or empty; export it in the environment "
            "of the Dagster daemon and code server"
        )
    return value


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _post_json(
    channel: str, url: str, body: dict[str, object], timeout_s: float, **kwargs: object
) -> requests.Response:
    try:
        # (connect, read): both bounded, so a black-holed endpoint costs at most timeout_s each.
        return requests.post(url, json=body, timeout=(timeout_s, timeout_s), **kwargs)  # type: ignore[arg-type]
    except requests.Timeout as error:
        raise NotifierError(
            f"{channel}: no answer from {_host(url)} within {timeout_s:g} s ({type(error).__name__})",
            timed_out=True,
        ) from None
    except requests.RequestException as error:
        # The exception text contains the URL (for Slack webhooks, the credential): report its class only.
        raise NotifierError(f"{channel}: cannot reach {_host(url)} ({type(error).__name__})") from None


class SlackNotifier:
    """Posts to an incoming webhook (https://api.slack.com/messaging/webhooks), or, with a bot token, to
    chat.postMessage (https://api.slack.com/methods/chat.postMessage) at a configurable API base URL."""

    name: Channel = "slack"

    def __init__(self, settings: SlackSettings, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not settings.webhook_url_env and not (settings.token_env and settings.channel):
            raise ValueError("SlackNotifier needs webhook_url_env, or token_env and channel")
        self.settings = settings
        self.webhook_url_env = settings.webhook_url_env
        self.token_env = settings.token_env
        self.channel = settings.channel
        self.base_url = settings.base_url if settings.base_url.endswith("/") else settings.base_url + "/"
        self.timeout_s = timeout_s

    def send(self, alert: Alert) -> None:
        payload = alert.slack_payload()
        if self.webhook_url_env:
            url = _secret("slack", self.webhook_url_env)
            response = _post_json("slack", url, payload, self.timeout_s)
            if response.status_code != 200:
                raise NotifierError(f"slack: webhook at {_host(url)} answered HTTP {response.status_code}")
            return
        token = _secret("slack", self.token_env or "")
        url = urljoin(self.base_url, "chat.postMessage")
        response = _post_json(
            "slack",
            url,
            {"channel": self.channel, **payload},
            self.timeout_s,
            headers={"Authorization": f"Bearer {token}"},
        )
        try:
            ok = response.status_code == 200 and bool(response.json().get("ok"))
            error = "" if ok else str(response.json().get("error", ""))[:60]
        except ValueError:
            ok, error = False, "not JSON"
        if not ok:
            raise NotifierError(
                f"slack: chat.postMessage at {_host(url)} answered HTTP {response.status_code} ({error})"
            )


class PagerDutyNotifier:
    """PagerDuty Events API v2: trigger and resolve with the alert's dedup_key; success is HTTP 202."""

    name: Channel = "pagerduty"

    def __init__(self, settings: PagerDutySettings, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.settings = settings
        self.routing_key_env = settings.routing_key_env
        self.events_url = settings.events_url
        self.timeout_s = timeout_s

    def send(self, alert: Alert) -> None:
        key = _secret("pagerduty", self.routing_key_env)
        response = _post_json("pagerduty", self.events_url, alert.pagerduty_event(key), self.timeout_s)
        if response.status_code != 202:
            raise NotifierError(
                f"pagerduty: {_host(self.events_url)} answered HTTP {response.status_code} to "
                f"{'resolve' if alert.resolving else 'trigger'} {alert.dedup_key}"
            )


class EmailNotifier:
    """One plain-text message by SMTP submission (RFC 5321/6409), STARTTLS (RFC 3207) when configured,
    AUTH (RFC 4954) when a user name is configured."""

    name: Channel = "email"

    def __init__(self, settings: EmailSettings, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.settings = settings
        self.timeout_s = timeout_s

    def send(self, alert: Alert) -> None:
        s = self.settings
        message = EmailMessage()
        message["Subject"] = alert.email_subject()
        message["From"] = s.sender
        message["To"] = ", ".join(s.recipients)
        message.set_content(alert.email_body())
        where = f"{s.smtp_host}:{s.smtp_port}"
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=self.timeout_s) as smtp:
                if s.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.username:
                    smtp.login(s.username, _secret("email", s.password_env or ""))
                smtp.send_message(message)
        except NotifierError:
            raise
        except smtplib.SMTPResponseException as error:
            raise NotifierError(
                f"email: {where} answered SMTP {error.smtp_code} ({type(error).__name__})"
            ) from None
        except TimeoutError as error:
            raise NotifierError(
                f"email: no answer from {where} within {self.timeout_s:g} s ({type(error).__name__})",
                timed_out=True,
            ) from None
        except (OSError, smtplib.SMTPException) as error:
            raise NotifierError(f"email: cannot send through {where} ({type(error).__name__})") from None


def build_notifiers(settings: NotificationSettings) -> dict[Channel, Notifier]:
    """One notifier per configured channel."""
    out: dict[Channel, Notifier] = {}
    if settings.slack is not None:
        out["slack"] = SlackNotifier(settings.slack, timeout_s=settings.timeout_s)
    if settings.pagerduty is not None:
        out["pagerduty"] = PagerDutyNotifier(settings.pagerduty, timeout_s=settings.timeout_s)
    if settings.email is not None:
        out["email"] = EmailNotifier(settings.email, timeout_s=settings.timeout_s)
    return out
