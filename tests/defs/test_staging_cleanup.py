"""The staging_cleanup job against the sandbox: Mosaiq backup of a day, then cleanup of the staging Orthanc.

Nothing is deleted before the retention or while main is down; after verification and the retention
(here 0 days) exactly the day's verified records leave staging and stay on main. Assertions are about this
test's own records (its storage folder holds the only verified manifests the job reads).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg

from dicom_backup_dagster.backup.manifest import read_manifest
from dicom_backup_dagster.backup.records import VERIFIED_MANIFEST
from dicom_backup_dagster.config import EnvironmentConfig, load_config
from dicom_backup_dagster.defs import build_definitions
from dicom_backup_dagster.defs.mosaiq_backup import build_mosaiq_backup_defs
from dicom_backup_dagster.defs.resources import (
    BackupStorage,
    OrthancRestApi,
    build_resources,
    rest_resource_key,
)
from dicom_backup_dagster.defs.staging_cleanup import JOB_NAME, build_staging_cleanup_defs
from tests.defs.test_mosaiq_backup import ALIAS, P1, _env, _logs

DAY = P1.treatment_dates[1]  # a day the Mosaiq backup tests do not use


def _retention(env: EnvironmentConfig, days: int) -> EnvironmentConfig:
    return replace(env, settings=replace(env.settings, staging_retention_days=days))


def _defs(env: EnvironmentConfig, storage_dir: Path) -> dg.Definitions:
    return dg.Definitions.merge(
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(storage_dir)))),
        build_mosaiq_backup_defs(env, retry_policy=None),
        build_staging_cleanup_defs(env),
    )


def _backup(defs: dg.Definitions, instance: dg.DagsterInstance) -> Any:
    result = defs.resolve_job_def(f"{ALIAS}_backup").execute_in_process(
        partition_key=DAY.isoformat(), instance=instance, raise_on_error=False
    )
    assert result.success, _logs(result)
    return result


def _cleanup(defs: dg.Definitions, instance: dg.DagsterInstance) -> Any:
    return defs.resolve_job_def(JOB_NAME).execute_in_process(instance=instance, raise_on_error=False)


def _cleanup_metadata(result: Any) -> dict[str, Any]:
    outputs = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert len(outputs) == 1, _logs(result)
    return {k: v.value for k, v in outputs[0].event_specific_data.metadata.items()}


def _day_uids(storage: Path) -> list[str]:
    path = storage / "manifests" / ALIAS / DAY.isoformat() / VERIFIED_MANIFEST
    assert path.exists(), "content_verified passed but wrote no verified manifest"
    return [e.sop_instance_uid for e in read_manifest(path)]


def test_job_schedule_pool_and_rest_password_from_env(sandbox, monkeypatch):
    env = _env(sandbox, monkeypatch)
    defs = build_definitions(load_config(sandbox.config_path, "SANDBOX"))
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def(JOB_NAME)
    (node,) = job.nodes
    stage = env.staging_target(ALIAS)
    assert node.definition.pool == f"dicom_{stage.aet}"
    schedule = defs.resolve_schedule_def(f"{JOB_NAME}_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.execution_timezone == env.settings.timezone
    resource = build_resources(env)[rest_resource_key(stage.alias)]
    assert isinstance(resource, OrthancRestApi)
    assert resource.url == stage.rest_url and resource.username == stage.rest_username
    assert stage.rest_password_env in repr(resource.password)  # an EnvVar, read in the run process
    no_rest = replace(
        env, backup_targets={**env.backup_targets, stage.alias: replace(stage, type="dicom_scp")}
    )
    assert not list(build_staging_cleanup_defs(no_rest).jobs or [])  # nothing can delete from it


def test_verified_records_leave_staging_only_after_the_retention(sandbox, monkeypatch, tmp_path):
    env = _env(sandbox, monkeypatch)
    with dg.instance_for_test() as instance:
        _backup(_defs(env, tmp_path), instance)
        uids = _day_uids(tmp_path)
        assert uids and all(sandbox.stage.has_instance(u) for u in uids)

        week = _cleanup(_defs(_retention(env, 7), tmp_path), instance)  # staged seconds ago: too young
        assert week.success, _logs(week)
        kept = _cleanup_metadata(week)
        assert kept["deleted"] == 0 and kept["kept_too_young"] == len(uids) == kept["verified_known"]
        assert kept["examined"] >= len(uids) and kept["studies_queried"] == 0
        assert all(sandbox.stage.has_instance(u) for u in uids)

        now = _cleanup(_defs(_retention(env, 0), tmp_path), instance)
        assert now.success, _logs(now)
        done = _cleanup_metadata(now)
        assert done["deleted"] == len(uids) and done["kept_changed"] == 0 and done["kept_too_young"] == 0
        assert not any(sandbox.stage.has_instance(u) for u in uids)
        assert all(sandbox.main.has_instance(u) for u in uids)

        again = _cleanup_metadata(_cleanup(_defs(_retention(env, 0), tmp_path), instance))
        assert again["deleted"] == 0


def test_nothing_is_deleted_while_main_is_down_or_a_record_is_not_on_main(sandbox, monkeypatch, tmp_path):
    env = _retention(_env(sandbox, monkeypatch), 0)
    defs = _defs(env, tmp_path)
    with dg.instance_for_test() as instance:
        _backup(defs, instance)
        uids = _day_uids(tmp_path)
        with sandbox.peer_stopped("ORTHANC_MAIN"):
            down = _cleanup(defs, instance)
        assert not down.success
        (failure,) = [e for e in down.all_events if e.event_type_value == "STEP_FAILURE"]
        text = failure.event_specific_data.error.message
        assert env.main_target.aet in text and "nothing was deleted" in text
        assert all(sandbox.stage.has_instance(u) for u in uids)

        # A record verified earlier that main no longer holds stays on staging (and is reported).
        gone = uids[0]
        assert sandbox.main.delete_instance(gone)
        try:
            result = _cleanup(defs, instance)
            assert result.success, _logs(result)
            meta = _cleanup_metadata(result)
            assert meta["missing_on_main_uids"] == [gone] and meta["deleted"] == len(uids) - 1
            assert sandbox.stage.has_instance(gone)
            assert not any(sandbox.stage.has_instance(u) for u in uids[1:])
        finally:
            _backup(defs, instance)  # puts `gone` back on main for the tests that follow
        assert sandbox.main.has_instance(gone)


def test_a_re_render_withdraws_the_verification_until_checks_pass_again(sandbox, monkeypatch, tmp_path):
    env = _retention(_env(sandbox, monkeypatch), 0)
    defs = _defs(env, tmp_path)
    verified = tmp_path / "manifests" / ALIAS / DAY.isoformat() / VERIFIED_MANIFEST
    with dg.instance_for_test() as instance:
        _backup(defs, instance)
        assert verified.exists()
        partial = defs.resolve_job_def(f"{ALIAS}_backup").execute_in_process(
            partition_key=DAY.isoformat(),
            instance=instance,
            asset_selection=[dg.AssetKey([ALIAS, "deliveries"]), dg.AssetKey([ALIAS, "rt_records"])],
        )
        assert partial.success
        assert not verified.exists()  # re-rendered, not yet verified again: the cleanup keeps everything
        meta = _cleanup_metadata(_cleanup(defs, instance))
        assert meta["verified_known"] == 0 and meta["deleted"] == 0
