"""`<MOSAIQ>/on_treatment` after real Mosaiq nights: the Mosaiq backup job runs against its own synthetic
Mosaiq database (SQLite through ODBC) and the sandbox's staging and main Orthanc, then the report reads main.

The database is dated around today (the report reads the last `on_treatment_days` days). Its source has
its own alias, so its records' deterministic UIDs never meet the session's MOSAIQ records; they are
deleted from main and staging at the end (other tests read main's recent RT records too).
"""

from __future__ import annotations

import csv
import datetime as dt
import sqlite3
import stat
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dicom_backup_dagster.backup.manifest import read_manifest
from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.defs.reports import build_report_defs
from dicom_backup_dagster.defs.resources import BackupStorage, build_resources
from dicom_backup_dagster.defs.treatment_summary import SUMMARY_JOB, SUMMARY_OP, build_treatment_summary_defs
from dicom_backup_dagster.orthanc import OrthancClient
from dicom_backup_dagster.sandbox.mosaiq_db import create_mosaiq_db
from dicom_backup_dagster.sandbox.processes import free_port
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, SyntheticPatient, generate, patients
from tests.defs.test_mosaiq_backup import _defs, _env, _logs
from tests.mosaiq.test_connection import PG_DRIVER

ALIAS = "MOSAIQ_OT"  # its own source key: record UIDs are derived from it
DAYS = 14


def _options(last_night: dt.date) -> SyntheticOptions:
    """3 patients planned the same day, 2 fractions each, the first on `last_night`."""
    for back in range(5, 20):
        o = SyntheticOptions(
            patients=3,
            fractions=2,
            ct_slices=1,
            cbct_slices=0,
            beams=2,
            control_points=3,
            span_days=1,
            seed=4242,
            start_date=last_night - dt.timedelta(days=back),
        )
        if all(p.treatment_dates[0] == last_night for p in patients(o)):
            return o
    raise AssertionError(f"no synthetic start date puts a first fraction on {last_night}")


OLD = dt.timedelta(days=21)  # patient 1's course, three weeks back: outside the window


def _shape_history(db: Path, ps: list[SyntheticPatient]) -> None:
    """Three courses in one database (a clinic's realistic mix): patient 1 treated three weeks ago (its
    fractions moved back 21 days; only the first is backed up: unfinished on main, but outside the window);
    patient 2 a single-fraction course (Site.Fractions 1, its second delivery removed), finished last
    night; patient 3 at fraction 1 of 2 last night."""
    p1, p2 = (10000 + p.number for p in ps[:2])
    moved = {"Dose_Hst": ("Tx_DtTm", "Create_DtTm", "Edit_DtTm"), "Fld_Hst": ("Tx_DtTm",),
             "TrackTreatment": ("Create_DtTm", "Edit_DtTm")}  # fmt: skip
    with sqlite3.connect(db) as cn:
        for table, columns in moved.items():
            for c in columns:
                sql = f'UPDATE "{table}" SET "{c}" = strftime(?, "{c}", ?) WHERE "Pat_ID1" = ?'
                cn.execute(sql, ("%Y-%m-%d %H:%M:%f", f"-{OLD.days} days", p1))
        cn.execute('UPDATE "Site" SET "Fractions" = 1, "Dose_Ttl" = 200 WHERE "Pat_ID1" = ?', (p2,))
        cn.execute('DELETE FROM "Dose_Hst" WHERE "Pat_ID1" = ? AND "Fractions_Tx" > 1', (p2,))


def _nights(last_night: dt.date) -> list[dt.date]:
    """Patient 1's first fraction three weeks ago, and last night."""
    return [last_night - OLD, last_night]


