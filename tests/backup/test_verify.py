"""Verification helpers without a network: presence accounting and the content sample."""

from __future__ import annotations

from dicom_backup_dagster.backup.manifest import ALREADY_ARCHIVED, DEFERRED, FAILED, MOVED, InstanceEntry
from dicom_backup_dagster.backup.verify import check_presence, choose_sample, sample


def series(study: str, name: str, n: int, state: str = MOVED) -> list[InstanceEntry]:
    return [InstanceEntry(study, name, f"{name}.{i}", state=state) for i in range(n)]


def test_presence_names_missing_uids_and_ignores_deferred() -> None:
    entries = series("S1", "S1.1", 3) + series("S2", "S2.1", 2, DEFERRED)
    asked: list[str] = []
    waits: list[float] = []

    def archived(study: str) -> set[str]:
        asked.append(study)
        return {"S1.1.0", "S1.1.2"}

    result = check_presence(entries, archived, sleep=waits.append)
    assert (result.expected, result.present, result.missing, result.deferred) == (3, 2, 1, 2)
    assert result.missing_uids == ("S1.1.1",) and not result.complete
    assert asked == ["S1", "S1"] and waits == [2.0]  # a study with a gap is asked once more, then it counts


def test_presence_waits_for_a_store_still_in_flight() -> None:
    """Another run's store of the same instance may be acknowledged before the archive indexed it."""
    answers = iter([{"S1.1.0"}, {"S1.1.0", "S1.1.1"}])
    waits: list[float] = []
    result = check_presence(series("S1", "S1.1", 2), lambda study: next(answers), sleep=waits.append)
    assert result.complete and result.present == 2 and waits == [2.0]


def test_presence_of_a_complete_study_asks_once_and_never_waits() -> None:
    asked: list[str] = []
    waits: list[float] = []
    everything = {f"S1.1.{i}" for i in range(3)}
    result = check_presence(
        series("S1", "S1.1", 3), lambda s: asked.append(s) or everything, sleep=waits.append
    )  # type: ignore[func-returns-value]
    assert result.complete and asked == ["S1"] and waits == []


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
