"""Deterministic synthetic radiotherapy patients: CT, RTSTRUCT, RTPLAN, RTDOSE, daily CBCTs, registrations.

Everything is derived from SyntheticOptions (seeded): the same options give the same UIDs, dates, plans and
pixel data on every machine. Demographics are obviously fake ("SANDBOX^PATIENT0001", "SBX0001", birth
dates in 1900). Files are written one at a time (streaming) and the manifest is a JSON-lines file, so a
100,000-instance data set needs no more memory than a 10-instance one.

Per patient n (1-based):
- planning study on `planning_date`: CT series (ct_slices images, image_size^2 int16 phantom that differs
  per slice and patient), RTSTRUCT (BODY on every slice, PTV on the middle ones) referencing the CT,
  RTPLAN (PS3.3 C.8.8.14: beams with control points; odd patients IMRT step-and-shoot with `beams` static
  gantry angles, even patients VMAT with 2 arcs; one fraction group with NumberOfFractionsPlanned =
  fractions), RTDOSE referencing the plan;
- one CBCT study per fraction on its treatment date (weekdays only if skip_weekends): a CT Image Storage
  series with its own Frame of Reference;
- one Spatial Registration (REG, PS3.3 C.20.2) per patient registering the first CBCT to the planning CT,
  made "in MIM" on the first treatment date (only when fractions > 0).

Which system holds what (keep it simple; SyntheticPatient.source says it):
- ARIA: every patient with n % mim_every != 0: planning study + CBCT studies.
- MIM: every patient with n % mim_every == 0 (all their data), plus the REG objects of *all* patients
  (MIM is where registrations are made; they live in the CBCT study of fraction 1).
- Mosaiq (mosaiq_db.py): delivery history for every patient, consistent with the RTPLAN beams.

Files: <out>/<source lower>/<patient id>/<study n>/<series n>/<SOP Instance UID>.dcm;
manifest: <out>/manifest.jsonl (one ManifestRecord per line: UIDs, SOP class, modality, date and relative
path; no names, though the path contains the fake patient ID, so never print it), written last via a
rename, so its presence marks a complete data set.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
SPATIAL_REG = "1.2.840.10008.5.1.4.1.1.66.1"
MANIFEST_NAME = "manifest.jsonl"
GENERATOR_VERSION = 3  # bump when output changes, so cached data sets are regenerated

MLC_PAIRS = 80  # Elekta Agility-like: 80 leaf pairs of 5 mm
LEAF_WIDTH_MM = 5.0
MACHINES = ("SBX_LINAC1", "SBX_LINAC2")
SITES = ("PROSTATE", "LUNG_R", "H&N", "BREAST_L", "PELVIS")


@dataclass(frozen=True)
class SyntheticOptions:
    """Size and shape of a synthetic data set; expected_instances() gives the instance count."""

    patients: int = 3
    ct_slices: int = 16
    fractions: int = 5
    cbct_slices: int = 8
    beams: int = 5  # static beams for IMRT patients (VMAT patients get 2 arcs)
    control_points: int = 10  # per beam (>= 2)
    image_size: int = 64
    start_date: dt.date = dt.date(2026, 1, 5)
    span_days: int = 21  # planning dates are spread over [start_date, start_date + span_days)
    days_to_first_fraction: int = 7
    skip_weekends: bool = True
    mim_every: int = 3  # every mim_every-th patient lives on MIM instead of ARIA
    seed: int = 20260105

    def __post_init__(self) -> None:
        if self.patients < 1 or self.patients > 9999:
            raise ValueError("patients must be 1..9999")
        if self.ct_slices < 1 or self.control_points < 2 or self.beams < 1:
            raise ValueError("need ct_slices >= 1, beams >= 1, control_points >= 2")
        if self.fractions < 0 or self.cbct_slices < 0 or self.image_size < 8 or self.mim_every < 1:
            raise ValueError("fractions/cbct_slices >= 0, image_size >= 8, mim_every >= 1")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["start_date"] = self.start_date.isoformat()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SyntheticOptions:
        d = dict(d)
        if isinstance(d.get("start_date"), str):
            d["start_date"] = dt.date.fromisoformat(d["start_date"])
        return cls(**d)

    def key(self) -> str:
        """Stable short hash of the options (and generator version), for caching generated data."""
        blob = json.dumps({"v": GENERATOR_VERSION, **self.to_json()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def expected_instances(self) -> int:
        reg = 1 if self.fractions > 0 else 0
        return self.patients * (self.ct_slices + 3 + self.fractions * self.cbct_slices + reg)


def make_uid(seed: int, *parts: object) -> str:
    """Deterministic UID under the 2.25 root (PS3.5 B.2: a UUID as a decimal integer)."""
    digest = hashlib.sha256(("/".join([str(seed), *map(str, parts)])).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big") or 1)


def _da(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S")


# --------------------------------------------------------------------------------------------------
# The plan model (no files): shared by the RTPLAN writer and the Mosaiq database builder
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlPoint:
    index: int
    cumulative_weight: float  # 0..1 (CumulativeMetersetWeight; Mosaiq TxFieldPoint.[Index])
    gantry_angle: float
    mlc_a: tuple[float, ...]  # bank A (X1) leaf positions, mm, 0.1 mm resolution
    mlc_b: tuple[float, ...]  # bank B (X2)
    jaw_x: tuple[float, float]
    jaw_y: tuple[float, float]


@dataclass(frozen=True)
class Beam:
    number: int
    name: str
    beam_type: str  # STATIC (step-and-shoot) or DYNAMIC (VMAT)
    meterset: float  # MU per fraction
    energy: int  # MV
    dose_rate: float
    collimator_angle: float
    couch_angle: float
    gantry_direction: str  # NONE, CW, CC
    machine: str
    control_points: tuple[ControlPoint, ...]


@dataclass(frozen=True)
class Delivery:
    """One beam delivered on one fraction (one Mosaiq Dose_Hst row)."""

    fraction: int  # 1-based
    beam_number: int
    start: dt.datetime
    end: dt.datetime


@dataclass
class SyntheticPatient:
    options: SyntheticOptions
    number: int

    # --- identity ---------------------------------------------------------------------------------
    @property
    def patient_id(self) -> str:
        return f"SBX{self.number:04d}"

    @property
    def patient_name(self) -> str:
        return f"SANDBOX^PATIENT{self.number:04d}"

    @property
    def birth_date(self) -> dt.date:
        return dt.date(1900, 1, 1) + dt.timedelta(days=(self.number * 37) % 365)

    @property
    def sex(self) -> str:
        return "O"

    @property
    def source(self) -> str:
        return "MIM" if self.number % self.options.mim_every == 0 else "ARIA"

    @property
    def technique(self) -> str:
        return "IMRT" if self.number % 2 == 1 else "VMAT"

    @property
    def site_name(self) -> str:
        return SITES[(self.number - 1) % len(SITES)]

    @property
    def machine(self) -> str:
        return MACHINES[(self.number - 1) % len(MACHINES)]

    def uid(self, *parts: object) -> str:
        return make_uid(self.options.seed, "patient", self.number, *parts)

    # --- dates ------------------------------------------------------------------------------------
    @property
    def planning_date(self) -> dt.date:
        o = self.options
        offset = ((self.number - 1) * o.span_days) // o.patients if o.patients else 0
        d = o.start_date + dt.timedelta(days=offset)
        while o.skip_weekends and d.weekday() >= 5:
            d += dt.timedelta(days=1)
        return d

    @cached_property
    def treatment_dates(self) -> list[dt.date]:
        o = self.options
        d = self.planning_date + dt.timedelta(days=o.days_to_first_fraction)
        out: list[dt.date] = []
        while len(out) < o.fractions:
            if not (o.skip_weekends and d.weekday() >= 5):
                out.append(d)
            d += dt.timedelta(days=1)
        return out

    @property
    def fraction_dose_gy(self) -> float:
        return 2.0

    # --- UIDs -------------------------------------------------------------------------------------
    @property
    def planning_study_uid(self) -> str:
        return self.uid("study", "planning")

    @property
    def planning_for_uid(self) -> str:
        return self.uid("for", "planning")

    @property
    def plan_uid(self) -> str:
        return self.uid("rtplan")

    @property
    def struct_uid(self) -> str:
        return self.uid("rtstruct")

    @property
    def dose_uid(self) -> str:
        return self.uid("rtdose")

    def ct_uid(self, i: int) -> str:
        return self.uid("ct", i)

    def cbct_study_uid(self, fraction: int) -> str:
        return self.uid("study", "cbct", fraction)

    # --- plan -------------------------------------------------------------------------------------
    @cached_property
    def beams(self) -> tuple[Beam, ...]:
        o = self.options
        rng = np.random.default_rng([o.seed, self.number, 1])
        n_cp = o.control_points
        beams: list[Beam] = []
        if self.technique == "IMRT":
            angles = [round((180 + 360 * k / o.beams) % 360, 1) for k in range(o.beams)]
            specs = [(f"IMRT{k + 1}", "STATIC", a, a, "NONE") for k, a in enumerate(angles)]
        else:
            specs = [("ARC1", "DYNAMIC", 181.0, 179.0, "CW"), ("ARC2", "DYNAMIC", 179.0, 181.0, "CC")]
        for b, (name, btype, g0, g1, gdir) in enumerate(specs, start=1):
            meterset = round(float(rng.uniform(60, 220)), 1)
            half_x = round(float(rng.uniform(30, 60)), 1)
            half_y = round(float(rng.uniform(30, 60)), 1)
            cps: list[ControlPoint] = []
            phase = float(rng.uniform(0, math.pi))
            for c in range(n_cp):
                if btype == "STATIC":
                    gantry = g0
                else:
                    sweep = (g1 - g0) % 360 if gdir == "CW" else -((g0 - g1) % 360)
                    gantry = round((g0 + sweep * c / (n_cp - 1)) % 360, 1)
                a: list[float] = []
                bb: list[float] = []
                for leaf in range(MLC_PAIRS):
                    y = (leaf - MLC_PAIRS / 2 + 0.5) * LEAF_WIDTH_MM
                    if abs(y) > half_y:
                        a.append(0.0)
                        bb.append(0.0)  # closed leaves outside the jaws
                        continue
                    w = half_x * (0.55 + 0.45 * math.cos(phase + c * 0.7 + leaf * 0.15))
                    shift = 5.0 * math.sin(phase + c * 0.3)
                    a.append(round(shift - w, 1))
                    bb.append(round(shift + w, 1))
                # Step-and-shoot: weights step evenly; VMAT: meterset spread evenly over the arc.
                cps.append(
                    ControlPoint(
                        c,
                        round(c / (n_cp - 1), 4),
                        gantry,
                        tuple(a),
                        tuple(bb),
                        (-half_x, half_x),
                        (-half_y, half_y),
                    )
                )
            beams.append(
                Beam(
                    b,
                    name,
                    btype,
                    meterset,
                    6 if b % 3 else 10,
                    600.0,
                    0.0 if btype == "STATIC" else (30.0 if b == 1 else 330.0),
                    0.0,
                    gdir,
                    self.machine,
                    tuple(cps),
                )
            )
        return tuple(beams)

    @cached_property
    def deliveries(self) -> list[Delivery]:
        """Planned deliveries: every beam on every treatment date, in beam order, minutes apart."""
        out: list[Delivery] = []
        for f, day in enumerate(self.treatment_dates, start=1):
            t = dt.datetime.combine(day, dt.time(8, 0)) + dt.timedelta(minutes=13 * ((self.number - 1) % 40))
            t += dt.timedelta(minutes=3)  # after the CBCT
            for beam in self.beams:
                dur = dt.timedelta(seconds=round(beam.meterset / beam.dose_rate * 60 + 20))
                out.append(Delivery(f, beam.number, t, t + dur))
                t += dur + dt.timedelta(seconds=40)
        return out

    def cbct_time(self, fraction: int) -> dt.datetime:
        day = self.treatment_dates[fraction - 1]
        return dt.datetime.combine(day, dt.time(8, 0)) + dt.timedelta(minutes=13 * ((self.number - 1) % 40))


def patients(options: SyntheticOptions) -> Iterator[SyntheticPatient]:
    """The patient models (cheap: no pixel data, no files)."""
    for n in range(1, options.patients + 1):
        yield SyntheticPatient(options, n)


def all_dates(options: SyntheticOptions) -> list[dt.date]:
    """Every date with data (planning and treatment dates), sorted."""
    days: set[dt.date] = set()
    for p in patients(options):
        days.add(p.planning_date)
        days.update(p.treatment_dates)
    return sorted(days)


def start_date_ending(options: SyntheticOptions, last_day: dt.date) -> dt.date:
    """The start_date whose data ends on `last_day`, or on the closest weekday before it when the data
    skips weekends (a weekend night then has nothing, as in a clinic)."""
    span = all_dates(options)[-1] - options.start_date
    for back in range(14):
        start = last_day - span - dt.timedelta(days=back)
        if all_dates(replace(options, start_date=start))[-1] <= last_day:
            return start
    raise ValueError(f"no start date ends the data on or before {last_day}")


# --------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifestRecord:
    patient: int  # patient number (not the ID)
    source: str  # ARIA or MIM
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    date: str  # StudyDate, YYYYMMDD
    relpath: str
    root: Path = field(compare=False, repr=False, default=Path("."))

    @property
    def path(self) -> Path:
        return self.root / self.relpath

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("root")
        return json.dumps(d, separators=(",", ":"))


class Manifest:
    """A generated data set: iterate to stream its ManifestRecords (read lazily from manifest.jsonl)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.path = self.root / MANIFEST_NAME
        meta = json.loads((self.root / "options.json").read_text())
        self.options = SyntheticOptions.from_json(meta["options"])
        self.count = int(meta["count"])

    def __iter__(self) -> Iterator[ManifestRecord]:
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                yield ManifestRecord(**json.loads(line), root=self.root)

    def __len__(self) -> int:
        return self.count

    def for_source(self, source: str) -> Iterator[ManifestRecord]:
        return (r for r in self if r.source == source)

    def source_dir(self, source: str) -> Path:
        return self.root / source.lower()

    @property
    def dates(self) -> list[dt.date]:
        return all_dates(self.options)


