"""Downtime reports and the reference-completeness check, from the main archive alone (no Dagster).

- `on_treatment`: patients with an RT Beams Treatment Record (PS3.3 A.29) in the last N days whose latest
  CurrentFractionNumber (C.8.8.21, Treatment Session Beam Sequence) is below NumberOfFractionsPlanned.
- `missing_references`: RT record -> RT Plan (ReferencedRTPlanSequence, C.8.8.21), RT Plan -> Structure Set
  (ReferencedStructureSetSequence, C.8.8.9) and dose (ReferencedDoseSequence, C.8.8.9), Structure Set ->
  image series (ReferencedFrameOfReferenceSequence, C.8.8.5): what main lacks, by UID.
- `write_report`: CSV and a printable HTML page, directory 0700 and files 0600: the only place these
  reports' patient data go (callers put counts and the path into Dagster metadata, nothing else).
The attributes and their modules are listed in docs/decisions/downtime-reports.md.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from dicom_backup_dagster.orthanc import OrthancClient

RTRECORD = "RTRECORD"
ON_TREATMENT_COLUMNS = (
    "patient_name", "patient_id", "plan_label", "machine", "fractions_delivered", "fractions_planned",
    "last_treatment_date", "delivered_meterset_per_beam",
)  # fmt: skip


@dataclass(frozen=True)
class OnTreatment:
    """One course in progress: one row of the on-treatment report (patient data: reports directory only)."""

    patient_name: str
    patient_id: str
    plan_uid: str
    plan_label: str
    machine: str
    fractions_delivered: int
    fractions_planned: int
    last_treatment_date: dt.date
    meterset_by_beam: tuple[tuple[str, float], ...]

    def row(self) -> list[str]:
        beams = "; ".join(f"{name} {mu:g}" for name, mu in self.meterset_by_beam)
        return [
            self.patient_name, self.patient_id, self.plan_label, self.machine, str(self.fractions_delivered),
            str(self.fractions_planned), self.last_treatment_date.isoformat(), beams,
        ]  # fmt: skip


@dataclass(frozen=True)
class MissingReference:
    """A referenced object main lacks: who refers to it (UIDs only) and what it is."""

    referring_uid: str
    kind: str  # "RT Plan", "RT Structure Set", "RT Dose", "image series"
    missing_uid: str


def _date(value: Any) -> dt.date | None:
    try:
        return dt.datetime.strptime(str(value), "%Y%m%d").date()
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _beam_meterset(beam: Dataset) -> float | None:
    """DeliveredMeterset of a Treatment Session Beam item, or of its last control point (C.8.8.21)."""
    if beam.get("DeliveredMeterset") not in (None, ""):
        return float(beam.DeliveredMeterset)
    points = beam.get("ControlPointDeliverySequence") or []
    values = [float(p.DeliveredMeterset) for p in points if p.get("DeliveredMeterset") not in (None, "")]
    return values[-1] if values else None


@dataclass
class _Course:
    last: tuple[dt.date, int]
    record: Dataset
    beams: dict[str, float]


def _course_key(ds: Dataset) -> tuple[str, str]:
    refs = ds.get("ReferencedRTPlanSequence") or []
    plan = str(refs[0].ReferencedSOPInstanceUID) if refs else ""
    return str(ds.get("PatientID", "")), plan


def _session(ds: Dataset) -> tuple[dt.date, int, dict[str, float]] | None:
    """(TreatmentDate, CurrentFractionNumber, meterset by beam name) of one record; None if unusable."""
    day = _date(ds.get("TreatmentDate", ""))
    beams = ds.get("TreatmentSessionBeamSequence") or []
    fractions = [f for f in (_int(b.get("CurrentFractionNumber", "")) for b in beams) if f is not None]
    if day is None or not fractions:
        return None
    metersets: dict[str, float] = {}
    for b in beams:
        mu = _beam_meterset(b)
        if mu is not None:
            metersets[str(b.get("BeamName") or b.get("ReferencedBeamNumber", "?"))] = mu
    return day, max(fractions), metersets


def on_treatment(
    records: Iterable[Dataset], today: dt.date, days: int, plan_labels: dict[str, str] | None = None
) -> list[OnTreatment]:
    """Courses (patient, referenced plan) treated in the `days` days up to `today` whose latest fraction
    is below NumberOfFractionsPlanned; the metersets are those of the latest fraction's beams."""
    courses: dict[tuple[str, str], _Course] = {}
    for ds in records:
        session = _session(ds)
        if session is None:
            continue
        day, fraction, metersets = session
        key = _course_key(ds)
        course = courses.get(key)
        if course is None or (day, fraction) > course.last:
            courses[key] = _Course((day, fraction), ds, dict(metersets))
        elif (day, fraction) == course.last:
            course.beams.update(metersets)  # one record per field per fraction
    since = today - dt.timedelta(days=days)
    out = []
    for (patient_id, plan_uid), c in sorted(courses.items()):
        planned = _int(c.record.get("NumberOfFractionsPlanned", ""))
        if planned is None or c.last[1] >= planned or c.last[0] < since:
            continue
        machines = c.record.get("TreatmentMachineSequence") or []
        out.append(
            OnTreatment(
                patient_name=str(c.record.get("PatientName", "")),
                patient_id=patient_id,
                plan_uid=plan_uid,
                plan_label=(plan_labels or {}).get(plan_uid, ""),
                machine=str(machines[0].get("TreatmentMachineName", "")) if machines else "",
                fractions_delivered=c.last[1],
                fractions_planned=planned,
                last_treatment_date=c.last[0],
                meterset_by_beam=tuple(sorted(c.beams.items())),
            )
        )
    return out


