"""Dagster resources: typed, configurable handles on the DICOM network and the Mosaiq databases.

Values come from the site configuration (config/); secrets are passed as `EnvVar`s so the UI shows the
variable's name and the value is read only inside the run process.
"""

from __future__ import annotations

import pyodbc
from dagster import ConfigurableResource, EnvVar

from dicom_backup_dagster.config import EnvironmentConfig, MosaiqSource
from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.network import Peer, Timeouts
from dicom_backup_dagster.mosaiq import connection


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


def build_resources(env: EnvironmentConfig) -> dict[str, ConfigurableResource]:
    timeouts = env.settings.timeouts
    resources: dict[str, ConfigurableResource] = {
        "dicom": DicomNetwork(
            calling_aet=env.script_ae.aet,
            listen_port=env.script_ae.port,
            acse_timeout_s=timeouts.acse,
            dimse_timeout_s=timeouts.dimse,
            network_timeout_s=timeouts.network,
            connect_timeout_s=timeouts.connect,
        )
    }
    for source in env.sources.values():
        if isinstance(source, MosaiqSource):
            resources[mosaiq_resource_key(source.alias)] = MosaiqDatabase(
                alias=source.alias,
                odbc_driver=source.odbc_driver,
                server=source.db_server,
                port=source.db_port,
                database=source.db_database,
                username=source.db_username,
                password=EnvVar(source.db_password_env),
                odbc_options=dict(source.odbc_options),
                connect_timeout_s=timeouts.connect,
            )
    return resources
