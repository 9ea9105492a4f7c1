"""Mosaiq backup assets, checks, job and schedule against the real sandbox (Mosaiq SQLite DB, Orthanc staging
and main).

Other tests store into ORTHANC_MAIN too: assertions are about the partition's own records (looked up by
SOP Instance UID over Orthanc REST) and about the instance count across a re-run, never about an empty
archive. Fault cases use their own copy of the Mosaiq database or a staging port nobody listens on, so the
session's sandbox is never changed.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dicom_backup_dagster.backup.baseline import BaselineRules
from dicom_backup_dagster.backup.manifest import read_manifest
from dicom_backup_dagster.config import EnvironmentConfig, MosaiqSource, load_config
from dicom_backup_dagster.defs import build_definitions
from dicom_backup_dagster.defs.mosaiq_backup import build_mosaiq_backup_defs
from dicom_backup_dagster.defs.resources import BackupStorage, build_resources, mosaiq_resource_key
from dicom_backup_dagster.defs.staging_cleanup import build_staging_cleanup_defs
from dicom_backup_dagster.sandbox.processes import free_port
from dicom_backup_dagster.sandbox.synthetic import patients
from tests.conftest import SANDBOX_TEST_DATA
from tests.mosaiq.test_connection import PG_DRIVER, private_postgres

ALIAS = "MOSAIQ"
ASSETS = ("deliveries", "rt_records", "staged", "archived")
PATIENTS = list(patients(SANDBOX_TEST_DATA))
P1 = PATIENTS[0]  # QA-mode beam-on before fraction 1, operator-terminated last beam
DAY = P1.treatment_dates[0]
#: PHI that must never appear in metadata or logs.
PHI = ["SANDBOX", "PATIENT000", "MÜLLER", "ZOË", "O'S", *(p.patient_id for p in PATIENTS)]


def _expected_deliveries(day: dt.date) -> int:
    return sum(len(p.beams) for p in PATIENTS if day in p.treatment_dates)


def _env(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> EnvironmentConfig:
    for name, value in sandbox.env_vars().items():
        monkeypatch.setenv(name, value)
    return load_config(sandbox.config_path, "SANDBOX").environment


def _defs(
    env: EnvironmentConfig,
    storage_dir: Path,
    retry: dg.RetryPolicy | None = None,
    rules: BaselineRules | None = None,
) -> dg.Definitions:
    extra = {"rules": rules} if rules is not None else {}
    return dg.Definitions.merge(
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(storage_dir)))),
        build_mosaiq_backup_defs(env, retry_policy=retry, **extra),
    )


def _run(defs: dg.Definitions, day: dt.date, instance: dg.DagsterInstance) -> Any:
    job = defs.resolve_job_def(f"{ALIAS}_backup")
    return job.execute_in_process(partition_key=day.isoformat(), instance=instance, raise_on_error=False)


def _metadata(result: Any, name: str) -> dict[str, Any]:
    key = dg.AssetKey([ALIAS, name])
    events = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    assert events, f"no materialization of {key.to_user_string()}"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def _checks(result: Any) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _logs(result: Any) -> str:
    return "\n".join(str(e.message) for e in result.all_events)


def _assert_no_phi(*texts: str) -> None:
    for text in texts:
        for phi in PHI:
            assert phi not in text, phi


def test_definitions_have_assets_checks_job_schedule(sandbox, monkeypatch):
    env = _env(sandbox, monkeypatch)
    defs = build_definitions(load_config(sandbox.config_path, "SANDBOX"))  # what the code location serves
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def(f"{ALIAS}_backup")
    assert job.partitions_def is not None
    assert job.partitions_def.timezone == env.settings.timezone
    assert job.partitions_def.get_first_partition_key() == env.settings.first_day.isoformat()
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.path[-1], k.name) for k in graph.asset_check_keys if k.asset_key.path[0] == ALIAS}
    assert checks == {
        ("rt_records", "conformance"),
        ("archived", "complete_in_archive"),
        ("archived", "content_verified"),
        ("archived", "volume_vs_baseline"),
        ("archived", "duration_vs_baseline"),
        ("on_treatment", "reference_complete"),  # the downtime report's, on the archive alone
    }
    pool = f"dicom_{env.staging_target(ALIAS).aet}"
    for name in ASSETS:
        asset = defs.resolve_assets_def(dg.AssetKey([ALIAS, name]))
        assert asset.backfill_policy == dg.BackfillPolicy.multi_run(1)
        policy = asset.op.retry_policy
        assert policy is not None and policy.backoff == dg.Backoff.EXPONENTIAL
        if name in ("staged", "archived"):
            assert asset.op.pool == pool
    # Typed resources (the database's parameter is named after its key), manifests through deps and
    # handle files on disk: no IO manager is needed.
    needs = {  # every asset lists Dagster's default io_manager, which a MaterializeResult never calls
        name: defs.resolve_assets_def(dg.AssetKey([ALIAS, name])).required_resource_keys - {"io_manager"}
        for name in ASSETS
    }
    # deliveries asks main which unchanged records it still holds (not stored or moved again)
    assert needs["deliveries"] == {mosaiq_resource_key(ALIAS), "dicom", "backup_storage"}
    assert needs["rt_records"] == {mosaiq_resource_key(ALIAS), "backup_storage"}
    assert needs["staged"] == needs["archived"] == {"dicom", "backup_storage"}
    rt_records = defs.resolve_assets_def(dg.AssetKey([ALIAS, "rt_records"]))
    assert rt_records.asset_deps[rt_records.key] == {dg.AssetKey([ALIAS, "deliveries"])}
    schedule = defs.resolve_schedule_def(f"{ALIAS}_backup_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.execution_timezone == env.settings.timezone
    tick = dt.datetime(2026, 1, 13, 1, 30, tzinfo=env.settings.tzinfo)
    context = dg.build_schedule_context(
        scheduled_execution_time=tick, repository_def=defs.get_repository_def()
    )
    assert [r.partition_key for r in schedule.evaluate_tick(context).run_requests] == ["2026-01-12"]


def test_treatment_day_becomes_verified_records_on_main_and_rerun_adds_nothing(
    sandbox, monkeypatch, tmp_path
):
    env = _env(sandbox, monkeypatch)
    defs = _defs(env, tmp_path)
    expected = _expected_deliveries(DAY)
    with dg.instance_for_test() as instance:
        started = time.monotonic()
        result = _run(defs, DAY, instance)
        seconds = time.monotonic() - started
        assert result.success, _logs(result)
        deliveries = _metadata(result, "deliveries")
        assert deliveries["deliveries"] == expected > 0  # the QA-mode beam-on is not a delivery
        assert deliveries["quarantined"] == 0 and deliveries["skipped"] == 0
        records = _metadata(result, "rt_records")
        assert records["records"] == expected and records["quarantined"] == 0
        assert _metadata(result, "staged")["stored"] == expected
        archived = _metadata(result, "archived")
        assert archived["sub_operations_completed"] == expected and archived["failed"] == 0
        # the archived metadata contract monitoring reads
        assert archived["records"] == archived["moved"] == expected
        assert archived["deferred"] == 0 and archived["already_archived"] == 0
        assert archived["bytes"] == records["bytes"] > 0
        assert archived["seconds_total"] >= archived["seconds_move"] > 0
        checks = _checks(result)
        assert set(checks) == {
            "conformance",
            "complete_in_archive",
            "content_verified",
            "volume_vs_baseline",
            "duration_vs_baseline",
        }
        assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}
        assert all(c.partition == DAY.isoformat() for c in result.get_asset_check_evaluations())
        assert checks["conformance"].metadata["checked"].value == expected
        assert checks["content_verified"].metadata["matched"].value == expected
        # Verified on main: the spooled records (they carry the synthetic patients' names) are gone.
        spool = Path(records["spool"])
        assert spool.parent.name == "rt_records" and not spool.exists()
        manifest = next(
            Path(v) for k, v in archived.items() if k == "manifest"
        )  # the archived manifest: every record with its digest
        entries = list(read_manifest(manifest))
        assert len(entries) == expected and all(e.digest for e in entries)
        for entry in entries:  # Orthanc REST, not our own C-FIND
            assert sandbox.main.has_instance(entry.sop_instance_uid)
        print(
            f"\nMOSAIQ {DAY}: {expected} records end to end in {seconds:.2f} s ({expected / seconds:.1f}/s)"
        )
        _assert_no_phi(_logs(result), *(str(m) for n in ASSETS for m in _metadata(result, n).values()))

        before = sandbox.main.count_instances()
        again = _run(defs, DAY, instance)
        assert again.success, _logs(again)
        assert sandbox.main.count_instances() == before
        assert [e.sop_instance_uid for e in read_manifest(manifest)] == [e.sop_instance_uid for e in entries]
        _assert_reused(again, expected, expected)
        verified = manifest.with_name("verified.jsonl")
        assert {e.sop_instance_uid for e in read_manifest(verified)} == {e.sop_instance_uid for e in entries}

        # A record deleted from main between runs goes through the chain again, and only it.
        gone = entries[len(entries) // 2].sop_instance_uid
        assert sandbox.main.delete_instance(gone)
        third = _run(defs, DAY, instance)
        assert third.success, _logs(third)
        _assert_reused(third, expected, expected - 1)
        assert sandbox.main.has_instance(gone) and sandbox.main.count_instances() == before
        assert [e.sop_instance_uid for e in read_manifest(manifest) if e.state == "moved"] == [gone]
        assert {e.sop_instance_uid for e in read_manifest(verified)} == {e.sop_instance_uid for e in entries}
        assert not spool.exists()


def _assert_reused(result: Any, records: int, reused: int) -> None:
    """A re-run: `reused` of `records` records skipped store, move and C-GET; every check still passed."""
    assert _metadata(result, "deliveries")["reusable"] == reused
    assert _metadata(result, "rt_records")["already_archived"] == reused
    assert _metadata(result, "rt_records")["records"] == records
    assert _metadata(result, "staged")["stored"] == records - reused
    archived = _metadata(result, "archived")
    assert archived["records"] == records and archived["already_archived"] == reused
    assert archived["moved"] == archived["sub_operations_completed"] == records - reused
    checks = _checks(result)
    assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}
    assert checks["conformance"].metadata["checked"].value == records - reused
    verified = checks["content_verified"].metadata
    assert verified["sampled"].value == verified["matched"].value == records - reused
    assert verified["verified_earlier"].value == reused


def test_staging_down_fails_naming_the_staging_ae_and_what_to_do(sandbox, monkeypatch, tmp_path):
    env = _env(sandbox, monkeypatch)
    stage = env.staging_target(ALIAS)
    dead = replace(stage, port=free_port())
    env = replace(env, backup_targets={**env.backup_targets, stage.alias: dead})
    with dg.instance_for_test() as instance:
        result = _run(_defs(env, tmp_path), DAY, instance)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["MOSAIQ__staged"]
    text = failures[0].event_specific_data.error.message
    assert stage.aet in text and f"127.0.0.1:{dead.port}" in text
    assert "check that the peer is running" in text
    assert _metadata(result, "rt_records")["records"] == _expected_deliveries(DAY)


def test_a_quarantined_row_does_not_stop_the_others(sandbox, monkeypatch, tmp_path):
    env = _env(sandbox, monkeypatch)
    db = tmp_path / "mosaiq.sqlite"
    shutil.copyfile(sandbox.mosaiq_path, db)
    start = dt.datetime.combine(DAY, dt.time()).isoformat(sep=" ")
    end = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time()).isoformat(sep=" ")
    with sqlite3.connect(db) as cn:
        ids = [
            r[0]
            for r in cn.execute(
                "SELECT DHS_ID FROM Dose_Hst WHERE Tx_DtTm >= ? AND Tx_DtTm < ? AND Fractions_Tx > 0 "
                "ORDER BY DHS_ID",
                (start, end),
            )
        ]
        assert len(ids) == _expected_deliveries(DAY), ids
        cn.execute("UPDATE Dose_Hst SET Modality_Enum = 99 WHERE DHS_ID = ?", (ids[0],))
    source = env.mosaiq_sources[ALIAS]
    env = replace(env, sources={**env.sources, ALIAS: replace(source, db_database=str(db))})
    assert isinstance(env.sources[ALIAS], MosaiqSource)
    with dg.instance_for_test() as instance:
        result = _run(_defs(env, tmp_path / "storage"), DAY, instance)
    assert result.success, _logs(result)
    records = _metadata(result, "rt_records")
    assert records["quarantined"] == 1 and records["records"] == len(ids) - 1
    reasons = records["quarantined_reasons"]
    assert list(reasons) == [str(ids[0])] and "Modality_Enum 99" in reasons[str(ids[0])]
    assert _metadata(result, "archived")["sub_operations_completed"] == len(ids) - 1
    assert all(c.passed for c in _checks(result).values())
    _assert_no_phi(_logs(result), *reasons.values())


def test_a_mosaiq_without_a_required_column_fails_with_the_probe_list_not_an_sql_error(
    sandbox, monkeypatch, tmp_path
):
    env = _env(sandbox, monkeypatch)
    db = tmp_path / "mosaiq.sqlite"
    shutil.copyfile(sandbox.mosaiq_path, db)
    with sqlite3.connect(db) as cn:
        cn.execute('ALTER TABLE "TxField" DROP COLUMN "OriginalPlanUID"')
        cn.execute('ALTER TABLE "Ident" DROP COLUMN "IDA"')
    source = env.mosaiq_sources[ALIAS]
    env = replace(env, sources={**env.sources, ALIAS: replace(source, db_database=str(db))})
    with dg.instance_for_test() as instance:
        text = _deliveries_failure(_run(_defs(env, tmp_path / "storage"), DAY, instance))
    assert f"MOSAIQ backup, reading deliveries of partition {DAY.isoformat()}" in text
    assert "the Mosaiq database is not ready for the backup queries" in text
    assert "column Ident.IDA is missing (needed for PatientID (the MRN))" in text
    assert "column TxField.OriginalPlanUID is missing" in text
    assert "python -m dicom_backup_dagster.mosaiq_probe" in text and "no such column" not in text


def test_main_down_between_staging_and_move_then_next_run_completes(sandbox, monkeypatch, tmp_path):
    env = _env(sandbox, monkeypatch)
    day = P1.treatment_dates[-1]  # with the operator-terminated beam
    defs = _defs(env, tmp_path)
    eager = replace(env, settings=replace(env.settings, staging_retention_days=0))
    cleanup = dg.Definitions.merge(
        dg.Definitions(resources=build_resources(eager, storage=BackupStorage(base_dir=str(tmp_path)))),
        build_staging_cleanup_defs(eager),
    ).resolve_job_def("staging_cleanup")
    with dg.instance_for_test() as instance:
        with sandbox.peer_stopped("ORTHANC_MAIN"):
            down = _run(defs, day, instance)
            # the cleanup job, even with no retention, deletes nothing of an unverified partition
            swept = cleanup.execute_in_process(instance=instance, raise_on_error=False)
            assert swept.success, _logs(swept)
            (output,) = [e for e in swept.all_events if e.event_type_value == "STEP_OUTPUT"]
            assert output.event_specific_data.metadata["deleted"].value == 0
        assert not down.success
        failures = [e for e in down.all_events if e.event_type_value == "STEP_FAILURE"]
        assert [e.step_key for e in failures] == ["MOSAIQ__archived"]
        assert env.main_target.aet in failures[0].event_specific_data.error.message
        # Staging answers 0xC000 without counts; the hint names the unreachable destination, not the
        # hierarchical-SCP guess.
        said = failures[0].event_specific_data.error.message
        main = env.main_target.peer
        assert f"the move destination {main} cannot be reached (connection refused" in said
        assert "0xC000" in said and "hierarchical" not in said
        staged = _metadata(down, "staged")["stored"]
        assert staged == _expected_deliveries(day)
        staged_manifest = tmp_path / "manifests" / ALIAS / day.isoformat() / "staged.jsonl"
        uids = [e.sop_instance_uid for e in read_manifest(staged_manifest)]
        assert all(sandbox.stage.has_instance(u) for u in uids)  # nothing deleted from staging
        again = _run(defs, day, instance)
        assert again.success, _logs(again)
        assert _metadata(again, "archived")["sub_operations_completed"] == staged
        assert all(c.passed for c in _checks(again).values())
        assert all(sandbox.main.has_instance(u) for u in uids)

        # Main down again for a verified day: archived fails, its checks do not run and the day keeps
        # its passed results (restated, saying so); conformance on rt_records runs as usual.
        with sandbox.peer_stopped("ORTHANC_MAIN"):
            failed = _run(defs, day, instance)
        assert not failed.success
        assert set(_checks(failed)) == {"conformance"}
        archived = dg.AssetKey([ALIAS, "archived"])
        for name in ("complete_in_archive", "content_verified", "volume_vs_baseline", "duration_vs_baseline"):
            records = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(archived, name), limit=5
            )
            assert records[0].run_id == failed.run_id and records[0].status.value == "SUCCEEDED", name
            assert records[0].partition == day.isoformat()
            assert records[0].evaluation is not None
            assert (records[0].evaluation.description or "").startswith("not run in this run")


def test_a_day_without_treatments_succeeds_with_nothing_to_do(sandbox, monkeypatch, tmp_path):
    env = _env(sandbox, monkeypatch)
    day = dt.date(2025, 12, 25)  # before every synthetic treatment date
    with dg.instance_for_test() as instance:
        result = _run(_defs(env, tmp_path), day, instance)
    assert result.success, _logs(result)
    assert _metadata(result, "deliveries")["deliveries"] == 0
    assert _metadata(result, "staged")["stored"] == 0
    assert _metadata(result, "archived")["sub_operations_completed"] == 0
    checks = _checks(result)
    assert all(c.passed for c in checks.values())
    for name in ("conformance", "complete_in_archive", "content_verified"):
        assert checks[name].description == f"no records dated {day}: nothing to verify"
        assert checks[name].partition == day.isoformat()


def _history(instance: dg.DagsterInstance, day: dt.date, records: int, seconds: float) -> None:
    """Three earlier partitions of MOSAIQ/archived, as if backed up before (runless materializations)."""
    for back in (1, 2, 3):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=dg.AssetKey([ALIAS, "archived"]),
                partition=(day - dt.timedelta(days=back)).isoformat(),
                metadata={"records": records, "seconds_total": seconds},
            )
        )


def test_volume_and_duration_baselines_warn_against_earlier_days(sandbox, monkeypatch, tmp_path):
    env = _env(sandbox, monkeypatch)
    rules = BaselineRules(volume_floor_instances=1, duration_floor_seconds=0.0)  # sandbox days are small
    defs = _defs(env, tmp_path, rules=rules)
    expected = _expected_deliveries(DAY)
    with dg.instance_for_test() as instance:
        _history(instance, DAY, records=3 * expected, seconds=0.001)  # a busier, much faster past
        result = _run(defs, DAY, instance)
        assert result.success, _logs(result)  # WARN checks never fail the run
        checks = _checks(result)
        volume, duration = checks["volume_vs_baseline"], checks["duration_vs_baseline"]
        for check in (volume, duration):
            assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN, check.description
        assert volume.metadata["current"].value == expected
        assert volume.metadata["baseline_median"].value == 3 * expected
        seconds_total = _metadata(result, "archived")["seconds_total"]
        assert duration.metadata["current"].value == seconds_total > 0.002
        assert all(checks[n].passed for n in ("conformance", "complete_in_archive", "content_verified"))
    with dg.instance_for_test() as instance:
        _history(instance, DAY, records=expected, seconds=3600.0)  # the usual day, a slow past
        result = _run(defs, DAY, instance)
        checks = _checks(result)
        assert checks["volume_vs_baseline"].passed, checks["volume_vs_baseline"].description
        assert checks["duration_vs_baseline"].passed, checks["duration_vs_baseline"].description
        assert checks["volume_vs_baseline"].metadata["history"].value == [expected] * 3


def _deliveries_failure(result: Any) -> str:
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["MOSAIQ__deliveries"]
    error = failures[0].event_specific_data.error
    retried = [  # Dagster wraps a retried Failure: its text is the cause's
        e.event_specific_data.error.cause
        for e in result.all_events
        if e.event_type_value == "STEP_UP_FOR_RETRY" and e.event_specific_data.error.cause is not None
    ]
    return error.message + "".join(str(e.message) for e in result.all_events + retried)


def test_database_unreachable_or_wrong_password_fails_naming_the_source_never_the_secret(
    sandbox, monkeypatch, tmp_path
):
    """The sandbox's Mosaiq is SQLite (no login): a private PostgreSQL with scram-sha-256 gives a real
    authentication failure through psqlODBC, and a free port a real unreachable server."""
    env = _env(sandbox, monkeypatch)
    source = env.mosaiq_sources[ALIAS]
    wrong = "Wr0ng;pass}word-7"
    monkeypatch.setenv(source.db_password_env, wrong)  # what the resource's EnvVar reads in the run

    def run_against(port: int) -> str:
        pg = replace(
            source,
            odbc_driver=PG_DRIVER,
            db_server="127.0.0.1",
            db_port=port,
            db_database="postgres",
            db_username="pg",
        )
        broken = replace(env, sources={**env.sources, ALIAS: pg})
        with dg.instance_for_test() as instance:
            # One immediate retry: a transient failure is retried, and its last attempt still says why.
            retry = dg.RetryPolicy(max_retries=1)
            return _deliveries_failure(_run(_defs(broken, tmp_path, retry), DAY, instance))

    with private_postgres() as (port, _good):
        text = run_against(port)
    assert f"MOSAIQ backup, reading deliveries of partition {DAY.isoformat()}" in text
    assert f"postgres on 127.0.0.1:{port} for source MOSAIQ as user pg: login failed" in text
    assert f"(password from ${source.db_password_env})" in text and "(not retried)" in text
    assert wrong not in text and "pass}word" not in text

    dead = free_port()
    text = run_against(dead)
    assert f"127.0.0.1:{dead} for source MOSAIQ" in text and "the database server is unreachable" in text
    assert "(transient, attempt 1 of 2: will be retried)" in text and wrong not in text
    assert "(attempt 2 of 2: failed after every retry)" in text and "Exceeded max_retries" not in text


def test_record_missing_on_staging_fails_alone_not_its_whole_move_request(sandbox, monkeypatch, tmp_path):
    # C-MOVEs from the Orthanc staging name up to 200 records each; a record that vanished from staging
    # after `staged` makes its request come back short without a Failed SOP Instance UID List. Main is
    # asked which of that request's records arrived: exactly the vanished one is FAILED.
    env = _env(sandbox, monkeypatch)
    day = P1.treatment_dates[1]
    defs = _defs(env, tmp_path)
    job = defs.resolve_job_def(f"{ALIAS}_backup")
    key = day.isoformat()
    with dg.instance_for_test() as instance:
        first = [dg.AssetKey([ALIAS, name]) for name in ("deliveries", "rt_records", "staged")]
        staged = job.execute_in_process(partition_key=key, instance=instance, asset_selection=first)
        assert staged.success
        manifest = tmp_path / "manifests" / ALIAS / key / "staged.jsonl"
        uids = [e.sop_instance_uid for e in read_manifest(manifest)]
        assert len(uids) >= 2
        vanished = uids[len(uids) // 2]
        assert sandbox.stage.delete_instance(vanished)
        moved = job.execute_in_process(
            partition_key=key,
            instance=instance,
            asset_selection=[dg.AssetKey([ALIAS, "archived"])],
            raise_on_error=False,
        )
        assert not moved.success
        (failure,) = [e for e in moved.all_events if e.event_type_value == "STEP_FAILURE"]
        assert f"(1 of {len(uids)} records not moved)" in failure.event_specific_data.error.message
        archived = {e.sop_instance_uid: e.state for e in read_manifest(manifest.with_name("archived.jsonl"))}
        assert [uid for uid, state in archived.items() if state != "moved"] == [vanished]
        assert all(sandbox.main.has_instance(u) for u in uids if u != vanished)
        # The next full run stores it to staging again and completes the day (and restores the sandbox).
        again = _run(defs, day, instance)
        assert again.success, _logs(again)
        assert sandbox.main.has_instance(vanished) and sandbox.stage.has_instance(vanished)
