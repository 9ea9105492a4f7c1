"""Dagster resources: typed, configurable handles on the DICOM network, the Mosaiq databases, the backup's
storage on disk and the notification channels, and `build_resources`, the one place that makes them.

Values come from the site configuration (config.py); secrets are passed as `EnvVar`s, or as the names of
environment variables read when the resource is used, so the UI shows the variable's name and the value is
read only inside the run process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyodbc
from dagster import ConfigurableResource, DagsterInstance, EnvVar
from pydantic import Field

from dicom_backup_dagster.config import EnvironmentConfig, MosaiqSource
from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.network import Peer, Timeouts
from dicom_backup_dagster.mosaiq import connection
from dicom_backup_dagster.notify import (
    EmailNotifier,
    EmailSettings,
    NotificationSettings,
    PagerDutyNotifier,
    SlackNotifier,
)
from dicom_backup_dagster.notify.settings import PAGERDUTY_EVENTS_URL, SLACK_API_URL

DICOM_RESOURCE_KEY = "dicom"
STORAGE_RESOURCE_KEY = "backup_storage"
STORAGE_DIR_ENV = "DICOM_BACKUP_STORAGE_DIR"


class DicomNetwork(ConfigurableResource):
    """Our side of every association: the calling AE title and the PS3.8 timeouts from site settings."""

    calling_aet: str
    listen_port: int | None = None
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 120.0
    network_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(
            acse=self.acse_timeout_s,
            dimse=self.dimse_timeout_s,
            network=self.network_timeout_s,
            connect=self.connect_timeout_s,
        )

    def echo(self, peer: Peer) -> float:
        """C-ECHO `peer`; seconds taken. Raises dicom.errors.DicomError naming the peer."""
        return c_echo(peer, self.calling_aet, self.timeouts)


class MosaiqDatabase(ConfigurableResource):
    """One Mosaiq SQL Server database, read through pyodbc (read-only)."""

    alias: str
    odbc_driver: str
    server: str
    port: int | None = None
    database: str
    username: str
    password: str
    odbc_options: dict[str, str] = {}
    connect_timeout_s: float = 10.0

    def source(self) -> MosaiqSource:
        return MosaiqSource(
            alias=self.alias,
            db_server=self.server,
            db_port=self.port,
            db_database=self.database,
            db_username=self.username,
            db_password_env="",
            odbc_driver=self.odbc_driver,
            odbc_options=dict(self.odbc_options),
            staging_target_alias="",
        )

    def connect(self) -> pyodbc.Connection:
        """Open a read-only connection; raises mosaiq.connection.MosaiqConnectionError (no secrets)."""
        return connection.connect(self.source(), password=self.password, timeout_s=self.connect_timeout_s)


def mosaiq_resource_key(alias: str) -> str:
    """Resource keys must be Python identifiers; source aliases are free text like `MOSAIQ-DB`."""
    return "mosaiq_" + "".join(c if c.isalnum() else "_" for c in alias.lower())


class BackupStorage(ConfigurableResource):
    """Where manifests and C-GET spools are written: `base_dir`, else the directory in the environment
    variable named `base_dir_env` (read when the resource is used, in the run process), else the Dagster
    instance's storage directory ($DAGSTER_HOME/storage/dicom_backup), which every run worker sees."""

    base_dir: str = ""
    base_dir_env: str = STORAGE_DIR_ENV

    def root(self, instance: DagsterInstance) -> Path:
        configured = self.base_dir or (os.environ.get(self.base_dir_env, "") if self.base_dir_env else "")
        if configured:
            return Path(configured).expanduser()
        return Path(instance.storage_directory()) / "dicom_backup"

    def partition_dir(self, instance: DagsterInstance, source: str, partition: str) -> Path:
        path = self.root(instance) / "manifests" / source / partition
        path.mkdir(parents=True, exist_ok=True)
        return path

    def spool_dir(self, instance: DagsterInstance, source: str, run_id: str, purpose: str) -> Path:
        return self.root(instance) / "spool" / source / f"{run_id}-{purpose}"


# ------------------------------------------------------------------------------------------------------
# Notifiers: one per channel, disabled unless configured. Secrets stay in environment variables whose
# NAMES these hold; the notifier reads them at send time.


class SlackNotifierResource(ConfigurableResource):
    """Slack: an incoming webhook (URL in the variable `webhook_url_env`) or chat.postMessage with a bot
    token (`token_env`, `channel`) at `base_url`."""

    enabled: bool = False
    webhook_url_env: str = ""
    token_env: str = ""
    channel: str = ""
    base_url: str = SLACK_API_URL
    timeout_s: float = 10.0

    def notifier(self) -> SlackNotifier | None:
        if not self.enabled:
            return None
        return SlackNotifier(
            webhook_url_env=self.webhook_url_env or None,
            token_env=self.token_env or None,
            channel=self.channel or None,
            base_url=self.base_url,
            timeout_s=self.timeout_s,
        )


