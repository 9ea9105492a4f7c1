"""The `[<ENV>.notifications]` table: one pydantic model per channel, used by the site configuration (which
validates the file through them), by the Dagster notifier resources and by the notifiers.

No I/O, no Dagster. Secrets are never values here, only the NAMES of the environment variables that hold
them (a Slack webhook URL carries its token, so it is a secret too); the notifiers read them at send time,
so a missing variable fails that one channel, not the code location.

Validation runs when a validation context is given (the configuration loader passes one); models built in
code are taken as written. A failed check raises a "config" error whose context holds the problem and the
fix; ``<ENV>`` in a fix stands for the environment's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import field
from difflib import get_close_matches
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import urlsplit

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import InitErrorDetails, PydanticCustomError

Severity = Literal["critical", "high", "low"]
Channel = Literal["slack", "pagerduty", "email"]

SEVERITIES: tuple[Severity, ...] = ("critical", "high", "low")
CHANNELS: tuple[Channel, ...] = ("slack", "pagerduty", "email")

# Critical failures page and post; high ones post and mail; low ones (recoveries, summaries) mail.
DEFAULT_ROUTES: dict[Severity, tuple[Channel, ...]] = {
    "critical": ("pagerduty", "slack"),
    "high": ("slack", "email"),
    "low": ("email",),
}

SLACK_API_URL = "https://slack.com/api/"
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
DEFAULT_TIMEOUT_S = 10.0

ENV_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EMAIL_RE = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")
MODEL_CONFIG = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="forbid")
# ``strict``: TOML's 104 and "104" are different things, and only one is a port.
PORT = Field(strict=True, ge=1, le=65535, description="a TCP port (integer 1..65535)")

# ------------------------------------------------------------------------------------------- checks


def config_error(problem: str, fix: str) -> PydanticCustomError:
    return PydanticCustomError("config", "{problem}", {"problem": problem, "fix": fix})


def fail(problem: str, fix: str) -> NoReturn:
    raise config_error(problem, fix)


def fail_at(errors: Iterable[tuple[tuple[Any, ...], str, str]]) -> NoReturn:
    """Several problems at once, each at its own key below the value being validated."""
    details = [InitErrorDetails(type=config_error(p, f), loc=loc, input=None) for loc, p, f in errors]
    raise ValidationError.from_exception_data("config", details)


def type_name(value: Any) -> str:
    names = {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer"}
    return {**names, float: "a float"}.get(type(value), type(value).__name__)


def shown(value: Any) -> str:
    return repr(value) if isinstance(value, (int, float, str, bool)) else type_name(value)


def close_match(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The candidate closest to ``word`` (case-insensitive), or None."""
    folded = {c.lower(): c for c in candidates}
    match = get_close_matches(word.lower(), list(folded), n=1, cutoff=cutoff)
    return folded[match[0]] if match else None


