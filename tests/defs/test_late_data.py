"""Nothing left behind: late series on old studies and the reconciliation sweep, against the sandbox peers.

ARIA is dcmqrscp (strictly hierarchical, no counts in its answers); MIM is the pynetdicom simulator in
relational mode. New series reach a source by C-STORE, as they do from a planning system. Each test uses
its own days in 2025, away from the sandbox data (January 2026) and from each other.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from pydicom import dcmread

from dicom_backup_dagster.backup.sweep import SweepState
from dicom_backup_dagster.defs import sweep as sweep_defs
from dicom_backup_dagster.defs.alerts import _run_sources
from dicom_backup_dagster.defs.keys import SOURCE_TAG
from dicom_backup_dagster.defs.sweep import build_sweep_defs, sweep_job_name
from dicom_backup_dagster.dicom.store import c_store_files
from tests.defs.test_qr_backup import _defs, _env, _metadata
from tests.dicom.synthetic import SyntheticInstance, make_patient


def _study(
    directory: Path, study_date: dt.date, *, series_date: dt.date | None = None, ct_slices: int = 2
) -> list[SyntheticInstance]:
    """One synthetic study (CT, RTSTRUCT, RTPLAN, RTDOSE series) dated `study_date`."""
    written = make_patient(directory, patient_id=f"LATE{study_date:%m%d}", ct_slices=ct_slices)
    for inst in written:
        ds = dcmread(inst.path)
        ds.StudyDate = f"{study_date:%Y%m%d}"
        ds.SeriesDate = f"{(series_date or study_date):%Y%m%d}"
        ds.save_as(inst.path, enforce_file_format=True)
    return written


def _store(sandbox: Any, alias: str, instances: list[SyntheticInstance]) -> None:
    peer = sandbox.aria.peer if alias == "ARIA" else sandbox.mim.peer
    c_store_files(peer, "LATE_TEST", [i.path for i in instances])


def _series(instances: list[SyntheticInstance]) -> dict[str, list[SyntheticInstance]]:
    out: dict[str, list[SyntheticInstance]] = {}
    for inst in instances:
        out.setdefault(inst.series_instance_uid, []).append(inst)
    return out


def _run(defs: dg.Definitions, alias: str, day: dt.date, instance: dg.DagsterInstance) -> Any:
    job = defs.resolve_job_def(f"{alias}_backup")
    return job.execute_in_process(partition_key=day.isoformat(), instance=instance, raise_on_error=False)


@pytest.mark.parametrize(
    ("alias", "study_age", "expected_by"),
    [
        # dcmqrscp: the study is in the late window; its series are listed one study at a time.
        ("ARIA", 30, "series"),
        # Relational MIM: a study older than the late window, found by the new series' SeriesDate.
        ("MIM", 60, "series-date"),
    ],
)
def test_series_added_to_an_old_study_is_archived_by_the_next_night(
    sandbox, monkeypatch, tmp_path, alias, study_age, expected_by
):
    night = dt.date(2025, 6, 30) if alias == "ARIA" else dt.date(2025, 7, 31)
    study_day = night - dt.timedelta(days=study_age)
    env = _env(sandbox, monkeypatch, lookback_days=3, late_series_days=30)
    defs = _defs(env, tmp_path / "storage")
    study = _study(tmp_path / "study", study_day, series_date=night)
    first, *rest = _series(study).values()
    late_series = first  # the CT series arrives weeks later (a re-plan's new CT)
    _store(sandbox, alias, [i for s in rest for i in s])
    with dg.instance_for_test() as instance:
        assert _run(defs, alias, study_day, instance).success
        assert not any(sandbox.main.has_instance(i.sop_instance_uid) for i in late_series)

        _store(sandbox, alias, late_series)
        result = _run(defs, alias, night, instance)
        assert result.success
        inventory = _metadata(result, alias, "inventory")
        assert inventory["late_studies"] == 1
        assert expected_by in inventory["late_compared_by"]
        assert all(sandbox.main.has_instance(i.sop_instance_uid) for i in late_series)
        archived = _metadata(result, alias)
        assert archived["moved"] == len(late_series)


def test_day_never_backed_up_is_not_late_data(sandbox, monkeypatch, tmp_path):
    """A study on a day no run backed up is a backfill's work: the nightly run does not take it."""
    night = dt.date(2025, 8, 30)
    env = _env(sandbox, monkeypatch, lookback_days=0, late_series_days=30)
    defs = _defs(env, tmp_path / "storage")
    study = _study(tmp_path / "study", night - dt.timedelta(days=10))
    _store(sandbox, "ARIA", study)
    with dg.instance_for_test() as instance:
        result = _run(defs, "ARIA", night, instance)
        assert result.success
        assert _metadata(result, "ARIA", "inventory")["late_studies"] == 0
        assert not sandbox.main.has_instance(study[0].sop_instance_uid)


def _sweep(
    defs: dg.Definitions, alias: str, as_of: dt.date, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(sweep_job_name(alias))
    config = {"ops": {f"{alias}__reconciled": {"config": {"as_of": as_of.isoformat()}}}}
    return job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)


def _sweep_defs(sandbox: Any, monkeypatch: pytest.MonkeyPatch, storage: Path, **settings: Any) -> Any:
    env = _env(sandbox, monkeypatch, lookback_days=0, **settings)
    return env, dg.Definitions.merge(_defs(env, storage), build_sweep_defs(env, retry_policy=None))


