"""Transfer planning per series and the final MOVED/FAILED accounting (no network)."""

from __future__ import annotations

from pathlib import Path

from dicom_backup_dagster.backup.manifest import (
    ALREADY_ARCHIVED,
    DEFERRED,
    FAILED,
    MOVED,
    PENDING,
    InstanceEntry,
    read_manifest,
)
from dicom_backup_dagster.backup.transfer import Received, _requests, finalize
from dicom_backup_dagster.dicom.retrieve import MAX_UIDS_PER_REQUEST


def test_whole_study_pending_is_one_study_level_request() -> None:
    entries = [InstanceEntry("S", f"S.{i % 2}", f"{i}", state=PENDING) for i in range(4)]
    assert _requests(entries) == [(None, [], 4)]


def test_whole_series_pending_in_a_partial_study_is_one_series_level_request() -> None:
    entries = [InstanceEntry("S", "S.1", f"{i}", state=PENDING) for i in range(3)]
    entries += [InstanceEntry("S", "S.2", "done", state=ALREADY_ARCHIVED)]
    assert _requests(entries) == [("S.1", [], 3)]


def test_partial_series_is_image_level_in_chunks() -> None:
    entries = [InstanceEntry("S", "S.1", "0", state=ALREADY_ARCHIVED)]
    entries += [InstanceEntry("S", "S.1", f"{i}", state=PENDING) for i in range(1, MAX_UIDS_PER_REQUEST + 2)]
    entries += [InstanceEntry("S", "S.1", "x", state=DEFERRED)]
    requests = _requests(entries)
    assert [(len(uids), expected) for _, uids, expected in requests] == [
        (MAX_UIDS_PER_REQUEST, MAX_UIDS_PER_REQUEST),
        (1, 1),
    ]
    assert requests[0][1][0] == "1"


def test_nothing_pending_is_no_request() -> None:
    assert _requests([InstanceEntry("S", "S.1", "0", state=ALREADY_ARCHIVED)]) == []


def test_finalize_trusts_the_archive_not_the_counts(tmp_path: Path) -> None:
    plan = [
        InstanceEntry("S", "S.1", "a", state=ALREADY_ARCHIVED),
        InstanceEntry("S", "S.1", "b", state=PENDING),
        InstanceEntry("S", "S.1", "c", state=PENDING),
        InstanceEntry("T", "T.1", "d", state=DEFERRED),
    ]
    asked: list[str] = []

    def on_archive(study: str) -> set[str]:
        asked.append(study)
        return {"a", "b"}

    received = {"b": Received("1.2.840.10008.1.2.1", 10, "d1")}
    summary = finalize(iter(plan), on_archive, tmp_path / "a.jsonl", received=received)
    states = {e.sop_instance_uid: e for e in read_manifest(tmp_path / "a.jsonl")}
    assert asked == ["S"]  # only studies with pending instances
    assert (summary.moved, summary.failed, summary.failed_uids) == (1, 1, ("c",))
    assert states["b"].state == MOVED and states["b"].digest == "d1" and states["b"].size == 10
    assert states["c"].state == FAILED and states["d"].state == DEFERRED


def test_configuration_errors_are_not_retried_and_network_trouble_is() -> None:
    from dicom_backup_dagster.backup.errors import is_configuration_error, is_transient
    from dicom_backup_dagster.dicom.errors import (
        AssociationError,
        DicomError,
        SubOperationError,
        UnreadableResponse,
    )
    from dicom_backup_dagster.dicom.network import Peer

    peer = Peer("PACS", "127.0.0.1", 104)
    refused = AssociationError(peer, "connection refused (nothing listening on that port)")
    rejected = AssociationError(peer, "rejected", reject_reason="Called AE title not recognised")
    unknown = SubOperationError(peer, "C-MOVE", "", result=None, status=0xA801)
    busy = SubOperationError(peer, "C-MOVE", "", result=None, status=0xA702)
    find_failed = DicomError(peer, "C-FIND", status=0xC000)
    assert is_transient(refused) and is_transient(busy)
    assert is_configuration_error(rejected) and not is_transient(rejected)
    assert is_configuration_error(unknown) and not is_transient(unknown)
    unreadable = UnreadableResponse(peer, "C-FIND", "pending response 2 carried no readable identifier")
    assert not is_transient(find_failed)
    assert is_transient(unreadable)  # a lost match is retried, not ignored
