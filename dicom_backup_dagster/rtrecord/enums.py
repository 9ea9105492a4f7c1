"""Mosaiq enumeration codes -> DICOM RT Beams Treatment Record values (PS3.3 C.8.8.21, C.8.8.17, C.7.1.1).

The Mosaiq codes come from public code (pymedphys `constants.py` / `tolerance_constants.py`); how they
map to DICOM is **our proposal, not verified against Elekta documentation** (docs/decisions/rt-records.md).
Every function here is total: an unknown code or NULL either maps to a documented DICOM value, to
``None`` (the caller then omits an optional attribute or writes an empty Type 2 value), or raises
`RecordQuarantined` when a Type 1 value cannot be derived. Exception reasons carry only database keys
(DHS_ID, FLD_ID) and enumeration codes, never patient data.

Decisions worth knowing (all unverified on a live Mosaiq):
- Termination status NULL/unknown -> UNKNOWN (a defined value, PS3.3 C.8.8.21: "UNKNOWN").
- Verification status 0/NULL/unknown -> empty Type 2 value (we do not know it was verified).
- Energy unit kV (1), 0 or NULL -> no NominalBeamEnergy at all (Type 3; DICOM has MV and MEV only).
- Modality Ir-192 (brachytherapy), Ion, 0/NULL/User/unknown -> quarantine: RadiationType is Type 1 and
  only PHOTON/ELECTRON/NEUTRON/PROTON are defined for this IOD (ions and brachy have their own IODs).
- Meterset unit mAs, MP, 0/NULL/unknown -> quarantine (PrimaryDosimeterUnit Type 1: MU or MINUTE);
  Seconds -> MINUTE with metersets divided by 60.
- Field types: imaging-only fields (kV Setup, CT, MV CT) make no treatment record (`RecordSkipped`);
  MV Setup -> SETUP, Port -> TRMT_PORTFILM; Helical, Shot, PDR cannot be expressed as an RT Beams
  record -> quarantine; unknown -> TREATMENT is *not* assumed: the Type 2 value is left empty.
- Rotation directions (`Gantry_Dir_Enum`, `Coll_Dir_Enum`, `Couch_Ang_Dir_Enum`): no public mapping
  exists. `DIRECTION_ENUM` is deliberately empty; directions are derived from consecutive control-point
  angles instead (see `rotation_direction`). A site that confirms the codes can pass its own mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType


class RecordQuarantined(Exception):
    """A delivery cannot become a conformant RT Beams Treatment Record: a Type 1 value is underivable.

    ``reason`` names database keys and codes only (e.g. "DHS_ID 123: Modality_Enum 8 ..."), never PHI,
    so it is safe for logs, Dagster metadata and alerts.
    """

    def __init__(self, reason: str, *, dhs_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dhs_id = dhs_id


class RecordSkipped(Exception):
    """A delivery that is not a treatment beam (an imaging-only field): no record is made, by design."""

    def __init__(self, reason: str, *, dhs_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dhs_id = dhs_id


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(d)


# --- Dose_Hst.Termination_Status_Enum -> TreatmentTerminationStatus (3008,002A), Type 1 -------------------
TERMINATION_STATUS: Mapping[int, str] = _frozen({0: "UNKNOWN", 1: "NORMAL", 2: "OPERATOR", 3: "MACHINE"})
TERMINATION_STATUS_VALUES = frozenset({"NORMAL", "OPERATOR", "MACHINE", "UNKNOWN"})


def termination_status(code: int | None) -> str:
    """Unknown codes and NULL map to UNKNOWN, the standard's own value for "not known"."""
    if code is None:
        return "UNKNOWN"
    return TERMINATION_STATUS.get(code, "UNKNOWN")


# --- Dose_Hst.Termination_Verify_Status_Enum -> TreatmentVerificationStatus (3008,002C), Type 2 ----------
VERIFICATION_STATUS: Mapping[int, str] = _frozen({1: "VERIFIED", 2: "VERIFIED_OVR", 3: "NOT_VERIFIED"})
VERIFICATION_STATUS_VALUES = frozenset({"VERIFIED", "VERIFIED_OVR", "NOT_VERIFIED"})


def verification_status(code: int | None) -> str | None:
    """0 (Unspecified), NULL and unknown codes -> None, written as an empty Type 2 value."""
    if code is None:
        return None
    return VERIFICATION_STATUS.get(code)


# --- Energy_Unit_Enum -> NominalBeamEnergyUnit (300A,0015), Type 1C when NominalBeamEnergy is present ----
ENERGY_UNIT: Mapping[int, str] = _frozen({2: "MV", 3: "MEV"})
ENERGY_UNIT_VALUES = frozenset({"MV", "MEV"})


