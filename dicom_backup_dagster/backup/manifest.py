"""Manifests: one JSON line per DICOM instance, streamed to and from disk so memory stays flat.

A backup of a partition is a chain of manifests (inventory -> plan -> archived). Each line is an
:class:`InstanceEntry`: the instance's UIDs, what we know about its encoding and content, and its state
in the backup. Only UIDs and technical values are stored, never patient data, so a manifest can be read
by anyone who runs the backup.

Files are written to a temporary name and renamed into place, so a reader never sees half a manifest
(a crashed run leaves the previous complete manifest, or none).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from itertools import groupby
from pathlib import Path
from types import TracebackType
from typing import Any

# Instance states. An inventory holds FOUND only; a plan FOUND -> ALREADY_ARCHIVED | PENDING | DEFERRED;
# after the transfer PENDING -> MOVED | FAILED.
FOUND = "found"
ALREADY_ARCHIVED = "already_archived"
PENDING = "pending"
MOVED = "moved"
FAILED = "failed"
DEFERRED = "deferred"
STATES = (FOUND, ALREADY_ARCHIVED, PENDING, MOVED, FAILED, DEFERRED)


@dataclass(frozen=True)
class InstanceEntry:
    """One SOP Instance (PS3.3 C.12.1) of a manifest.

    `sop_class_uid` may be None: some sources (dcmqrscp) omit it from IMAGE-level C-FIND responses.
    `transfer_syntax_uid`, `size` and `digest` are known only when the bytes passed through us (C-GET).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None = None
    study_date: str | None = None  # YYYYMMDD as the source reported it
    instance_number: int | None = None
    transfer_syntax_uid: str | None = None
    size: int | None = None
    digest: str | None = None
    state: str = FOUND

    def with_state(self, state: str, **changes: Any) -> InstanceEntry:
        if state not in STATES:
            raise ValueError(f"unknown instance state {state!r}")
        return replace(self, state=state, **changes)

    def to_json(self) -> str:
        # None values are left out: a manifest of 100,000 C-MOVEd instances stays small.
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> InstanceEntry:
        data = json.loads(line)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class ManifestWriter:
    """Write entries one by one; the file appears (atomically) only when the writer closes cleanly.

    Counts per state are kept so callers can report them without reading the file again.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self.states: dict[str, int] = {}
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self._fh: Any = None

    def __enter__(self) -> ManifestWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self._tmp, "w", encoding="utf-8")
        return self

    def write(self, entry: InstanceEntry) -> None:
        if self._fh is None:
            raise RuntimeError("ManifestWriter is not open: use it as a context manager")
        self._fh.write(entry.to_json() + "\n")
        self.count += 1
        self.states[entry.state] = self.states.get(entry.state, 0) + 1

    def write_all(self, entries: Iterable[InstanceEntry]) -> None:
        for entry in entries:
            self.write(entry)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def write_manifest(path: str | os.PathLike[str], entries: Iterable[InstanceEntry]) -> dict[str, int]:
    """Write `entries` to `path`; returns the count per state."""
    with ManifestWriter(path) as writer:
        writer.write_all(entries)
    return dict(writer.states)


def read_manifest(path: str | os.PathLike[str]) -> Iterator[InstanceEntry]:
    """Stream the entries of a manifest, in file order."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield InstanceEntry.from_json(line)


def by_study(entries: Iterable[InstanceEntry]) -> Iterator[tuple[str, list[InstanceEntry]]]:
    """Consecutive entries grouped by study (manifests are written study by study)."""
    for study, group in groupby(entries, key=lambda e: e.study_instance_uid):
        yield study, list(group)


def by_series(entries: Iterable[InstanceEntry]) -> Iterator[tuple[tuple[str, str], list[InstanceEntry]]]:
    """Consecutive entries grouped by (study, series)."""
    for key, group in groupby(entries, key=lambda e: (e.study_instance_uid, e.series_instance_uid)):
        yield key, list(group)


def count_states(path: str | os.PathLike[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in read_manifest(path):
        counts[entry.state] = counts.get(entry.state, 0) + 1
    return counts


@dataclass(frozen=True)
class ManifestHandle:
    """What an asset returns: where its manifest is and what it holds (small, picklable, no PHI)."""

    path: str
    source: str
    partition: str
    count: int
    states: dict[str, int]
    seconds: float = 0.0  # time the producing phase took

    def entries(self) -> Iterator[InstanceEntry]:
        return read_manifest(self.path)

    def count_of(self, state: str) -> int:
        return self.states.get(state, 0)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the handle as JSON next to its manifest, so a later step (or a re-execution of it) finds
        it without an IO manager: ranged runs cover several partitions, which Dagster's pickling IO
        managers cannot store."""
        Path(path).write_text(json.dumps(asdict(self), separators=(",", ":")), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ManifestHandle:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))
