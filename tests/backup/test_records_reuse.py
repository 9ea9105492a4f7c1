"""Which records a Mosaiq re-run may skip: proven conformant and identical on main before, same bytes now."""

from __future__ import annotations

from pathlib import Path

from dicom_backup_dagster.backup.manifest import ALREADY_ARCHIVED, PENDING, InstanceEntry
from dicom_backup_dagster.backup.records import (
    CONFORMANT_MANIFEST,
    VERIFIED_MANIFEST,
    earlier_proof,
    input_fingerprint,
    mark_verified,
    reusable_uids,
    reused_entry,
    write_entries,
)
from dicom_backup_dagster.rtrecord.builder import RecordOptions, RenderedRecord
from tests.rtrecord.test_model import vmat_delivery


def _record(uid: str, digest: str) -> RenderedRecord:
    return RenderedRecord(uid, "1.2.3", "1.2", b"\0" * 10, digest)


def _entry(uid: str, digest: str, state: str = PENDING) -> InstanceEntry:
    return InstanceEntry("1.2", "1.2.3", uid, digest=digest, state=state)


def test_only_records_both_verified_and_conformant_with_the_same_bytes_are_reusable(tmp_path: Path) -> None:
    write_entries(tmp_path / VERIFIED_MANIFEST, [_entry("a", "da"), _entry("b", "db"), _entry("c", "dc")])
    write_entries(tmp_path / CONFORMANT_MANIFEST, [_entry("a", "da"), _entry("b", "db")])  # c not conformant
    proven = earlier_proof(tmp_path)
    assert proven == {"a": "da", "b": "db"}
    rendered = [_record("a", "da"), _record("b", "changed"), _record("c", "dc"), _record("d", "dd")]
    assert reusable_uids(rendered, proven) == ["a"]  # b differs now, c never conformant, d new


def test_a_withdrawn_verification_leaves_nothing_reusable_but_the_last_renders_reused_records(
    tmp_path: Path,
) -> None:
    write_entries(tmp_path / CONFORMANT_MANIFEST, [_entry("a", "da"), _entry("b", "db")])
    write_entries(tmp_path / VERIFIED_MANIFEST, [_entry("a", "da"), _entry("b", "db")])
    mark_verified(tmp_path, None)  # a new render began and its run failed before content_verified
    assert earlier_proof(tmp_path) == {}
    # ... but records that render reused were proven before it and are still proven.
    reused = reused_entry(_record("a", "da"))
    assert reused.state == ALREADY_ARCHIVED and reused.digest == "da" and reused.size == 10
    write_entries(tmp_path / "rt_records.jsonl", [reused, _entry("b", "db")])
    assert earlier_proof(tmp_path) == {"a": "da"}


def test_the_input_fingerprint_tells_an_unchanged_delivery_without_rendering_it() -> None:
    options = RecordOptions(source_key="MOSAIQ")
    same = input_fingerprint(vmat_delivery(), options)
    assert same == input_fingerprint(vmat_delivery(), options)  # built again from the same rows
    assert same != input_fingerprint(vmat_delivery(delivered_meterset="149.9"), options)  # Mosaiq changed
    assert same != input_fingerprint(vmat_delivery(), RecordOptions(source_key="OTHER"))