class PagerDutyNotifierResource(ConfigurableResource):
    """PagerDuty Events API v2; the routing key is read from the variable `routing_key_env`."""

    enabled: bool = False
    routing_key_env: str = ""
    events_url: str = PAGERDUTY_EVENTS_URL
    timeout_s: float = 10.0

    def notifier(self) -> PagerDutyNotifier | None:
        if not self.enabled:
            return None
        return PagerDutyNotifier(
            routing_key_env=self.routing_key_env, events_url=self.events_url, timeout_s=self.timeout_s
        )


class EmailNotifierResource(ConfigurableResource):
    """SMTP email; STARTTLS when `starttls`, AUTH when `username` (password from `password_env`)."""

    enabled: bool = False
    smtp_host: str = ""
    smtp_port: int = 587
    starttls: bool = True
    sender: str = ""
    recipients: list[str] = Field(default_factory=list)
    username: str = ""
    password_env: str = ""
    timeout_s: float = 10.0

    def notifier(self) -> EmailNotifier | None:
        if not self.enabled:
            return None
        settings = EmailSettings(
            smtp_host=self.smtp_host,
            sender=self.sender,
            recipients=tuple(self.recipients),
            smtp_port=self.smtp_port,
            starttls=self.starttls,
            username=self.username or None,
            password_env=self.password_env or None,
        )
        return EmailNotifier(settings, timeout_s=self.timeout_s)


def notifier_resources(settings: NotificationSettings) -> dict[str, ConfigurableResource]:
    """The three notifier resources for `settings` (disabled where a channel is not configured)."""
    slack, pd, email = settings.slack, settings.pagerduty, settings.email
    t = settings.timeout_s
    return {
        "slack_notifier": SlackNotifierResource(
            enabled=True,
            webhook_url_env=slack.webhook_url_env or "",
            token_env=slack.token_env or "",
            channel=slack.channel or "",
            base_url=slack.base_url,
            timeout_s=t,
        )
        if slack
        else SlackNotifierResource(),
        "pagerduty_notifier": PagerDutyNotifierResource(
            enabled=True, routing_key_env=pd.routing_key_env, events_url=pd.events_url, timeout_s=t
        )
        if pd
        else PagerDutyNotifierResource(),
        "email_notifier": EmailNotifierResource(
            enabled=True,
            smtp_host=email.smtp_host,
            smtp_port=email.smtp_port,
            starttls=email.starttls,
            sender=email.sender,
            recipients=list(email.recipients),
            username=email.username or "",
            password_env=email.password_env or "",
            timeout_s=t,
        )
        if email
        else EmailNotifierResource(),
    }


# ------------------------------------------------------------------------------------------------------
# Every resource of the code location


def dicom_network(env: EnvironmentConfig) -> DicomNetwork:
    timeouts = env.settings.timeouts
    return DicomNetwork(
        calling_aet=env.script_ae.aet,
        listen_port=env.script_ae.port,
        acse_timeout_s=timeouts.acse,
        dimse_timeout_s=timeouts.dimse,
        network_timeout_s=timeouts.network,
        connect_timeout_s=timeouts.connect,
    )


def mosaiq_database(env: EnvironmentConfig, source: MosaiqSource) -> MosaiqDatabase:
    return MosaiqDatabase(
        alias=source.alias,
        odbc_driver=source.odbc_driver,
        server=source.db_server,
        port=source.db_port,
        database=source.db_database,
        username=source.db_username,
        password=EnvVar(source.db_password_env),
        odbc_options=dict(source.odbc_options),
        connect_timeout_s=env.settings.timeouts.connect,
    )


def build_resources(
    env: EnvironmentConfig, *, storage: BackupStorage | None = None
) -> dict[str, ConfigurableResource]:
    """Every resource the definitions of `env` use, by key: `dicom`, `backup_storage` (`storage`, by
    default $DICOM_BACKUP_STORAGE_DIR or the instance's storage directory), `mosaiq_<alias>` per Mosaiq
    source and the three notifiers. (The staging cleanup's REST resources come with its job.)"""
    resources: dict[str, ConfigurableResource] = {
        DICOM_RESOURCE_KEY: dicom_network(env),
        STORAGE_RESOURCE_KEY: storage or BackupStorage(),
        **notifier_resources(env.notifications),
    }
    for source in env.mosaiq_sources.values():
        resources[mosaiq_resource_key(source.alias)] = mosaiq_database(env, source)
    return resources
