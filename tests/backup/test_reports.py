"""Downtime reports and reference completeness (backup/reports.py) on records shaped like the sandbox's."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_backup_dagster.backup.reports import (
    ON_TREATMENT_COLUMNS,
    missing_references,
    on_treatment,
    write_report,
)
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, patients

OPTIONS = SyntheticOptions(
    patients=6, ct_slices=2, fractions=5, cbct_slices=1, start_date=dt.date(2026, 11, 2)
)


def _item(**kw: object) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _records(last_day: dt.date) -> list[Dataset]:
    """One RT Beams Treatment Record per delivered beam per fraction up to `last_day` (as Mosaiq's night)."""
    out = []
    for p in patients(OPTIONS):
        beams = {b.number: b for b in p.beams}
        for d in p.deliveries:
            if d.start.date() > last_day:
                continue
            b = beams[d.beam_number]
            session = _item(CurrentFractionNumber=d.fraction, BeamName=b.name, DeliveredMeterset=b.meterset)
            out.append(
                _item(
                    Modality="RTRECORD", SOPInstanceUID=p.uid("rec", d.fraction, d.beam_number),
                    PatientID=p.patient_id, PatientName=p.patient_name,
                    TreatmentDate=d.start.strftime("%Y%m%d"),
                    NumberOfFractionsPlanned=OPTIONS.fractions,
                    ReferencedRTPlanSequence=[_item(ReferencedSOPInstanceUID=p.plan_uid)],
                    TreatmentMachineSequence=[_item(TreatmentMachineName=b.machine)],
                    TreatmentSessionBeamSequence=[session],
                )
            )  # fmt: skip
    return out


def test_on_treatment_lists_exactly_the_unfinished_courses() -> None:
    all_days = sorted({d for p in patients(OPTIONS) for d in p.treatment_dates})
    last_day = all_days[len(all_days) // 2]
    # independently: delivered fractions per patient from the delivery history
    expected = {}
    for p in patients(OPTIONS):
        done = [f for f, day in enumerate(p.treatment_dates, 1) if day <= last_day]
        if done and len(done) < OPTIONS.fractions:
            expected[p.patient_id] = (len(done), max(d for d in p.treatment_dates if d <= last_day))
    assert expected, "the chosen day must leave some courses unfinished"
    rows = on_treatment(_records(last_day), last_day, days=60, plan_labels={})
    assert {r.patient_id: (r.fractions_delivered, r.last_treatment_date) for r in rows} == expected
    assert all(r.fractions_planned == OPTIONS.fractions and r.meterset_by_beam for r in rows)
    # a course not treated in the last N days is not on treatment
    assert on_treatment(_records(last_day), last_day + dt.timedelta(days=100), days=14) == []


def test_report_files_are_private(tmp_path: Path) -> None:
    last_day = max(d for p in patients(OPTIONS) for d in p.treatment_dates) - dt.timedelta(days=1)
    rows = on_treatment(_records(last_day), last_day, days=14)
    directory = tmp_path / "reports"
    csv_path, html_path = write_report(directory, "on_treatment", "On treatment", ON_TREATMENT_COLUMNS,
                                       [r.row() for r in rows])  # fmt: skip
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in (csv_path, html_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert csv_path.read_text().count("\n") == len(rows) + 1
    assert all(r.patient_id in html_path.read_text() for r in rows)


def test_a_deleted_plan_is_found() -> None:
    records = _records(dt.date(2026, 12, 31))
    p = next(iter(patients(OPTIONS)))
    instances = {ds.SOPInstanceUID for ds in records} | {q.plan_uid for q in patients(OPTIONS)}
    assert missing_references(records, instances, set()) == []
    missing = missing_references(records, instances - {p.plan_uid}, set())
    assert {(m.kind, m.missing_uid) for m in missing} == {("RT Plan", p.plan_uid)}
    assert len(missing) == len([r for r in records if r.PatientID == p.patient_id])


def test_an_old_unfinished_course_is_not_on_treatment() -> None:
    all_days = sorted({d for p in patients(OPTIONS) for d in p.treatment_dates})
    # a day with two courses in progress
    last_day = next(d for d in all_days if len(on_treatment(_records(d), d, days=60)) >= 2)
    records = _records(last_day)
    unfinished = {r.patient_id for r in on_treatment(records, last_day, days=60)}
    stopped = sorted(unfinished)[0]  # its course stopped: its records are moved 30 days back
    for r in records:
        if r.PatientID == stopped:
            day = dt.datetime.strptime(r.TreatmentDate, "%Y%m%d").date() - dt.timedelta(days=30)
            r.TreatmentDate = day.strftime("%Y%m%d")
    listed = {r.patient_id for r in on_treatment(records, last_day, days=14)}
    assert listed == unfinished - {stopped}