def _expected(db: Path, nights: list[dt.date], since: dt.date) -> dict[str, tuple[int, dt.date]]:
    """Unfinished courses from the database's delivery history of the nights backed up (QA beam-ons have
    Fractions_Tx 0): PatientID -> (latest fraction, its date), when below Site.Fractions and recent."""
    latest: dict[str, tuple[dt.date, int, int]] = {}
    with sqlite3.connect(db) as cn:
        rows = cn.execute(
            'SELECT i."IDA", d."Tx_DtTm", d."Fractions_Tx", s."Fractions" FROM "Dose_Hst" d '
            'JOIN "Ident" i ON i."Pat_Id1" = d."Pat_ID1" JOIN "Site" s ON s."SIT_ID" = d."SIT_ID" '
            'WHERE d."Fractions_Tx" > 0'
        ).fetchall()
    for pid, when, fraction, planned in rows:
        day = dt.datetime.fromisoformat(str(when)).date()
        if day in nights:
            latest[pid] = max(latest.get(pid, (day, 0, planned)), (day, int(fraction), int(planned)))
    return {pid: (f, day) for pid, (day, f, planned) in latest.items() if f < planned and day >= since}


def _night_env(sandbox: Any, mp: pytest.MonkeyPatch, db: Path, first: dt.date) -> EnvironmentConfig:
    env = _env(sandbox, mp)
    (source,) = env.mosaiq_sources.values()
    own = replace(source, alias=ALIAS, db_database=str(db))
    settings = replace(env.settings, first_day=first, on_treatment_days=DAYS)
    return replace(env, sources={ALIAS: own}, settings=settings)


def _remove(client: OrthancClient, uids: list[str]) -> None:
    for uid in uids:
        oid = client.lookup_instance(uid)
        if oid is not None:
            client.delete_instance(oid)


@dataclass
class Nights:
    """Mosaiq nights backed up to the sandbox's main, shared by this module's tests."""

    env: EnvironmentConfig
    instance: dg.DagsterInstance
    storage: Path
    db: Path
    nights: list[dt.date]
    today: dt.date
    patients: list[SyntheticPatient]
    uploaded: list[str]  # SOP Instance UIDs a test stored on main itself (removed at the end)
    options: SyntheticOptions


@pytest.fixture(scope="module")
def nights(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nights]:
    tmp = tmp_path_factory.mktemp("on_treatment")
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        today = dt.datetime.now(_env(sandbox, mp).settings.tzinfo).date()
        last_night = today - dt.timedelta(days=1)
        while last_night.weekday() >= 5:  # the synthetic clinic treats on weekdays
            last_night -= dt.timedelta(days=1)
        options = _options(last_night)
        ps = list(patients(options))
        db = tmp / "mosaiq.sqlite"
        create_mosaiq_db(db, ps)
        _shape_history(db, ps)
        days = _nights(last_night)
        env = _night_env(sandbox, mp, db, days[0])
        storage = tmp / "storage"
        job = _defs(env, storage).resolve_job_def(f"{ALIAS}_backup")
        shared = Nights(env, instance, storage, db, days, today, ps, [], options)
        uids: list[str] = []
        try:
            for night in days:
                result = job.execute_in_process(
                    partition_key=night.isoformat(), instance=instance, raise_on_error=False
                )
                manifest = storage / "manifests" / ALIAS / night.isoformat() / "archived.jsonl"
                uids += [e.sop_instance_uid for e in read_manifest(manifest)] if manifest.exists() else []
                assert result.success, _logs(result)
            yield shared
        finally:  # leave main and staging as they were
            for target in (env.main_target, env.staging_target(ALIAS)):
                with OrthancClient(str(target.rest_url), target.rest_username, target.rest_password) as c:
                    _remove(c, uids + shared.uploaded)


def test_on_treatment_after_real_mosaiq_nights(nights: Nights) -> None:
    report = dg.materialize(
        list(build_report_defs(nights.env).assets or []),  # type: ignore[arg-type]
        instance=nights.instance,
        resources={"backup_storage": BackupStorage(base_dir=str(nights.storage))},
    )
    assert report.success, _logs(report)
    _check_report(
        report, nights.instance, nights.storage / "reports", nights.db, nights.nights, nights.today,
        nights.patients,
    )  # fmt: skip


