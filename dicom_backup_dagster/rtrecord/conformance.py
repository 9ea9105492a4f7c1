"""Our own conformance check for RT Beams Treatment Records (PS3.3 A.29, C.8.8.17/18/21, C.7.x, C.12.1).

dciodvfy (dicom3tools 2022) is one check among several: it flags the correct TreatmentVerificationStatus
values VERIFIED/NOT_VERIFIED (a typo in its table), does not check the "required for control point 0"
conditions, and accepts Modality RTPLAN in a record (docs/decisions/rt-records.md). This module checks:
Type 1 presence and non-empty, Type 2 presence, enumerated values, the control-point-0 1C/2C
conditions, NumberOfControlPoints == len(ControlPointDeliverySequence), NumberOfLeafJawPairs against
LeafJawPositions, monotonic metersets, leaf/jaw ordering (a sign error in the Mosaiq leaf decoding shows
up as bank 1 beyond bank 2), angle ranges, UID syntax, and the character set for non-ASCII text.

Findings name the attribute path and the problem. They quote values only of enumerated (coded)
attributes, never of names, IDs, dates or free text, so a finding list is safe to log.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import cast

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from dicom_backup_dagster.rtrecord import enums
from dicom_backup_dagster.rtrecord.builder import (
    RT_BEAMS_TREATMENT_RECORD_STORAGE,
    RT_PLAN_STORAGE,
    is_valid_uid,
)


@dataclass(frozen=True)
class Finding:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


_TOP_TYPE1 = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "InstanceNumber",
    "TreatmentMachineSequence",
    "PrimaryDosimeterUnit",
    "TreatmentSessionBeamSequence",
)
_TOP_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "SeriesNumber",
    "OperatorsName",
    "Manufacturer",
    "TreatmentDate",
    "TreatmentTime",
    "ReferencedRTPlanSequence",
    "NumberOfFractionsPlanned",
)
_MACHINE_TYPE2 = (
    "TreatmentMachineName",
    "Manufacturer",
    "InstitutionName",
    "ManufacturerModelName",
    "DeviceSerialNumber",
)
_BEAM_TYPE1 = (
    "BeamType",
    "RadiationType",
    "BeamLimitingDeviceLeafPairsSequence",
    "NumberOfWedges",
    "TreatmentTerminationStatus",
    "NumberOfControlPoints",
    "ControlPointDeliverySequence",
)
_BEAM_TYPE2 = (
    "NumberOfCompensators",
    "NumberOfBoli",
    "NumberOfBlocks",
    "CurrentFractionNumber",
    "TreatmentDeliveryType",
    "TreatmentVerificationStatus",
)
_CP_TYPE1 = ("TreatmentControlPointDate", "TreatmentControlPointTime", "DeliveredMeterset")
_CP_TYPE2 = ("SpecifiedMeterset", "DoseRateSet", "DoseRateDelivered")
_ANGLE_PAIRS = (
    ("GantryAngle", "GantryRotationDirection"),
    ("BeamLimitingDeviceAngle", "BeamLimitingDeviceRotationDirection"),
    ("PatientSupportAngle", "PatientSupportRotationDirection"),
    ("TableTopEccentricAngle", "TableTopEccentricRotationDirection"),
    ("TableTopPitchAngle", "TableTopPitchRotationDirection"),
    ("TableTopRollAngle", "TableTopRollRotationDirection"),
)
_CP0_TYPE2C = ("TableTopVerticalPosition", "TableTopLongitudinalPosition", "TableTopLateralPosition")
_DEVICE_TYPES = frozenset({"X", "Y", "ASYMX", "ASYMY", "MLCX", "MLCY"})
_SEX_VALUES = frozenset({"M", "F", "O"})
_TEXT_FOR_CHARSET = ("PatientName", "PatientID", "StudyDescription", "StudyID", "SeriesDescription")


def _empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return len(value) == 0  # type: ignore[arg-type]
    except TypeError:
        return str(value) == ""


class _Tags(dict):
    """keyword -> BaseTag. Lookups by BaseTag skip pydicom's keyword resolution, which was the largest
    cost left in checking a VMAT record's control points (~40 lookups per point)."""

    def __missing__(self, keyword: str) -> BaseTag:
        tag = self[keyword] = Tag(keyword)
        return tag


_TAGS = _Tags()


