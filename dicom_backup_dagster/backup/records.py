"""Mosaiq RT records on disk and on the archive: the delivery manifest, the record spool, digest checks.

A Mosaiq backup of one day is a chain of files in the partition's manifest folder:

- ``deliveries.jsonl``: one line per Dose_Hst row of the day (DHS_ID, state delivery / quarantined /
  skipped, and for the last two the reason). Reasons hold database keys and codes only, never PHI.
- ``rt_records.jsonl``: one `InstanceEntry` per rendered record (UIDs, size, content digest of the
  encoded bytes), plus ``rt_records_quarantined.jsonl`` for deliveries the renderer refused.
- ``staged.jsonl`` / ``archived.jsonl``: the records with their state after C-STORE and C-MOVE.
- ``verified.jsonl``: written by ``content_verified`` when every record of the partition was retrieved from
  main with the recorded digest (records reused from an earlier run, below, count as verified then); removed
  before every new render; a failing check leaves only the reused records in it. It is what the staging
  cleanup (backup.staging) trusts: no file, no deletion from staging.
- ``conformant.jsonl``: the records (by digest) that passed the conformance check.

- ``rt_records_inputs.jsonl``: per DHS_ID, the input fingerprint (`input_fingerprint`) a record was rendered
  from and its manifest entry; ``reusable.jsonl``: the records a re-run's ``deliveries`` found reusable.

Re-runs: a delivery whose input fingerprint is the one its record was rendered from (so the builder, being
deterministic, would render the same bytes), whose record's digest both verified.jsonl and conformant.jsonl
hold for its SOP Instance UID (`earlier_proof`), and which an IMAGE-level C-FIND finds on main now, is
ALREADY_ARCHIVED: it is neither rendered, spooled, checked for conformance, stored, moved nor retrieved
again (these very bytes were proven conformant and identical on main, and main still holds them). Every
other record (new, changed, missing on main, never verified, not conformant) goes through the whole chain.

The record files themselves (PHI) live in a spool folder next to the manifests and are replaced on every
render; their UIDs are deterministic, so a re-render overwrites rather than duplicates.
"""

from __future__ import annotations

import copyreg
import functools
import hashlib
import io
import json
import os
import pickle
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian

from dicom_backup_dagster import rtrecord
from dicom_backup_dagster.backup.staging import VerifiedRecord
from dicom_backup_dagster.dicom.digest import content_digest
from dicom_backup_dagster.dicom.network import Peer, Timeouts
from dicom_backup_dagster.mosaiq.deliveries import DeliveryBatch, Quarantined, Skipped
from dicom_backup_dagster.rtrecord.builder import RecordOptions, RenderedRecord, write_rt_record
from dicom_backup_dagster.rtrecord.model import Delivery

from .manifest import ALREADY_ARCHIVED, InstanceEntry, ManifestWriter, read_manifest
from .transfer import RetrieveSession
from .verify import ContentResult, retrieve_digests

RT_BEAMS_TREATMENT_RECORD = "1.2.840.10008.5.1.4.1.1.481.4"

VERIFIED_MANIFEST = "verified.jsonl"
CONFORMANT_MANIFEST = "conformant.jsonl"

DELIVERY = "delivery"
QUARANTINED = "quarantined"
SKIPPED = "skipped"


@dataclass(frozen=True)
class DeliveryLine:
    """One line of deliveries.jsonl: a DHS_ID and what became of it (no PHI)."""

    dhs_id: int | None
    state: str
    reason: str | None = None

    def to_json(self) -> str:
        data = {"dhs_id": self.dhs_id, "state": self.state}
        if self.reason is not None:
            data["reason"] = self.reason
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> DeliveryLine:
        data = json.loads(line)
        return cls(data.get("dhs_id"), data["state"], data.get("reason"))