def _check_report(report: Any, instance: dg.DagsterInstance, reports_dir: Path, db: Path,
                  nights: list[dt.date], today: dt.date, ps: list[SyntheticPatient]) -> None:  # fmt: skip
    expected = _expected(db, nights, today - dt.timedelta(days=DAYS))
    assert expected, "the chosen nights must leave a course unfinished"
    old = ps[0].patient_id  # unfinished, but its last fraction is outside the window
    assert old not in expected and ps[1].patient_id not in expected  # patient 2 finished
    assert stat.S_IMODE(reports_dir.stat().st_mode) == 0o700
    csv_path = reports_dir / "on_treatment.csv"
    assert stat.S_IMODE(csv_path.stat().st_mode) == 0o600
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    listed = {
        r["patient_id"]: (int(r["fractions_delivered"]), dt.date.fromisoformat(r["last_treatment_date"]))
        for r in rows
    }
    assert listed == expected
    assert all(
        int(r["fractions_planned"]) == 2 and r["machine"] and r["delivered_meterset_per_beam"] for r in rows
    )
    (event,) = report.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["courses"] == len(expected)
    recent = sum(len(p.beams) for p in ps[1:])  # patients 2 and 3, last night
    assert metadata["rt_records"] >= recent  # only the window's records are read (others' may be on main)
    # the plans are not on main: the reference check finds each referenced plan missing (WARN)
    (check,) = report.get_asset_check_evaluations()
    assert not check.passed and check.metadata["missing"].value >= len(expected)
    # canary: no patient ID or name anywhere in the run's events (logs, metadata, checks)
    events = " ".join(str(e) for e in instance.all_logs(report.run_id))
    for phi in ("SBX0", "SANDBOX", "MÜLLER", "ZOË", *(p.patient_id for p in ps)):
        assert phi not in events, phi


# --- treatment summary (the `treatment_summary` job) ---------------------------------------------------


def _summary_run(nights: Nights, env: EnvironmentConfig, patient_id: str) -> Any:
    defs = dg.Definitions.merge(
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(nights.storage)))),
        build_treatment_summary_defs(env),
    )
    run_config = {"ops": {SUMMARY_OP: {"config": {"patient_id": patient_id}}}}
    result = defs.resolve_job_def(SUMMARY_JOB).execute_in_process(
        run_config=run_config, instance=nights.instance, raise_on_error=False
    )
    assert result.success, _logs(result)
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in output.event_specific_data.metadata.items()}
    # canary: the PatientID is in the run config only: not in any event, tag or metadata value
    run = nights.instance.get_run_by_id(result.run_id)
    assert run is not None
    texts = [str(e) for e in nights.instance.all_logs(result.run_id)]
    texts += [f"{k}={v}" for k, v in run.tags.items()] + [str(v) for v in metadata.values()]
    assert not [t for t in texts if patient_id in t or "SANDBOX" in t]
    return metadata


def _rows(path: str) -> list[dict[str, str]]:
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(path).parent.stat().st_mode) == 0o700
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_treatment_summary_from_mosaiq(nights: Nights) -> None:
    p = nights.patients[0]  # QA beam-on before fraction 1; the last beam stopped by the operator at 60 %
    metadata = _summary_run(nights, nights.env, p.patient_id)
    assert metadata["answered_by"] == f"Mosaiq {ALIAS}" and metadata["mosaiq"] == "answered"
    assert metadata["courses"] == 1 and Path(metadata["html"]).exists()
    (row,) = _rows(metadata["csv"])
    # expected from the seeded history: 2 Gy per fraction shared by meterset; the stopped beam gave 60 %
    total_mu = sum(b.meterset for b in p.beams)
    last = p.beams[-1]
    delivered = 2.0 * len(p.treatment_dates) - 2.0 * 0.4 * last.meterset / total_mu
    assert row["patient_id"] == p.patient_id and row["site"] == p.site_name
    assert float(row["total_dose_gy"]) == pytest.approx(2.0 * len(p.treatment_dates))
    assert float(row["delivered_dose_gy"]) == pytest.approx(delivered, abs=1e-3)
    assert (row["fractions_delivered"], row["fractions_planned"]) == ("2", "2")
    assert row["first_treatment_date"] == (p.treatment_dates[0] - OLD).isoformat()
    assert row["last_treatment_date"] == (p.treatment_dates[-1] - OLD).isoformat()
    assert row["source"] == f"Mosaiq {ALIAS}"