def _sweep_checks(result: Any) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_sweep_finds_an_instance_deleted_from_the_archive_and_archives_it(sandbox, monkeypatch, tmp_path):
    day = dt.date(2025, 3, 10)
    _, defs = _sweep_defs(sandbox, monkeypatch, tmp_path / "storage", sweep_days=5, sweep_nights=1)
    study = _study(tmp_path / "study", day)
    _store(sandbox, "ARIA", study)
    with dg.instance_for_test() as instance:
        assert _run(defs, "ARIA", day, instance).success
        victim = study[-1].sop_instance_uid
        assert sandbox.main.delete_instance(victim)

        result = _sweep(defs, "ARIA", day + dt.timedelta(days=1), instance)
        assert result.success
        meta = _metadata(result, "ARIA", "reconciled")
        assert meta["studies_in_window"] >= 1
        assert meta["instances_missed"] == 1 and meta["moved"] == 1
        assert meta["studies_reconciled_tonight"] == meta["studies_checked_tonight"] >= 1
        assert meta["coverage_percent"] == 100.0
        assert sandbox.main.has_instance(victim)
        checks = _sweep_checks(result)
        missed = checks["nothing_missed"]
        assert not missed.passed and missed.severity == dg.AssetCheckSeverity.WARN
        assert "found 1 instances the nightly runs had missed" in (missed.description or "")
        assert checks["sweep_coverage"].passed

        again = _sweep(defs, "ARIA", day + dt.timedelta(days=1), instance)
        assert again.success
        assert _metadata(again, "ARIA", "reconciled")["instances_missed"] == 0
        assert _sweep_checks(again)["nothing_missed"].passed


def test_sweep_interrupted_by_an_outage_resumes_where_it_stopped(sandbox, monkeypatch, tmp_path):
    day = dt.date(2025, 4, 14)
    storage = tmp_path / "storage"
    _, defs = _sweep_defs(sandbox, monkeypatch, storage, sweep_days=3, sweep_nights=2)
    studies = [_study(tmp_path / f"s{n}", day, ct_slices=1) for n in range(4)]
    for study in studies:
        _store(sandbox, "ARIA", study)
    monkeypatch.setattr(sweep_defs, "BATCH_STUDIES", 1)
    real = sweep_defs.inventory_studies
    calls: list[int] = []

    def outage_before_second_batch(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            sandbox.aria.stop()  # ARIA goes down between two batches
        return real(*args, **kwargs)

    state_path = storage / "sweep" / "ARIA.json"
    with dg.instance_for_test() as instance:
        assert _run(defs, "ARIA", day, instance).success
        monkeypatch.setattr(sweep_defs, "inventory_studies", outage_before_second_batch)
        try:
            failed = _sweep(defs, "ARIA", day + dt.timedelta(days=1), instance)
        finally:
            sandbox.aria.start()
        assert not failed.success
        failure = failed.get_step_failure_events()[0].event_specific_data.error  # type: ignore[union-attr]
        assert "ARIA" in failure.message and "reconciliation sweep" in failure.message
        # The failure alert names ARIA (from the run's asset), but the exporter's ARIA run figures, read by
        # the source tag, leave sweeps out: a good sweep must not hide a missed nightly backup.
        swept = instance.get_run_by_id(failed.run_id)
        assert swept is not None and _run_sources(instance, swept, {"ARIA", "MIM"}) == {"ARIA"}
        by_source = instance.get_runs(dg.RunsFilter(tags={SOURCE_TAG: "ARIA"}))
        assert failed.run_id not in {r.run_id for r in by_source} and len(by_source) == 1
        first_night = set(SweepState.load(state_path, dt.datetime.now(dt.UTC)).reconciled)
        assert len(first_night) == 1  # the batch before the outage counts

        monkeypatch.setattr(sweep_defs, "inventory_studies", real)
        resumed = _sweep(defs, "ARIA", day + dt.timedelta(days=1), instance)
        assert resumed.success
        after = set(SweepState.load(state_path, dt.datetime.now(dt.UTC)).reconciled)
        # Tonight's quota is 2 (4 studies in 2 nights): the two never reconciled come first, not the
        # study reconciled before the outage.
        assert first_night < after and len(after) == 3
        assert _metadata(resumed, "ARIA", "reconciled")["never_reconciled"] == 1


def test_sweep_coverage_fails_when_a_study_is_overdue(sandbox, monkeypatch, tmp_path):
    day = dt.date(2025, 5, 5)
    storage = tmp_path / "storage"
    _, defs = _sweep_defs(sandbox, monkeypatch, storage, sweep_days=2, sweep_nights=30, sweep_max_studies=1)
    for n in range(2):
        _store(sandbox, "ARIA", _study(tmp_path / f"s{n}", day, ct_slices=1))
    state_path = storage / "sweep" / "ARIA.json"
    with dg.instance_for_test() as instance:
        assert _run(defs, "ARIA", day, instance).success
        # The sweep has run for 40 nights and never reached these studies.
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
        SweepState(started=long_ago).save(state_path)
        result = _sweep(defs, "ARIA", day + dt.timedelta(days=1), instance)
        assert result.success
        coverage = _sweep_checks(result)["sweep_coverage"]
        assert not coverage.passed
        assert coverage.metadata["overdue"].value >= 1
        assert "raise sweep_max_studies (1)" in (coverage.description or "")
        data = json.loads(state_path.read_text())
        assert len(data["reconciled"]) == 1  # at most sweep_max_studies a night
