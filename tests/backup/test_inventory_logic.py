"""Inventory helpers without a network: look-back window, key levels, ordering."""

from __future__ import annotations

import datetime as dt

import pytest

from dicom_backup_dagster.backup.inventory import split_query_keys, study_order, window
from dicom_backup_dagster.dicom.find import StudyRecord


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
