"""Treatment summary of one patient (the original system's get_report): courses, sites, total and delivered
dose, fractions, first and last treatment dates; from Mosaiq when it answers, else from the main archive.

From Mosaiq: `mosaiq.summary` (one row per site; doses are Mosaiq's cGy, shown in Gy).
From the archive (Orthanc REST, the attributes in docs/decisions/downtime-reports.md): the patient's RT
Beams Treatment Records on main, grouped by referenced RT Plan; the plan, when main holds it, gives:
- site: DoseReferenceSequence > DoseReferenceDescription (RT Prescription, C.8.8.10), else RTPlanName;
- total dose: TargetPrescriptionDose of the target dose references, else the fraction group's
  BeamDose summed over its beams times NumberOfFractionsPlanned (RT Fraction Scheme, C.8.8.13);
- delivered dose: for every record's beam, BeamDose x delivered / planned meterset (a record's
  DeliveredPrimaryMeterset, the plan's BeamMeterset) summed: an estimate, as the records carry no dose.
No Dagster here; the caller writes the rows with `reports.write_report` (the reports directory only).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from pydicom.dataset import Dataset

from dicom_backup_dagster.backup.reports import RTRECORD, lookup, read_dataset
from dicom_backup_dagster.mosaiq.summary import SiteHistory
from dicom_backup_dagster.orthanc import OrthancClient

SUMMARY_COLUMNS = (
    "patient_name",
    "patient_id",
    "course",
    "site",
    "plan_label",
    "total_dose_gy",
    "delivered_dose_gy",
    "fractions_delivered",
    "fractions_planned",
    "first_treatment_date",
    "last_treatment_date",
    "source",
)


@dataclass(frozen=True)
class CourseSummary:
    """One course of the summary (patient data: the reports directory only)."""

    patient_name: str
    patient_id: str
    course: str
    site: str
    plan_label: str
    total_dose_gy: float | None
    delivered_dose_gy: float | None
    fractions_delivered: int
    fractions_planned: int | None
    first_date: dt.date
    last_date: dt.date
    source: str  # "Mosaiq <alias>" or "archive <alias>"

    def row(self) -> list[str]:
        def num(v: float | int | None) -> str:
            return "" if v is None else f"{v:g}"

        return [
            self.patient_name,
            self.patient_id,
            self.course,
            self.site,
            self.plan_label,
            num(self.total_dose_gy),
            num(self.delivered_dose_gy),
            str(self.fractions_delivered),
            num(self.fractions_planned),
            self.first_date.isoformat(),
            self.last_date.isoformat(),
            self.source,
        ]


def from_mosaiq(histories: Iterable[SiteHistory], source: str) -> list[CourseSummary]:
    def gy(cgy: Decimal | None) -> float | None:
        return None if cgy is None else round(float(cgy) / 100, 4)

    return [
        CourseSummary(
            h.patient_name,
            h.patient_id,
            h.course,
            h.site,
            "",
            gy(h.total_dose_cgy),
            gy(h.delivered_dose_cgy),
            h.fractions_delivered,
            h.fractions_planned,
            h.first_date,
            h.last_date,
            f"Mosaiq {source}",
        )
        for h in histories
    ]


def patient_records(client: OrthancClient, patient_id: str) -> Iterator[Dataset]:
    """The patient's RT records on main: a series-level find on PatientID and Modality (both indexed)."""
    body = {"Level": "Series", "Query": {"Modality": RTRECORD, "PatientID": patient_id}}
    for series_id in client.request("POST", "/tools/find", json=body).json():
        for oid in client.get_json(f"/series/{series_id}/instances"):
            ds = read_dataset(client, str(oid["ID"]))
            if ds is not None:
                yield ds


def _float(value: object) -> float | None:
    try:
        return float(str(value))
    except ValueError:
        return None


