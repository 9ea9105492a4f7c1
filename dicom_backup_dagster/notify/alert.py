"""The one shape every notification takes, and what each channel is sent from it.

An `Alert` is an allow-list of fields: names Dagster and the site configuration give us (environment,
source alias, job, step, check), a partition (a day, not a patient's date: it names the backup run), a
Dagster run ID and a link to its page, numeric counts, and DICOM facts from the standard's own tables
(peer AE@host:port, DIMSE operation, status code and its PS3.4/PS3.7 meaning). There is deliberately no
free-text field: exception messages, check descriptions and identifiers (patient names and IDs, birth
dates, accession numbers, UIDs) can never reach Slack, PagerDuty or email through it. Text fields are
additionally restricted to a small character set, so a DICOM Person Name (`DOE^JANE`) or an
`Attribute=value` fragment is mangled even if a caller passes one by mistake.

Dedup keys are stable per environment, source and failure kind, and never contain a run ID, so a trigger
and its later resolve address the same PagerDuty incident (Events API v2 `dedup_key`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from dicom_backup_dagster.notify.settings import Severity

Action = Literal["trigger", "acknowledge", "resolve"]

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9 _.:@/\-(),#+']")
_SAFE_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_MAX_TEXT = 160


class AlertKind(StrEnum):
    """One runbook page (docs/runbooks/<kind>.md) per kind."""

    BACKUP_FAILED = "backup_failed"
    PEER_UNREACHABLE = "peer_unreachable"
    ARCHIVE_INCOMPLETE = "archive_incomplete"
    CONTENT_NOT_VERIFIED = "content_not_verified"
    VOLUME_ANOMALY = "volume_anomaly"
    DURATION_ANOMALY = "duration_anomaly"
    CHECK_FAILED = "check_failed"
    MISSED_DATA = "missed_data"
    SWEEP_BEHIND = "sweep_behind"
    STAGING_CLEANUP_FAILED = "staging_cleanup_failed"
    STAGING_CLEANUP_SUMMARY = "staging_cleanup_summary"
    RESTORE_DRILL = "restore_drill"
    TEST_ALERT = "test_alert"
    # One alert per shared cause (notify/causes.py): the subject is the component, `sources` the affected.
    ARCHIVE_DOWN = "archive_down"
    STAGING_DOWN = "staging_down"
    BACKUP_HOST_NETWORK = "backup_host_network"
    DAGSTER_STORAGE_ERRORS = "dagster_storage_errors"
    SPOOL_FULL = "spool_full"


CAUSE_KINDS = frozenset(
    {
        AlertKind.ARCHIVE_DOWN,
        AlertKind.STAGING_DOWN,
        AlertKind.BACKUP_HOST_NETWORK,
        AlertKind.DAGSTER_STORAGE_ERRORS,
        AlertKind.SPOOL_FULL,
    }
)


_TITLES: dict[AlertKind, tuple[str, str]] = {
    # kind: (trigger title, resolve title); {subject} is the source or peer alias.
    AlertKind.BACKUP_FAILED: ("{subject} backup failed", "{subject} backup succeeded again"),
    AlertKind.PEER_UNREACHABLE: ("{subject} is unreachable", "{subject} is reachable again"),
    AlertKind.ARCHIVE_INCOMPLETE: (
        "{subject}: instances missing on the archive ({check})",
        "{subject}: archive complete again ({check})",
    ),
    AlertKind.CONTENT_NOT_VERIFIED: (
        "{subject}: archived content does not match the source ({check})",
        "{subject}: archived content verified again ({check})",
    ),
    AlertKind.VOLUME_ANOMALY: (
        "{subject}: volume below baseline ({check})",
        "{subject}: volume back within baseline ({check})",
    ),
    AlertKind.DURATION_ANOMALY: (
        "{subject}: backup slower than baseline ({check})",
        "{subject}: duration back within baseline ({check})",
    ),
    AlertKind.CHECK_FAILED: ("{subject}: check {check} failed", "{subject}: check {check} passes again"),
    AlertKind.MISSED_DATA: (
        "{subject}: the reconciliation sweep found instances the nightly runs had missed",
        "{subject}: the reconciliation sweep found nothing missed",
    ),
    AlertKind.SWEEP_BEHIND: (
        "{subject}: the reconciliation sweep is behind its window ({check})",
        "{subject}: the reconciliation sweep covers its window again ({check})",
    ),
    AlertKind.STAGING_CLEANUP_FAILED: ("staging cleanup failed", "staging cleanup succeeded again"),
    AlertKind.STAGING_CLEANUP_SUMMARY: ("staging cleanup summary", "staging cleanup summary"),
    AlertKind.RESTORE_DRILL: (
        "restore drill failed: the sample restored from the archive did not verify at the scratch AE",
        "restore drill passes again: the sample restored from the archive verified at the scratch AE",
    ),
    AlertKind.TEST_ALERT: ("Test alert from dicom-backup", "Test alert resolved"),
    AlertKind.ARCHIVE_DOWN: (
        "main archive {subject} unreachable or refusing: backups of {sources} failed",
        "main archive {subject} back: backups of {sources} succeeded again",
    ),
    AlertKind.STAGING_DOWN: (
        "staging {subject} unreachable: backups of {sources} failed",
        "staging {subject} back: backups of {sources} succeeded again",
    ),
    AlertKind.BACKUP_HOST_NETWORK: (
        "the backup host reaches no peer (its network): backups of {sources} failed",
        "the backup host reaches its peers again: backups of {sources} succeeded again",
    ),
    AlertKind.DAGSTER_STORAGE_ERRORS: (
        "Dagster storage errors: runs of {sources} failed",
        "Dagster storage works again: runs of {sources} succeeded again",
    ),
    AlertKind.SPOOL_FULL: (
        "the backup host's spool is full: backups of {sources} failed",
        "the backup host's spool has room again: backups of {sources} succeeded again",
    ),
}

_DEDUP_FAMILY: dict[AlertKind, str] = {
    AlertKind.BACKUP_FAILED: "backup-failed",
    AlertKind.PEER_UNREACHABLE: "unreachable",
    AlertKind.STAGING_CLEANUP_FAILED: "staging-cleanup-failed",
    AlertKind.STAGING_CLEANUP_SUMMARY: "staging-cleanup-summary",
    AlertKind.RESTORE_DRILL: "restore-drill",  # the failed check and a failed drill run: one incident
}

_SUBJECT_LABEL = {
    AlertKind.PEER_UNREACHABLE: "Peer alias",
    **{kind: "Component" for kind in CAUSE_KINDS},
}

_PD_SEVERITY: dict[str, str] = {"critical": "critical", "high": "error", "low": "warning"}


def safe_text(value: object) -> str:
    """`value` as text restricted to names, numbers and punctuation that cannot spell a DICOM Person Name
    or an attribute dump; at most 160 characters."""
    text = _SAFE_CHARS.sub("?", " ".join(str(value).split()))
    return text[:_MAX_TEXT]


def _safe_optional(value: object | None) -> str | None:
    if value is None:
        return None
    text = safe_text(value)
    return text or None


#: Alert's optional context fields, in the order PagerDuty's custom_details lists them; URLs are kept only
#: when they are one whitespace-free string, every other field passes safe_text.
_CONTEXT_FIELDS = (
    "partition",
    "job",
    "run_id",
    "run_url",
    "failed_step",
    "check",
    "peer",
    "operation",
    "dicom_status",
    "status_meaning",
    "error_type",
    "cause",
    "confidence",
    "runbook_url",
)
_URL_FIELDS = ("run_url", "runbook_url")


@dataclass(frozen=True)
class Alert:
    """A notification, built only from allow-listed, non-identifying fields (see the module docstring)."""

    kind: AlertKind
    severity: Severity
    environment: str
    subject: str  # the source alias (ARIA, MIM, MOSAIQ) or, for peer_unreachable, the peer alias
    action: Action = "trigger"
    partition: str | None = None
    job: str | None = None
    run_id: str | None = None
    run_url: str | None = None
    failed_step: str | None = None
    check: str | None = None
    peer: str | None = None  # AE@host:port or "database X on host": addresses, never credentials
    operation: str | None = None  # C-FIND, C-MOVE, ..., or "association"
    dicom_status: str | None = None  # e.g. 0xA801
    status_meaning: str | None = None  # the standard's wording for dicom_status
    error_type: str | None = None  # an exception CLASS name, never its message
    counts: Mapping[str, int | float] = field(default_factory=dict)
    runbook_url: str | None = None
    cause: str | None = None  # a cause alert's component and mode, e.g. "ORTHANC_MAIN unreachable"
    confidence: str | None = None  # e.g. "0.97 (high)"
    sources: tuple[str, ...] = ()  # a cause alert's affected source aliases
    partitions: tuple[str, ...] = ()  # "<source> <partition>" of each affected run

    def __post_init__(self) -> None:
        for name in ("environment", "subject", *(f for f in _CONTEXT_FIELDS if f not in _URL_FIELDS)):
            object.__setattr__(self, name, _safe_optional(getattr(self, name)))
        for name in ("sources", "partitions"):
            values = tuple(safe_text(v) for v in getattr(self, name) if safe_text(v))
            object.__setattr__(self, name, values[:50])
        for name in _URL_FIELDS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or any(c.isspace() for c in value)):
                object.__setattr__(self, name, None)
        counts = {
            k: v
            for k, v in dict(self.counts).items()
            if isinstance(k, str)
            and _SAFE_KEY.match(k)
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
        }
        object.__setattr__(self, "counts", counts)

    # ---------------------------------------------------------------------------------------------------
    # Derived

    @property
    def dedup_key(self) -> str:
        """Stable per environment, subject and failure kind (a check's name is its kind)."""
        if self.kind == AlertKind.TEST_ALERT:
            return f"dicom-backup/{self.environment}/test-alert/{self.run_id or 'manual'}"
        if self.kind in CAUSE_KINDS:
            return f"dicom-backup/{self.environment}/{self.subject}/cause/{self.kind.value}"
        family = _DEDUP_FAMILY.get(self.kind) or f"check/{self.check or self.kind.value}"
        return f"dicom-backup/{self.environment}/{self.subject}/{family}"

    @property
    def resolving(self) -> bool:
        return self.action == "resolve"

    @property
    def title(self) -> str:
        trigger, resolve = _TITLES[self.kind]
        text = (resolve if self.resolving else trigger).format(
            subject=self.subject, check=self.check or "check", sources=", ".join(self.sources) or "none yet"
        )
        return text

    @property
    def headline(self) -> str:
        tag = {"resolve": "RESOLVED", "acknowledge": "ACKNOWLEDGED"}.get(self.action, self.severity.upper())
        return f"[{tag}] {self.environment}: {self.title}"

    def fields(self) -> list[tuple[str, str]]:
        """(label, value) for every field that is set, in reading order."""
        pairs: list[tuple[str, str | None]] = [
            ("Environment", self.environment),
            (_SUBJECT_LABEL.get(self.kind, "Source"), self.subject),
            ("Cause", self.cause),
            ("Confidence", self.confidence),
            ("Affected sources", ", ".join(self.sources) or None),
            ("Affected partitions", ", ".join(self.partitions) or None),
            ("Severity", self.severity),
            ("Partition", self.partition),
            ("Job", self.job),
            ("Run ID", self.run_id),
            ("Run", self.run_url),
            ("Failed step", self.failed_step),
            ("Check", self.check),
            ("Peer", self.peer),
            ("Operation", self.operation),
            ("DICOM status", self.dicom_status),
            ("Status meaning", self.status_meaning),
            ("Error type", self.error_type),
            ("Counts", ", ".join(f"{k}={v}" for k, v in self.counts.items()) or None),
            ("Runbook", self.runbook_url),
            ("Dedup key", self.dedup_key),
        ]
        return [(label, value) for label, value in pairs if value]

    def details(self) -> dict[str, object]:
        """Machine-readable fields (PagerDuty custom_details)."""
        out: dict[str, object] = {
            "kind": self.kind.value,
            "severity": self.severity,
            "environment": self.environment,
            "subject": self.subject,
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.counts:
            out["counts"] = dict(self.counts)
        if self.sources:
            out["sources"] = list(self.sources)
        if self.partitions:
            out["partitions"] = list(self.partitions)
        return out

    # ---------------------------------------------------------------------------------------------------
    # Channel payloads

    def text(self) -> str:
        return "\n".join([self.headline, *(f"{label}: {value}" for label, value in self.fields())])

    def slack_payload(self) -> dict[str, object]:
        """Slack message (https://api.slack.com/reference/block-kit/blocks): `text` is the notification
        fallback, one mrkdwn section carries the fields."""
        lines = []
        for label, value in self.fields():
            if label in ("Run", "Runbook"):
                value = f"<{value}|{'open in Dagster' if label == 'Run' else 'runbook'}>"
            lines.append(f"*{label}:* {value}")
        return {
            "text": self.headline,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{self.headline}*"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
            ],
        }

    def pagerduty_event(self, routing_key: str) -> dict[str, object]:
        """Events API v2 body (https://developer.pagerduty.com/api-reference/368ae3d938c9e-send-an-event-to-pager-duty)."""
        if self.action != "trigger":  # resolve, acknowledge: the same incident, by its dedup key
            return {"routing_key": routing_key, "event_action": self.action, "dedup_key": self.dedup_key}
        event: dict[str, object] = {
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": self.dedup_key,
            "payload": {
                "summary": self.headline[:1024],
                "source": f"dicom-backup/{self.environment}",
                "severity": _PD_SEVERITY[self.severity],
                "component": self.subject,
                "group": self.job or self.kind.value,
                "class": self.kind.value,
                "custom_details": self.details(),
            },
        }
        links = [
            {"href": url, "text": text}
            for url, text in ((self.run_url, "Dagster run"), (self.runbook_url, "Runbook"))
            if url and url.startswith(("http://", "https://"))
        ]
        if links:
            event["links"] = links
        return event

    def email_subject(self) -> str:
        return f"[dicom-backup] {self.headline}"

    def email_body(self) -> str:
        return (
            self.text()
            + "\n\nDetails stay in the Dagster UI (run link above); this message carries no patient data.\n"
        )