# --------------------------------------------------------------------------------------------------
# Dataset builders
# --------------------------------------------------------------------------------------------------
def _base(
    p: SyntheticPatient,
    sop_class: str,
    sop_uid: str,
    study_uid: str,
    study_date: dt.date,
    study_time: str,
    study_desc: str,
    study_id: str,
    series_uid: str,
    series_no: int,
    modality: str,
    series_desc: str,
    series_date: dt.date | None = None,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = _da(series_date or study_date)
    ds.InstanceCreationTime = study_time
    ds.PatientName = p.patient_name
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = _da(p.birth_date)
    ds.PatientSex = p.sex
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = _da(study_date)
    ds.StudyTime = study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = study_id
    ds.AccessionNumber = ""
    ds.StudyDescription = study_desc
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_no
    ds.SeriesDate = _da(series_date or study_date)
    ds.SeriesTime = study_time
    ds.SeriesDescription = series_desc
    if modality.startswith("RT"):
        ds.OperatorsName = ""  # RT Series: type 2
    else:
        ds.Laterality = ""  # General Series: type 2C, empty for unpaired body parts
    ds.Manufacturer = "SANDBOX"
    ds.InstitutionName = "SANDBOX CLINIC"
    ds.StationName = "SBXSIM"
    ds.ManufacturerModelName = "dicom_backup_dagster.sandbox"
    ds.SoftwareVersions = f"synthetic-{GENERATOR_VERSION}"
    return ds


def _save(ds: Dataset, path: Path) -> None:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = fm
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


class _Phantom:
    """Per-patient body/target phantom; slices differ by z and by seeded noise."""

    def __init__(self, options: SyntheticOptions, number: int) -> None:
        n = options.image_size
        rng = np.random.default_rng([options.seed, number, 2])
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
        self.n = n
        self.cx = n / 2 + float(rng.uniform(-2, 2))
        self.cy = n / 2 + float(rng.uniform(-2, 2))
        self.ax = n * float(rng.uniform(0.36, 0.44))
        self.ay = n * float(rng.uniform(0.26, 0.34))
        self.xx, self.yy = xx, yy
        self.seed, self.number = options.seed, number

    def body_radius_scale(self, z: float) -> float:
        return 0.75 + 0.25 * math.cos(z * math.pi)  # z in [-1, 1]

    def slice(self, kind: int, i: int, z: float, target: bool) -> np.ndarray:
        s = self.body_radius_scale(z)
        r = ((self.xx - self.cx) / (self.ax * s)) ** 2 + ((self.yy - self.cy) / (self.ay * s)) ** 2
        hu = np.where(r <= 1.0, 40.0, -1000.0)
        if target:
            t = ((self.xx - self.cx - 3) ** 2 + (self.yy - self.cy) ** 2) <= (self.n * 0.08) ** 2
            hu = np.where(t, 60.0, hu)
        rng = np.random.default_rng([self.seed, self.number, kind, i])
        hu = hu + rng.normal(0.0, 12.0 if kind == 3 else 6.0, hu.shape)
        return np.clip(hu + 1024.0, 0, 4095).astype(np.int16)


def _ct(
    p: SyntheticPatient,
    ph: _Phantom,
    kind: int,
    i: int,
    n_slices: int,
    sop_uid: str,
    study_uid: str,
    study_date: dt.date,
    study_time: str,
    study_desc: str,
    study_id: str,
    series_uid: str,
    series_no: int,
    series_desc: str,
    for_uid: str,
    thickness: float,
    noise_key: int = 0,
) -> Dataset:
    ds = _base(
        p,
        CT_IMAGE,
        sop_uid,
        study_uid,
        study_date,
        study_time,
        study_desc,
        study_id,
        series_uid,
        series_no,
        "CT",
        series_desc,
    )
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionDate = ds.ContentDate = _da(study_date)
    ds.AcquisitionTime = ds.ContentTime = study_time
    ds.InstanceNumber = i + 1
    ds.AcquisitionNumber = 1
    ds.PatientPosition = "HFS"
    pix = 500.0 / ph.n
    z0 = -thickness * (n_slices - 1) / 2
    ds.ImagePositionPatient = [-250.0 + pix / 2, -250.0 + pix / 2, round(z0 + thickness * i, 2)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = round(z0 + thickness * i, 2)
    ds.SliceThickness = thickness
    ds.PixelSpacing = [round(pix, 4), round(pix, 4)]
    ds.KVP = 120 if kind == 1 else 100
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = ph.n
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    return _ct_slice(ds, ph, kind, noise_key, i, n_slices, sop_uid, thickness)


def _ct_slice(
    ds: Dataset,
    ph: _Phantom,
    kind: int,
    noise_key: int,
    i: int,
    n_slices: int,
    sop_uid: str,
    thickness: float,
) -> Dataset:
    """Set what differs between the slices of one series (the rest of `ds` is reused: writing is the cost)."""
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = i + 1
    pix = 500.0 / ph.n
    z0 = -thickness * (n_slices - 1) / 2
    ds.ImagePositionPatient = [-250.0 + pix / 2, -250.0 + pix / 2, round(z0 + thickness * i, 2)]
    ds.SliceLocation = round(z0 + thickness * i, 2)
    z = -1.0 + 2.0 * i / max(1, n_slices - 1)
    ds.PixelData = ph.slice(kind, noise_key + i, z, abs(z) < 0.4).tobytes()
    return ds


def _planning_object(
    p: SyntheticPatient,
    sop_class: str,
    sop_uid: str,
    series: str,
    series_no: int,
    modality: str,
    series_desc: str,
) -> Dataset:
    """The common part of the planning study's single-instance RT objects (structures, plan, dose)."""
    ds = _base(
        p,
        sop_class,
        sop_uid,
        p.planning_study_uid,
        p.planning_date,
        "100000",
        "RT planning",
        "1",
        p.uid("series", series),
        series_no,
        modality,
        series_desc,
        p.planning_date,
    )
    ds.FrameOfReferenceUID = p.planning_for_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    return ds


def _contour_ring(cx: float, cy: float, rx: float, ry: float, z: float, n: int = 16) -> list[float]:
    pts: list[float] = []
    for k in range(n):
        a = 2 * math.pi * k / n
        pts += [round(cx + rx * math.cos(a), 2), round(cy + ry * math.sin(a), 2), z]
    return pts


def _rtstruct(p: SyntheticPatient, ph: _Phantom, ct_series_uid: str, thickness: float) -> Dataset:
    o = p.options
    t = "110000"
    ds = _planning_object(p, RT_STRUCT, p.struct_uid, "rtstruct", 2, "RTSTRUCT", "Structures")
    ds.StructureSetLabel = "SBX_RS"
    ds.StructureSetDate = _da(p.planning_date)
    ds.StructureSetTime = t
    images = []
    for i in range(o.ct_slices):
        ci = Dataset()
        ci.ReferencedSOPClassUID = CT_IMAGE
        ci.ReferencedSOPInstanceUID = p.ct_uid(i)
        images.append(ci)
    rser = Dataset()
    rser.SeriesInstanceUID = ct_series_uid
    rser.ContourImageSequence = Sequence(images)
    rstudy = Dataset()
    rstudy.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, as used)
    rstudy.ReferencedSOPInstanceUID = p.planning_study_uid
    rstudy.RTReferencedSeriesSequence = Sequence([rser])
    rfor = Dataset()
    rfor.FrameOfReferenceUID = p.planning_for_uid
    rfor.RTReferencedStudySequence = Sequence([rstudy])
    ds.ReferencedFrameOfReferenceSequence = Sequence([rfor])

    pix = 500.0 / ph.n
    cx_mm = -250.0 + pix * ph.cx
    cy_mm = -250.0 + pix * ph.cy
    z0 = -thickness * (o.ct_slices - 1) / 2
    rois, contours, observations = [], [], []
    for number, name, kind, color in ((1, "BODY", "EXTERNAL", [0, 255, 0]), (2, "PTV", "PTV", [255, 0, 0])):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = p.planning_for_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        rois.append(roi)
        seq = []
        for i in range(o.ct_slices):
            z_rel = -1.0 + 2.0 * i / max(1, o.ct_slices - 1)
            if name == "PTV" and abs(z_rel) >= 0.4:
                continue
            z = round(z0 + thickness * i, 2)
            if name == "BODY":
                s = ph.body_radius_scale(z_rel)
                pts = _contour_ring(cx_mm, cy_mm, ph.ax * s * pix, ph.ay * s * pix, z)
            else:
                pts = _contour_ring(cx_mm + 3 * pix, cy_mm, ph.n * 0.08 * pix, ph.n * 0.08 * pix, z, 12)
            c = Dataset()
            ci = Dataset()
            ci.ReferencedSOPClassUID = CT_IMAGE
            ci.ReferencedSOPInstanceUID = p.ct_uid(i)
            c.ContourImageSequence = Sequence([ci])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts) // 3
            c.ContourData = pts
            seq.append(c)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = color
        rc.ContourSequence = Sequence(seq)
        contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = kind
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    ds.ApprovalStatus = "APPROVED"
    ds.ReviewDate = _da(p.planning_date)
    ds.ReviewTime = t
    ds.ReviewerName = "SANDBOX^PHYSICIST"
    return ds


