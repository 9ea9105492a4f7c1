"""The sweep's slice, coverage and state, and the late scan's decisions, without a network (fakes stand in
for the FindSession methods they use; the peers themselves are in tests/defs/test_late_data.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dicom_backup_dagster.backup.late import changed_studies
from dicom_backup_dagster.backup.manifest import ALREADY_ARCHIVED, DEFERRED, MOVED, InstanceEntry
from dicom_backup_dagster.backup.sweep import (
    SweepState,
    choose_slice,
    coverage,
    nightly_quota,
    reconciled_studies,
)
from dicom_backup_dagster.dicom.find import SeriesRecord, StudyRecord

NOW = dt.datetime(2026, 12, 2, 4, 30, tzinfo=dt.UTC)


def _studies(n: int) -> list[StudyRecord]:
    return [StudyRecord(f"1.2.{i}", f"202606{i + 1:02d}") for i in range(n)]


def test_quota_covers_the_window_in_the_configured_nights_within_the_cap() -> None:
    assert nightly_quota(1000, 30, 2000) == 34  # 30 nights of 34 cover 1,000 studies
    assert nightly_quota(100_000, 30, 2000) == 2000  # the cap wins: the coverage check will say so
    assert nightly_quota(0, 30, 2000) == 0


def test_slice_takes_visibly_changed_then_never_reconciled_then_least_recent() -> None:
    window = _studies(6)
    state = SweepState(started=NOW - dt.timedelta(days=10))
    state.reconciled = {
        "1.2.0": NOW - dt.timedelta(days=9),
        "1.2.1": NOW - dt.timedelta(days=2),
        "1.2.2": NOW - dt.timedelta(days=5),
    }
    chosen = choose_slice(window, state, quota=4, max_studies=10, visibly_changed={"1.2.1"})
    # 1.2.1 lacks data on the archive; then 1.2.3-5 never reconciled (oldest StudyDate first).
    assert [s.study_instance_uid for s in chosen] == ["1.2.1", "1.2.3", "1.2.4", "1.2.5"]
    state.reconciled.update({u: NOW for u in ("1.2.3", "1.2.4", "1.2.5")})
    chosen = choose_slice(window, state, quota=2, max_studies=10)
    assert [s.study_instance_uid for s in chosen] == ["1.2.0", "1.2.2"]  # least recently reconciled


def test_changed_studies_beyond_the_cap_wait_for_the_next_night() -> None:
    window = _studies(5)
    chosen = choose_slice(
        window,
        SweepState(started=NOW),
        quota=1,
        max_studies=2,
        visibly_changed={s.study_instance_uid for s in window},
    )
    assert len(chosen) == 2


def test_coverage_counts_overdue_only_after_a_whole_cycle() -> None:
    window = _studies(4)
    young = SweepState(started=NOW - dt.timedelta(days=3))
    cov = coverage(window, young, NOW, nights=30, quota=1)
    assert (cov.studies, cov.never, cov.overdue, cov.percent) == (4, 4, (), 0.0)
    assert cov.nights_to_cover == 4

    old = SweepState(started=NOW - dt.timedelta(days=40))
    old.reconciled = {"1.2.0": NOW - dt.timedelta(days=1), "1.2.1": NOW - dt.timedelta(days=31)}
    cov = coverage(window, old, NOW, nights=30, quota=2)
    assert cov.reconciled_in_cycle == 1 and cov.percent == 25.0
    assert set(cov.overdue) == {"1.2.1", "1.2.2", "1.2.3"}
    assert cov.oldest == NOW - dt.timedelta(days=31)


def test_state_round_trips_and_survives_a_crash_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "sweep" / "ARIA.json"
    assert SweepState.load(path, NOW).started == NOW  # no state yet: the sweep starts now
    state = SweepState(started=NOW - dt.timedelta(days=1), reconciled={"1.2.3": NOW})
    state.save(path)
    (path.parent / f".{path.name}.tmp").write_text("{half")  # a crash while writing the next one
    again = SweepState.load(path, NOW)
    assert again.started == state.started and again.reconciled == {"1.2.3": NOW}


def test_reconciled_studies_need_every_instance_on_the_archive() -> None:
    def entry(study: str, uid: str, state: str) -> InstanceEntry:
        return InstanceEntry(study, f"{study}.1", uid, state=state)

    done, lacking = reconciled_studies(
        [
            entry("A", "A1", ALREADY_ARCHIVED),
            entry("A", "A2", MOVED),
            entry("B", "B1", ALREADY_ARCHIVED),
            entry("C", "C1", DEFERRED),
        ]
    )
    assert done == ["A", "B"]
    assert lacking == {"A": 1, "C": 1}


class _Source:
    def __init__(self, series: dict[str, list[SeriesRecord]]) -> None:
        self._series = series
        self.asked: list[str] = []

    def series(self, study: str, **_: object) -> list[SeriesRecord]:
        self.asked.append(study)
        return self._series.get(study, [])


class _Archive:
    def __init__(self, studies: list[StudyRecord], series: list[SeriesRecord]) -> None:
        self._studies, self._series = studies, series

    def studies(self, study_instance_uid: list[str], **_: object) -> list[StudyRecord]:
        return [s for s in self._studies if s.study_instance_uid in study_instance_uid]

    def series_of_studies(self, uids: list[str], **_: object) -> list[SeriesRecord]:
        return [s for s in self._series if s.study_instance_uid in uids]


def test_changed_studies_by_counts_where_known_and_by_series_elsewhere() -> None:
    source_studies = [
        StudyRecord("grown", "20260601", number_of_study_related_instances=5),
        StudyRecord("same", "20260601", number_of_study_related_instances=4),
        StudyRecord("absent", "20260601", number_of_study_related_instances=1),
        StudyRecord("new-series", "20260601"),  # no counts (dcmqrscp)
        StudyRecord("unchanged", "20260601"),
    ]
    archive = _Archive(
        [
            StudyRecord("grown", number_of_study_related_instances=4),
            StudyRecord("same", number_of_study_related_instances=4),
            StudyRecord("new-series"),
            StudyRecord("unchanged"),
        ],
        [SeriesRecord("new-series", "s1"), SeriesRecord("unchanged", "u1")],
    )
    source = _Source(
        {
            "new-series": [SeriesRecord("new-series", "s1"), SeriesRecord("new-series", "s2")],
            "unchanged": [SeriesRecord("unchanged", "u1")],
        }
    )
    scan = changed_studies(source, archive, source_studies)  # type: ignore[arg-type]
    assert {s.study_instance_uid for s in scan.changed} == {"grown", "absent", "new-series"}
    assert scan.compared_by == "counts+series"
    assert source.asked == ["new-series", "unchanged"]  # series listed only where counts are missing
