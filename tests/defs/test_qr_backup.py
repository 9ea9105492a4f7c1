"""ARIA/MIM backup assets, checks, jobs and schedules against the real sandbox peers.

Other tests store into ORTHANC_MAIN too, so nothing here assumes an empty archive: assertions are about
the partitions' own instances (moved + already archived = found), and tests that need instances to be
missing delete exactly those instances first (Orthanc REST).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_backup_dagster.backup.baseline import BaselineRules
from dicom_backup_dagster.backup.manifest import DEFERRED, MOVED, read_manifest
from dicom_backup_dagster.config import BackupTarget, EnvironmentConfig, QRSource, load_config
from dicom_backup_dagster.defs import build_definitions
from dicom_backup_dagster.defs.keys import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    BACKFILL_ID_TAG,
)
from dicom_backup_dagster.defs.qr_backup import DEFAULT_RULES, build_qr_backup_defs
from dicom_backup_dagster.defs.resources import BackupStorage, build_resources
from dicom_backup_dagster.dicom.network import Peer, Timeouts
from dicom_backup_dagster.sandbox.mim import MimSimulator
from dicom_backup_dagster.sandbox.orthanc import OrthancServer
from dicom_backup_dagster.sandbox.processes import free_port, wait_until
from tests.dicom.fault_scp import FaultSCP, RetrievePlan
from tests.dicom.synthetic import make_patient, make_study

CHECKS = {"complete_in_archive", "content_verified", "volume_vs_baseline", "duration_vs_baseline"}


def _env(sandbox: Any, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> EnvironmentConfig:
    for name, value in sandbox.env_vars().items():
        monkeypatch.setenv(name, value)
    env = load_config(sandbox.config_path, "SANDBOX").environment
    return replace(env, settings=replace(env.settings, **settings)) if settings else env


def _defs(env: EnvironmentConfig, storage_dir: Path, rules: BaselineRules = DEFAULT_RULES) -> dg.Definitions:
    # One quick retry, as in production (where it has backoff): a loaded CI machine can make a peer drop
    # an association, which is exactly what the retry is for.
    retry = dg.RetryPolicy(max_retries=1, delay=1)
    return dg.Definitions.merge(
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(storage_dir)))),
        build_qr_backup_defs(env, retry_policy=retry, rules=rules),
    )


def _run(defs: dg.Definitions, alias: str, partition: str, instance: dg.DagsterInstance) -> Any:
    job = defs.resolve_job_def(f"{alias}_backup")
    return job.execute_in_process(partition_key=partition, instance=instance, raise_on_error=False)


def _metadata(result: Any, alias: str, name: str = "archived") -> dict[str, Any]:
    key = dg.AssetKey([alias, name])
    events = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    assert events, f"no materialization of {key.to_user_string()}"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def _checks(result: Any) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _checks_by_day(result: Any) -> dict[str, dict[str, Any]]:
    """check name -> day -> its evaluation (every check evaluates every day of its run)."""
    out: dict[str, dict[str, Any]] = {}
    for e in result.get_asset_check_evaluations():
        assert e.partition is not None and e.partition not in out.get(e.check_name, {}), e
        out.setdefault(e.check_name, {})[e.partition] = e
    return out


def _check_status(
    instance: dg.DagsterInstance, defs: dg.Definitions, key: dg.AssetCheckKey
) -> dict[str, list[str]]:
    """The per-partition statuses the UI shows for a check (GraphQL AssetCheck.partitionStatuses)."""
    partitions_def = defs.resolve_assets_def(key.asset_key).partitions_def
    state = instance.event_log_storage.get_asset_check_state([(key, partitions_def)])[key]
    out = {}
    for status, subset in state.subsets.items():
        days = sorted(subset.subset_value.get_partition_keys()) if subset.subset_value is not None else []
        if days:
            out[status.value] = days
    return out


def _sandbox_uids(sandbox: Any, source: str, days: list[dt.date]) -> list[str]:
    wanted = {d.strftime("%Y%m%d") for d in days}
    return [r.sop_instance_uid for r in sandbox.manifest.for_source(source) if r.date in wanted]


def test_definitions_have_assets_checks_job_schedule_per_source(sandbox, monkeypatch, tmp_path):
    env = _env(sandbox, monkeypatch)
    defs = build_definitions(load_config(sandbox.config_path, "SANDBOX"))  # what the code location serves
    dg.Definitions.validate_loadable(defs)
    for alias in ("ARIA", "MIM"):
        job = defs.resolve_job_def(f"{alias}_backup")
        assert job.partitions_def is not None
        assert job.partitions_def.timezone == env.settings.timezone
        assert job.partitions_def.get_first_partition_key() == env.settings.first_day.isoformat()
        archived = defs.resolve_assets_def(dg.AssetKey([alias, "archived"]))
        assert archived.backfill_policy == dg.BackfillPolicy.multi_run(env.settings.backfill_days_per_run)
        pool = f"dicom_{env.sources[alias].aet}"
        assert archived.op.pool == pool
        assert defs.resolve_assets_def(dg.AssetKey([alias, "inventory"])).op.pool == pool
        check_names = {
            k.name for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key == archived.key
        }
        assert check_names == CHECKS
        schedule = defs.resolve_schedule_def(f"{alias}_backup_schedule")
        assert schedule.cron_schedule == env.settings.schedule
        assert schedule.execution_timezone == env.settings.timezone
        # A tick at 01:30 site time runs the previous day's partition.
        tz = env.settings.tzinfo
        tick = dt.datetime(2026, 1, 13, 1, 30, tzinfo=tz)
        context = dg.build_schedule_context(
            scheduled_execution_time=tick, repository_def=defs.get_repository_def()
        )
        requests = schedule.evaluate_tick(context).run_requests
        assert [r.partition_key for r in requests] == ["2026-01-12"]
    # Retries with backoff for transient errors (configuration errors: Failure(allow_retries=False)).
    # On the assets, so that asset backfills (the implicit asset job) retry too.
    policy = defs.resolve_assets_def(dg.AssetKey(["ARIA", "archived"])).op.retry_policy
    assert policy is not None and policy.max_retries >= 1 and policy.backoff == dg.Backoff.EXPONENTIAL


def test_partition_backs_up_every_instance_then_rerun_moves_nothing(sandbox, monkeypatch, tmp_path):
    env = _env(sandbox, monkeypatch)
    defs = _defs(env, tmp_path)
    partition = "2026-01-14"  # with lookback 3: StudyDates 2026-01-11 .. 2026-01-14
    with dg.instance_for_test() as instance:
        result = _run(defs, "ARIA", partition, instance)
        assert result.success
        inventory = _metadata(result, "ARIA", "inventory")
        meta = _metadata(result, "ARIA")
        assert inventory["instances"] == meta["instances_found"] > 0
        assert inventory["study_dates"] == "20260111-20260114"
        assert inventory["studies_walked"] == 0  # the sandbox's ARIA answers one IMAGE query per study
        assert meta["moved"] + meta["already_archived"] == meta["instances_found"]
        assert meta["failed"] == meta["deferred"] == 0
        for key in ("seconds_find", "seconds_plan", "seconds_transfer", "seconds_confirm", "seconds_total"):
            assert meta[key] >= 0
        # A one-day run is the day: its own figures first, no run_ keys, the DIMSE table last.
        assert list(meta)[:7] == [
            "instances_found",
            "instances_dated",
            "already_archived",
            "moved",
            "deferred",
            "failed",
            "seconds_total",
        ]
        assert not [k for k in meta if k.startswith("run_")] and list(meta)[-1] == "dimse"
        assert list(inventory)[:2] == ["instances", "instances_dated"]
        checks = _checks(result)
        assert set(checks) == CHECKS
        assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}
        assert checks["complete_in_archive"].metadata["present"].value == meta["instances_found"]
        assert checks["content_verified"].metadata["matched"].value >= 1
        # Every instance of those days is really on main (Orthanc REST, not our own C-FIND).
        days = [dt.date(2026, 1, d) for d in (11, 12, 13, 14)]
        expected = _sandbox_uids(sandbox, "ARIA", days)
        assert len(expected) == meta["instances_found"]
        assert all(sandbox.main.has_instance(uid) for uid in expected)
        # No PHI in metadata.
        text = repr(meta) + repr(inventory)
        assert "SANDBOX^" not in text and "SBX0" not in text

        again = _run(defs, "ARIA", partition, instance)
        assert again.success
        meta2 = _metadata(again, "ARIA")
        assert meta2["moved"] == 0 and meta2["requests"] == 0
        assert meta2["already_archived"] == meta["instances_found"]


def test_mim_c_get_path_records_digests(sandbox, monkeypatch, tmp_path):
    env = _env(sandbox, monkeypatch, lookback_days=0, verification_fraction=1.0)
    assert env.sources["MIM"].transfer == "c-get"
    days = [d for d in sandbox.dates if _sandbox_uids(sandbox, "MIM", [d])]
    day = days[0]
    uids = _sandbox_uids(sandbox, "MIM", [day])
    for uid in uids:  # make them missing, so this run has to carry them
        sandbox.main.delete_instance(uid)
    defs = _defs(env, tmp_path)
    with dg.instance_for_test() as instance:
        result = _run(defs, "MIM", day.isoformat(), instance)
        assert result.success
        meta = _metadata(result, "MIM")
        assert meta["moved"] == len(uids) and meta["bytes"] > 0
        moved = [e for e in read_manifest(meta["manifest"]) if e.state == MOVED]
        assert len(moved) == len(uids) and all(e.digest and e.size and e.transfer_syntax_uid for e in moved)
        checks = _checks(result)
        assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}
        assert checks["content_verified"].metadata["sampled"].value == len(uids)  # fraction 1.0: every one

        # A re-run reuses what the first run verified: nothing moved, nothing retrieved again.
        again = _run(defs, "MIM", day.isoformat(), instance)
        assert again.success
        assert _metadata(again, "MIM")["moved"] == 0
        verified = _checks(again)["content_verified"]
        assert verified.passed and verified.metadata["sampled"].value == 0
        assert verified.metadata["verified_earlier"].value == len(uids)
        # An instance moved again (it was lost from main) is retrieved and compared again, and only it.
        assert sandbox.main.delete_instance(uids[0])
        third = _run(defs, "MIM", day.isoformat(), instance)
        assert third.success and _metadata(third, "MIM")["moved"] == 1
        verified = _checks(third)["content_verified"]
        assert verified.passed and verified.metadata["matched"].value == 1
        assert verified.metadata["sampled"].value == 1
        assert verified.metadata["verified_earlier"].value == len(uids) - 1


def test_max_uids_per_run_defers_and_next_run_takes_the_rest(sandbox, monkeypatch, tmp_path):
    day = dt.date(2026, 1, 5)  # 11 ARIA instances (planning CT, RTSTRUCT, RTPLAN, RTDOSE)
    uids = _sandbox_uids(sandbox, "ARIA", [day])
    assert len(uids) > 5
    for uid in uids:
        sandbox.main.delete_instance(uid)
    with dg.instance_for_test() as instance:
        small = _defs(_env(sandbox, monkeypatch, lookback_days=0, max_uids_per_run=5), tmp_path)
        first = _run(small, "ARIA", day.isoformat(), instance)
        assert first.success  # deferral is reported, not an error
        meta = _metadata(first, "ARIA")
        assert (meta["moved"], meta["deferred"], meta["failed"]) == (5, len(uids) - 5, 0)
        deferred = [e.sop_instance_uid for e in read_manifest(meta["manifest"]) if e.state == DEFERRED]
        assert len(deferred) == len(uids) - 5
        assert sum(sandbox.main.has_instance(u) for u in uids) == 5
        complete = _checks(first)["complete_in_archive"]
        assert not complete.passed and complete.severity == dg.AssetCheckSeverity.WARN
        assert complete.metadata["deferred"].value == len(uids) - 5

        full = _defs(_env(sandbox, monkeypatch, lookback_days=0), tmp_path)
        second = _run(full, "ARIA", day.isoformat(), instance)
        assert second.success
        meta2 = _metadata(second, "ARIA")
        assert (meta2["moved"], meta2["already_archived"], meta2["deferred"]) == (len(uids) - 5, 5, 0)
        assert all(sandbox.main.has_instance(u) for u in uids)
        assert _checks(second)["complete_in_archive"].passed


def test_backfill_run_takes_max_uids_per_run_for_each_day_it_covers(sandbox, monkeypatch, tmp_path):
    # A 3-day backfill run may take what the 3 nightly runs would have: the cap is per day of the run.
    days = [dt.date(2026, 1, 12), dt.date(2026, 1, 13), dt.date(2026, 1, 14)]
    counts = [len(_sandbox_uids(sandbox, "ARIA", [d])) for d in days]
    cap = max(counts)
    assert sum(counts) > cap  # one run-wide cap would defer some
    every = _sandbox_uids(sandbox, "ARIA", days)
    for uid in every:
        sandbox.main.delete_instance(uid)
    job = _defs(_env(sandbox, monkeypatch, max_uids_per_run=cap), tmp_path).resolve_job_def("ARIA_backup")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            tags={
                ASSET_PARTITION_RANGE_START_TAG: days[0].isoformat(),
                ASSET_PARTITION_RANGE_END_TAG: days[-1].isoformat(),
                BACKFILL_ID_TAG: "capbackfill",
            },
        )
    assert result.success, _failure(result)[0]
    meta = _metadata(result, "ARIA")
    assert (meta["run_moved"], meta["run_deferred"]) == (len(every), 0)
    assert all(sandbox.main.has_instance(uid) for uid in every)


def test_deleted_instance_fails_complete_in_archive_and_next_run_restores_it(sandbox, monkeypatch, tmp_path):
    env = _env(sandbox, monkeypatch, lookback_days=0)
    defs = _defs(env, tmp_path)
    day = "2026-01-20"
    with dg.instance_for_test() as instance:
        assert _run(defs, "ARIA", day, instance).success
        victim = _sandbox_uids(sandbox, "ARIA", [dt.date(2026, 1, 20)])[-1]
        assert sandbox.main.delete_instance(victim)

        # The checks on their own (as "Execute checks" in the UI): they verify the latest partition.
        archived_key = dg.AssetKey(["ARIA", "archived"])
        checks_only = dg.materialize(
            [*defs.assets, *defs.asset_checks],  # type: ignore[list-item]
            selection=dg.AssetSelection.checks(dg.AssetCheckKey(archived_key, "complete_in_archive")),
            instance=instance,
            resources=defs.resources,
            raise_on_error=False,
        )
        evaluation = _checks(checks_only)["complete_in_archive"]
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
        assert victim in evaluation.metadata["missing_uids"].value
        assert victim in (evaluation.description or "")
        assert evaluation.metadata["missing"].value == 1

        rerun = _run(defs, "ARIA", day, instance)
        assert rerun.success
        assert _metadata(rerun, "ARIA")["moved"] == 1
        assert sandbox.main.has_instance(victim)
        assert _checks(rerun)["complete_in_archive"].passed


def test_backfill_range_is_one_run_with_figures_per_day(sandbox, monkeypatch, tmp_path):
    """A backfill run over several days (BackfillPolicy.multi_run(backfill_days_per_run)): one C-FIND over
    the range, no look-back, every day materialized with its own counts, checks over the whole range."""
    env = _env(sandbox, monkeypatch)  # lookback_days 3: a backfill run must not use it
    defs = _defs(env, tmp_path)
    days = ["2026-01-12", "2026-01-13", "2026-01-14"]
    job = defs.resolve_job_def("ARIA_backup")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            tags={
                ASSET_PARTITION_RANGE_START_TAG: days[0],
                ASSET_PARTITION_RANGE_END_TAG: days[-1],
                BACKFILL_ID_TAG: "testbackfill",
            },
        )
        assert result.success, _failure(result)[0]
        key = dg.AssetKey(["ARIA", "archived"])
        per_day = {
            m.partition: {k: v.value for k, v in m.materialization.metadata.items()}
            for m in result.get_asset_materialization_events()
            if m.asset_key == key
        }
        assert sorted(per_day) == days
        for day in days:
            expected = _sandbox_uids(sandbox, "ARIA", [dt.date.fromisoformat(day)])
            assert per_day[day]["instances_dated"] == per_day[day]["instances_found"] == len(expected)
            assert per_day[day]["run_partitions"] == f"{days[0]}..{days[-1]}"
            assert "seconds_total" not in per_day[day]  # a range's duration is not one day's
        # Each instance is counted by one day: the days add up to the run (other tests may have archived
        # some of these instances already; the sandbox is shared).
        for figure in ("moved", "already_archived", "instances_found"):
            assert sum(per_day[d][figure] for d in days) == per_day[days[0]][f"run_{figure}"]
        for day in days:  # the day's own figures first; what only the run has, under run_
            assert list(per_day[day])[:6] == [
                "instances_found",
                "instances_dated",
                "already_archived",
                "moved",
                "deferred",
                "failed",
            ]
            assert not {"sub_operations_completed", "requests", "seconds_find"} & set(per_day[day])
            assert per_day[day]["run_sub_operations_completed"] >= per_day[days[0]]["run_moved"]
            assert per_day[day]["run_requests"] >= 0  # 0 when other tests archived them all already
        assert per_day[days[0]]["run_instances_found"] > 0
        inventory = _metadata(result, "ARIA", "inventory")
        assert inventory["study_dates"] == "20260112-20260114"  # no look-back in a backfill
        every = _sandbox_uids(sandbox, "ARIA", [dt.date.fromisoformat(d) for d in days])
        assert all(sandbox.main.has_instance(uid) for uid in every)
        # One evaluation per check and day, each with its partition and the day's own figures.
        by_check = _checks_by_day(result)
        assert set(by_check) == CHECKS
        for name, evaluations in by_check.items():
            assert sorted(evaluations) == days, name
            assert all(e.passed for e in evaluations.values()), {
                d: e.description for d, e in evaluations.items()
            }
        present = {d: e.metadata["present"].value for d, e in by_check["complete_in_archive"].items()}
        assert present == {d: per_day[d]["instances_found"] for d in days}
        assert sum(present.values()) == len(every)
        for day, evaluation in by_check["duration_vs_baseline"].items():
            assert (evaluation.description or "").startswith(f"{day}: not judged")
        for day, evaluation in by_check["content_verified"].items():
            assert evaluation.metadata["partition"].value == day and evaluation.metadata["sampled"].value >= 1
        # Dagster records a SUCCEEDED execution per day (what the UI's check history and partition
        # statuses read), none left PLANNED ("Skipped" / partition "—").
        for name in CHECKS:
            check_key = dg.AssetCheckKey(key, name)
            records = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=20)
            assert sorted((r.partition, r.status.value) for r in records) == [(d, "SUCCEEDED") for d in days]
            assert _check_status(instance, defs, check_key) == {"SUCCEEDED": days}

        # Execute checks on their own afterwards: they find the range's manifest through the metadata.
        checks_only = dg.materialize(
            [*defs.assets, *defs.asset_checks],  # type: ignore[list-item]
            selection=dg.AssetSelection.checks(dg.AssetCheckKey(key, "complete_in_archive")),
            instance=instance,
            resources=defs.resources,
            raise_on_error=False,
        )
        assert _checks(checks_only)["complete_in_archive"].passed
        assert _checks(checks_only)["complete_in_archive"].partition == days[-1]


# --------------------------------------------------------------------------------------------------------
# Faults and bad input, each against a real peer: a pynetdicom SCP with chosen answers (tests/dicom) as the
# source or the archive, or an Orthanc of this test's own that is stopped mid-run.

FAULT_DAY = "2024-01-15"  # StudyDate of tests/dicom/synthetic.make_patient
FAST = Timeouts(acse=5, dimse=15, network=15, connect=2)


@pytest.fixture(scope="module")
def fault_data(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    """One study with a CT series (3 slices) and an RT Plan series; UIDs are fresh for every session."""
    written = make_patient(tmp_path_factory.mktemp("fault-patient"), patient_id="FAULT001")
    return [dcmread(w.path) for w in written if w.modality in ("CT", "RTPLAN")]


@pytest.fixture(scope="module")
def _fault_servers() -> Any:
    source, archive = FaultSCP("FAULT_PACS"), FaultSCP("FAULT_ARCHIVE")
    try:
        yield source, archive
    finally:
        source.stop()
        archive.stop()


@pytest.fixture
def fault_pacs(_fault_servers: Any) -> FaultSCP:
    _fault_servers[0].reset()
    return _fault_servers[0]


@pytest.fixture
def fault_archive(_fault_servers: Any) -> FaultSCP:
    _fault_servers[1].reset()
    return _fault_servers[1]


def _rows(
    datasets: list[Dataset], *, duplicate: bool = False, minimal: bool = False
) -> dict[str, list[Dataset]]:
    """C-FIND answers per level for `datasets`; `minimal` leaves out every optional key (like dcmqrscp)."""

    def row(level: str, **values: Any) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for k, v in values.items():
            setattr(ds, k, v)
        return ds

    first = datasets[0]
    study_extra = {} if minimal else {"StudyTime": "101500", "NumberOfStudyRelatedInstances": len(datasets)}
    studies = [row("STUDY", StudyInstanceUID=first.StudyInstanceUID, StudyDate="20240115", **study_extra)]
    series_uids = list(dict.fromkeys(str(d.SeriesInstanceUID) for d in datasets))
    series = [
        row(
            "SERIES",
            StudyInstanceUID=first.StudyInstanceUID,
            SeriesInstanceUID=uid,
            **({} if minimal else {"Modality": "CT"}),
        )
        for uid in series_uids
    ]
    images = [
        row(
            "IMAGE",
            StudyInstanceUID=d.StudyInstanceUID,
            SeriesInstanceUID=d.SeriesInstanceUID,
            SOPInstanceUID=d.SOPInstanceUID,
            **({} if minimal else {"SOPClassUID": d.SOPClassUID, "InstanceNumber": d.InstanceNumber}),
        )
        for d in datasets
    ]
    rows = {"STUDY": studies, "SERIES": series, "IMAGE": images}
    return {k: v + v for k, v in rows.items()} if duplicate else rows


def _fault_env(
    env: EnvironmentConfig,
    source: Peer,
    *,
    transfer: str = "c-move",
    archive: BackupTarget | None = None,
) -> EnvironmentConfig:
    pacs = QRSource(
        alias="PACS",
        type="aria" if transfer == "c-move" else "mim",
        aet=source.aet,
        ip=source.host,
        port=source.port,
        transfer=transfer,  # type: ignore[arg-type]
    )
    targets = {**env.backup_targets, **({env.default_backup: archive} if archive else {})}
    settings = replace(env.settings, lookback_days=0, timeouts=FAST)
    return replace(env, sources={"PACS": pacs}, backup_targets=targets, settings=settings)


def _fault_defs(env: EnvironmentConfig, storage_dir: Path) -> dg.Definitions:
    # Retries without delay, so a test can see whether Dagster would retry (transient) or not (config).
    return dg.Definitions.merge(
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(storage_dir)))),
        build_qr_backup_defs(env, retry_policy=dg.RetryPolicy(max_retries=1)),
    )


def _failure(result: Any) -> tuple[str, bool]:
    """(every step failure message, whether a step was retried)."""
    texts = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None:
            texts.append(data.user_failure_data.description or "")
        if data.error is not None:
            texts.append(data.error.message)
    retried = any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    return "\n".join(texts), retried


def _serve(pacs: FaultSCP, datasets: list[Dataset], archive: Peer, **find: bool) -> None:
    pacs.find_rows = _rows(datasets, **find)
    pacs.move_destinations = {archive.aet: (archive.host, archive.port)}
    pacs.move_plan = RetrievePlan(datasets=list(datasets))
    pacs.get_plan = RetrievePlan(datasets=list(datasets))


def test_duplicate_rows_and_missing_optional_keys_still_back_up_everything(
    sandbox, monkeypatch, tmp_path, fault_pacs, fault_data
):
    env = _fault_env(_env(sandbox, monkeypatch), fault_pacs.peer)
    sandbox.main.add_modality("fault_pacs", fault_pacs.peer)
    _serve(fault_pacs, fault_data, env.main_target.peer, duplicate=True, minimal=True)
    with dg.instance_for_test() as instance:
        result = _run(_fault_defs(env, tmp_path), "PACS", FAULT_DAY, instance)
        assert result.success, _failure(result)[0]
        inventory = _metadata(result, "PACS", "inventory")
        assert (inventory["studies"], inventory["series"], inventory["instances"]) == (1, 2, len(fault_data))
        meta = _metadata(result, "PACS")
        assert meta["moved"] == len(fault_data) and meta["failed"] == 0
        assert all(sandbox.main.has_instance(str(d.SOPInstanceUID)) for d in fault_data)
        assert all(c.passed for c in _checks(result).values())


def test_source_down_names_source_and_peer_and_is_retried(sandbox, monkeypatch, tmp_path):
    down = Peer("FAULT_PACS", "127.0.0.1", free_port())
    env = _fault_env(_env(sandbox, monkeypatch), down)
    with dg.instance_for_test() as instance:
        result = _run(_fault_defs(env, tmp_path), "PACS", FAULT_DAY, instance)
    text, retried = _failure(result)
    assert not result.success and retried
    assert "PACS backup, inventory" in text and str(down) in text and "connection refused" in text


def test_rejected_association_is_a_configuration_error_not_retried(
    sandbox, monkeypatch, tmp_path, fault_pacs
):
    wrong = Peer("NOT_THE_PACS", fault_pacs.peer.host, fault_pacs.peer.port)  # wrong called AE title
    env = _fault_env(_env(sandbox, monkeypatch), wrong)
    with dg.instance_for_test() as instance:
        result = _run(_fault_defs(env, tmp_path), "PACS", FAULT_DAY, instance)
    text, retried = _failure(result)
    assert not result.success and not retried
    assert "PACS backup" in text and str(wrong) in text and "Called AE title not recognised" in text


def test_move_destination_unknown_names_the_status_and_is_not_retried(
    sandbox, monkeypatch, tmp_path, fault_pacs, fault_data
):
    env = _fault_env(_env(sandbox, monkeypatch), fault_pacs.peer)
    _serve(fault_pacs, fault_data, env.main_target.peer)
    for d in fault_data:  # an earlier test may have archived them
        sandbox.main.delete_instance(str(d.SOPInstanceUID))
    fault_pacs.move_plan = RetrievePlan(unknown_destination=True)
    with dg.instance_for_test() as instance:
        result = _run(_fault_defs(env, tmp_path), "PACS", FAULT_DAY, instance)
    text, retried = _failure(result)
    assert not result.success and not retried
    assert "PACS backup, transfer" in text and str(fault_pacs.peer) in text
    assert "0xA801" in text and "Move Destination unknown" in text


def test_partial_move_fails_naming_the_failed_uid_and_keeps_what_arrived(
    sandbox, monkeypatch, tmp_path, fault_pacs, fault_data
):
    env = _fault_env(_env(sandbox, monkeypatch), fault_pacs.peer)
    sandbox.main.add_modality("fault_pacs", fault_pacs.peer)
    data = fault_data[:3]  # the CT series: one SERIES-level C-MOVE
    _serve(fault_pacs, data, env.main_target.peer)
    for d in data:
        sandbox.main.delete_instance(str(d.SOPInstanceUID))
    lost = str(data[2].SOPInstanceUID)
    fault_pacs.find_rows = _rows(data)
    fault_pacs.move_plan = RetrievePlan(datasets=data, stop_after=2, final_status=0xB000, failed_uids=[lost])
    with dg.instance_for_test() as instance:
        result = _run(_fault_defs(env, tmp_path), "PACS", FAULT_DAY, instance)
    text, retried = _failure(result)
    assert not result.success and retried  # a partial move may succeed next time
    # The retry found 2 of 3 on the archive and asked for the third only, which the source failed again.
    assert "PACS backup, transfer (1 of 1 instances not on the archive)" in text
    assert str(fault_pacs.peer) in text and "0xB000" in text and "one or more failures" in text
    assert lost in text
    assert [sandbox.main.has_instance(str(d.SOPInstanceUID)) for d in data] == [True, True, False]


def test_archive_out_of_resources_names_archive_and_status(
    sandbox, monkeypatch, tmp_path, fault_pacs, fault_archive, fault_data
):
    archive = BackupTarget(
        "ORTHANC_MAIN", "dicom_scp", fault_archive.aet, "127.0.0.1", fault_archive.peer.port
    )
    env = _fault_env(_env(sandbox, monkeypatch), fault_pacs.peer, transfer="c-get", archive=archive)
    _serve(fault_pacs, fault_data, archive.peer)
    fault_archive.store_status = {str(d.SOPInstanceUID): 0xA700 for d in fault_data}
    with dg.instance_for_test() as instance:
        result = _run(_fault_defs(env, tmp_path), "PACS", FAULT_DAY, instance)
    text, retried = _failure(result)
    assert not result.success and retried
    assert "PACS backup, transfer" in text and str(archive.peer) in text
    assert "0xA700" in text and "Out of resources" in text
    assert set(fault_archive.stored) == {str(d.SOPInstanceUID) for d in fault_data}


def test_archive_stopped_mid_run_then_next_run_completes_without_loss_or_duplicates(
    sandbox, monkeypatch, tmp_path, fault_pacs, fault_data
):
    env0 = _env(sandbox, monkeypatch)
    orthanc = OrthancServer(
        tmp_path / "archive", "TEST_ARCHIVE", free_port(), free_port(), "backup", "pw",
        {"script": sandbox.script_peer, "pacs": fault_pacs.peer},
    )  # fmt: skip
    with orthanc:
        archive = BackupTarget("ORTHANC_MAIN", "orthanc", orthanc.aet, "127.0.0.1", orthanc.dicom_port)
        env = _fault_env(env0, fault_pacs.peer, archive=archive)
        data = fault_data[:3]
        _serve(fault_pacs, data, orthanc.peer)

        def stop_archive(index: int) -> None:
            if index == 2:
                orthanc.process.stop(timeout=1)  # type: ignore[union-attr] - SIGKILL after 1 s: a crash

        fault_pacs.move_plan = RetrievePlan(datasets=data, before_send=stop_archive)
        defs = _fault_defs(env, tmp_path)
        with dg.instance_for_test() as instance:
            first = _run(defs, "PACS", FAULT_DAY, instance)
            text, _ = _failure(first)
            assert not first.success
            assert "PACS backup" in text and str(orthanc.peer) in text

            orthanc.process.start()  # type: ignore[union-attr] - same storage: what arrived is still there
            wait_until(orthanc._answers, 30, "test archive back up")
            assert orthanc.count_instances() == 2
            # A well-behaved source sends what was asked: the missing instance only.
            fault_pacs.move_plan = RetrievePlan(datasets=data[2:])
            second = _run(defs, "PACS", FAULT_DAY, instance)
            assert second.success, _failure(second)[0]
            meta = _metadata(second, "PACS")
            assert (meta["moved"], meta["already_archived"], meta["failed"]) == (1, 2, 0)
            assert orthanc.count_instances() == 3  # nothing lost, nothing duplicated
            assert all(orthanc.has_instance(str(d.SOPInstanceUID)) for d in data)


def test_volume_far_below_the_trailing_median_warns(sandbox, monkeypatch, tmp_path):
    # The sandbox's volumes are a few instances a day: lower the floor under which volume is not judged.
    rules = BaselineRules(volume_floor_instances=1)
    defs = _defs(_env(sandbox, monkeypatch, lookback_days=0), tmp_path, rules)
    with dg.instance_for_test() as instance:
        for day in ("2026-01-12", "2026-01-13", "2026-01-14"):  # 15, 4 and 4 ARIA instances
            assert _run(defs, "ARIA", day, instance).success
        quiet = _run(defs, "ARIA", "2026-01-15", instance)  # a weekday on which nothing arrived
        assert quiet.success  # WARN does not fail the run
        volume = _checks(quiet)["volume_vs_baseline"]
        assert not volume.passed and volume.severity == dg.AssetCheckSeverity.WARN
        assert volume.metadata["current"].value == 0
        assert volume.metadata["baseline_median"].value == 4
        assert volume.metadata["history"].value == [15, 4, 4]
        assert "instances_dated" in volume.metadata["compared"].value
        assert volume.partition == "2026-01-15" and (volume.description or "").startswith("2026-01-15: 0 ")
        assert volume.metadata["history_days"].value == ["2026-01-12", "2026-01-13", "2026-01-14"]
        duration = _checks(quiet)["duration_vs_baseline"]
        assert duration.passed and len(duration.metadata["history"].value) == 3


def test_empty_day_has_nothing_to_verify_and_passes(sandbox, monkeypatch, tmp_path):
    day = "2026-01-15"  # a weekday without ARIA data; no look-back: nothing at all to back up
    assert not _sandbox_uids(sandbox, "ARIA", [dt.date.fromisoformat(day)])
    defs = _defs(_env(sandbox, monkeypatch, lookback_days=0), tmp_path)
    with dg.instance_for_test() as instance:
        result = _run(defs, "ARIA", day, instance)
        assert result.success, _failure(result)[0]
        checks = _checks_by_day(result)
        for name in ("complete_in_archive", "content_verified"):
            evaluation = checks[name][day]
            assert evaluation.passed, evaluation.description
            assert evaluation.description == f"no instances dated {day}: nothing to verify"
        volume = checks["volume_vs_baseline"][day]
        assert volume.passed and "not judged" in (volume.description or "")


def test_failed_run_of_a_verified_day_keeps_its_passed_checks(sandbox, monkeypatch, tmp_path):
    """A run whose asset step fails (the source is down) does not run the checks: a day verified earlier
    keeps its passed results, in the history and in the partition statuses, not "Execution failed"."""
    env = _env(sandbox, monkeypatch, lookback_days=0)
    day = _sandbox_day(sandbox, "ARIA")
    key = dg.AssetKey(["ARIA", "archived"])
    with dg.instance_for_test() as instance:
        defs = _defs(env, tmp_path)
        assert _run(defs, "ARIA", day, instance).success
        aria = env.sources["ARIA"]
        down = replace(env, sources={**env.sources, "ARIA": replace(aria, port=free_port())})
        failed = _run(_defs(down, tmp_path), "ARIA", day, instance)
        assert not failed.success and "connection refused" in _failure(failed)[0]
        for name in CHECKS:
            check_key = dg.AssetCheckKey(key, name)
            records = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10)
            latest, earlier = records[0], records[1]
            assert latest.run_id == failed.run_id and latest.status.value == "SUCCEEDED", name
            assert latest.evaluation is not None and earlier.evaluation is not None
            assert (latest.evaluation.description or "").startswith("not run in this run")
            assert earlier.evaluation.description in (latest.evaluation.description or "")
            assert _check_status(instance, defs, check_key) == {"SUCCEEDED": [day]}, name


def _sandbox_day(sandbox: Any, source: str) -> str:
    dates = sorted({r.date for r in sandbox.manifest.for_source(source)})
    return dt.datetime.strptime(dates[0], "%Y%m%d").date().isoformat()


def test_day_with_more_studies_than_the_source_cap_is_archived_whole(sandbox, monkeypatch, tmp_path):
    # A MIM that cuts every C-FIND answer at 3 matches and still says Success, like a capped PACS, holding
    # a day of 7 studies (one without StudyTime); the source's max_find_results says so.
    cap, day = 3, dt.date(2026, 2, 2)
    times: list[str | None] = ["073000", "081500", "0945", "103000", "103015", "141000", None]
    studies = [
        make_study(tmp_path / "capped-data", study_date=f"{day:%Y%m%d}", study_time=t, modality=m)
        for t, m in zip(times, ["CT"] * 6 + ["RTPLAN"], strict=True)
    ]
    env = _env(sandbox, monkeypatch, lookback_days=0)
    mim = env.sources["MIM"]
    assert isinstance(mim, QRSource) and mim.transfer == "c-get"
    capped = MimSimulator(
        tmp_path / "capped-mim", mim.aet, free_port(), tmp_path / "capped-data", max_results=cap
    ).start()
    try:
        source = replace(mim, port=capped.port, max_find_results=cap, relational=False)  # hierarchical
        env = replace(env, sources={**env.sources, "MIM": source})
        with dg.instance_for_test() as instance:
            result = _run(_defs(env, tmp_path / "storage"), "MIM", day.isoformat(), instance)
        assert result.success, _failure(result)[0]
    finally:
        capped.stop()
    inventory = _metadata(result, "MIM", "inventory")
    assert inventory["studies"] == len(studies) and inventory["instances"] == len(studies)
    splits = inventory["find_splits"]
    assert f"{day:%Y%m%d}: {cap} matches = cap {cap}, split by StudyTime" in splits
    assert inventory["find_queries"] > 1
    meta = _metadata(result, "MIM")
    assert meta["instances_found"] == len(studies) and meta["failed"] == meta["deferred"] == 0
    assert all(sandbox.main.has_instance(s.sop_instance_uid) for s in studies)  # Orthanc REST
    assert "SANDBOX" not in repr(inventory)