def _bld_positions(cp: ControlPoint, with_jaws: bool) -> Sequence:
    out = []
    if with_jaws:
        for t, v in (("ASYMX", list(cp.jaw_x)), ("ASYMY", list(cp.jaw_y))):
            d = Dataset()
            d.RTBeamLimitingDeviceType = t
            d.LeafJawPositions = v
            out.append(d)
    d = Dataset()
    d.RTBeamLimitingDeviceType = "MLCX"
    d.LeafJawPositions = list(cp.mlc_a) + list(cp.mlc_b)
    out.append(d)
    return Sequence(out)


def _rtplan(p: SyntheticPatient) -> Dataset:
    o = p.options
    ds = _planning_object(p, RT_PLAN, p.plan_uid, "rtplan", 3, "RTPLAN", f"Plan {p.technique}")
    ds.RTPlanLabel = f"{p.site_name[:8]}_{p.technique}"[:16]
    ds.RTPlanName = f"{p.site_name} {p.technique}"
    ds.RTPlanDate = _da(p.planning_date)
    ds.RTPlanTime = "120000"
    ds.RTPlanGeometry = "PATIENT"
    rss = Dataset()
    rss.ReferencedSOPClassUID = RT_STRUCT
    rss.ReferencedSOPInstanceUID = p.struct_uid
    ds.ReferencedStructureSetSequence = Sequence([rss])

    setup = Dataset()
    setup.PatientPosition = "HFS"
    setup.PatientSetupNumber = 1
    ds.PatientSetupSequence = Sequence([setup])

    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = o.fractions
    fg.NumberOfBeams = len(p.beams)
    fg.NumberOfBrachyApplicationSetups = 0
    refs = []
    total_mu = sum(b.meterset for b in p.beams)
    for b in p.beams:
        r = Dataset()
        r.ReferencedBeamNumber = b.number
        r.BeamMeterset = b.meterset
        r.BeamDose = round(p.fraction_dose_gy * b.meterset / total_mu, 4)
        refs.append(r)
    fg.ReferencedBeamSequence = Sequence(refs)
    ds.FractionGroupSequence = Sequence([fg])

    iso = [0.0, 0.0, 0.0]
    beams = []
    for b in p.beams:
        bd = Dataset()
        bd.BeamNumber = b.number
        bd.BeamName = b.name
        bd.BeamDescription = f"{p.technique} beam {b.number}"
        bd.BeamType = b.beam_type
        bd.RadiationType = "PHOTON"
        bd.TreatmentMachineName = b.machine
        bd.Manufacturer = "SANDBOX"
        bd.PrimaryDosimeterUnit = "MU"
        bd.SourceAxisDistance = 1000.0
        devs = []
        for t, n in (("ASYMX", 1), ("ASYMY", 1), ("MLCX", MLC_PAIRS)):
            d = Dataset()
            d.RTBeamLimitingDeviceType = t
            d.NumberOfLeafJawPairs = n
            if t == "MLCX":
                d.LeafPositionBoundaries = [
                    round((k - MLC_PAIRS / 2) * LEAF_WIDTH_MM, 1) for k in range(MLC_PAIRS + 1)
                ]
            devs.append(d)
        bd.BeamLimitingDeviceSequence = Sequence(devs)
        bd.ReferencedPatientSetupNumber = 1
        bd.TreatmentDeliveryType = "TREATMENT"
        bd.NumberOfWedges = 0
        bd.NumberOfCompensators = 0
        bd.NumberOfBoli = 0
        bd.NumberOfBlocks = 0
        bd.FinalCumulativeMetersetWeight = 1.0
        bd.NumberOfControlPoints = len(b.control_points)
        cps = []
        for cp in b.control_points:
            c = Dataset()
            c.ControlPointIndex = cp.index
            c.CumulativeMetersetWeight = cp.cumulative_weight
            first = cp.index == 0
            c.BeamLimitingDevicePositionSequence = _bld_positions(cp, with_jaws=first)
            if first or b.beam_type == "DYNAMIC":
                c.GantryAngle = cp.gantry_angle
                c.GantryRotationDirection = (
                    b.gantry_direction if cp.index < len(b.control_points) - 1 else "NONE"
                )
            if first:
                c.NominalBeamEnergy = b.energy
                c.DoseRateSet = b.dose_rate
                c.BeamLimitingDeviceAngle = b.collimator_angle
                c.BeamLimitingDeviceRotationDirection = "NONE"
                c.PatientSupportAngle = b.couch_angle
                c.PatientSupportRotationDirection = "NONE"
                c.TableTopEccentricAngle = 0.0
                c.TableTopEccentricRotationDirection = "NONE"
                c.TableTopVerticalPosition = 0.0
                c.TableTopLongitudinalPosition = 0.0
                c.TableTopLateralPosition = 0.0
                c.IsocenterPosition = iso
            cps.append(c)
        bd.ControlPointSequence = Sequence(cps)
        beams.append(bd)
    ds.BeamSequence = Sequence(beams)
    ds.ApprovalStatus = "APPROVED"
    ds.ReviewDate = _da(p.planning_date)
    ds.ReviewTime = "130000"
    ds.ReviewerName = "SANDBOX^PHYSICIST"
    return ds