def _plan_doses(plan: Dataset) -> tuple[dict[str, tuple[float, float]], float | None, int | None, str]:
    """(beam number -> (BeamDose Gy, BeamMeterset)), total dose Gy, fractions planned, site of a plan."""
    beams: dict[str, tuple[float, float]] = {}
    planned: int | None = None
    per_fraction = 0.0
    for group in plan.get("FractionGroupSequence") or []:
        planned = int(group.NumberOfFractionsPlanned) if group.get("NumberOfFractionsPlanned") else planned
        for b in group.get("ReferencedBeamSequence") or []:
            dose, mu = _float(b.get("BeamDose", "")), _float(b.get("BeamMeterset", ""))
            if dose is not None and mu:
                beams[str(b.ReferencedBeamNumber)] = (dose, mu)
                per_fraction += dose
    targets = [r for r in plan.get("DoseReferenceSequence") or [] if r.get("DoseReferenceType") == "TARGET"]
    prescribed = [_float(r.get("TargetPrescriptionDose", "")) for r in targets]
    by_beams = per_fraction * planned if beams and planned else None
    total = next((p for p in prescribed if p), None) or by_beams
    site = next((str(r.DoseReferenceDescription) for r in targets if r.get("DoseReferenceDescription")), "")
    return beams, total, planned, site or str(plan.get("RTPlanName", ""))


def _course(plan_uid: str, records: list[Dataset], plan: Dataset | None, source: str) -> CourseSummary:
    days, fractions = [], []
    for r in records:
        day = dt.datetime.strptime(str(r.TreatmentDate), "%Y%m%d").date()
        days.append(day)
        fractions += [
            int(b.CurrentFractionNumber)
            for b in r.get("TreatmentSessionBeamSequence") or []
            if str(b.get("CurrentFractionNumber", "")).isdigit()
        ]
    planned_by_record = next(
        (
            int(r.NumberOfFractionsPlanned)
            for r in records
            if str(r.get("NumberOfFractionsPlanned", "")).isdigit()
        ),
        None,
    )
    beams: dict[str, tuple[float, float]] = {}
    total: float | None = None
    delivered: float | None = None
    planned, site = planned_by_record, ""
    if plan is not None:
        beams, total, planned_in_plan, site = _plan_doses(plan)
        planned = planned_in_plan or planned
        delivered = 0.0
        for r in records:
            for b in r.get("TreatmentSessionBeamSequence") or []:
                dose_mu = beams.get(str(b.get("ReferencedBeamNumber", "")))
                mu = _float(b.get("DeliveredPrimaryMeterset", ""))
                if dose_mu is None or mu is None:
                    delivered = None
                    break
                delivered += dose_mu[0] * mu / dose_mu[1]
            if delivered is None:
                break
    first = records[0]
    return CourseSummary(
        patient_name=str(first.get("PatientName", "")).replace("^", ", ", 1).replace("^", " "),
        patient_id=str(first.get("PatientID", "")),
        course=plan_uid,
        site=site,
        plan_label=str(plan.get("RTPlanLabel", "")) if plan is not None else "",
        total_dose_gy=None if total is None else round(total, 4),
        delivered_dose_gy=None if delivered is None else round(delivered, 4),
        fractions_delivered=max(fractions, default=0),
        fractions_planned=planned,
        first_date=min(days),
        last_date=max(days),
        source=f"archive {source}",
    )


def from_archive(client: OrthancClient, patient_id: str, source: str) -> list[CourseSummary]:
    """The patient's courses from main alone: records grouped by referenced plan (plan read if present)."""
    courses: dict[str, list[Dataset]] = {}
    for r in patient_records(client, patient_id):
        if str(r.get("PatientID", "")) != patient_id or not r.get("TreatmentDate"):
            continue
        refs = r.get("ReferencedRTPlanSequence") or []
        courses.setdefault(str(refs[0].ReferencedSOPInstanceUID) if refs else "", []).append(r)
    out = []
    for plan_uid, records in courses.items():
        oid = lookup(client, plan_uid, "Instance") if plan_uid else None
        plan = read_dataset(client, oid) if oid else None
        out.append(_course(plan_uid, records, plan, source))
    return sorted(out, key=lambda c: (c.first_date, c.course))