def test_treatment_summary_from_the_archive_when_mosaiq_is_down(nights: Nights, tmp_path: Path) -> None:
    p = nights.patients[2]  # one fraction of two on main (last night)
    plan = next(r for r in generate(tmp_path / "data", nights.options) if r.modality == "RTPLAN"
                and r.patient == p.number)  # fmt: skip
    main = nights.env.main_target
    with OrthancClient(str(main.rest_url), main.rest_username, main.rest_password) as client:
        client.upload(plan.path.read_bytes())
    nights.uploaded.append(plan.sop_instance_uid)
    (source,) = nights.env.mosaiq_sources.values()
    dead = free_port()  # a PostgreSQL nobody listens on: a real "server unreachable"
    down = replace(source, odbc_driver=PG_DRIVER, db_server="127.0.0.1", db_port=dead, db_database="mosaiq",
                   db_username="ro")  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(source.db_password_env, "unused")
        metadata = _summary_run(nights, replace(nights.env, sources={ALIAS: down}), p.patient_id)
    assert metadata["answered_by"] == f"archive {main.alias}"
    assert metadata["mosaiq"].startswith("did not answer") and "unreachable" in metadata["mosaiq"]
    (row,) = _rows(metadata["csv"])
    assert row["patient_id"] == p.patient_id and row["course"] == p.plan_uid
    assert row["plan_label"] and row["site"].startswith(p.site_name)
    assert float(row["total_dose_gy"]) == pytest.approx(4.0, abs=1e-3)  # 2 Gy x 2 planned fractions
    assert float(row["delivered_dose_gy"]) == pytest.approx(2.0, abs=1e-3)  # one fraction delivered
    assert (row["fractions_delivered"], row["fractions_planned"]) == ("1", "2")
    assert row["first_treatment_date"] == row["last_treatment_date"] == p.treatment_dates[0].isoformat()
    assert row["source"] == f"archive {main.alias}"
    # with the plan on main, the reference chase goes on from it: the plan is found, its structure set not
    report = dg.materialize(
        list(build_report_defs(nights.env).assets or []),  # type: ignore[arg-type]
        instance=nights.instance,
        resources={"backup_storage": BackupStorage(base_dir=str(nights.storage))},
    )
    (check,) = report.get_asset_check_evaluations()
    missing = str(check.metadata["missing_uids"].value)
    assert f"RT Plan {p.plan_uid}" not in missing and f"RT Structure Set {p.struct_uid}" in missing


def test_the_documented_run_config_is_valid(nights: Nights) -> None:
    """The runbook's and README's Launchpad example is what the job accepts; a missing patient_id is not."""
    import yaml

    defs = dg.Definitions.merge(
        dg.Definitions(resources=build_resources(nights.env)), build_treatment_summary_defs(nights.env)
    )
    job = defs.resolve_job_def(SUMMARY_JOB)
    for doc in ("docs/runbooks/downtime.md", "README.md"):
        text = (Path(__file__).parents[2] / doc).read_text(encoding="utf-8")
        (block,) = [b.split("```")[0] for b in text.split("```yaml")[1:] if SUMMARY_OP in b.split("```")[0]]
        config = yaml.safe_load(textwrap.dedent(block))
        config["ops"][SUMMARY_OP]["config"]["source"] = ALIAS
        assert dg.validate_run_config(job, config)["ops"][SUMMARY_OP]["config"]["patient_id"], doc
    with pytest.raises(dg.DagsterInvalidConfigError, match="patient_id"):
        dg.validate_run_config(job, {"ops": {SUMMARY_OP: {"config": {"source": ALIAS}}}})
