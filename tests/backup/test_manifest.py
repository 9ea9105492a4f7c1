"""Manifests: JSON-lines round trip, atomic writes, grouping."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_backup_dagster.backup.manifest import (
    FOUND,
    MOVED,
    InstanceEntry,
    ManifestHandle,
    ManifestWriter,
    by_series,
    by_study,
    count_states,
    read_manifest,
    write_manifest,
)


def entry(study: str, series: str, sop: str, **kw: object) -> InstanceEntry:
    return InstanceEntry(study, series, sop, **kw)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field_and_omits_unknown_values(tmp_path: Path) -> None:
    full = entry("1.1", "1.1.1", "1.1.1.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_date="20260105",
                 instance_number=3, transfer_syntax_uid="1.2.840.10008.1.2.1", size=1234, digest="ab" * 32,
                 state=MOVED)  # fmt: skip
    bare = entry("1.1", "1.1.1", "1.1.1.2")
    path = tmp_path / "m.jsonl"
    assert write_manifest(path, [full, bare]) == {MOVED: 1, FOUND: 1}
    assert list(read_manifest(path)) == [full, bare]
    assert path.read_text().splitlines()[1] == '{"study_instance_uid":"1.1","series_instance_uid":"1.1.1",' \
        '"sop_instance_uid":"1.1.1.2","state":"found"}'  # fmt: skip
    assert count_states(path) == {MOVED: 1, FOUND: 1}


def test_a_failed_write_leaves_the_previous_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    write_manifest(path, [entry("1", "1.1", "1.1.1")])
    with pytest.raises(RuntimeError), ManifestWriter(path) as writer:
        writer.write(entry("2", "2.1", "2.1.1"))
        raise RuntimeError("crash mid-run")
    assert [e.sop_instance_uid for e in read_manifest(path)] == ["1.1.1"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # no temporary file left behind


def test_unknown_state_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown instance state"):
        entry("1", "1.1", "1.1.1").with_state("lost")


def test_grouping_by_study_and_series_is_by_consecutive_runs() -> None:
    entries = [entry("A", "A1", "1"), entry("A", "A1", "2"), entry("A", "A2", "3"), entry("B", "B1", "4")]
    assert [(s, len(g)) for s, g in by_study(entries)] == [("A", 3), ("B", 1)]
    assert [(k, len(g)) for k, g in by_series(entries)] == [
        (("A", "A1"), 2),
        (("A", "A2"), 1),
        (("B", "B1"), 1),
    ]


def test_handle_streams_its_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    write_manifest(path, [entry("1", "1.1", "1.1.1")])
    handle = ManifestHandle(str(path), "ARIA", "2026-01-05", 1, {FOUND: 1})
    assert [e.sop_instance_uid for e in handle.entries()] == ["1.1.1"]
    assert handle.count_of(FOUND) == 1 and handle.count_of(MOVED) == 0
