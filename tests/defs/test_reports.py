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
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dicom_backup_dagster.backup.manifest import read_manifest
from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.defs.reports import build_report_defs
from dicom_backup_dagster.defs.resources import BackupStorage
from dicom_backup_dagster.orthanc import OrthancClient
from dicom_backup_dagster.sandbox.mosaiq_db import create_mosaiq_db
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, SyntheticPatient, patients
from tests.defs.test_mosaiq_backup import _defs, _env, _logs

ALIAS = "MOSAIQ_OT"  # its own source key: record UIDs are derived from it
DAYS = 14


def _options(last_night: dt.date) -> SyntheticOptions:
    """3 patients 10 days apart, 2 fractions each, such that the third starts on `last_night`."""
    for back in range(20, 60):
        o = SyntheticOptions(patients=3, fractions=2, ct_slices=1, cbct_slices=0, beams=2, control_points=3,
                             span_days=30, seed=4242, start_date=last_night - dt.timedelta(days=back))  # fmt: skip
        p1, p2, p3 = patients(o)
        if p3.treatment_dates[0] == last_night and p1.treatment_dates[0] < last_night - dt.timedelta(DAYS):
            assert p2.treatment_dates[-1] <= last_night
            return o
    raise AssertionError(f"no synthetic start date puts a first fraction on {last_night}")


def _nights(ps: list[SyntheticPatient], last_night: dt.date) -> list[dt.date]:
    """Patient 1: only its first fraction (a course stopped long ago); the others up to last night."""
    days = {ps[0].treatment_dates[0]} | {d for p in ps[1:] for d in p.treatment_dates if d <= last_night}
    return sorted(days)


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


def _night_env(sandbox: Any, monkeypatch: pytest.MonkeyPatch, db: Path, first: dt.date) -> EnvironmentConfig:
    env = _env(sandbox, monkeypatch)
    (source,) = env.mosaiq_sources.values()
    own = replace(source, alias=ALIAS, db_database=str(db))
    settings = replace(env.settings, first_day=first, on_treatment_days=DAYS)
    return replace(env, sources={ALIAS: own}, settings=settings)


def _remove(client: OrthancClient, uids: list[str]) -> None:
    for uid in uids:
        oid = client.lookup_instance(uid)
        if oid is not None:
            client.delete_instance(oid)


def test_on_treatment_after_real_mosaiq_nights(sandbox, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env0 = _env(sandbox, monkeypatch)
    today = dt.datetime.now(env0.settings.tzinfo).date()
    last_night = today - dt.timedelta(days=1)
    while last_night.weekday() >= 5:  # the synthetic clinic treats on weekdays
        last_night -= dt.timedelta(days=1)
    options = _options(last_night)
    ps = list(patients(options))
    db = tmp_path / "mosaiq.sqlite"
    create_mosaiq_db(db, ps)
    nights = _nights(ps, last_night)
    env = _night_env(sandbox, monkeypatch, db, nights[0])
    storage = tmp_path / "storage"
    defs = _defs(env, storage)
    job = defs.resolve_job_def(f"{ALIAS}_backup")
    uids: list[str] = []
    with dg.instance_for_test() as instance:
        try:
            for night in nights:
                result = job.execute_in_process(partition_key=night.isoformat(), instance=instance,
                                                raise_on_error=False)  # fmt: skip
                manifest = storage / "manifests" / ALIAS / night.isoformat() / "archived.jsonl"
                uids += [e.sop_instance_uid for e in read_manifest(manifest)] if manifest.exists() else []
                assert result.success, _logs(result)
            report = dg.materialize(
                list(build_report_defs(env).assets or []),  # type: ignore[arg-type]
                instance=instance,
                resources={"backup_storage": BackupStorage(base_dir=str(storage))},
            )
            assert report.success, _logs(report)
            _check_report(report, instance, storage / "reports", db, nights, today, ps)
        finally:  # leave main and staging as they were
            for target in (env.main_target, env.staging_target(ALIAS)):
                with OrthancClient(str(target.rest_url), target.rest_username, target.rest_password) as c:
                    _remove(c, uids)


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
    listed = {r["patient_id"]: (int(r["fractions_delivered"]), dt.date.fromisoformat(r["last_treatment_date"]))
              for r in rows}  # fmt: skip
    assert listed == expected
    assert all(int(r["fractions_planned"]) == 2 and r["machine"] and r["delivered_meterset_per_beam"]
               for r in rows)  # fmt: skip
    (event,) = report.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["courses"] == len(expected)
    since = today - dt.timedelta(days=DAYS)
    recent = sum(len(p.beams) for p in ps for d in p.treatment_dates if d in nights and d >= since)
    assert metadata["rt_records"] >= recent  # only the window's records are read (others' may be on main)
    # the plans are not on main: the reference check finds each referenced plan missing (WARN)
    (check,) = report.get_asset_check_evaluations()
    assert not check.passed and check.metadata["missing"].value >= len(expected)
    # canary: no patient ID or name anywhere in the run's events (logs, metadata, checks)
    events = " ".join(str(e) for e in instance.all_logs(report.run_id))
    for phi in ("SBX0", "SANDBOX", "MÜLLER", "ZOË", *(p.patient_id for p in ps)):
        assert phi not in events, phi
