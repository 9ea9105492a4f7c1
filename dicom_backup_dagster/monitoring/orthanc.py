"""Which Orthanc the exporter and the health probes read (`GET /statistics`, `GET /system`), from the
environment. The REST calls themselves are `dicom_backup_dagster.orthanc`. No dagster.

Credentials come from environment variables only (DICOM_BACKUP_ORTHANC_USERNAME / _PASSWORD); an Orthanc
with AuthenticationEnabled answers 401 without them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from dicom_backup_dagster.orthanc import OrthancClient, OrthancStatistics

URL_ENV_VAR = "DICOM_BACKUP_ORTHANC_URL"
USERNAME_ENV_VAR = "DICOM_BACKUP_ORTHANC_USERNAME"
PASSWORD_ENV_VAR = "DICOM_BACKUP_ORTHANC_PASSWORD"
NAME_ENV_VAR = "DICOM_BACKUP_ORTHANC_NAME"


@dataclass(frozen=True)
class OrthancTarget:
    """An Orthanc REST endpoint; `name` is the metric label (the backup target's alias)."""

    name: str
    url: str
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = 5.0

    @classmethod
    def from_env(cls) -> OrthancTarget | None:
        url = os.environ.get(URL_ENV_VAR)
        if not url:
            return None
        return cls(
            name=os.environ.get(NAME_ENV_VAR) or "main",
            url=url.rstrip("/"),
            username=os.environ.get(USERNAME_ENV_VAR) or None,
            password=os.environ.get(PASSWORD_ENV_VAR) or None,
        )

    def client(self) -> OrthancClient:
        return OrthancClient(
            self.url,
            self.username,
            self.password,
            label=f"Orthanc {self.name}",
            timeout_s=self.timeout_seconds,
            auth_advice=f"set {USERNAME_ENV_VAR} and {PASSWORD_ENV_VAR} to a (read-only) REST user",
            down_advice="check that it runs",
        )

    def get(self, path: str) -> Any:
        """GET a JSON resource; raises OrthancRestError saying where and why (never the password)."""
        with self.client() as client:
            return client.get_json(path)


def statistics(target: OrthancTarget) -> OrthancStatistics:
    with target.client() as client:
        return client.statistics()
