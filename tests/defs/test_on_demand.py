"""On-demand backup of given studies (`<source>_backup_studies`) against the real sandbox peers: dcmqrscp as
ARIA, the pynetdicom Q/R SCP as MIM, Orthanc as main.

Other tests store into ORTHANC_MAIN too: the tests delete exactly the instances they need missing first.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dicom_backup_dagster.backup.manifest import ALREADY_ARCHIVED, read_manifest
from dicom_backup_dagster.backup.on_demand import StudyListError, uid_problem, validate_study_uids
from dicom_backup_dagster.config import EnvironmentConfig, load_config
from dicom_backup_dagster.defs import build_definitions
from dicom_backup_dagster.defs.on_demand import build_on_demand_defs
from dicom_backup_dagster.defs.qr_backup import build_qr_backup_defs
from dicom_backup_dagster.defs.resources import BackupStorage, build_resources
from dicom_backup_dagster.sandbox.processes import free_port
from tests.defs.test_alerts import Sensors, _alert_defs, _notifications, channels  # noqa: F401 (fixture)

UNKNOWN_STUDY = "1.2.826.0.1.3680043.8.498.99999999999999999999"


def _env(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> EnvironmentConfig:
    for name, value in sandbox.env_vars().items():
        monkeypatch.setenv(name, value)
    env = load_config(sandbox.config_path, "SANDBOX").environment
    # The nightly run of the day alone: no look-back, no late scan (not what these tests are about).
    return replace(env, settings=replace(env.settings, lookback_days=0, late_series_days=0))


@pytest.fixture
def env(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> EnvironmentConfig:
    return _env(sandbox, monkeypatch)


@pytest.fixture
def defs(env: EnvironmentConfig, tmp_path: Path) -> dg.Definitions:
    return dg.Definitions.merge(
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(tmp_path)))),
        build_qr_backup_defs(env, retry_policy=None),
        build_on_demand_defs(env, retry_policy=None),
    )


def _studies(sandbox: Any, source: str) -> dict[str, list[Any]]:
    """Study Instance UID -> the sandbox's records of it."""
    out: dict[str, list[Any]] = defaultdict(list)
    for record in sandbox.manifest.for_source(source):
        out[record.study_instance_uid].append(record)
    return out


def _back_up(defs: dg.Definitions, alias: str, uids: list[str], instance: dg.DagsterInstance) -> Any:
    job = defs.resolve_job_def(f"{alias}_backup_studies")
    config = {"ops": {f"{alias}__on_demand": {"config": {"study_uids": uids}}}}
    return job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)


def _metadata(result: Any, key: dg.AssetKey) -> dict[str, Any]:
    events = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    assert events, f"no materialization of {key.to_user_string()}"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def _failure(result: Any) -> tuple[str, dict[str, Any]]:
    (event,) = [e for e in result.all_events if e.is_step_failure]
    data = event.step_failure_data.user_failure_data
    return data.description, {k: v.value for k, v in data.metadata.items()}


def test_on_demand_study_is_archived_verified_and_the_night_moves_none_of_it(sandbox, defs):
    studies = _studies(sandbox, "ARIA")
    study_uid, records = max(studies.items(), key=lambda item: len(item[1]))  # a planning CT study
    day = dt.datetime.strptime(records[0].date, "%Y%m%d").date().isoformat()
    uids = {r.sop_instance_uid for r in records}
    for uid in uids:  # not on main yet: the run has to carry every instance
        sandbox.main.delete_instance(uid)
    with dg.instance_for_test() as instance:
        result = _back_up(defs, "ARIA", [f"  {study_uid} ", study_uid], instance)  # blanks, repeated
        assert result.success, _failure(result)
        meta = _metadata(result, dg.AssetKey(["ARIA", "on_demand"]))
        assert list(meta)[:6] == ["studies", "series", "instances", "already_archived", "moved", "verified"]
        assert meta["studies"] == meta["studies_requested"] == 1 and meta["studies_unknown"] == 0
        assert meta["series"] == len({r.series_instance_uid for r in records})
        assert (
            meta["instances"] == meta["moved"] == meta["verified"] == meta["present_on_archive"] == len(uids)
        )
        assert meta["already_archived"] == meta["deferred"] == 0 and meta["mismatched_uids"] == []
        assert all(sandbox.main.has_instance(uid) for uid in uids)  # Orthanc REST, not our own C-FIND
        assert "SANDBOX^" not in repr(meta) and "SBX0" not in repr(meta)  # no PHI
        # The study's day partition of ARIA/archived notes what the on-demand run archived.
        (observed,) = [
            e.asset_observation_data.asset_observation
            for e in result.all_events
            if e.is_asset_observation and e.asset_key == dg.AssetKey(["ARIA", "archived"])
        ]
        assert observed.partition == day
        assert observed.metadata["on_demand_instances"].value == len(uids)

        nightly = defs.resolve_job_def("ARIA_backup").execute_in_process(
            partition_key=day, instance=instance, raise_on_error=False
        )
        assert nightly.success
        night = _metadata(nightly, dg.AssetKey(["ARIA", "archived"]))
        states = {e.sop_instance_uid: e.state for e in read_manifest(night["manifest"])}
        assert {states[u] for u in uids} == {ALREADY_ARCHIVED}  # moves 0 of them
        assert night["already_archived"] >= len(uids)
        checks = {e.check_name: e for e in nightly.get_asset_check_evaluations()}
        assert {"complete_in_archive", "content_verified"} <= set(checks)
        assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}