def energy_unit(code: int | None) -> str | None:
    """kV (1), Unspecified (0), NULL, unknown -> None: the caller omits NominalBeamEnergy (Type 3)."""
    if code is None:
        return None
    return ENERGY_UNIT.get(code)


# --- Modality_Enum -> RadiationType (300A,00C6), Type 1 ---------------------------------------------------
RADIATION_TYPE: Mapping[int, str] = _frozen(
    {
        1: "PHOTON",  # X-rays
        2: "ELECTRON",
        3: "PHOTON",  # Co-60 gamma
        4: "PHOTON",  # orthovoltage X-rays
        5: "ELECTRON",  # "E H/D": electron high dose (e.g. TSET); unverified reading of the label
        6: "PROTON",
        7: "PHOTON",  # kV X-rays
    }
)
RADIATION_TYPE_VALUES = frozenset({"PHOTON", "ELECTRON", "NEUTRON", "PROTON"})
_MODALITY_OTHER_IOD = {8: "Ir-192 (brachytherapy)", 9: "Ion"}


def radiation_type(code: int | None, *, dhs_id: int | None = None) -> str:
    if code is not None and code in RADIATION_TYPE:
        return RADIATION_TYPE[code]
    if code in _MODALITY_OTHER_IOD:
        why = f"Modality_Enum {code} ({_MODALITY_OTHER_IOD[code]}) has no RT Beams Treatment Record "
        why += "RadiationType"
    else:
        why = f"Modality_Enum {code!r} is unspecified or unknown, so RadiationType (Type 1) cannot be derived"
    raise RecordQuarantined(f"DHS_ID {dhs_id}: {why}", dhs_id=dhs_id)


# --- MetersetUnit_Enum -> PrimaryDosimeterUnit (300A,00B3), Type 1 ----------------------------------------
@dataclass(frozen=True)
class DosimeterUnit:
    """A DICOM unit plus the factor that turns Mosaiq meterset values into it."""

    dicom: str
    factor: Decimal


METERSET_UNIT: Mapping[int, DosimeterUnit] = _frozen(
    {
        1: DosimeterUnit("MU", Decimal(1)),
        4: DosimeterUnit("MINUTE", Decimal(1)),
        5: DosimeterUnit("MINUTE", Decimal(1) / Decimal(60)),  # Seconds
    }
)
PRIMARY_DOSIMETER_UNIT_VALUES = frozenset({"MU", "MINUTE", "NP"})


def primary_dosimeter_unit(code: int | None, *, dhs_id: int | None = None) -> DosimeterUnit:
    if code is not None and code in METERSET_UNIT:
        return METERSET_UNIT[code]
    raise RecordQuarantined(
        f"DHS_ID {dhs_id}: MetersetUnit_Enum {code!r} (0 Unspecified, 2 mAs, 3 MP or unknown) has no "
        "PrimaryDosimeterUnit (Type 1, MU or MINUTE)",
        dhs_id=dhs_id,
    )


# --- TxField.Type_Enum -> BeamType (300A,00C4) and TreatmentDeliveryType (300A,00CE) ----------------------
@dataclass(frozen=True)
class FieldType:
    """What a Mosaiq field type means for the record.

    ``delivery_type`` None means "write an empty Type 2 value". ``dynamic`` True forces BeamType DYNAMIC;
    False lets the control points decide (a field whose geometry changes between control points is
    DYNAMIC whatever its declared type: PS3.3 C.8.8.14.1 "one or more beam parameters changes").
    ``makes_record`` False: imaging-only field, no treatment record. ``representable`` False: quarantine.
    """

    code: int | None
    label: str
    delivery_type: str | None
    dynamic: bool = False
    makes_record: bool = True
    representable: bool = True
    is_setup: bool = False


