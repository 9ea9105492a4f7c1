"""Our RT Beams Treatment Record checker: clean records give no findings, each mutation gives the
finding it should, including the control-point-0 rules dciodvfy does not check, and no PHI leaks."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_backup_dagster.rtrecord.builder import build_rt_record, encode_rt_record
from dicom_backup_dagster.rtrecord.conformance import Finding, check_rt_record, check_rt_record_files
from tests.rtrecord.test_model import ALL_KINDS, FIRST, IDA, LAST, step_and_shoot_delivery


def fresh() -> Dataset:
    """A decoded copy (mutations then act on normal pydicom elements)."""
    return dcmread(BytesIO(encode_rt_record(build_rt_record(step_and_shoot_delivery()))))


def beam(ds: Dataset) -> Any:
    return ds.TreatmentSessionBeamSequence[0]


def cp(ds: Dataset, i: int = 0) -> Any:
    return beam(ds).ControlPointDeliverySequence[i]


def bld(ds: Dataset, device: str, i: int = 0) -> Any:
    return next(
        p for p in cp(ds, i).BeamLimitingDevicePositionSequence if p.RTBeamLimitingDeviceType == device
    )


def _set(obj: Any, keyword: str, value: Any) -> None:
    setattr(obj, keyword, value)


MUTATIONS: dict[str, tuple[Callable[[Dataset], None], str, str]] = {
    # name: (mutation, expected path suffix, expected words in the problem)
    "no termination status": (
        lambda ds: delattr(beam(ds), "TreatmentTerminationStatus"),
        "TreatmentTerminationStatus",
        "Type 1 attribute missing",
    ),
    "empty beam type": (lambda ds: _set(beam(ds), "BeamType", ""), "BeamType", "Type 1 attribute empty"),
    "bad beam type": (lambda ds: _set(beam(ds), "BeamType", "ARC"), "BeamType", "'ARC' is not one of"),
    "bad radiation type": (
        lambda ds: _set(beam(ds), "RadiationType", "UNKNOWN"),
        "RadiationType",
        "not one of",
    ),
    "seed termination value": (
        lambda ds: _set(beam(ds), "TreatmentTerminationStatus", "OPERATOR_INITIATED"),
        "TreatmentTerminationStatus",
        "not one of",
    ),
    "bad verification": (
        lambda ds: _set(beam(ds), "TreatmentVerificationStatus", "VERIFED"),
        "TreatmentVerificationStatus",
        "not one of",
    ),
    "delivery type on beam type": (
        lambda ds: _set(beam(ds), "TreatmentDeliveryType", "STATIC"),
        "TreatmentDeliveryType",
        "not one of",
    ),
    "bad dosimeter unit": (
        lambda ds: _set(ds, "PrimaryDosimeterUnit", "Gantry"),
        "PrimaryDosimeterUnit",
        "not one of",
    ),
    "modality RTPLAN": (lambda ds: _set(ds, "Modality", "RTPLAN"), "Modality", "not one of ['RTRECORD']"),
    "RT Dose SOP class": (
        lambda ds: _set(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.481.2"),
        "SOPClassUID",
        "not RT Beams Treatment Record",
    ),
    "no patient id (type 2)": (lambda ds: delattr(ds, "PatientID"), "PatientID", "Type 2 attribute missing"),
    "no series number": (lambda ds: delattr(ds, "SeriesNumber"), "SeriesNumber", "Type 2 attribute missing"),
    "no machine sequence": (
        lambda ds: delattr(ds, "TreatmentMachineSequence"),
        "TreatmentMachineSequence",
        "Type 1 attribute missing",
    ),
    "cp0 without gantry angle": (
        lambda ds: delattr(cp(ds), "GantryAngle"),
        "ControlPointDeliverySequence[0].GantryAngle",
        "Type 1 attribute missing",
    ),
    "cp0 without couch direction": (
        lambda ds: delattr(cp(ds), "PatientSupportRotationDirection"),
        "PatientSupportRotationDirection",
        "Type 1 attribute missing",
    ),
    "cp0 without pitch": (lambda ds: delattr(cp(ds), "TableTopPitchAngle"), "TableTopPitchAngle", "missing"),
    "cp0 without table vertical": (
        lambda ds: delattr(cp(ds), "TableTopVerticalPosition"),
        "TableTopVerticalPosition",
        "Type 2 attribute missing",
    ),
    "cp0 without BLD positions": (
        lambda ds: delattr(cp(ds), "BeamLimitingDevicePositionSequence"),
        "BeamLimitingDevicePositionSequence",
        "required at control point 0",
    ),
    "cp0 without MLC item": (
        lambda ds: cp(ds).BeamLimitingDevicePositionSequence.pop(),
        "BeamLimitingDevicePositionSequence",
        "no MLCX item at control point 0",
    ),
    "no delivered meterset": (
        lambda ds: delattr(cp(ds, 3), "DeliveredMeterset"),
        "DeliveredMeterset",
        "Type 1 attribute missing",
    ),
    "control point count": (
        lambda ds: _set(beam(ds), "NumberOfControlPoints", 11),
        "NumberOfControlPoints",
        "is 11 but the sequence has 10 items",
    ),
    "leaf pairs vs positions": (
        lambda ds: _set(bld(ds, "MLCX"), "LeafJawPositions", list(bld(ds, "MLCX").LeafJawPositions)[:-2]),
        "LeafJawPositions",
        "needs 160",
    ),
    "crossed leaves (sign error)": (
        lambda ds: _set(bld(ds, "MLCX"), "LeafJawPositions", [-v for v in bld(ds, "MLCX").LeafJawPositions]),
        "LeafJawPositions",
        "bank 1 beyond bank 2",
    ),
    "swapped jaws": (
        lambda ds: _set(bld(ds, "ASYMY"), "LeafJawPositions", [65, -60]),
        "LeafJawPositions",
        "bank 1 beyond bank 2",
    ),
    "bad direction": (
        lambda ds: _set(cp(ds), "GantryRotationDirection", "CCW"),
        "GantryRotationDirection",
        "not one of",
    ),
    "angle without direction later": (
        lambda ds: delattr(cp(ds, 2), "GantryRotationDirection"),
        "ControlPointDeliverySequence[2].GantryRotationDirection",
        "together",
    ),
    "angle out of range": (lambda ds: _set(cp(ds), "GantryAngle", 360), "GantryAngle", "[0, 360)"),
    "energy without unit": (
        lambda ds: delattr(cp(ds), "NominalBeamEnergyUnit"),
        "NominalBeamEnergyUnit",
        "Type 1 attribute missing",
    ),
    "kV energy unit": (
        lambda ds: _set(cp(ds), "NominalBeamEnergyUnit", "KV"),
        "NominalBeamEnergyUnit",
        "not one of",
    ),
    "meterset decreases": (
        lambda ds: _set(cp(ds, 4), "DeliveredMeterset", 1),
        "DeliveredMeterset",
        "decreases",
    ),
    "total differs": (
        lambda ds: _set(beam(ds), "DeliveredPrimaryMeterset", 17),
        "DeliveredPrimaryMeterset",
        "differs",
    ),
    "bad UID": (lambda ds: _set(ds, "SeriesInstanceUID", "1.2.03.4"), "SeriesInstanceUID", "not a valid UID"),
    "plan ref class": (
        lambda ds: _set(ds.ReferencedRTPlanSequence[0], "ReferencedSOPClassUID", "1.2.3"),
        "ReferencedSOPClassUID",
        "not RT Plan Storage",
    ),
    "wedges without sequence": (
        lambda ds: _set(beam(ds), "NumberOfWedges", 1),
        "RecordedWedgeSequence",
        "Type 1C",
    ),
    "charset removed": (lambda ds: delattr(ds, "SpecificCharacterSet"), "SpecificCharacterSet", "not ASCII"),
    "no leaf pair count": (
        lambda ds: delattr(beam(ds).BeamLimitingDeviceLeafPairsSequence[2], "NumberOfLeafJawPairs"),
        "NumberOfLeafJawPairs",
        "missing",
    ),
}


@pytest.mark.parametrize("kind", sorted(ALL_KINDS))
def test_generated_records_have_no_findings(kind: str) -> None:
    ds = build_rt_record(ALL_KINDS[kind]())
    assert check_rt_record(ds) == []
    assert check_rt_record(dcmread(BytesIO(encode_rt_record(ds)))) == []


@pytest.mark.filterwarnings("ignore:.*(Invalid value|exceeds the maximum length).*:UserWarning")
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutation_is_found(name: str) -> None:
    mutate, path_suffix, words = MUTATIONS[name]
    ds = fresh()
    assert check_rt_record(ds) == []
    mutate(ds)
    findings = check_rt_record(ds)
    matching = [f for f in findings if f.path.endswith(path_suffix) and words in f.problem]
    assert matching, f"expected {path_suffix!r} / {words!r}, got {[str(f) for f in findings]}"


def test_verified_values_are_accepted_unlike_dciodvfy() -> None:
    for value in ("VERIFIED", "NOT_VERIFIED", "VERIFIED_OVR", ""):
        ds = fresh()
        beam(ds).TreatmentVerificationStatus = value
        assert check_rt_record(ds) == []


@pytest.mark.filterwarnings("ignore:.*(Invalid value|exceeds the maximum length).*:UserWarning")
def test_findings_never_quote_patient_data() -> None:
    ds = fresh()
    ds.PatientSex = f"{LAST}{IDA}"  # garbage in an enumerated PHI-adjacent attribute: quoted at most 16 chars
    del ds.SpecificCharacterSet
    del ds.PatientBirthDate
    findings = check_rt_record(ds)
    assert any(f.path == "PatientSex" for f in findings)
    text = " ".join(str(f) for f in findings)
    for secret in (FIRST, IDA, "1961", LAST):
        assert secret not in text
    assert all(isinstance(f, Finding) for f in findings)


def test_files_checked_in_worker_processes_match_one_by_one(tmp_path: Path) -> None:
    paths = []
    for kind, delivery in ALL_KINDS.items():
        path = tmp_path / f"{kind}.dcm"
        path.write_bytes(encode_rt_record(build_rt_record(delivery())))
        paths.append(path)
    bad = fresh()
    beam(bad).BeamType = "ARC"
    del cp(bad, 0).GantryAngle
    bad.save_as(tmp_path / "bad.dcm")
    paths.insert(1, tmp_path / "bad.dcm")
    serial = list(check_rt_record_files(paths, workers=1))
    pooled = list(check_rt_record_files(paths, workers=2, pool_from=1))
    assert pooled == serial
    assert [p for p, findings in pooled if findings] == [tmp_path / "bad.dcm"]
    assert {f.path.rsplit(".", 1)[-1] for f in dict(pooled)[tmp_path / "bad.dcm"]} == {
        "BeamType",
        "GantryAngle",
    }
