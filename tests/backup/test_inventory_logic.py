"""Inventory helpers without a network: look-back window, key levels, ordering."""

from __future__ import annotations

import datetime as dt

import pytest

from dicom_backup_dagster.backup.inventory import (
    ArchiveLookup,
    split_query_keys,
    study_order,
    take_inventory,
    window,
)
from dicom_backup_dagster.backup.manifest import InstanceEntry, read_manifest
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import InstanceRecord, SeriesRecord, StudyRecord
from dicom_backup_dagster.dicom.network import Peer


def test_window_covers_the_day_and_the_lookback() -> None:
    assert window(dt.date(2026, 1, 14), 3) == (dt.date(2026, 1, 11), dt.date(2026, 1, 14))
    assert window(dt.date(2026, 3, 1), 1) == (dt.date(2026, 2, 28), dt.date(2026, 3, 1))
    with pytest.raises(ValueError):
        window(dt.date(2026, 1, 1), -1)


def test_query_keys_go_to_their_level() -> None:
    study, series, image = split_query_keys(
        {
            "PatientID": "X*",
            "AccessionNumber": "1",
            "Modality": "CT",
            "SeriesDescription": "*",
            "ImageType": "A",
        }
    )
    assert study == {"PatientID": "X*", "AccessionNumber": "1"}
    assert series == {"Modality": "CT", "SeriesDescription": "*"}
    assert image == {"ImageType": "A"}


def test_studies_sort_oldest_first_and_undated_last() -> None:
    studies = [
        StudyRecord("3", None),
        StudyRecord("2", "20260102", "0900"),
        StudyRecord("1", "20260102", "0800"),
        StudyRecord("0", "20260101"),
    ]
    assert [s.study_instance_uid for s in sorted(studies, key=study_order)] == ["0", "1", "2", "3"]


class _ArchiveFake:
    """A FindSession stand-in that records what was asked: instances_by_uid lists and per-study queries."""

    def __init__(self, on_archive: set[str]) -> None:
        self.on_archive = on_archive
        self.lists: list[list[str]] = []
        self.studies: list[str] = []

    def instances_by_uid(self, uids: list[str]) -> list[InstanceRecord]:
        self.lists.append(list(uids))
        return [InstanceRecord("?", "?", u) for u in uids if u in self.on_archive]

    def instances(self, study_instance_uid: str) -> list[InstanceRecord]:
        self.studies.append(study_instance_uid)
        return [InstanceRecord(study_instance_uid, "?", "elsewhere")]


def test_archive_lookup_asks_once_then_answers_per_study() -> None:
    entries = [
        InstanceEntry("A", "A.1", "a1"),
        InstanceEntry("B", "B.1", "b1"),
        InstanceEntry("A", "A.2", "a2"),
    ]
    archive = _ArchiveFake({"a2", "b1", "not-in-manifest"})
    lookup = ArchiveLookup(archive, entries)  # type: ignore[arg-type]
    # Studies asked in any order and more than once (manifests need not be grouped by study): one list.
    assert [lookup("A"), lookup("B"), lookup("A")] == [{"a2"}, {"b1"}, {"a2"}]
    assert archive.lists == [["a1", "a2", "b1"]]
    # refresh: a fresh query by that study's own UIDs, remembered for later calls.
    archive.on_archive.add("a1")
    assert lookup.refresh("A") == {"a1", "a2"}
    assert archive.lists[-1] == ["a1", "a2"]
    assert lookup("A") == {"a1", "a2"} and len(archive.lists) == 2
    # A study outside the manifest: the per-study query, never an empty answer.
    assert lookup("C") == {"elsewhere"} and archive.studies == ["C"]


class _SourceFake:
    """A source with two studies of two series each; how it answers an IMAGE query without a series key is
    chosen per test (`whole_study`), a series-level query is always answered right."""

    def __init__(self, whole_study: str, counts: bool = False, bad: str = "B") -> None:
        self.whole_study = whole_study
        self.counts = counts
        self.bad = bad
        self.asked: list[tuple[str, str | None]] = []
        self.data = {
            (study, f"{study}.{s}"): [f"{study}.{s}.{i}" for i in (2, 1)]
            for study in ("A", "B")
            for s in (2, 1)
        }

    def studies(self, **_: object) -> list[StudyRecord]:
        return [
            StudyRecord(s, "20260101", number_of_study_related_instances=4 if self.counts else None)
            for s in "AB"
        ]

    def series(self, study: str, **_: object) -> list[SeriesRecord]:
        self.asked.append(("SERIES", study))
        return [SeriesRecord(study, series) for (st, series) in self.data if st == study]

    def instances(self, study: str, series: str | None = None, **_: object) -> list[InstanceRecord]:
        self.asked.append(("IMAGE", series))
        keys = [k for k in self.data if k[0] == study and (series is None or k[1] == series)]
        rows = [
            InstanceRecord(st, se, uid, instance_number=int(uid[-1]))
            for st, se in keys
            for uid in self.data[(st, se)]
        ]
        if series is None and study == self.bad:  # the other study is always answered right
            if self.whole_study == "refuse":
                raise DicomError(Peer("SRC", "127.0.0.1", 104), "C-FIND", "IMAGE-level query", status=0xC000)
            if self.whole_study == "empty":
                return []
            if self.whole_study == "short":
                return rows[:-1]
        return rows


@pytest.mark.parametrize(
    ("whole_study", "counts", "walked"),
    [("right", False, 0), ("refuse", False, 1), ("empty", False, 1), ("short", True, 1), ("short", False, 0)],
)
def test_inventory_walks_a_study_only_when_its_whole_study_answer_is_not_trusted(
    tmp_path, whole_study: str, counts: bool, walked: int
) -> None:
    source = _SourceFake(whole_study, counts)
    out = tmp_path / "inventory.jsonl"
    summary = take_inventory(source, dt.date(2026, 1, 1), dt.date(2026, 1, 1), out)  # type: ignore[arg-type]
    entries = list(read_manifest(out))
    assert summary.studies_walked == walked
    assert [("SERIES", "B") in source.asked, ("SERIES", "A") in source.asked] == [walked == 1, False]
    if whole_study == "short" and not counts:
        # Without NumberOfStudyRelatedInstances a short answer cannot be told from a complete one: this is
        # what `inventory = "walk"` is for.
        assert len(entries) == 7
        return
    assert len(entries) == summary.instances == 8
    # Series by UID, instances by number, whichever way the study was listed.
    assert [e.sop_instance_uid for e in entries[:4]] == ["A.1.1", "A.1.2", "A.2.1", "A.2.2"]
    assert [e.sop_instance_uid for e in entries[4:]] == ["B.1.1", "B.1.2", "B.2.1", "B.2.2"]


def test_after_a_refusal_every_next_study_is_walked_without_asking_again(tmp_path) -> None:
    source = _SourceFake("refuse", bad="A")
    summary = take_inventory(source, dt.date(2026, 1, 1), dt.date(2026, 1, 1), tmp_path / "i.jsonl")  # type: ignore[arg-type]
    assert summary.studies_walked == 2 and summary.instances == 8
    assert source.asked.count(("IMAGE", None)) == 1  # study A's refused query; B is walked straight away