_FT = FieldType
FIELD_TYPES: Mapping[int, FieldType] = _frozen(
    {
        0: _FT(0, "Unspecified", None),
        1: _FT(1, "Static", "TREATMENT"),
        2: _FT(2, "StepNShoot", "TREATMENT", dynamic=True),
        3: _FT(3, "Setup", "SETUP", is_setup=True),
        4: _FT(4, "kV Setup", "SETUP", makes_record=False, is_setup=True),
        5: _FT(5, "CT", "SETUP", makes_record=False, is_setup=True),
        6: _FT(6, "Port", "TRMT_PORTFILM", is_setup=True),
        7: _FT(7, "Fixed", "TREATMENT"),
        8: _FT(8, "Dynamic", "TREATMENT", dynamic=True),
        9: _FT(9, "MV CT", "SETUP", makes_record=False, is_setup=True),
        11: _FT(11, "Arc", "TREATMENT", dynamic=True),
        12: _FT(12, "Skip Arcs", "TREATMENT", dynamic=True),
        13: _FT(13, "VMAT", "TREATMENT", dynamic=True),
        14: _FT(14, "DMLC", "TREATMENT", dynamic=True),
        15: _FT(15, "Helical", "TREATMENT", dynamic=True, representable=False),
        16: _FT(16, "Fixed Angle", "TREATMENT"),
        17: _FT(17, "Path", "TREATMENT", dynamic=True),
        18: _FT(18, "Shot", "TREATMENT", representable=False),
        20: _FT(20, "User Defined", None),
        21: _FT(21, "PDR", "TREATMENT", representable=False),
    }
)
BEAM_TYPE_VALUES = frozenset({"STATIC", "DYNAMIC"})
TREATMENT_DELIVERY_TYPE_VALUES = frozenset(
    {"TREATMENT", "OPEN_PORTFILM", "TRMT_PORTFILM", "CONTINUATION", "SETUP"}
)
SETUP_FIELD_TYPES = frozenset(code for code, ft in FIELD_TYPES.items() if ft.is_setup)
ARC_FIELD_TYPES = frozenset({11, 12, 13})


def field_type(code: int | None) -> FieldType:
    """Unknown codes and NULL -> an 'unknown' type: record made, empty TreatmentDeliveryType."""
    if code is not None and code in FIELD_TYPES:
        return FIELD_TYPES[code]
    return FieldType(code, "Unknown", None)


def beam_type(ft: FieldType, geometry_changes: bool) -> str:
    return "DYNAMIC" if ft.dynamic or geometry_changes else "STATIC"


# --- SiteSetup.Patient_Orient -> PatientPosition (0018,5100) -----------------------------------------------
PATIENT_POSITION: Mapping[int, str] = _frozen(
    {1: "HFS", 2: "HFP", 3: "HFDL", 4: "HFDR", 5: "FFS", 6: "FFP", 7: "FFDL", 8: "FFDR", 9: "SITTING"}
)


def patient_position(code: int | None) -> str | None:
    """0 Unknown, NULL, unknown -> None: the optional RT Patient Setup module is then left out."""
    if code is None:
        return None
    return PATIENT_POSITION.get(code)


# --- Patient.Sex -> PatientSex (0010,0040), Type 2, enumerated M/F/O --------------------------------------
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}


def patient_sex(raw: str | int | None) -> str | None:
    """Textual M/F/O in either short or long form. Unknown/NULL -> None (empty Type 2), not "O":
    "other" is a statement about the patient, "unknown" is a statement about our data."""
    if raw is None:
        return None
    return _SEX.get(str(raw).strip().upper())


# --- Rotation directions (CW/CC/NONE) ----------------------------------------------------------------------
ROTATION_DIRECTION_VALUES = frozenset({"CW", "CC", "NONE"})
#: Mosaiq ``*_Dir_Enum`` code -> DICOM direction. Empty on purpose: no public source documents the codes.
DIRECTION_ENUM: Mapping[int, str] = _frozen({})


class AmbiguousRotation(ValueError):
    """Two consecutive angles do not tell which way the axis turned."""


def rotation_direction(
    angle: Decimal,
    next_angle: Decimal | None,
    raw_code: int | None = None,
    direction_map: Mapping[int, str] = DIRECTION_ENUM,
) -> str:
    """Direction of rotation for the segment after a control point (PS3.3 C.8.8.21: "for segment
    following Control Point"), IEC 61217: increasing angle is clockwise (CW).

    NONE when the next angle is equal or absent (last control point). Otherwise a site-confirmed
    ``direction_map`` entry for ``raw_code`` wins; without one the shorter way round is taken.
    `AmbiguousRotation` for a step of exactly 180 degrees. The shorter way is only right when the axis
    really moved less than 180 degrees between the two points, so the record builder refuses two-point
    rotations (a 358-degree CW arc stored as two points looks exactly like a 2-degree CC step).
    """
    if next_angle is None:
        return "NONE"
    step = (next_angle - angle) % 360
    if step == 0:
        return "NONE"
    if raw_code is not None and raw_code in direction_map:
        return direction_map[raw_code]
    if step == 180:
        raise AmbiguousRotation("a 180 degree step has no shorter way round")
    return "CW" if step < 180 else "CC"
