"""The one client of Orthanc's REST API (Orthanc 1.10), for the exporter and health probes, the staging
cleanup and the sandbox. Only requests; no dagster, nothing of the rest of the project.

Calls used: ``GET /system`` and ``GET /statistics`` (counts and sizes only, no patient data;
TotalDiskSize is a string of bytes), ``POST /tools/find`` (paged with Since/Limit), ``POST /tools/lookup``,
``GET /instances``, ``GET /instances/{id}/metadata/ReceptionDate``, ``GET /instances/{id}/file``,
``POST /instances``, ``DELETE /instances/{id}``, ``GET /patients``, ``DELETE /patients/{id}`` and
``PUT /modalities/{name}``.

Authentication is HTTP basic; an Orthanc with AuthenticationEnabled answers 401 without it. Every failure
raises `OrthancRestError`, whose text says which call, where, what HTTP said and what to do (the advice is
the caller's: it knows where the credentials come from). It never contains the password: requests' own
error text names host and port, never the Authorization header.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

#: Instances per ``POST /tools/find`` page, so a large Orthanc is listed in pieces.
FIND_PAGE = 2000
DEFAULT_AUTH_ADVICE = "check the REST username and password, and Orthanc's RegisteredUsers"
DEFAULT_DOWN_ADVICE = "check that Orthanc is running and that the URL points at its HTTP port"


class OrthancRestError(RuntimeError):
    """A REST call failed. `status` is the HTTP status, None when Orthanc did not answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class OrthancInstance:
    orthanc_id: str
    sop_instance_uid: str


@dataclass(frozen=True)
class OrthancStatistics:
    instances: int
    studies: int
    disk_size_bytes: int


class OrthancClient:
    """One Orthanc REST API behind one HTTP session (keep-alive); close it, or use it as a context."""

    def __init__(
        self,
        base_url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        label: str = "Orthanc",
        timeout_s: float = 30.0,
        auth_advice: str = DEFAULT_AUTH_ADVICE,
        down_advice: str = DEFAULT_DOWN_ADVICE,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.label = label
        self.timeout_s = timeout_s
        self.auth_advice = auth_advice
        self.down_advice = down_advice
        self._session = requests.Session()
        if username:
            self._session.auth = (username, password or "")

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> OrthancClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the one place that sends ----------------------------------------------------------------------
    def request(
        self, method: str, path: str, *, missing_ok: bool = False, timeout: float | None = None, **kwargs: Any
    ) -> requests.Response:
        """Send one call; HTTP 404 is returned when `missing_ok`, every other status >= 400 raises."""
        where = f"{method} {self.base_url}{path} ({self.label})"
        try:
            response = self._session.request(
                method, f"{self.base_url}{path}", timeout=timeout or self.timeout_s, **kwargs
            )
        except requests.RequestException as exc:
            raise OrthancRestError(
                f"{where} failed: {type(exc).__name__}: {exc} — {self.down_advice}"
            ) from None
        status = response.status_code
        if missing_ok and status == 404:
            return response
        if status in (401, 403):
            raise OrthancRestError(
                f"{where}: HTTP {status} (authentication refused) — {self.auth_advice}", status
            )
        if status >= 400:
            raise OrthancRestError(
                f"{where}: HTTP {status} {response.reason}: {response.text[:200]!r} — see Orthanc's log",
                status,
            )
        return response

    def get_json(self, path: str) -> Any:
        return self.request("GET", path).json()

    # --- server ----------------------------------------------------------------------------------------
    def system(self) -> dict[str, Any]:
        return dict(self.get_json("/system"))

    def statistics(self) -> OrthancStatistics:
        data = self.get_json("/statistics")
        return OrthancStatistics(
            instances=int(data.get("CountInstances", 0)),
            studies=int(data.get("CountStudies", 0)),
            disk_size_bytes=int(data.get("TotalDiskSize", 0)),
        )

    def put_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register a DICOM peer at runtime (Orthanc keeps it in memory only)."""
        self.request("PUT", f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port})

    # --- instances -------------------------------------------------------------------------------------
    def instances(self) -> Iterator[OrthancInstance]:
        """Every instance, with its SOP Instance UID (``/tools/find`` Level Instance, paged)."""
        since = 0
        while True:
            body = {"Level": "Instance", "Query": {}, "Expand": True, "Since": since, "Limit": FIND_PAGE}
            page = self.request("POST", "/tools/find", json=body).json()
            for item in page:
                uid = (item.get("MainDicomTags") or {}).get("SOPInstanceUID")
                if uid:
                    yield OrthancInstance(item["ID"], uid)
            if len(page) < FIND_PAGE:
                return
            since += len(page)

    def instance_ids(self) -> list[str]:
        return [str(oid) for oid in self.get_json("/instances")]

    def lookup_instance(self, sop_instance_uid: str) -> str | None:
        """Orthanc ID of the instance with this SOP Instance UID, or None."""
        for hit in self.request("POST", "/tools/lookup", data=sop_instance_uid).json():
            if hit.get("Type") == "Instance":
                return str(hit["ID"])
        return None

    def received_at(self, orthanc_id: str) -> dt.datetime | None:
        """When Orthanc received the instance (metadata ReceptionDate, written in UTC as YYYYMMDDTHHMMSS);
        None when unknown."""
        r = self.request("GET", f"/instances/{orthanc_id}/metadata/ReceptionDate", missing_ok=True)
        if r.status_code == 404:
            return None
        try:
            return dt.datetime.strptime(r.text.strip(), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
        except ValueError:
            return None

    def instance_file(self, orthanc_id: str) -> bytes | None:
        """The stored DICOM file; None if the instance is gone."""
        r = self.request("GET", f"/instances/{orthanc_id}/file", missing_ok=True)
        return None if r.status_code == 404 else r.content

    def upload(self, data: bytes) -> str:
        """Store a DICOM file over REST (no DICOM AE checks); returns the Orthanc instance ID."""
        return str(self.request("POST", "/instances", data=data).json()["ID"])

    def delete_instance(self, orthanc_id: str) -> bool:
        """DELETE the instance; False if it was already gone."""
        return self.request("DELETE", f"/instances/{orthanc_id}", missing_ok=True).status_code != 404

    def delete_all(self) -> None:
        """Delete every patient, and so every instance."""
        for patient in self.get_json("/patients"):
            self.request("DELETE", f"/patients/{patient}")
