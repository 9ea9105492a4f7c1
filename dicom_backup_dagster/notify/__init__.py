"""Notifications without patient data: the Alert model, routing by severity, and thin Slack, PagerDuty
(Events API v2) and SMTP notifiers. Pure Python (requests, smtplib); defs/alerts.py wires it to Dagster."""

from dicom_backup_dagster.notify.alert import CAUSE_KINDS, Alert, AlertKind, safe_text
from dicom_backup_dagster.notify.channels import (
    EmailNotifier,
    Notifier,
    NotifierError,
    PagerDutyNotifier,
    SlackNotifier,
    build_notifiers,
)
from dicom_backup_dagster.notify.dispatch import (
    Delivery,
    Dispatcher,
    Incident,
    IncidentBook,
    MemoryStore,
    resolve,
    trigger,
)
from dicom_backup_dagster.notify.settings import (
    CHANNELS,
    DEFAULT_ROUTES,
    SEVERITIES,
    EmailSettings,
    NotificationSettings,
    PagerDutySettings,
    SlackSettings,
)

__all__ = [
    "CAUSE_KINDS",
    "CHANNELS",
    "DEFAULT_ROUTES",
    "SEVERITIES",
    "Alert",
    "AlertKind",
    "Delivery",
    "Dispatcher",
    "EmailNotifier",
    "EmailSettings",
    "Incident",
    "IncidentBook",
    "MemoryStore",
    "NotificationSettings",
    "Notifier",
    "NotifierError",
    "PagerDutyNotifier",
    "PagerDutySettings",
    "SlackNotifier",
    "SlackSettings",
    "build_notifiers",
    "resolve",
    "safe_text",
    "trigger",
]