def _value(ds: Dataset, keyword: str, default: object = None) -> object:
    tag = _TAGS[keyword]
    return ds[tag].value if tag in ds else default


def _type1(ds: Dataset, keyword: str, path: str, out: list[Finding]) -> bool:
    tag = _TAGS[keyword]
    if tag not in ds:
        out.append(Finding(f"{path}{keyword}", "Type 1 attribute missing"))
        return False
    if _empty(ds[tag].value):
        out.append(Finding(f"{path}{keyword}", "Type 1 attribute empty"))
        return False
    return True


def _type2(ds: Dataset, keyword: str, path: str, out: list[Finding]) -> None:
    if _TAGS[keyword] not in ds:
        out.append(Finding(f"{path}{keyword}", "Type 2 attribute missing"))


def _enum(
    ds: Dataset,
    keyword: str,
    allowed: Iterable[str],
    path: str,
    out: list[Finding],
    *,
    empty_ok: bool = False,
    quote: bool = True,
) -> None:
    """``quote`` False for patient attributes: a wrong value there may itself be patient data."""
    tag = _TAGS[keyword]
    if tag not in ds:
        return
    value = ds[tag].value
    if _empty(value):
        if not empty_ok:
            out.append(Finding(f"{path}{keyword}", "empty where an enumerated value is required"))
        return
    if str(value) not in allowed:
        shown = f"value {str(value)[:16]!r}" if quote else "value"
        out.append(Finding(f"{path}{keyword}", f"{shown} is not one of {sorted(allowed)}"))


