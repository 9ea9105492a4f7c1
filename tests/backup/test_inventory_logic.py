"""Inventory helpers without a network: look-back window, key levels, ordering."""

from __future__ import annotations

import datetime as dt

import pytest

from dicom_backup_dagster.backup.inventory import ArchiveLookup, split_query_keys, study_order, window
from dicom_backup_dagster.backup.manifest import InstanceEntry
from dicom_backup_dagster.dicom.find import InstanceRecord, StudyRecord


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
