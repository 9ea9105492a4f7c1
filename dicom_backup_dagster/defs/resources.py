"""Dagster resources: typed, configurable handles on the DICOM network, the Mosaiq databases, the backup's
storage on disk and the notification channels, and `build_resources`, the one place that makes them.

Values come from the site configuration (config/); secrets are passed as `EnvVar`s, or as the names of
environment variables read when the resource is used, so the UI shows the variable's name and the value is
read only inside the run process.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Self

import pyodbc
from dagster import ConfigurableResource, DagsterInstance, EnvVar
from pydantic import Field

from dicom_backup_dagster.backup.staging import staging_client
from dicom_backup_dagster.config import BackupTarget, EnvironmentConfig, MosaiqSource
from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.network import Peer, Timeouts
from dicom_backup_dagster.mosaiq import connection
from dicom_backup_dagster.notify import (
    EmailNotifier,
    EmailSettings,
    NotificationSettings,
    PagerDutyNotifier,
    PagerDutySettings,
    SlackNotifier,
    SlackSettings,
)
from dicom_backup_dagster.notify.settings import DEFAULT_TIMEOUT_S
from dicom_backup_dagster.orthanc import OrthancClient

DICOM_RESOURCE_KEY = "dicom"
STORAGE_RESOURCE_KEY = "backup_storage"
STORAGE_DIR_ENV = "DICOM_BACKUP_STORAGE_DIR"


class DicomNetwork(ConfigurableResource):
    """Our side of every association: the calling AE title and the PS3.8 timeouts from site settings."""

    calling_aet: str
    listen_port: int | None = None
    listen_host: str = "0.0.0.0"  # where our AE listens (Storage Commitment reports of a restore)
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

    def source(self) -> connection.MosaiqConnection:
        return connection.MosaiqConnection(
            alias=self.alias,
            db_server=self.server,
            db_port=self.port,
            db_database=self.database,
            db_username=self.username,
            odbc_driver=self.odbc_driver,
            odbc_options=dict(self.odbc_options),
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


class _NotifierResource(ConfigurableResource):
    """One channel: its notify/settings.py model as Dagster config (``settings``, empty: not configured)."""

    settings: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def of(cls, channel: Any, timeout_s: float) -> Self:
        # Dagster config maps hold no nulls: unset optional keys are left out and take their defaults.
        fields = {k: v for k, v in dataclasses.asdict(channel).items() if v is not None} if channel else {}
        return cls(settings=fields, timeout_s=timeout_s)


class SlackNotifierResource(_NotifierResource):
    """Slack: an incoming webhook or chat.postMessage with a bot token (notify.SlackSettings)."""

    def notifier(self) -> SlackNotifier | None:
        return SlackNotifier(SlackSettings(**self.settings), self.timeout_s) if self.settings else None


class PagerDutyNotifierResource(_NotifierResource):
    """PagerDuty Events API v2 (notify.PagerDutySettings)."""

    def notifier(self) -> PagerDutyNotifier | None:
        return (
            PagerDutyNotifier(PagerDutySettings(**self.settings), self.timeout_s) if self.settings else None
        )


class EmailNotifierResource(_NotifierResource):
    """SMTP email (notify.EmailSettings)."""

    def notifier(self) -> EmailNotifier | None:
        return EmailNotifier(EmailSettings(**self.settings), self.timeout_s) if self.settings else None


def notifier_resources(settings: NotificationSettings) -> dict[str, ConfigurableResource]:
    """The three notifier resources for `settings` (disabled where a channel is not configured)."""
    t = settings.timeout_s
    return {
        "slack_notifier": SlackNotifierResource.of(settings.slack, t),
        "pagerduty_notifier": PagerDutyNotifierResource.of(settings.pagerduty, t),
        "email_notifier": EmailNotifierResource.of(settings.email, t),
    }


# ------------------------------------------------------------------------------------------------------
# The staging Orthancs' REST APIs (the staging cleanup deletes verified RT records through them)


class OrthancRestApi(ConfigurableResource):
    """An Orthanc REST API with HTTP basic auth; the password is an EnvVar (the UI shows its name only)."""

    url: str
    username: str = ""
    password: str = ""
    label: str = "Orthanc"
    timeout_s: float = 30.0

    def client(self) -> OrthancClient:
        return staging_client(
            self.url, self.username or None, self.password or None, label=self.label, timeout_s=self.timeout_s
        )


def rest_resource_key(alias: str) -> str:
    return "orthanc_rest_" + "".join(c if c.isalnum() else "_" for c in alias.lower())


def staging_targets(env: EnvironmentConfig) -> dict[str, tuple[BackupTarget, list[str]]]:
    """Staging target alias -> (target, aliases of the Mosaiq sources staging to it), REST-capable only."""
    out: dict[str, tuple[BackupTarget, list[str]]] = {}
    for source in env.mosaiq_sources.values():
        target = env.staging_target(source)
        if target.type == "orthanc" and target.rest_url:
            out.setdefault(target.alias, (target, []))[1].append(source.alias)
    return out


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
    source, the three notifiers and `orthanc_rest_<alias>` per staging Orthanc with a REST API."""
    resources: dict[str, ConfigurableResource] = {
        DICOM_RESOURCE_KEY: dicom_network(env),
        STORAGE_RESOURCE_KEY: storage or BackupStorage(),
        **notifier_resources(env.notifications),
    }
    for source in env.mosaiq_sources.values():
        resources[mosaiq_resource_key(source.alias)] = mosaiq_database(env, source)
    for target, _sources in staging_targets(env).values():
        resources[rest_resource_key(target.alias)] = OrthancRestApi(
            url=target.rest_url or "",
            username=target.rest_username or "",
            password=EnvVar(target.rest_password_env) if target.rest_password_env else "",
            label=f"{target.alias} REST API",
        )
    return resources