def _uids(items: Sequence[Dataset] | None, attr: str = "ReferencedSOPInstanceUID") -> list[str]:
    return [str(i.get(attr)) for i in items or [] if i.get(attr)]


def _references(ds: Dataset) -> Iterator[tuple[str, str, bool]]:
    """(kind, UID, is_series) of every object `ds` refers to that a restore needs."""
    modality = ds.get("Modality", "")
    if modality == RTRECORD:
        yield from (("RT Plan", u, False) for u in _uids(ds.get("ReferencedRTPlanSequence")))
    elif modality == "RTPLAN":
        yield from (("RT Structure Set", u, False) for u in _uids(ds.get("ReferencedStructureSetSequence")))
        yield from (("RT Dose", u, False) for u in _uids(ds.get("ReferencedDoseSequence")))
    elif modality == "RTSTRUCT":
        for frame in ds.get("ReferencedFrameOfReferenceSequence") or []:
            for study in frame.get("RTReferencedStudySequence") or []:
                for series in study.get("RTReferencedSeriesSequence") or []:
                    if series.get("SeriesInstanceUID"):
                        yield "image series", str(series.SeriesInstanceUID), True


def missing_references(
    datasets: Iterable[Dataset], instances: set[str], series: set[str]
) -> list[MissingReference]:
    """References of RT records, plans and structure sets that are not among main's `instances` (SOP
    Instance UIDs) or `series` (Series Instance UIDs); RT Dose objects that reference a plan are ignored."""
    out = []
    for ds in datasets:
        for kind, uid, is_series in _references(ds):
            if uid not in (series if is_series else instances):
                out.append(MissingReference(str(ds.SOPInstanceUID), kind, uid))
    return sorted(set(out), key=lambda m: (m.kind, m.missing_uid, m.referring_uid))


# --- reading main (Orthanc REST) ---------------------------------------------------------------------


def read_dataset(client: OrthancClient, orthanc_id: str) -> Dataset | None:
    data = client.instance_file(orthanc_id)
    return None if data is None else pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def recent_records(client: OrthancClient, since: dt.date, until: dt.date) -> Iterator[Dataset]:
    """The RT Beams Treatment Records on main treated from `since` to `until` (inclusive).

    Why SeriesDate: Orthanc answers /tools/find from its index only for its "main DICOM tags"; at series
    level these include Modality and SeriesDate, and a date range on them is an SQL range on the index.
    TreatmentDate is not a main tag (a find on it would open every RT record file on main), and the
    record's StudyDate is the plan's study date, not the treatment's. Our records (rtrecord/builder.py)
    put each treatment day of a plan in its own series whose SeriesDate is the TreatmentDate; the caller
    still checks TreatmentDate in each file (`on_treatment` does)."""
    window = f"{since:%Y%m%d}-{until:%Y%m%d}"
    body = {"Level": "Series", "Query": {"Modality": RTRECORD, "SeriesDate": window}}
    for series_id in client.request("POST", "/tools/find", json=body).json():
        for oid in client.get_json(f"/series/{series_id}/instances"):
            ds = read_dataset(client, str(oid["ID"]))
            if ds is not None:
                yield ds


def lookup(client: OrthancClient, uid: str, level: str) -> str | None:
    """Orthanc ID of the resource of `level` ("Instance", "Series") with this UID (indexed), or None."""
    for hit in client.request("POST", "/tools/lookup", data=uid).json():
        if hit.get("Type") == level:
            return str(hit["ID"])
    return None


@dataclass
class Chase:
    """What the references of some RT records lead to on main: the objects read (records, plans,
    structure sets) and the UIDs found present, for `missing_references`."""

    objects: list[Dataset]
    instances: set[str]
    series: set[str]

    def plan_labels(self) -> dict[str, str]:
        return {str(d.SOPInstanceUID): str(d.get("RTPlanLabel", "")) for d in self.objects
                if d.get("Modality") == "RTPLAN"}  # fmt: skip


def chase_references(client: OrthancClient, records: Sequence[Dataset]) -> Chase:
    """Follow record -> plan -> structure set and dose -> image series on main by UID lookups (indexed),
    reading only the plans and structure sets referenced: the cost follows the records, not the archive."""
    chase = Chase(list(records), {str(r.SOPInstanceUID) for r in records}, set())
    todo = list(records)
    seen: set[str] = set()
    while todo:
        ds = todo.pop()
        for kind, uid, is_series in _references(ds):
            if uid in seen:
                continue
            seen.add(uid)
            oid = lookup(client, uid, "Series" if is_series else "Instance")
            if oid is None:
                continue
            (chase.series if is_series else chase.instances).add(uid)
            if kind in ("RT Plan", "RT Structure Set"):
                found = read_dataset(client, oid)
                if found is not None:
                    chase.objects.append(found)
                    todo.append(found)
    return chase


# --- writing -----------------------------------------------------------------------------------------


def reports_directory(path: Path) -> Path:
    """Create the reports directory 0700 (and tighten it if it exists): it holds patient data."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def write_report(
    directory: Path, name: str, title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]
) -> tuple[Path, Path]:
    """`<name>.csv` and `<name>.html` (printable: one table, no scripts) in `directory`, both 0600."""
    rows = [list(r) for r in rows]
    reports_directory(directory)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(rows)
    csv_path, html_path = directory / f"{name}.csv", directory / f"{name}.html"
    _write_private(csv_path, buf.getvalue())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>\n" for r in rows)
    _write_private(
        html_path,
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #444;"
        "padding:2px 6px}@media print{@page{size:landscape}}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(rows)} rows</p><table><tr>{head}</tr>\n{body}</table>"
        "</body></html>\n",
    )
    return csv_path, html_path
