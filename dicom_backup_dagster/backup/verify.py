"""Verification on the archive: presence (C-FIND) and content (C-GET from source and archive, digests).

Rungs of the ladder (docs/decisions/verification.md): sub-operation counts (transfer.py) -> presence of every
inventoried instance on the archive by IMAGE-level C-FIND -> a transfer-syntax-independent content
digest of a sample, retrieved from the source and from the archive and compared.

The sample is deterministic (ordered by a hash of the SOP Instance UID, so it spreads over a series instead
of always taking its first slice) and never empty for a series: `fraction` 0 means one instance per
series, 1.0 every instance.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dicom_backup_dagster.dicom.digest import file_digest
from dicom_backup_dagster.dicom.errors import DicomError, SubOperationError
from dicom_backup_dagster.dicom.network import Peer, Timeouts
from dicom_backup_dagster.dicom.retrieve import chunks

from .manifest import ALREADY_ARCHIVED, DEFERRED, MOVED, InstanceEntry, by_series, by_study
from .transfer import RetrieveSession


@dataclass(frozen=True)
class PresenceResult:
    expected: int
    present: int
    deferred: int
    missing_uids: tuple[str, ...]  # at most `keep` of them
    missing: int

    @property
    def complete(self) -> bool:
        return self.missing == 0


# A store acknowledged to another association can still be in flight in the archive: Orthanc answers a
# second C-STORE of an instance it is still writing "already stored" at once. Concurrent runs with
# overlapping look-back windows do that, so a study with gaps is asked once more before it counts as missing.
SETTLE_SECONDS = 2.0


def check_presence(
    entries: Iterable[InstanceEntry],
    archived_uids: Callable[[str], set[str]],
    *,
    recheck: Callable[[str], set[str]] | None = None,
    keep: int = 100,
    settle_seconds: float = SETTLE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> PresenceResult:
    """Every non-deferred instance must be on the archive now: `archived_uids(study)`, and for a study
    with gaps `recheck(study)` (default: archived_uids again) after `settle_seconds`. With ArchiveLookup,
    pass its `refresh` as `recheck`: its call answers from one query of the whole manifest."""
    recheck = recheck or archived_uids
    expected = present = deferred = missing = 0
    missing_uids: list[str] = []
    for study_uid, group in by_study(entries):
        wanted = [e for e in group if e.state != DEFERRED]
        deferred += len(group) - len(wanted)
        if not wanted:
            continue
        on_archive = archived_uids(study_uid)
        if any(e.sop_instance_uid not in on_archive for e in wanted):
            sleep(settle_seconds)
            on_archive = on_archive | recheck(study_uid)
        for entry in wanted:
            expected += 1
            if entry.sop_instance_uid in on_archive:
                present += 1
            else:
                missing += 1
                if len(missing_uids) < keep:
                    missing_uids.append(entry.sop_instance_uid)
    return PresenceResult(expected, present, deferred, tuple(missing_uids), missing)


def _spread_key(entry: InstanceEntry) -> str:
    return hashlib.sha256(entry.sop_instance_uid.encode()).hexdigest()


def choose_sample(series_entries: list[InstanceEntry], fraction: float) -> list[InstanceEntry]:
    """ceil(fraction * n) instances of one series, at least one (none for an empty series)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be within 0..1")
    if not series_entries:
        return []
    n = max(1, math.ceil(fraction * len(series_entries)))
    return sorted(series_entries, key=_spread_key)[:n]


def sample(entries: Iterable[InstanceEntry], fraction: float) -> list[InstanceEntry]:
    """The verification sample of a manifest: instances on the archive (moved now or before), per series."""
    out: list[InstanceEntry] = []
    for _, group in by_series(entries):
        out.extend(choose_sample([e for e in group if e.state in (MOVED, ALREADY_ARCHIVED)], fraction))
    return out


@dataclass
class ContentResult:
    compared: int = 0
    matched: int = 0
    mismatched_uids: list[str] = field(default_factory=list)
    missing_on_source: list[str] = field(default_factory=list)
    missing_on_archive: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # DicomError messages (UIDs only, no PHI)

    @property
    def passed(self) -> bool:
        return not (self.mismatched_uids or self.missing_on_archive or self.missing_on_source or self.errors)

    matched_uids: list[str] = field(default_factory=list)  # every one (what a later run may reuse)

    def compare(self, uid: str, at_source: str | None, at_archive: str | None, keep: int) -> None:
        """Count one instance's digests (None: not retrieved there); at most `keep` UIDs per list."""
        if at_source is None and len(self.missing_on_source) < keep:
            self.missing_on_source.append(uid)
        if at_archive is None and len(self.missing_on_archive) < keep:
            self.missing_on_archive.append(uid)
        if at_source is None or at_archive is None:
            return
        self.compared += 1
        if at_source == at_archive:
            self.matched += 1
            self.matched_uids.append(uid)
        elif len(self.mismatched_uids) < keep:
            self.mismatched_uids.append(uid)


