"""Orthanc REST reads for the exporter and the health probes (Orthanc REST API, `GET /statistics`,
`GET /system`; book.orthanc-server.com "REST API"). No dagster.

Credentials come from environment variables only (DICOM_BACKUP_ORTHANC_USERNAME / _PASSWORD); an Orthanc
with AuthenticationEnabled answers 401 without them. `/statistics` has counts and sizes only (no patient
data); TotalDiskSize is a string of bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import requests

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

    def get(self, path: str) -> Any:
        """GET a JSON resource; raises OrthancUnavailable saying where and why (never the password)."""
        auth = (self.username, self.password or "") if self.username else None
        try:
            response = requests.get(f"{self.url}{path}", auth=auth, timeout=self.timeout_seconds)
        except requests.RequestException as error:
            raise OrthancUnavailable(
                f"Orthanc {self.name} at {self.url}{path}: {type(error).__name__}; check that it runs"
            ) from None
        if response.status_code == 401:
            raise OrthancUnavailable(
                f"Orthanc {self.name} at {self.url}{path}: 401 Unauthorized; set {USERNAME_ENV_VAR} and "
                f"{PASSWORD_ENV_VAR} to a (read-only) REST user"
            )
        if response.status_code != 200:
            raise OrthancUnavailable(f"Orthanc {self.name} at {self.url}{path}: HTTP {response.status_code}")
        return response.json()


class OrthancUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class OrthancStatistics:
    instances: int
    studies: int
    disk_size_bytes: int


def statistics(target: OrthancTarget) -> OrthancStatistics:
    data = target.get("/statistics")
    return OrthancStatistics(
        instances=int(data.get("CountInstances", 0)),
        studies=int(data.get("CountStudies", 0)),
        disk_size_bytes=int(data.get("TotalDiskSize", 0)),
    )
