"""Staging cleanup for Mosaiq RT records: which staged records may leave the staging Orthanc (the REST
calls are `dicom_backup_dagster.orthanc`). No dagster.

Deletion is driven from here, after verification, never by Orthanc auto-routing: Orthanc's Lua
``Delete(SendToModality(...))`` deletes the instance even when the send failed. A record is deleted from
staging only when ALL of these hold:

1. its partition passed ``content_verified`` (every record retrieved by C-GET from main had the digest
   recorded at render time): the check writes the partition's ``verified.jsonl``
   (`backup.records.VERIFIED_MANIFEST`), and a new render of the partition removes it first (records a
   re-run reused, unchanged and still on main, are in it again once the re-run's checks ran);
2. an IMAGE-level C-FIND on main finds it now (``on_main``; the archive may have lost data since);
3. the staging copy still has the verified content digest (a re-render with changed content, stored
   while this job ran, is kept);
4. staging received it (Orthanc metadata ``ReceptionDate``, UTC) at least ``retention`` ago.

Every C-FIND is asked before the first DELETE, so a main archive that goes down during the job stops it
before anything is deleted. Instances nobody verified (other tools' data, records of a failed run) are
never touched.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dicom_backup_dagster.dicom.digest import content_digest
from dicom_backup_dagster.orthanc import OrthancClient, OrthancInstance

KEEP = 20  # UIDs kept per list in the result (for metadata)


def staging_client(
    base_url: str,
    username: str | None,
    password: str | None,
    *,
    label: str = "Orthanc",
    timeout_s: float = 30.0,
) -> OrthancClient:
    """A REST client of a staging target, whose errors point at the target's settings (rest_url,
    rest_username, rest_password_env)."""
    return OrthancClient(
        base_url,
        username,
        password,
        label=label,
        timeout_s=timeout_s,
        auth_advice=(
            "check rest_username and the password in the variable rest_password_env names, and Orthanc's "
            "RegisteredUsers"
        ),
        down_advice="check that Orthanc is running and that rest_url points at its HTTP port",
    )


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
    staging: OrthancClient,
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
    old: list[tuple[OrthancInstance, VerifiedRecord]] = []
    for instance in staging.instances():
        result.examined += 1
        record = verified.get(instance.sop_instance_uid)
        if record is None:
            result.kept_not_on_main += 1
            continue
        received = staging.received_at(instance.orthanc_id)
        if received is None or now - received < retention:  # unknown reception counts as too young
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
        data = staging.instance_file(instance.orthanc_id)
        if data is None:
            result.already_gone += 1
            continue
        if digest(data) != record.digest:
            result.kept_changed += 1
            if len(result.changed_uids) < KEEP:
                result.changed_uids.append(uid)
            continue
        if staging.delete_instance(instance.orthanc_id):
            result.deleted += 1
        else:
            result.already_gone += 1
    result.seconds = time.monotonic() - began
    return result