def test_unknown_study_is_named_with_what_to_do(sandbox, env, defs):
    known = next(iter(_studies(sandbox, "MIM")))  # MIM: the C-GET + C-STORE path
    with dg.instance_for_test() as instance:
        result = _back_up(defs, "MIM", [UNKNOWN_STUDY, known], instance)
        assert not result.success
        description, meta = _failure(result)
        assert f"unknown at {env.sources['MIM'].peer}" in description  # AE@host:port
        assert UNKNOWN_STUDY in description and "check the UID" in description
        # The known study was backed up and verified all the same.
        assert (
            meta["studies"] == 1
            and meta["studies_unknown"] == 1
            and meta["unknown_study_uids"] == [UNKNOWN_STUDY]
        )
        assert meta["verified"] == meta["instances"] > 0


@pytest.mark.parametrize(
    ("uids", "expected"),
    [
        ([], "study_uids is empty"),
        (["1.2.840.10008.1.2", "SBX0001"], "entry 2: letters or other characters"),
        (["1.2.03.4"], "leading zero"),
        (["1." + "1" * 70], "at most 64"),
    ],
)
def test_bad_study_list_is_rejected_before_any_dicom(sandbox, defs, uids, expected):
    with dg.instance_for_test() as instance:
        result = _back_up(defs, "ARIA", uids, instance)
        assert not result.success
        description, _ = _failure(result)
        assert description.startswith("ARIA on-demand backup: ") and expected in description
        assert not [u for u in uids if u and u in description]  # never quoted: it may be a PatientID
        assert not [e for e in result.all_events if e.event_type_value == "STEP_RETRY"]


def test_validate_study_uids():
    assert validate_study_uids([" 1.2.3 ", "1.2.3", "1.20.0.4"]) == ("1.2.3", "1.20.0.4")
    assert uid_problem("1.2.840.10008.5.1.4.1.1.481.5") is None
    for bad in ("", "1..2", ".1.2", "1.2.", "12", "1.2.3a", "01.2"):
        assert uid_problem(bad) is not None, bad
    with pytest.raises(StudyListError, match=r"2 of 3 entries"):
        validate_study_uids(["1.2.3", "x", "1.02"])


def test_code_location_has_a_backup_studies_job_per_qr_source(sandbox, monkeypatch):
    _env(sandbox, monkeypatch)
    defs = build_definitions(load_config(sandbox.config_path, "SANDBOX"))
    for alias in ("ARIA", "MIM"):
        job = defs.resolve_job_def(f"{alias}_backup_studies")
        assert job.partitions_def is None
        # Not one of the source's backup runs for the exporter (last success, last run failed).
        assert "dicom_backup/source" not in job.tags and job.tags["dicom_backup/kind"] == "on_demand_backup"
        on_demand = defs.resolve_assets_def(dg.AssetKey([alias, "on_demand"]))
        assert on_demand.op.pool == defs.resolve_assets_def(dg.AssetKey([alias, "archived"])).op.pool


def test_source_down_names_the_peer(sandbox, env, tmp_path):
    aria = env.sources["ARIA"]
    down = replace(env, sources={**env.sources, "ARIA": replace(aria, port=free_port())})
    defs = dg.Definitions.merge(
        dg.Definitions(resources=build_resources(down, storage=BackupStorage(base_dir=str(tmp_path)))),
        build_on_demand_defs(down, retry_policy=None),
    )
    with dg.instance_for_test() as instance:
        result = _back_up(defs, "ARIA", [UNKNOWN_STUDY], instance)
        assert not result.success
        description, meta = _failure(result)
        peer = str(down.sources["ARIA"].peer)
        assert description.startswith("ARIA backup, inventory (C-FIND) of partition on-demand (1 study)")
        assert peer in description and "connection refused" in description and meta["peer"] == peer


def test_failed_on_demand_run_pages_nobody(sandbox, env, defs, channels):  # noqa: F811 (the fixture)
    env = replace(env, notifications=_notifications(channels))
    with dg.instance_for_test() as instance:
        result = _back_up(defs, "ARIA", ["not-a-uid"], instance)
        assert not result.success
        channels.reset()
        Sensors(_alert_defs(env), env, instance).after(result)
        assert channels.pd() == [] and channels.slack() == [] and channels.mails() == []