def _atomic_lines(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")
    os.replace(tmp, path)


def delivery_lines(batch: DeliveryBatch) -> list[DeliveryLine]:
    """Every outcome of a batch as a manifest line, sorted by DHS_ID."""
    lines = [DeliveryLine(d.dhs_id, DELIVERY) for d in batch.deliveries]
    lines += [DeliveryLine(q.dhs_id, QUARANTINED, q.reason) for q in batch.quarantined]
    lines += [DeliveryLine(s.dhs_id, SKIPPED, s.reason) for s in batch.skipped]
    return sorted(lines, key=lambda x: (x.dhs_id is None, x.dhs_id or 0))


def write_delivery_lines(path: str | os.PathLike[str], lines: Iterable[DeliveryLine]) -> None:
    _atomic_lines(Path(path), (line.to_json() for line in lines))


def read_delivery_lines(path: str | os.PathLike[str]) -> Iterator[DeliveryLine]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield DeliveryLine.from_json(line)


def reasons_by_dhs_id(outcomes: Iterable[Quarantined | Skipped]) -> dict[str, str]:
    """{DHS_ID: reason} for run metadata (JSON keys are strings)."""
    return {str(o.dhs_id): o.reason for o in outcomes}


def fresh_spool(path: Path) -> Path:
    """An empty spool folder (a previous render's files are removed: they would be re-sent otherwise)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_path(spool: Path, sop_instance_uid: str) -> Path:
    return spool / f"{sop_instance_uid}.dcm"


def spool_record(record: RenderedRecord, spool: Path) -> InstanceEntry:
    """Write one rendered record into the spool; its manifest entry carries the digest of those bytes."""
    data = write_rt_record(record, record_path(spool, record.sop_instance_uid))
    return InstanceEntry(
        study_instance_uid=record.study_instance_uid,
        series_instance_uid=record.series_instance_uid,
        sop_instance_uid=record.sop_instance_uid,
        sop_class_uid=RT_BEAMS_TREATMENT_RECORD,
        transfer_syntax_uid=str(ExplicitVRLittleEndian),
        size=len(data),
        # render_rt_record computes the digest while encoding (equal to content_digest(data), tested)
        digest=record.digest or content_digest(data),
    )


def write_entries(path: str | os.PathLike[str], entries: Iterable[InstanceEntry]) -> int:
    n = 0
    with ManifestWriter(path) as writer:
        for entry in entries:
            writer.write(entry)
            n += 1
    return n


def verify_recorded_digests(
    entries: Iterable[InstanceEntry],
    *,
    archive: Peer,
    calling_aet: str,
    timeouts: Timeouts,
    spool_dir: str | os.PathLike[str],
    keep: int = 100,
) -> ContentResult:
    """C-GET every entry from `archive` (the Orthanc main archive: one association, requests of up to
    MAX_UIDS_PER_REQUEST instances named by SOP Instance UID across series) and compare its content
    digest with the one recorded when the record was rendered. `missing_on_source` stays empty: the
    recorded digest is the source.

    Raises DicomError only when no association can be had at all."""
    result = ContentResult()
    spool = Path(spool_dir)
    try:
        recorded = {e.sop_instance_uid: e.digest for e in entries}
        with RetrieveSession(archive, calling_aet, timeouts, operation="C-GET") as session:
            got = retrieve_digests(session, spool, list(recorded), result.errors)
        for uid, digest in recorded.items():
            result.compare(uid, digest, got.get(uid), keep)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return result


def mark_verified(partition_dir: Path, entries: Iterable[InstanceEntry] | None) -> None:
    """Record that the partition's records are verified on main (`entries`), or withdraw it (None)."""
    path = partition_dir / VERIFIED_MANIFEST
    if entries is None:
        path.unlink(missing_ok=True)
    else:
        write_entries(path, entries)


def read_verified(manifest_root: Path, aliases: Iterable[str]) -> dict[str, VerifiedRecord]:
    """SOP Instance UID -> VerifiedRecord over every partition of the given sources
    (``<manifest_root>/<alias>/<partition>/verified.jsonl``). Entries without a digest are left out."""
    out: dict[str, VerifiedRecord] = {}
    for alias in aliases:
        for path in sorted((manifest_root / alias).glob(f"*/{VERIFIED_MANIFEST}")):
            try:
                for e in read_manifest(path):
                    if e.digest:
                        out[e.sop_instance_uid] = VerifiedRecord(
                            e.sop_instance_uid, e.study_instance_uid, e.digest
                        )
            except FileNotFoundError:  # withdrawn by a new render meanwhile: not verified
                continue
    return out


def verified_digests(partition_dir: Path) -> dict[str, str]:
    """SOP Instance UID -> digest of the partition's verified.jsonl (empty when there is none)."""
    return _digests(partition_dir / VERIFIED_MANIFEST)


def earlier_proof(partition_dir: Path) -> dict[str, str]:
    """SOP Instance UID -> digest of every record of the partition proven earlier both identical on main
    (verified.jsonl) and conformant (conformant.jsonl), for `reusable_uids`. The ALREADY_ARCHIVED entries
    of the last render count as both: they were reusable then, and a run that failed before
    content_verified left no verified.jsonl behind for them."""
    verified = verified_digests(partition_dir)
    conformant = _digests(partition_dir / CONFORMANT_MANIFEST)
    proven = {uid: d for uid, d in verified.items() if conformant.get(uid) == d}
    for uid, digest in _digests(partition_dir / "rt_records.jsonl", ALREADY_ARCHIVED).items():
        proven.setdefault(uid, digest)
    return proven


def reusable_uids(records: Iterable[RenderedRecord], proven: Mapping[str, str]) -> list[str]:
    """SOP Instance UIDs of the rendered records whose digest is the proven one: unchanged since then.
    They may skip the chain if main still holds them (the caller asks main)."""
    return [r.sop_instance_uid for r in records if r.digest and proven.get(r.sop_instance_uid) == r.digest]


def reused_entry(record: RenderedRecord) -> InstanceEntry:
    """The manifest entry of a record not spooled again: ALREADY_ARCHIVED, with its digest and size."""
    return InstanceEntry(
        study_instance_uid=record.study_instance_uid,
        series_instance_uid=record.series_instance_uid,
        sop_instance_uid=record.sop_instance_uid,
        sop_class_uid=RT_BEAMS_TREATMENT_RECORD,
        transfer_syntax_uid=str(ExplicitVRLittleEndian),
        size=len(record.data),
        digest=record.digest,
        state=ALREADY_ARCHIVED,
    )


REUSABLE_MANIFEST = "reusable.jsonl"
FINGERPRINTS = "rt_records_inputs.jsonl"


@functools.cache
def _builder_version() -> bytes:
    """A digest of the record builder's own source (rtrecord/): a new builder renders anew."""
    h = hashlib.sha256()
    for path in sorted(Path(rtrecord.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.digest()


def input_fingerprint(delivery: Delivery, options: RecordOptions) -> str:
    """SHA-256 of what a record is rendered from: the delivery, the options and the builder's source.
    Equal fingerprints render equal bytes (the builder is deterministic), so a re-run can tell an
    unchanged delivery without rendering it. A hash, like the content digest: no PHI is stored."""
    h = hashlib.sha256(_builder_version())
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=5)
    pickler.dispatch_table = _DISPATCH  # the enum tables are read-only mappings (rtrecord.enums)
    pickler.dump((options, delivery))
    h.update(buffer.getvalue())
    return h.hexdigest()


def _reduce_mapping(mapping: MappingProxyType[Any, Any]) -> tuple[type, tuple[dict[Any, Any]]]:
    return dict, (dict(mapping),)


_DISPATCH = {**copyreg.dispatch_table, MappingProxyType: _reduce_mapping}


def write_fingerprints(partition_dir: Path, by_dhs_id: Mapping[int, tuple[str, InstanceEntry]]) -> None:
    """DHS_ID -> (input fingerprint, manifest entry) of every record rendered now."""
    lines = (
        json.dumps({"dhs_id": dhs_id, "input": fp, **json.loads(e.to_json())})
        for dhs_id, (fp, e) in by_dhs_id.items()
    )
    _atomic_lines(partition_dir / FINGERPRINTS, lines)


def read_fingerprints(partition_dir: Path) -> dict[int, tuple[str, InstanceEntry]]:
    out: dict[int, tuple[str, InstanceEntry]] = {}
    try:
        with open(partition_dir / FINGERPRINTS, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    data = json.loads(line)
                    out[int(data["dhs_id"])] = (str(data["input"]), InstanceEntry.from_json(line))
    except FileNotFoundError:
        pass
    return out


def write_reusable(partition_dir: Path, reused: Mapping[int, InstanceEntry]) -> None:
    """The records `deliveries` found reusable, by DHS_ID (manifest entry lines with a `dhs_id` key)."""
    lines = (json.dumps({"dhs_id": dhs_id, **json.loads(e.to_json())}) for dhs_id, e in reused.items())
    _atomic_lines(partition_dir / REUSABLE_MANIFEST, lines)


def read_reusable(partition_dir: Path) -> dict[int, InstanceEntry]:
    """DHS_ID -> the ALREADY_ARCHIVED entry of its record (empty when the file is missing)."""
    out: dict[int, InstanceEntry] = {}
    try:
        with open(partition_dir / REUSABLE_MANIFEST, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    out[int(json.loads(line)["dhs_id"])] = InstanceEntry.from_json(line)
    except FileNotFoundError:
        pass
    return out


def mark_conformant(partition_dir: Path, entries: Iterable[InstanceEntry]) -> None:
    """Record the partition's records that passed the conformance check (by digest)."""
    write_entries(partition_dir / CONFORMANT_MANIFEST, entries)


def _digests(path: Path, state: str | None = None) -> dict[str, str]:
    try:
        return {
            e.sop_instance_uid: e.digest
            for e in read_manifest(path)
            if e.digest and (state is None or e.state == state)
        }
    except FileNotFoundError:
        return {}
