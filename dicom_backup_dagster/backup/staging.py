"""Staging cleanup for Mosaiq RT records: which staged records may leave the staging Orthanc, and the Orthanc
REST calls (https://orthanc.uclouvain.be/api/) that find, check and delete them.

A record is deleted from staging only when ALL of these hold (research/dicom.md 0.4: Orthanc's Lua
``Delete(SendToModality(...))`` deletes even when the send failed, so deletion is driven from here, after
verification, never by auto-routing):

1. its partition passed ``content_verified`` (every record retrieved by C-GET from main had the digest
   recorded at render time): the check writes the partition's ``verified.jsonl``
   (`backup.records.VERIFIED_MANIFEST`), and a new render of the partition removes it first;
2. an IMAGE-level C-FIND on main finds it now (``on_main``; the archive may have lost data since);
3. the staging copy still has the verified content digest (a re-render with changed content, stored
   while this job ran, is kept);
4. staging received it (Orthanc metadata ``ReceptionDate``, UTC) at least ``retention`` ago.

Every C-FIND is asked before the first DELETE, so a main archive that goes down during the job stops it
before anything is deleted. Instances nobody verified (other tools' data, records of a failed run) are
never touched.

REST calls used (Orthanc 1.10): ``POST /tools/find`` (Level Instance, empty query, Expand, paged with
Since/Limit) to list staging, ``GET /instances/{id}/metadata/ReceptionDate``, ``GET /instances/{id}/file``
and ``DELETE /instances/{id}``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from dicom_backup_dagster.dicom.digest import content_digest

PAGE = 2000  # instances per /tools/find page
KEEP = 20  # UIDs kept per list in the result (for metadata)


class StagingRestError(Exception):
    """A call to the staging Orthanc's REST API failed. Says which call, where, what HTTP said and what to
    do; never contains the password."""


@dataclass(frozen=True)
class StagedInstance:
    orthanc_id: str
    sop_instance_uid: str


class OrthancRest:
    """Minimal authenticated client of one Orthanc REST API (HTTP basic auth, as configured by
    rest_username / rest_password_env)."""

    def __init__(
        self,
        base_url: str,
        username: str | None,
        password: str | None,
        *,
        label: str = "Orthanc",
        timeout_s: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.label = label
        self.timeout_s = timeout_s
        self._session = requests.Session()
        if username:
            self._session.auth = (username, password or "")

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> OrthancRest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any) -> requests.Response:
        where = f"{method} {self.base_url}{path} ({self.label})"
        try:
            response = self._session.request(
                method, f"{self.base_url}{path}", timeout=self.timeout_s, **kwargs
            )
        except requests.RequestException as exc:
            # requests' text names host and port, never the auth header
            raise StagingRestError(
                f"{where} failed: {type(exc).__name__}: {exc} — check that Orthanc is running and that "
                "rest_url points at its HTTP port"
            ) from None
        if missing_ok and response.status_code == 404:
            return response
        if response.status_code in (401, 403):
            raise StagingRestError(
                f"{where}: HTTP {response.status_code} (authentication refused) — check rest_username and "
                "the password in the variable rest_password_env names, and Orthanc's RegisteredUsers"
            )
        if response.status_code >= 400:
            raise StagingRestError(
                f"{where}: HTTP {response.status_code} {response.reason}: {response.text[:200]!r} — see "
                "Orthanc's log"
            )
        return response

    def instances(self) -> Iterator[StagedInstance]:
        """Every instance on this Orthanc (paged /tools/find, so a large staging is listed in pieces)."""
        since = 0
        while True:
            body = {"Level": "Instance", "Query": {}, "Expand": True, "Since": since, "Limit": PAGE}
            page = self._call("POST", "/tools/find", json=body).json()
            for item in page:
                uid = (item.get("MainDicomTags") or {}).get("SOPInstanceUID")
                if uid:
                    yield StagedInstance(item["ID"], uid)
            if len(page) < PAGE:
                return
            since += len(page)

    def received_at(self, orthanc_id: str) -> dt.datetime | None:
        """When Orthanc received the instance (metadata ReceptionDate, written in UTC as YYYYMMDDTHHMMSS);
        None when unknown (then the instance counts as too young to delete)."""
        r = self._call("GET", f"/instances/{orthanc_id}/metadata/ReceptionDate", missing_ok=True)
        if r.status_code == 404:
            return None
        try:
            return dt.datetime.strptime(r.text.strip(), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
        except ValueError:
            return None

    def file(self, orthanc_id: str) -> bytes | None:
        r = self._call("GET", f"/instances/{orthanc_id}/file", missing_ok=True)
        return None if r.status_code == 404 else r.content

    def delete(self, orthanc_id: str) -> bool:
        """DELETE the instance; False if it was already gone."""
        return self._call("DELETE", f"/instances/{orthanc_id}", missing_ok=True).status_code != 404


@dataclass(frozen=True)
class VerifiedRecord:
    """A record whose partition passed content_verified: where it lives and the digest main holds."""

    sop_instance_uid: str
    study_instance_uid: str
    digest: str


@dataclass
class CleanupResult:
    """What one cleanup of one staging Orthanc did. Lists hold at most KEEP UIDs; counts are complete."""

    examined: int = 0  # instances on staging
    deleted: int = 0
    kept_not_on_main: int = 0  # never verified on main, or C-FIND on main does not find it now
    kept_too_young: int = 0  # verified, but received by staging less than the retention ago
    kept_changed: int = 0  # the staging copy's digest is not the verified one
    already_gone: int = 0  # disappeared from staging while the job ran
    missing_on_main_uids: list[str] = field(default_factory=list)  # verified once, not found on main now
    changed_uids: list[str] = field(default_factory=list)
    studies_queried: int = 0
    seconds: float = 0.0

    @property
    def kept(self) -> int:
        return self.kept_not_on_main + self.kept_too_young + self.kept_changed


def clean_staging(
    staging: OrthancRest,
    verified: Mapping[str, VerifiedRecord],
    on_main: Callable[[str], set[str]],
    *,
    now: dt.datetime,
    retention: dt.timedelta,
    digest: Callable[[bytes], str] = content_digest,
) -> CleanupResult:
    """Delete from `staging` every instance that satisfies the module's four conditions.

    `verified`: SOP Instance UID -> VerifiedRecord (from the verified manifests); `on_main(study)`: the SOP
    Instance UIDs main holds for a study (IMAGE-level C-FIND). An exception from `on_main` or from the
    staging REST API propagates; C-FINDs all happen before the first DELETE."""
    began = time.monotonic()
    result = CleanupResult()
    old: list[tuple[StagedInstance, VerifiedRecord]] = []
    for instance in staging.instances():
        result.examined += 1
        record = verified.get(instance.sop_instance_uid)
        if record is None:
            result.kept_not_on_main += 1
            continue
        received = staging.received_at(instance.orthanc_id)
        if received is None or now - received < retention:
            result.kept_too_young += 1
            continue
        old.append((instance, record))

    present: dict[str, set[str]] = {}
    for _instance, record in old:
        if record.study_instance_uid not in present:
            present[record.study_instance_uid] = on_main(record.study_instance_uid)
    result.studies_queried = len(present)

    for instance, record in old:
        uid = instance.sop_instance_uid
        if uid not in present[record.study_instance_uid]:
            result.kept_not_on_main += 1
            if len(result.missing_on_main_uids) < KEEP:
                result.missing_on_main_uids.append(uid)
            continue
        data = staging.file(instance.orthanc_id)
        if data is None:
            result.already_gone += 1
            continue
        if digest(data) != record.digest:
            result.kept_changed += 1
            if len(result.changed_uids) < KEEP:
                result.changed_uids.append(uid)
            continue
        if staging.delete(instance.orthanc_id):
            result.deleted += 1
        else:
            result.already_gone += 1
    result.seconds = time.monotonic() - began
    return result
