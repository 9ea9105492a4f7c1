"""`<MOSAIQ>/on_treatment` against the sandbox's main Orthanc: report files, check, and no PHI in Dagster."""

from __future__ import annotations

import datetime as dt
import io
import stat
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_backup_dagster.config import load_config
from dicom_backup_dagster.defs.reports import build_report_defs
from dicom_backup_dagster.defs.resources import BackupStorage
from dicom_backup_dagster.orthanc import OrthancClient
from dicom_backup_dagster.sandbox.sandbox import Sandbox
from tests.backup.test_reports import OPTIONS, _records

RT_RECORD_SOP = "1.2.840.10008.5.1.4.1.1.481.4"


def _upload(client: OrthancClient, ds) -> str:  # type: ignore[no-untyped-def]
    ds.SOPClassUID = RT_RECORD_SOP
    ds.StudyInstanceUID = ds.SOPInstanceUID + ".1"
    ds.SeriesInstanceUID = ds.SOPInstanceUID + ".2"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_RECORD_SOP
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return client.upload(buf.getvalue())


def test_on_treatment_asset(sandbox: Sandbox, sandbox_env: dict[str, str], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    for k, v in sandbox_env.items():
        monkeypatch.setenv(k, v)
    env = load_config().environment
    main = env.main_target
    today = dt.datetime.now().date()
    # a course still going: records dated up to today (shifted so the last delivered day is today)
    records = _records(dt.date(2026, 11, 25))
    shift = today - max(dt.datetime.strptime(r.TreatmentDate, "%Y%m%d").date() for r in records)
    for r in records:
        r.TreatmentDate = (dt.datetime.strptime(r.TreatmentDate, "%Y%m%d").date() + shift).strftime("%Y%m%d")
    client = OrthancClient(str(main.rest_url), main.rest_username, main.rest_password)
    uploaded = [_upload(client, r) for r in records]
    try:
        _run_and_check(env, records, today, tmp_path)
    finally:  # other tests share main: leave it as it was
        for oid in uploaded:
            client.delete_instance(oid)
        client.close()


def _run_and_check(env, records, today: dt.date, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    defs = build_report_defs(env)
    instance = DagsterInstance.ephemeral()
    result = materialize(
        list(defs.assets or []),  # type: ignore[arg-type]
        instance=instance,
        resources={"backup_storage": BackupStorage(base_dir=str(tmp_path))},
    )
    assert result.success
    reports_dir = tmp_path / "reports"
    assert stat.S_IMODE(reports_dir.stat().st_mode) == 0o700
    csv_text = (reports_dir / "on_treatment.csv").read_text()
    assert stat.S_IMODE((reports_dir / "on_treatment.csv").stat().st_mode) == 0o600
    latest: dict[str, tuple[str, int]] = {}
    for r in records:
        fraction = int(r.TreatmentSessionBeamSequence[0].CurrentFractionNumber)
        latest[r.PatientID] = max(latest.get(r.PatientID, ("", 0)), (r.TreatmentDate, fraction))
    since = (today - dt.timedelta(days=env.settings.on_treatment_days)).strftime("%Y%m%d")
    on_course = {pid for pid, (day, f) in latest.items() if f < OPTIONS.fractions and day >= since}
    assert on_course and all(pid in csv_text for pid in on_course)
    assert csv_text.count("\n") == len(on_course) + 1
    # the plans are not on main: the reference check finds every one missing (WARN, not a failure)
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["missing"].value >= len({r.PatientID for r in records})
    # canary: no patient ID or name anywhere in the run's events (logs, metadata, checks)
    events = " ".join(str(e) for e in instance.all_logs(result.run_id))
    assert "SBX" not in events and "SANDBOX^" not in events