VERIFIED_SAMPLE = "content_verified.jsonl"  # per day: the sampled instances found identical (UIDs only)


def split_reusable(
    chosen: Iterable[InstanceEntry], verified_before: set[str]
) -> tuple[list[InstanceEntry], list[InstanceEntry]]:
    """(to retrieve, reused) of a verification sample: an instance that was already on the archive before
    this run (ALREADY_ARCHIVED) and was found identical on source and archive by an earlier run is not
    retrieved again; everything moved by this run is."""
    fresh: list[InstanceEntry] = []
    reused: list[InstanceEntry] = []
    for entry in chosen:
        if entry.state == ALREADY_ARCHIVED and entry.sop_instance_uid in verified_before:
            reused.append(entry)
        else:
            fresh.append(entry)
    return fresh, reused


def read_verified_sample(day_dir: Path) -> set[str]:
    """The SOP Instance UIDs of the day found identical by earlier content checks (empty when none)."""
    path = day_dir / VERIFIED_SAMPLE
    try:
        with open(path, encoding="utf-8") as fh:
            return {line.strip() for line in fh if line.strip()}
    except FileNotFoundError:
        return set()


def record_verified_sample(day_dir: Path, retrieved: Iterable[str], matched: Iterable[str]) -> None:
    """Update the day's record after a content check: the instances it retrieved count as verified only
    if they `matched` now; the others of the record stay as they were. Written atomically."""
    known = read_verified_sample(day_dir)
    new = (known - set(retrieved)) | set(matched)
    if new == known:
        return
    day_dir.mkdir(parents=True, exist_ok=True)
    tmp = day_dir / f".{VERIFIED_SAMPLE}.tmp"
    tmp.write_text("".join(f"{uid}\n" for uid in sorted(new)), encoding="utf-8")
    os.replace(tmp, day_dir / VERIFIED_SAMPLE)


def retrieve_digests(
    session: RetrieveSession,
    spool: Path,
    uids: list[str],
    errors: list[str],
    *,
    series: tuple[str, str] | None = None,
) -> dict[str, str]:
    """SOP Instance UID -> content digest of what C-GETs of `uids` brought back, MAX_UIDS_PER_REQUEST per
    request (`file_digest`: no pydicom Dataset for Explicit VR Little Endian, a sample's RT structure sets
    and plans included).

    `series` (study, series UIDs) when all of `uids` are in one series of a hierarchical SCP (a source);
    None names them by SOP Instance UID alone, across series (`RetrieveSession.retrieve_instances`: the
    Orthanc main archive)."""
    out: dict[str, str] = {}
    for chunk in chunks(uids):
        try:
            if series is None:
                received = session.retrieve_instances(chunk, spool_dir=spool).received
            else:
                received = session.retrieve(series[0], series[1], chunk, spool_dir=spool).received
        except SubOperationError as error:
            # An instance missing on one side shows up as a short count; the comparison names it.
            received = error.result.received
            if error.status is not None and error.status >= 0xA000 and not received:
                errors.append(str(error))
        for item in received:
            out[item.sop_instance_uid] = file_digest(item.path)
            Path(item.path).unlink(missing_ok=True)
    return out


def verify_content(
    sample_entries: Iterable[InstanceEntry],
    *,
    source: Peer,
    archive: Peer,
    calling_aet: str,
    timeouts: Timeouts,
    spool_dir: str | os.PathLike[str],
    keep: int = 100,
) -> ContentResult:
    """C-GET each sampled instance from `source` and from `archive` and compare content digests.

    Raises DicomError only when an association cannot be had at all (the check then reports it).
    """
    result = ContentResult()
    spool = Path(spool_dir)
    at_source: dict[str, str] = {}
    uids: list[str] = []
    try:
        with (
            RetrieveSession(source, calling_aet, timeouts, operation="C-GET") as from_source,
            RetrieveSession(archive, calling_aet, timeouts, operation="C-GET") as from_archive,
        ):
            try:
                for (study, series), group in by_series(sample_entries):
                    series_uids = [e.sop_instance_uid for e in group]
                    uids.extend(series_uids)
                    at_source.update(
                        retrieve_digests(
                            from_source, spool / "source", series_uids, result.errors, series=(study, series)
                        )
                    )
                at_archive = retrieve_digests(from_archive, spool / "archive", uids, result.errors)
            except DicomError as error:
                result.errors.append(str(error))
                raise
            for uid in uids:
                result.compare(uid, at_source.get(uid), at_archive.get(uid), keep)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return result
