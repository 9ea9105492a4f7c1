"""Verification helpers without a network: presence accounting and the content sample."""

from __future__ import annotations

from dicom_backup_dagster.backup.manifest import ALREADY_ARCHIVED, DEFERRED, FAILED, MOVED, InstanceEntry
from dicom_backup_dagster.backup.verify import check_presence, choose_sample, sample


def series(study: str, name: str, n: int, state: str = MOVED) -> list[InstanceEntry]:
    return [InstanceEntry(study, name, f"{name}.{i}", state=state) for i in range(n)]


def test_presence_names_missing_uids_and_ignores_deferred() -> None:
    entries = series("S1", "S1.1", 3) + series("S2", "S2.1", 2, DEFERRED)
    result = check_presence(entries, lambda study: {"S1.1.0", "S1.1.2"})
    assert (result.expected, result.present, result.missing, result.deferred) == (3, 2, 1, 2)
    assert result.missing_uids == ("S1.1.1",) and not result.complete


def test_presence_of_a_fully_deferred_study_asks_nothing() -> None:
    asked: list[str] = []
    result = check_presence(series("S2", "S2.1", 2, DEFERRED), lambda s: asked.append(s) or set())  # type: ignore[func-returns-value]
    assert asked == [] and result.complete


def test_sample_is_at_least_one_per_series_and_all_at_fraction_one() -> None:
    ct = series("S1", "CT", 10)
    assert len(choose_sample(ct, 0.0)) == 1
    assert len(choose_sample(ct, 0.25)) == 3  # ceil
    assert len(choose_sample(ct, 1.0)) == 10
    assert choose_sample(ct, 0.3) == choose_sample(list(reversed(ct)), 0.3)  # deterministic
    assert choose_sample([], 0.5) == []


def test_sample_takes_only_instances_on_the_archive() -> None:
    entries = series("S1", "A", 2, FAILED) + series("S1", "B", 2, ALREADY_ARCHIVED) + series("S1", "C", 1)
    chosen = sample(entries, 0.0)
    assert [e.series_instance_uid for e in chosen] == ["B", "C"]