def _number(value: object) -> Decimal | None:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _float(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


_LEAF_JAW_POSITIONS = Tag("LeafJawPositions")


def _multi_strings(ds: Dataset, tag: int) -> list[str] | None:
    """The values of a multi-valued text element as strings; None when absent. Read from the raw value
    bytes while pydicom has not converted the element: turning a 160-value LeafJawPositions of every
    control point into DSfloat objects was most of this check's time (benchmarks/mosaiq_records.py)."""
    if tag not in ds:
        return None
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        text = (b"" if elem.value is None else bytes(elem.value)).decode("ascii", "replace")
    else:
        value = elem.value
        if isinstance(value, (list, tuple)) or (
            value is not None and hasattr(value, "__iter__") and not isinstance(value, str)
        ):
            return [str(v) for v in value]
        text = "" if value is None else str(value)
    text = text.strip(" \x00")
    return text.split("\\") if text else []


def _non_ascii(value: object) -> bool:
    return any(ord(c) > 127 for c in str(value))


def check_rt_record(ds: Dataset) -> list[Finding]:
    """All findings for one RT Beams Treatment Record; an empty list means it passed every check."""
    out: list[Finding] = []
    _check_sop(ds, out)
    _check_values(ds, out)
    _check_plan_references(ds, out)
    _check_machine_and_setup(ds, out)
    for b, beam in enumerate(ds.get("TreatmentSessionBeamSequence") or []):
        _check_beam(beam, f"TreatmentSessionBeamSequence[{b}].", out)
    return out


def _check_sop(ds: Dataset, out: list[Finding]) -> None:
    """Top-level Type 1/2 attributes, the SOP class (PS3.3 C.12.1) and the file meta (PS3.10 7.1)."""
    for kw in _TOP_TYPE1:
        _type1(ds, kw, "", out)
    for kw in _TOP_TYPE2:
        _type2(ds, kw, "", out)
    if ds.get("SOPClassUID") not in (None, "") and ds.SOPClassUID != RT_BEAMS_TREATMENT_RECORD_STORAGE:
        out.append(
            Finding("SOPClassUID", "not RT Beams Treatment Record Storage (1.2.840.10008.5.1.4.1.1.481.4)")
        )
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPClassUID" in meta:
        if meta.MediaStorageSOPClassUID != ds.get("SOPClassUID"):
            out.append(Finding("(0002,0002) MediaStorageSOPClassUID", "differs from SOPClassUID"))
        if meta.get("MediaStorageSOPInstanceUID") != ds.get("SOPInstanceUID"):
            out.append(Finding("(0002,0003) MediaStorageSOPInstanceUID", "differs from SOPInstanceUID"))


def _check_values(ds: Dataset, out: list[Finding]) -> None:
    """Enumerated values, UID syntax (PS3.5 9.1) and SpecificCharacterSet (Type 1C, PS3.3 C.12.1.1.2)."""
    _enum(ds, "Modality", {"RTRECORD"}, "", out)
    _enum(ds, "PatientSex", _SEX_VALUES, "", out, empty_ok=True, quote=False)
    _enum(ds, "PrimaryDosimeterUnit", enums.PRIMARY_DOSIMETER_UNIT_VALUES, "", out)
    for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not _empty(ds.get(kw)) and not is_valid_uid(str(ds[kw].value)):
            out.append(
                Finding(kw, "not a valid UID (digits and dots, no leading zeros, at most 64 characters)")
            )
    if "SpecificCharacterSet" not in ds and any(_non_ascii(ds.get(kw, "")) for kw in _TEXT_FOR_CHARSET):
        out.append(Finding("SpecificCharacterSet", "missing although text values are not ASCII (Type 1C)"))


def _check_plan_references(ds: Dataset, out: list[Finding]) -> None:
    """ReferencedRTPlanSequence (PS3.3 C.8.8.17): zero or one item, an RT Plan with a valid UID."""
    refs = ds.get("ReferencedRTPlanSequence")
    if refs is None:
        return
    if len(refs) > 1:
        out.append(Finding("ReferencedRTPlanSequence", "more than one item (zero or one allowed)"))
    for i, item in enumerate(refs):
        path = f"ReferencedRTPlanSequence[{i}]."
        if _type1(item, "ReferencedSOPClassUID", path, out) and item.ReferencedSOPClassUID != RT_PLAN_STORAGE:
            out.append(Finding(f"{path}ReferencedSOPClassUID", "not RT Plan Storage"))
        if _type1(item, "ReferencedSOPInstanceUID", path, out) and not is_valid_uid(
            str(item.ReferencedSOPInstanceUID)
        ):
            out.append(Finding(f"{path}ReferencedSOPInstanceUID", "not a valid UID"))


def _check_machine_and_setup(ds: Dataset, out: list[Finding]) -> None:
    """TreatmentMachineSequence (PS3.3 C.8.8.18, exactly one item) and PatientSetupSequence (C.8.8.12)."""
    machines = ds.get("TreatmentMachineSequence")
    if machines is not None and len(machines) != 1:
        out.append(Finding("TreatmentMachineSequence", f"has {len(machines)} items (exactly one required)"))
    for i, item in enumerate(machines or []):
        for kw in _MACHINE_TYPE2:
            _type2(item, kw, f"TreatmentMachineSequence[{i}].", out)

    for i, setup in enumerate(ds.get("PatientSetupSequence") or []):
        path = f"PatientSetupSequence[{i}]."
        _type1(setup, "PatientSetupNumber", path, out)
        if "PatientPosition" not in setup and "PatientAdditionalPosition" not in setup:
            out.append(
                Finding(f"{path}PatientPosition", "Type 1C: PatientPosition or PatientAdditionalPosition")
            )


def check_rt_record_file(path: str | os.PathLike[str]) -> list[Finding]:
    """check_rt_record of a PS3.10 file as read back from disk."""
    return check_rt_record(dcmread(path))


def check_rt_record_files(
    paths: Sequence[str | os.PathLike[str]], *, workers: int | None = None, pool_from: int = 200
) -> Iterator[tuple[Path, list[Finding]]]:
    """(path, findings) for every file, in order. Parsing with pydicom is CPU-bound and holds the GIL, so
    from `pool_from` files on (fewer cost more to start than they save) they are checked in `workers`
    processes (default: the CPU count, at most 4; 2,100 records: 15.7 s in one, 8.9 s in two on 2 cores),
    spawned rather than forked because the caller (a Dagster run) has threads of its own."""
    workers = workers or min(4, os.cpu_count() or 1)
    if workers < 2 or len(paths) < pool_from:
        for path in paths:
            yield Path(path), check_rt_record_file(path)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        chunksize = max(1, min(64, len(paths) // (4 * workers)))
        yield from zip(
            (Path(p) for p in paths), pool.map(check_rt_record_file, paths, chunksize=chunksize), strict=True
        )


def _check_beam(beam: Dataset, path: str, out: list[Finding]) -> None:
    """One TreatmentSessionBeamSequence item (PS3.3 C.8.8.21 RT Beams Session Record)."""
    for kw in _BEAM_TYPE1:
        _type1(beam, kw, path, out)
    for kw in _BEAM_TYPE2:
        _type2(beam, kw, path, out)
    _enum(beam, "BeamType", enums.BEAM_TYPE_VALUES, path, out)
    _enum(beam, "RadiationType", enums.RADIATION_TYPE_VALUES, path, out)
    _enum(beam, "TreatmentTerminationStatus", enums.TERMINATION_STATUS_VALUES, path, out)
    _enum(beam, "TreatmentVerificationStatus", enums.VERIFICATION_STATUS_VALUES, path, out, empty_ok=True)
    _enum(beam, "TreatmentDeliveryType", enums.TREATMENT_DELIVERY_TYPE_VALUES, path, out, empty_ok=True)
    pairs = _leaf_pairs(beam, path, out)
    _check_wedges(beam, path, out)
    _check_control_points(beam, pairs, path, out)


def _leaf_pairs(beam: Dataset, path: str, out: list[Finding]) -> dict[str, int]:
    """BeamLimitingDeviceLeafPairsSequence: device type -> NumberOfLeafJawPairs (1 for a jaw pair)."""
    pairs: dict[str, int] = {}
    for d, item in enumerate(beam.get("BeamLimitingDeviceLeafPairsSequence") or []):
        dpath = f"{path}BeamLimitingDeviceLeafPairsSequence[{d}]."
        if _type1(item, "RTBeamLimitingDeviceType", dpath, out):
            _enum(item, "RTBeamLimitingDeviceType", _DEVICE_TYPES, dpath, out)
        if _type1(item, "NumberOfLeafJawPairs", dpath, out):
            device = str(item.get("RTBeamLimitingDeviceType", ""))
            if device in pairs:
                out.append(Finding(f"{dpath}RTBeamLimitingDeviceType", "device listed twice"))
            pairs[device] = int(item.NumberOfLeafJawPairs)
            if device in ("X", "Y", "ASYMX", "ASYMY") and pairs[device] != 1:
                out.append(Finding(f"{dpath}NumberOfLeafJawPairs", "must be 1 for a jaw pair"))
    return pairs


def _check_wedges(beam: Dataset, path: str, out: list[Finding]) -> None:
    wedges = beam.get("NumberOfWedges")
    if wedges in (None, "") or int(wedges) <= 0:
        return
    recorded = beam.get("RecordedWedgeSequence")
    if not recorded:
        out.append(Finding(f"{path}RecordedWedgeSequence", "Type 1C: required when NumberOfWedges > 0"))
        return
    for w, wedge in enumerate(recorded):
        _type2(wedge, "WedgeType", f"{path}RecordedWedgeSequence[{w}].", out)


def _check_control_points(beam: Dataset, pairs: dict[str, int], path: str, out: list[Finding]) -> None:
    """ControlPointDeliverySequence: the count, every point, cumulative metersets and the delivered total."""
    cps = beam.get("ControlPointDeliverySequence") or []
    declared = beam.get("NumberOfControlPoints")
    if declared not in (None, "") and int(declared) != len(cps):
        out.append(
            Finding(
                f"{path}NumberOfControlPoints", f"is {int(declared)} but the sequence has {len(cps)} items"
            )
        )
    previous_delivered: Decimal | None = None
    previous_specified: Decimal | None = None
    for c, cp in enumerate(cps):
        cpath = f"{path}ControlPointDeliverySequence[{c}]."
        _check_control_point(cp, c, pairs, cpath, out)
        previous_delivered = _cumulative(cp, "DeliveredMeterset", previous_delivered, cpath, out)
        previous_specified = _cumulative(cp, "SpecifiedMeterset", previous_specified, cpath, out)
    total = beam.get("DeliveredPrimaryMeterset")
    total_number = None if _empty(total) else _number(total)
    if cps and total_number is not None and previous_delivered is not None:  # noqa: SIM102
        if abs(total_number - previous_delivered) > Decimal("0.001"):
            out.append(Finding(f"{path}DeliveredPrimaryMeterset", "differs from the last DeliveredMeterset"))


def _check_control_point(cp: Dataset, c: int, pairs: dict[str, int], cpath: str, out: list[Finding]) -> None:
    """One control point: Type 1/2, energy unit, angles and directions, the CP0 conditions, positions."""
    for kw in _CP_TYPE1:
        _type1(cp, kw, cpath, out)
    for kw in _CP_TYPE2:
        _type2(cp, kw, cpath, out)
    has_energy = not _empty(_value(cp, "NominalBeamEnergy"))
    if has_energy and _type1(cp, "NominalBeamEnergyUnit", cpath, out):
        _enum(cp, "NominalBeamEnergyUnit", enums.ENERGY_UNIT_VALUES, cpath, out)
    for angle_kw, dir_kw in _ANGLE_PAIRS:
        _check_angle(cp, c, angle_kw, dir_kw, cpath, out)
    if c == 0:
        for kw in _CP0_TYPE2C:
            _type2(cp, kw, cpath, out)
    _check_positions(cp, c, pairs, cpath, out)


def _check_angle(cp: Dataset, c: int, angle_kw: str, dir_kw: str, cpath: str, out: list[Finding]) -> None:
    """An angle and its rotation direction: both required at CP0, given together later, angle in [0, 360)."""
    if c == 0:
        _type1(cp, angle_kw, cpath, out)
        _type1(cp, dir_kw, cpath, out)
    elif (_TAGS[angle_kw] in cp) != (_TAGS[dir_kw] in cp):
        out.append(Finding(f"{cpath}{dir_kw}", f"{angle_kw} and {dir_kw} must be given together"))
    _enum(cp, dir_kw, enums.ROTATION_DIRECTION_VALUES, cpath, out)
    angle_value = _value(cp, angle_kw)
    if not _empty(angle_value):
        angle = _number(angle_value)
        if angle is None or not (0 <= angle < 360):
            out.append(Finding(f"{cpath}{angle_kw}", "must be in [0, 360)"))


def _cumulative(
    cp: Dataset, keyword: str, previous: Decimal | None, cpath: str, out: list[Finding]
) -> Decimal | None:
    """Flag a cumulative meterset that decreases; the last value seen so far (a NULL keeps the previous)."""
    value = _value(cp, keyword)
    number = _number(value) if not _empty(value) else None
    if number is not None and previous is not None and number < previous:
        out.append(Finding(f"{cpath}{keyword}", "decreases (it is cumulative)"))
    return number if number is not None else previous


def _check_positions(cp: Dataset, index: int, pairs: dict[str, int], cpath: str, out: list[Finding]) -> None:
    positions = _value(cp, "BeamLimitingDevicePositionSequence")
    if positions is None:
        if index == 0:
            out.append(
                Finding(f"{cpath}BeamLimitingDevicePositionSequence", "Type 1C: required at control point 0")
            )
        return
    seen = set()
    for p, item in enumerate(cast(Sequence[Dataset], positions)):
        ppath = f"{cpath}BeamLimitingDevicePositionSequence[{p}]."
        if not _type1(item, "RTBeamLimitingDeviceType", ppath, out):
            continue
        device = str(_value(item, "RTBeamLimitingDeviceType"))
        seen.add(device)
        if device not in pairs:
            out.append(
                Finding(
                    f"{ppath}RTBeamLimitingDeviceType", "device not in BeamLimitingDeviceLeafPairsSequence"
                )
            )
            continue
        values = _multi_strings(item, _LEAF_JAW_POSITIONS)
        if values is None or not any(v.strip() for v in values):
            problem = "Type 1 attribute missing" if values is None else "Type 1 attribute empty"
            out.append(Finding(f"{ppath}LeafJawPositions", problem))
            continue
        if len(values) != 2 * pairs[device]:
            out.append(
                Finding(
                    f"{ppath}LeafJawPositions",
                    f"has {len(values)} values; NumberOfLeafJawPairs {pairs[device]} "
                    f"needs {2 * pairs[device]}",
                )
            )
            continue
        numbers = [_float(v) for v in values]
        if any(n is None for n in numbers):
            out.append(Finding(f"{ppath}LeafJawPositions", "non-numeric value"))
            continue
        n = pairs[device]
        crossed = [i + 1 for i in range(n) if numbers[i] > numbers[n + i]]  # type: ignore[operator]
        if crossed:
            out.append(
                Finding(
                    f"{ppath}LeafJawPositions",
                    f"bank 1 beyond bank 2 for {len(crossed)} pair(s), first pair {crossed[0]} "
                    "(leaf/jaw sign or bank order wrong)",
                )
            )
    if index == 0:
        for device in sorted(set(pairs) - seen):
            out.append(
                Finding(f"{cpath}BeamLimitingDevicePositionSequence", f"no {device} item at control point 0")
            )