def _rtdose(p: SyntheticPatient, ph: _Phantom, thickness: float) -> Dataset:
    o = p.options
    ds = _planning_object(p, RT_DOSE, p.dose_uid, "rtdose", 4, "RTDOSE", "Dose")
    ds.ContentDate = _da(p.planning_date)
    ds.ContentTime = "120000"
    n = max(4, ph.n // 2)
    frames = min(o.ct_slices, 8)
    pix = 500.0 / n
    ds.ImagePositionPatient = [-250.0 + pix / 2, -250.0 + pix / 2, -thickness * (frames - 1) / 2]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [round(pix, 4), round(pix, 4)]
    ds.SliceThickness = thickness
    ds.GridFrameOffsetVector = [round(thickness * k, 2) for k in range(frames)]
    ds.FrameIncrementPointer = (0x3004, 0x000C)
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = n
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    total = p.fraction_dose_gy * max(1, o.fractions)
    ds.DoseGridScaling = round(total * 1.1 / 65000, 10)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    r2 = ((xx - n / 2) / (n * 0.2)) ** 2 + ((yy - n / 2) / (n * 0.2)) ** 2
    vol = []
    for f in range(frames):
        zf = 1.0 - abs(f - (frames - 1) / 2) / frames
        vol.append((np.exp(-r2) * 59000 * zf).astype(np.uint16))
    ds.PixelData = np.stack(vol).tobytes()
    rp = Dataset()
    rp.ReferencedSOPClassUID = RT_PLAN
    rp.ReferencedSOPInstanceUID = p.plan_uid
    ds.ReferencedRTPlanSequence = Sequence([rp])
    return ds


def _registration(p: SyntheticPatient) -> Dataset:
    """Spatial Registration (PS3.3 A.39): rigid CBCT(fraction 1) -> planning CT, made in MIM."""
    day = p.treatment_dates[0]
    t = _tm(p.cbct_time(1) + dt.timedelta(minutes=2))
    ds = _base(
        p,
        SPATIAL_REG,
        p.uid("reg"),
        p.cbct_study_uid(1),
        day,
        _tm(p.cbct_time(1)),
        "CBCT fraction 1",
        "F1",
        p.uid("series", "reg"),
        90,
        "REG",
        "MIM registration",
        day,
    )
    ds.FrameOfReferenceUID = p.planning_for_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.ContentDate = _da(day)
    ds.ContentTime = t
    ds.ContentLabel = "CBCT1_TO_PLAN"
    ds.ContentDescription = "Rigid registration"
    ds.ContentCreatorName = "SANDBOX^MIM"
    rng = np.random.default_rng([p.options.seed, p.number, 4])
    shift = [round(float(x), 2) for x in rng.normal(0, 2.0, 3)]
    regs = []
    for for_uid, m in (
        (p.planning_for_uid, [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]),
        (p.uid("for", "cbct", 1), [1, 0, 0, shift[0], 0, 1, 0, shift[1], 0, 0, 1, shift[2], 0, 0, 0, 1]),
    ):
        r = Dataset()
        r.FrameOfReferenceUID = for_uid
        mr = Dataset()
        mr.RegistrationTypeCodeSequence = Sequence([])
        mx = Dataset()
        mx.FrameOfReferenceTransformationMatrixType = "RIGID"
        mx.FrameOfReferenceTransformationMatrix = [float(v) for v in m]
        mr.MatrixSequence = Sequence([mx])
        r.MatrixRegistrationSequence = Sequence([mr])
        regs.append(r)
    ds.RegistrationSequence = Sequence(regs)
    return ds


# --------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------
def _write_patient(p: SyntheticPatient, root: Path, out: Any) -> int:
    o = p.options
    ph = _Phantom(o, p.number)
    count = 0

    def emit(ds: Dataset, source: str, study_no: int, series_no: int) -> None:
        nonlocal count
        rel = (
            Path(source.lower())
            / p.patient_id
            / f"st{study_no:03d}"
            / f"se{series_no:03d}"
            / (ds.SOPInstanceUID + ".dcm")
        )
        _save(ds, root / rel)
        rec = ManifestRecord(
            p.number,
            source,
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            ds.SOPClassUID,
            ds.Modality,
            ds.StudyDate,
            str(rel),
        )
        out.write(rec.to_json() + "\n")
        count += 1

    src = p.source
    thickness = 3.0
    ct_series = p.uid("series", "ct")
    ct = None
    for i in range(o.ct_slices):
        if ct is None:
            ct = _ct(
                p,
                ph,
                1,
                i,
                o.ct_slices,
                p.ct_uid(i),
                p.planning_study_uid,
                p.planning_date,
                "100000",
                "RT planning",
                "1",
                ct_series,
                1,
                "Planning CT",
                p.planning_for_uid,
                thickness,
            )
        else:
            _ct_slice(ct, ph, 1, 0, i, o.ct_slices, p.ct_uid(i), thickness)
        emit(ct, src, 0, 1)
    emit(_rtstruct(p, ph, ct_series, thickness), src, 0, 2)
    emit(_rtplan(p), src, 0, 3)
    emit(_rtdose(p, ph, thickness), src, 0, 4)
    for f, day in enumerate(p.treatment_dates, start=1):
        t = _tm(p.cbct_time(f))
        series = p.uid("series", "cbct", f)
        cbct = None
        for i in range(o.cbct_slices):
            # noise_key keeps every fraction's noise different from the other fractions'.
            if cbct is None:
                cbct = _ct(
                    p,
                    ph,
                    3,
                    i,
                    o.cbct_slices,
                    p.uid("cbct", f, i),
                    p.cbct_study_uid(f),
                    day,
                    t,
                    f"CBCT fraction {f}",
                    f"F{f}",
                    series,
                    1,
                    f"CBCT fraction {f}",
                    p.uid("for", "cbct", f),
                    thickness * 2,
                    noise_key=f * 10000,
                )
            else:
                _ct_slice(cbct, ph, 3, f * 10000, i, o.cbct_slices, p.uid("cbct", f, i), thickness * 2)
            emit(cbct, src, f, 1)
    if p.treatment_dates:
        emit(_registration(p), "MIM", 1, 90)
    return count


def _write_part(root: str, options_json: dict[str, Any], numbers: list[int], part: str) -> int:
    """Worker: write some patients and their manifest lines to `part` (runs in a spawned process)."""
    options = SyntheticOptions.from_json(options_json)
    count = 0
    with open(part, "w", encoding="utf-8") as out:
        for n in numbers:
            count += _write_patient(SyntheticPatient(options, n), Path(root), out)
    return count


def generate(
    out_dir: str | os.PathLike[str],
    options: SyntheticOptions | None = None,
    *,
    reuse: bool = True,
    workers: int | None = None,
) -> Manifest:
    """Write the data set under out_dir and return its Manifest.

    With reuse=True an existing complete data set made from the same options (same key) is returned
    without writing anything. An incomplete or different one is removed first, but only if out_dir looks
    like a data set of ours (or is empty). workers: processes to use (default: all cores for data sets of
    more than 2,000 instances; ~3 ms per instance per core).
    """
    options = options or SyntheticOptions()
    root = Path(out_dir).resolve()
    meta_path = root / "options.json"
    if reuse and (root / MANIFEST_NAME).exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == options.key():
                return Manifest(root)
        except (OSError, ValueError):
            pass
    if root.exists() and any(root.iterdir()):
        ours = meta_path.exists() or (root / (MANIFEST_NAME + ".partial")).exists()
        if not ours:
            raise ValueError(f"{root} is not empty and holds no synthetic data set: refusing to replace it")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / (MANIFEST_NAME + ".partial")
    tmp.write_text("")  # marks the directory as ours while it is being written
    if workers is None:
        workers = (os.cpu_count() or 1) if options.expected_instances() > 2000 else 1
    workers = max(1, min(workers, options.patients))
    numbers = list(range(1, options.patients + 1))
    if workers == 1:
        count = _write_part(str(root), options.to_json(), numbers, str(tmp))
    else:
        # Plain worker processes (`python -m ...synthetic`), not multiprocessing: spawn would re-run the
        # caller's __main__ script, fork is unsafe next to pynetdicom threads.
        size = -(-len(numbers) // workers)
        chunks = [numbers[i : i + size] for i in range(0, len(numbers), size)]
        parts = [root / f".part-{i:03d}.jsonl" for i in range(len(chunks))]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dicom_backup_dagster.sandbox.synthetic",
                    str(root),
                    json.dumps(options.to_json()),
                    ",".join(map(str, chunk)),
                    str(part),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for chunk, part in zip(chunks, parts, strict=True)
        ]
        count = 0
        failures = []
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                failures.append(err.strip()[-1500:])
            else:
                count += int(out.strip() or 0)
        if failures:
            raise RuntimeError("synthetic data worker failed:\n" + "\n".join(failures))
        with open(tmp, "w", encoding="utf-8") as merged:
            for part in parts:
                with open(part, encoding="utf-8") as f:
                    shutil.copyfileobj(f, merged)
                part.unlink()
    meta_path.write_text(
        json.dumps({"key": options.key(), "options": options.to_json(), "count": count}, indent=2)
    )
    os.replace(tmp, root / MANIFEST_NAME)
    return Manifest(root)


if __name__ == "__main__":
    # Worker entry point used by generate(): ROOT OPTIONS_JSON PATIENT_NUMBERS PART_FILE -> prints the count.
    _root, _options, _numbers, _part = sys.argv[1:5]
    print(_write_part(_root, json.loads(_options), [int(x) for x in _numbers.split(",")], _part))