def hint(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    best = close_match(word, candidates, cutoff)
    return f", did you mean {best!r}?" if best else ""


def check(fn: Callable[..., Any], *args: Any) -> BeforeValidator:
    """Run ``fn(value, key, *args)`` on a field's value when loading a file (a validation context is set);
    None is a default (TOML has no null)."""

    def run(value: Any, info: ValidationInfo) -> Any:
        return value if info.context is None or value is None else fn(value, info.field_name, *args)

    return BeforeValidator(run)


def string(value: Any, key: str, example: str) -> str:
    if not isinstance(value, str):
        fail(f"must be a string, got {type_name(value)}", f"write it as {key} = {example}")
    if not value.strip():
        fail("must not be empty", f"set it, e.g. {key} = {example}")
    return value


def number(value: Any, key: str, low: float, high: float, example: str, above: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value > low if above else value >= low) or value > high:
        bound = f"{'above ' if above else ''}{low} to {high}"
        fail(
            f"must be a number from {bound}, got {shown(value)}",
            f"set {key} to a number from {bound} (no quotes), e.g. {key} = {example}",
        )
    return float(value)


def env_var(value: Any, key: str, example: str) -> str:
    # Never echo the value: a password pasted here by mistake must not end up in a log.
    if not isinstance(value, str) or not ENV_VAR_RE.match(value):
        fail(
            "must be the NAME of an environment variable (letters, digits, underscore), not the password "
            "itself (value not shown)",
            f"set {key} = {example} and export that variable with the password",
        )
    return value


def url_problem(value: str) -> str | None:
    """Why ``value`` is not an http(s) URL with a host and without credentials, or None."""
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.username or parts.password:
        return "must not contain a user name or password (value not shown)"  # the URL is not echoed
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        return f"{value!r} is not an http(s) URL with a host"
    return None


def http_url(
    value: Any, key: str, example: str, fix: str = "", secrets: str = "secrets are named by the *_env keys"
) -> str:
    problem = url_problem(string(value, key, example))
    if problem:
        fix = fix or f"write it as {key} = {example}"
        fail(problem, f"remove them from the URL; {secrets}" if "password" in problem else fix)
    return value.rstrip("/")


def email_address(value: Any, key: str) -> str:
    if not _EMAIL_RE.match(string(value, key, '"dicom-backup@example.org"').strip()):
        fail(f"{value!r} is not an email address", 'write from = "dicom-backup@example.org"')
    return value.strip()


def email_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        value = [None]
    if not all(isinstance(a, str) and _EMAIL_RE.match(a.strip()) for a in value):
        fail(
            "must be a non-empty array of email addresses",
            'write to = ["radonc-it@example.org", "physics@example.org"]',
        )
    return tuple(a.strip() for a in value)


def host(value: Any, key: str, example: str, problem: Callable[[str], str | None]) -> str:
    fix = f"set {key} to an IP address or DNS name, e.g. {key} = {example}"
    if isinstance(value, str) and not value.strip():
        fail("empty host", fix)
    found = problem(string(value, key, example))
    if found:
        fail(found, fix)
    return value


_HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def host_problem(value: str) -> str | None:
    """Why ``value`` is not an IPv4/IPv6 address or a DNS name, or None."""
    import ipaddress

    if value != value.strip() or any(c.isspace() for c in value):
        return f"host {value!r} contains spaces"
    if ":" in value or re.fullmatch(r"[0-9.]+", value):
        try:
            ipaddress.ip_address(value.strip("[]"))
        except ValueError:
            if ":" in value:
                return f"{value!r} is not a valid IPv6 address (and a host name may not contain ':')"
            return f"{value!r} is not a valid IPv4 address"
        return None
    name = value[:-1] if value.endswith(".") else value
    if len(name) > 253 or not all(_HOST_LABEL_RE.match(label) for label in name.split(".")):
        return f"{value!r} is not a valid host name"
    return None


def _env_name(example: str) -> BeforeValidator:
    return check(env_var, example)


def _url(example: str) -> BeforeValidator:
    return check(http_url, example)


def _routes(value: Any, key: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        fail(f"must be a table, got {type_name(value)}", 'write it as critical = ["pagerduty", "slack"]')
    errors, routes = [], dict(DEFAULT_ROUTES)
    for severity, channels in value.items():
        if severity not in SEVERITIES:
            problem = f"unknown severity {severity!r}{hint(severity, SEVERITIES)}"
            errors.append(((severity,), problem, f"use one of: {', '.join(SEVERITIES)}"))
        elif not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            problem = f"must be an array of channel names, got {type_name(channels)}"
            errors.append(((severity,), problem, f'write {severity} = ["slack"]'))
        else:
            fix = f"use channels from: {', '.join(CHANNELS)}"
            unknown = [c for c in channels if c not in CHANNELS]
            errors += [((severity,), f"unknown channel {c!r}{hint(c, CHANNELS, 0.5)}", fix) for c in unknown]
            routes[severity] = tuple(dict.fromkeys(channels))
    if errors:
        fail_at(errors)
    return routes  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- models


@dataclass(frozen=True, config=MODEL_CONFIG)
class SlackSettings:
    """Either an incoming webhook (`webhook_url_env`, the primary path) or a bot token posting
    chat.postMessage to `channel` at `base_url`."""

    webhook_url_env: Annotated[str | None, _env_name('"<ENV>_SLACK_WEBHOOK_URL"')] = None
    token_env: Annotated[str | None, _env_name('"<ENV>_SLACK_BOT_TOKEN"')] = None
    channel: Annotated[str | None, check(string, '"#radonc-backup"')] = None
    base_url: Annotated[str, _url('"https://slack.com/api/"')] = SLACK_API_URL

    @model_validator(mode="after")
    def _one_way_to_post(self, info: ValidationInfo) -> SlackSettings:
        if info.context is None:
            return self
        if self.webhook_url_env and self.token_env:
            fail(
                "both webhook_url_env and token_env are set",
                "choose one: an incoming webhook (webhook_url_env) or a bot token (token_env + channel)",
            )
        if not self.webhook_url_env and not (self.token_env and self.channel):
            fail(
                "no way to post: set webhook_url_env, or token_env and channel",
                'add webhook_url_env = "<ENV>_SLACK_WEBHOOK_URL" and export that variable with the incoming '
                "webhook URL (it is a secret)",
            )
        return self


@dataclass(frozen=True, config=MODEL_CONFIG)
class PagerDutySettings:
    """PagerDuty Events API v2 (trigger and resolve by dedup_key)."""

    routing_key_env: Annotated[
        str, Field(examples=["<ENV>_PAGERDUTY_ROUTING_KEY"]), _env_name('"<ENV>_PAGERDUTY_ROUTING_KEY"')
    ]
    events_url: Annotated[str, _url('"https://events.pagerduty.com/v2/enqueue"')] = PAGERDUTY_EVENTS_URL


@dataclass(frozen=True, config=MODEL_CONFIG)
class EmailSettings:
    """SMTP submission (RFC 5321) with optional STARTTLS (RFC 3207) and AUTH (RFC 4954)."""

    smtp_host: Annotated[
        str, Field(examples=["smtp.example.org"]), check(host, '"smtp.example.org"', host_problem)
    ]
    sender: Annotated[str, check(lambda v, _k: email_address(v, "from"))] = Field(
        alias="from", examples=["dicom-backup@example.org"]
    )
    recipients: Annotated[tuple[str, ...], check(email_list)] = Field(
        alias="to", examples=[["radonc-it@example.org"]]
    )
    smtp_port: Annotated[int, PORT, Field(examples=[587])] = 587
    starttls: Annotated[bool, Field(strict=True)] = True
    username: Annotated[str | None, check(string, '"dicom-backup"')] = None
    password_env: Annotated[str | None, _env_name('"<ENV>_SMTP_PASSWORD"')] = None

    @model_validator(mode="after")
    def _credentials_pair(self, info: ValidationInfo) -> EmailSettings:
        if info.context is not None and (self.username is None) != (self.password_env is None):
            missing = "password_env" if self.username else "username"
            fail_at(
                [
                    (
                        (missing,),
                        "username and password_env go together",
                        f"add {missing} (or remove the other one if the SMTP relay needs no authentication)",
                    )
                ]
            )
        return self


@dataclass(frozen=True, config=MODEL_CONFIG)
class NotificationSettings:
    """Routing, channels and links. With no channel configured, alerts are only logged."""

    dagster_ui_url: Annotated[str | None, _url('"http://dagster.example.org:3000"')] = None
    runbook_base_url: Annotated[
        str, check(lambda v, k: string(v, k, '"https://git.example.org/runbooks"').rstrip("/"))
    ] = "docs/runbooks"
    timeout_s: Annotated[float, Field(strict=True, gt=0.0, le=300.0, examples=[10])] = DEFAULT_TIMEOUT_S
    # Cause grouping (notify/causes.py): failures within the window that share a cause make one alert,
    # held up to hold_s after the first one unless every dependent source has failed sooner.
    grouping_window_s: Annotated[float, Field(strict=True, gt=0.0, le=86400.0, examples=[900])] = 900.0
    grouping_hold_s: Annotated[float, Field(strict=True, ge=0.0, le=3600.0, examples=[120])] = 120.0
    routes: Annotated[dict[Severity, tuple[Channel, ...]], check(_routes)] = field(
        default_factory=lambda: dict(DEFAULT_ROUTES)
    )
    slack: SlackSettings | None = None
    pagerduty: PagerDutySettings | None = None
    email: EmailSettings | None = None

    @model_validator(mode="after")
    def _routes_reach_configured_channels(self, info: ValidationInfo) -> NotificationSettings:
        if info.context is None:
            return self
        errors = [
            (
                ("routes", severity),
                f"routes {severity} alerts to {channel!r} but [<ENV>.notifications.{channel}] is not "
                "configured",
                f"add a [<ENV>.notifications.{channel}] table or remove {channel!r} from this route",
            )
            for severity, channels in self.routes.items()
            for channel in channels
            if getattr(self, channel) is None and channels != DEFAULT_ROUTES[severity]
        ]
        if errors:
            fail_at(errors)
        return self

    @property
    def configured_channels(self) -> tuple[Channel, ...]:
        return tuple(c for c in CHANNELS if getattr(self, c) is not None)

    @property
    def enabled(self) -> bool:
        return bool(self.configured_channels)

    def env_vars(self) -> dict[str, str]:
        """dotted key -> environment variable name, for every secret this configuration reads."""
        found = {
            "slack.webhook_url_env": self.slack and self.slack.webhook_url_env,
            "slack.token_env": self.slack and self.slack.token_env,
            "pagerduty.routing_key_env": self.pagerduty and self.pagerduty.routing_key_env,
            "email.password_env": self.email and self.email.password_env,
        }
        return {f"notifications.{key}": var for key, var in found.items() if var}
