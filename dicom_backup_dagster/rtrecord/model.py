"""Typed, immutable model of one delivered field of one fraction, as read from Mosaiq.

One `Delivery` = one ``Dose_Hst`` row (DHS_ID) with everything needed to write one DICOM RT Beams
Treatment Record (PS3.3 A.29): the patient, the treatment machine (a ``Staff`` row), the site
(prescription), the field (``TxField``), the as-treated control points (``TxFieldPoint_Hst`` via
``Fld_Hst``, or ``TxFieldPoint``), and the referenced RT Plan (``TxField.OriginalPlanUID``,
``DCMInstance``/``DCMSeries``/``DCMStudy``).

Values are normalised on construction so every ODBC driver looks the same: the SQLite3 ODBC driver
returns DECIMAL as ``str`` and FreeTDS/psqlODBC as ``Decimal`` (docs/decisions/rt-records.md), so numbers
become ``Decimal`` (exact; floats go through ``str``), integers and enum codes ``int``, datetimes
``datetime`` (ISO strings accepted), leaf sets ``bytes`` (never stripped: trailing zero bytes can be
leaf positions). Empty strings in numeric columns count as NULL.

PHI (patient name parts, IDA, birth date, sex) lives only in `Patient` and in the DICOM output.
``repr``/``str`` of every class here show database keys only, so a Delivery can appear in logs and
exception messages without leaking patient data.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar


class RecordValueError(ValueError):
    """A column value has the wrong type or format. The message names the column, never the value."""


_DECIMALS: dict[str, Decimal] = {}  # text -> Decimal memo (control points repeat angles, jaws, indexes)


def to_decimal(value: Any, column: str = "value") -> Decimal | None:
    """NULL/'' -> None; Decimal, int, float (via str) and numeric str -> Decimal."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if type(value) is str:
        # SQLite3 ODBC returns every DECIMAL as text: ~26 columns per control point, most of them values
        # seen before. Decimal is immutable, so one shared object per text is safe.
        found = _DECIMALS.get(value)
        if found is not None:
            return found
    if isinstance(value, bool):
        raise RecordValueError(f"{column}: boolean where a number was expected")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, (str, bytes)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        text = text.strip()
        if not text:
            return None
        try:
            result = Decimal(text)
        except InvalidOperation:
            raise RecordValueError(f"{column}: not a number") from None
        if not result.is_finite():
            raise RecordValueError(f"{column}: not a finite number")
        if type(value) is str and len(value) <= 32:
            if len(_DECIMALS) >= 100_000:
                _DECIMALS.clear()
            _DECIMALS[value] = result
        return result
    raise RecordValueError(f"{column}: unsupported type {type(value).__name__}")


def to_int(value: Any, column: str = "value") -> int | None:
    """NULL/'' -> None; int, integral Decimal/float/str -> int (bools allowed: bit columns)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    number = to_decimal(value, column)
    if number is None:
        return None
    if number != number.to_integral_value():
        raise RecordValueError(f"{column}: not an integer")
    return int(number)


def to_datetime(value: Any, column: str = "value") -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return dt.datetime.fromisoformat(text)
        except ValueError:
            raise RecordValueError(f"{column}: not an ISO date/time") from None
    raise RecordValueError(f"{column}: unsupported type {type(value).__name__}")


def to_date(value: Any, column: str = "value") -> dt.date | None:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    moment = to_datetime(value, column)
    return None if moment is None else moment.date()


def to_text(value: Any) -> str | None:
    """NULL -> None; text is kept as is apart from surrounding blanks (CHAR columns are space-padded)."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = text.strip()
    return text or None


def to_bytes(value: Any, column: str = "value") -> bytes | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise RecordValueError(f"{column}: expected binary data, got {type(value).__name__}")


_CONVERTERS = {
    "decimal": to_decimal,
    "int": to_int,
    "datetime": to_datetime,
    "date": to_date,
    "text": lambda v, _c: to_text(v),
    "bytes": to_bytes,
}


#: The type each kind already is when a driver hands it over ready (ints and bytes from every driver,
#: Decimals from SQL Server's): such values are kept without a converter call.
_READY: dict[str, type] = {"decimal": Decimal, "int": int, "datetime": dt.datetime, "bytes": bytes}
_PLANS: dict[type, list[tuple[str, Any, str, type | None]]] = {}


def _normalise(obj: Any) -> None:
    """Convert every column listed in the class's ``_COLUMNS`` (name -> (kind, Mosaiq column)) in place;
    the dataclasses are frozen, hence object.__setattr__."""
    plan = _PLANS.get(type(obj))
    if plan is None:
        plan = _PLANS[type(obj)] = [
            (n, _CONVERTERS[kind], column, _READY.get(kind)) for n, (kind, column) in obj._COLUMNS.items()
        ]
    values = obj.__dict__  # a frozen dataclass only guards __setattr__; this runs ~30 times per control point
    decimals = _DECIMALS
    for name, convert, column, ready in plan:
        raw = values[name]
        if raw is None or raw.__class__ is ready:  # NULL stays None for every kind
            continue
        if convert is to_decimal and raw.__class__ is str:
            # to_decimal's memo, looked up here: most of a day's ~900,000 DECIMAL texts were seen before
            converted = decimals.get(raw)
            if converted is not None:
                values[name] = converted
                continue
        converted = convert(raw, column)
        if converted is not raw:
            values[name] = converted


@dataclass(frozen=True, repr=False, kw_only=True)
class Patient:
    """Patient + Ident. Every field except ``pat_id1`` is PHI; repr shows none of them."""

    pat_id1: int
    ida: str | None = None
    last_name: str | None = None
    first_name: str | None = None
    middle_name: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    birth_date: dt.date | None = None
    sex: str | None = None

    _COLUMNS: ClassVar[dict[str, tuple[str, str]]] = {
        "pat_id1": ("int", "Patient.Pat_ID1"),
        "ida": ("text", "Ident.IDA"),
        "last_name": ("text", "Patient.Last_Name"),
        "first_name": ("text", "Patient.First_Name"),
        "middle_name": ("text", "Patient.MIddle_Name"),
        "prefix": ("text", "Patient.Prefix"),
        "suffix": ("text", "Patient.Suffix"),
        "birth_date": ("date", "Patient.Birth_DtTm"),
        "sex": ("text", "Patient.Sex"),
    }

    def __post_init__(self) -> None:
        _normalise(self)

    def __repr__(self) -> str:
        return "Patient(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True, kw_only=True)
class Machine:
    """A treatment machine: a ``Staff`` row (``Last_Name`` holds the machine name) plus optional details."""

    staff_id: int
    name: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    serial_number: str | None = None
    institution_name: str | None = None

    _COLUMNS: ClassVar[dict[str, tuple[str, str]]] = {
        "staff_id": ("int", "Staff.Staff_ID"),
        "name": ("text", "Staff.Last_Name"),
        "manufacturer": ("text", "Machine.Manufacturer"),
        "model": ("text", "Machine.Model"),
        "serial_number": ("text", "Machine.Serial_Number"),
        "institution_name": ("text", "Config.Inst_Name"),
    }

    def __post_init__(self) -> None:
        _normalise(self)


@dataclass(frozen=True, kw_only=True)
class Site:
    """``Site`` (prescription) and ``SiteSetup`` (orientation)."""

    sit_id: int
    sit_set_id: int | None = None
    fractions_planned: int | None = None
    patient_orientation: int | None = None

    _COLUMNS: ClassVar[dict[str, tuple[str, str]]] = {
        "sit_id": ("int", "Site.SIT_ID"),
        "sit_set_id": ("int", "Site.SIT_SET_ID"),
        "fractions_planned": ("int", "Site.Fractions"),
        "patient_orientation": ("int", "SiteSetup.Patient_Orient"),
    }

    def __post_init__(self) -> None:
        _normalise(self)


@dataclass(frozen=True, kw_only=True)
class Field:
    """``TxField``: the planned field. Distances in cm as stored, meterset in the field's unit."""

    #: None only for a field known from its Fld_Hst snapshot (joined by DHS_ID) whose Dose_Hst.FLD_ID is NULL
    fld_id: int | None
    label: str | None = None
    name: str | None = None
    type_enum: int | None = None
    modality_enum: int | None = None
    meterset: Decimal | None = None
    sad_cm: Decimal | None = None
    mlc_leaves: int | None = None
    #: RT Plan BeamNumber of this field, when the plan was imported (``TxField`` -> plan beam).
    beam_number: int | None = None
    #: Wedges on the field (Type 1 in the record). Mosaiq's wedge columns are not mapped yet: 0.
    number_of_wedges: int = 0
    #: STANDARD / DYNAMIC / MOTORIZED when a wedge is present; None -> empty Type 2 WedgeType.
    wedge_type: str | None = None
    #: None = unknown: written as empty Type 2 values, never as a claim of zero.
    number_of_blocks: int | None = None
    number_of_compensators: int | None = None
    number_of_boli: int | None = None

    _COLUMNS: ClassVar[dict[str, tuple[str, str]]] = {
        "fld_id": ("int", "TxField.FLD_ID"),
        "label": ("text", "TxField.Field_Label"),
        "name": ("text", "TxField.Field_Name"),
        "type_enum": ("int", "TxField.Type_Enum"),
        "modality_enum": ("int", "TxField.Modality_Enum"),
        "meterset": ("decimal", "TxField.Meterset"),
        "sad_cm": ("decimal", "TxField.Sad"),
        "mlc_leaves": ("int", "TxFieldPoint.MLC_Leaves"),
        "beam_number": ("int", "TxField.OriginalBeamNumber"),
        "number_of_wedges": ("int", "TxField.Wdg_Appl"),
        "wedge_type": ("text", "wedge type"),
        "number_of_blocks": ("int", "TxField.Block"),
        "number_of_compensators": ("int", "TxField.Comp_Fda"),
        "number_of_boli": ("int", "TxField.Bolus"),
    }

    def __post_init__(self) -> None:
        _normalise(self)


@dataclass(frozen=True, repr=False, kw_only=True)
class ControlPoint:
    """One as-treated control point (``TxFieldPoint_Hst``/``TxFieldPoint``). Angles in degrees,
    distances in cm as Mosaiq stores them (converted to mm only when the record is written)."""

    point: int
    #: ``[Index]``: cumulative meterset weight (pymedphys: a percentage; only ratios to the last point count).
    index: Decimal | None = None
    energy: Decimal | None = None
    energy_unit_enum: int | None = None
    gantry_angle: Decimal | None = None
    gantry_dir_enum: int | None = None
    coll_angle: Decimal | None = None
    coll_dir_enum: int | None = None
    couch_angle: Decimal | None = None
    couch_dir_enum: int | None = None
    couch_top_angle: Decimal | None = None
    couch_top_dir_enum: int | None = None
    couch_pitch: Decimal | None = None
    couch_pitch_dir_enum: int | None = None
    couch_roll: Decimal | None = None
    couch_roll_dir_enum: int | None = None
    coll_x1: Decimal | None = None
    coll_x2: Decimal | None = None
    coll_y1: Decimal | None = None
    coll_y2: Decimal | None = None
    a_leaf_set: bytes | None = None
    b_leaf_set: bytes | None = None
    couch_vertical: Decimal | None = None
    couch_lateral: Decimal | None = None
    couch_longitudinal: Decimal | None = None
    dose_rate: Decimal | None = None

    _COLUMNS: ClassVar[dict[str, tuple[str, str]]] = {
        "point": ("int", "Point"),
        "index": ("decimal", "[Index]"),
        "energy": ("decimal", "Energy"),
        "energy_unit_enum": ("int", "Energy_Unit_Enum"),
        "gantry_angle": ("decimal", "Gantry_Ang"),
        "gantry_dir_enum": ("int", "Gantry_Dir_Enum"),
        "coll_angle": ("decimal", "Coll_Ang"),
        "coll_dir_enum": ("int", "Coll_Dir_Enum"),
        "couch_angle": ("decimal", "Couch_Ang"),
        "couch_dir_enum": ("int", "Couch_Ang_Dir_Enum"),
        "couch_top_angle": ("decimal", "Couch_Top"),
        "couch_top_dir_enum": ("int", "Couch_Top_Dir_Enum"),
        "couch_pitch": ("decimal", "Couch_Pitch"),
        "couch_pitch_dir_enum": ("int", "Couch_Pitch_Dir_Enum"),
        "couch_roll": ("decimal", "Couch_Roll"),
        "couch_roll_dir_enum": ("int", "Couch_Roll_Dir_Enum"),
        "coll_x1": ("decimal", "Coll_X1"),
        "coll_x2": ("decimal", "Coll_X2"),
        "coll_y1": ("decimal", "Coll_Y1"),
        "coll_y2": ("decimal", "Coll_Y2"),
        "a_leaf_set": ("bytes", "A_Leaf_Set"),
        "b_leaf_set": ("bytes", "B_Leaf_Set"),
        "couch_vertical": ("decimal", "Couch_Vrt"),
        "couch_lateral": ("decimal", "Couch_Lat"),
        "couch_longitudinal": ("decimal", "Couch_Lng"),
        "dose_rate": ("decimal", "Meterset_Rate"),
    }

    def __post_init__(self) -> None:
        _normalise(self)

    def __repr__(self) -> str:
        return f"ControlPoint(point={self.point})"


@dataclass(frozen=True, kw_only=True)
class PlanReference:
    """The RT Plan the field belongs to (``TxField.OriginalPlanUID`` ->
    ``DCMInstance``/``DCMSeries``/``DCMStudy``).

    The record joins the plan's study (General Study module) but gets its own RTRECORD series.
    Study ID/description can carry free text, so repr shows UIDs only.
    """

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str | None = None
    study_id: str | None = field(default=None, repr=False)
    study_description: str | None = field(default=None, repr=False)
    study_datetime: dt.datetime | None = field(default=None, repr=False)
    accession_number: str | None = field(default=None, repr=False)
    referring_physician: str | None = field(default=None, repr=False)

    _COLUMNS: ClassVar[dict[str, tuple[str, str]]] = {
        "sop_instance_uid": ("text", "TxField.OriginalPlanUID"),
        "study_instance_uid": ("text", "DCMStudy.StudyInstanceUID"),
        "series_instance_uid": ("text", "DCMSeries.SeriesInstanceUID"),
        "study_id": ("text", "DCMStudy.StudyID"),
        "study_description": ("text", "DCMStudy.StudyDescription"),
        "study_datetime": ("datetime", "DCMStudy.Study_DtTm"),
        "accession_number": ("text", "AccessionNumber"),
        "referring_physician": ("text", "ReferringPhysician"),
    }

    def __post_init__(self) -> None:
        _normalise(self)


@dataclass(frozen=True, repr=False, kw_only=True)
class Delivery:
    """One delivered field of one fraction: one ``Dose_Hst`` row and what it joins to.

    ``delivered_meterset`` is ``Dose_Hst.Meterset`` (what was given); ``field.meterset`` is the plan.
    ``control_points`` are ordered by ``Point`` on construction.
    """

    dhs_id: int
    patient: Patient
    machine: Machine
    site: Site
    treatment_field: Field
    tx_datetime: dt.datetime
    fraction_number: int | None = None
    delivered_meterset: Decimal | None = None
    meterset_unit_enum: int | None = None
    modality_enum: int | None = None
    energy: Decimal | None = None
    energy_unit_enum: int | None = None
    termination_status_enum: int | None = None
    verify_status_enum: int | None = None
    control_points: tuple[ControlPoint, ...] = ()
    plan: PlanReference | None = None

    _COLUMNS: ClassVar[dict[str, tuple[str, str]]] = {
        "dhs_id": ("int", "Dose_Hst.DHS_ID"),
        "tx_datetime": ("datetime", "Dose_Hst.Tx_DtTm"),
        "fraction_number": ("int", "fraction number"),
        "delivered_meterset": ("decimal", "Dose_Hst.Meterset"),
        "meterset_unit_enum": ("int", "Dose_Hst.MetersetUnit_Enum"),
        "modality_enum": ("int", "Dose_Hst.Modality_Enum"),
        "energy": ("decimal", "Dose_Hst.Energy"),
        "energy_unit_enum": ("int", "Dose_Hst.Energy_Unit_Enum"),
        "termination_status_enum": ("int", "Dose_Hst.Termination_Status_Enum"),
        "verify_status_enum": ("int", "Dose_Hst.Termination_Verify_Status_Enum"),
    }

    def __post_init__(self) -> None:
        _normalise(self)
        for name, kind in (
            ("patient", Patient),
            ("machine", Machine),
            ("site", Site),
            ("treatment_field", Field),
        ):
            if not isinstance(getattr(self, name), kind):
                raise RecordValueError(f"Delivery DHS_ID {self.dhs_id}: {name} must be a {kind.__name__}")
        if self.tx_datetime is None:
            raise RecordValueError(f"Delivery DHS_ID {self.dhs_id}: Dose_Hst.Tx_DtTm is NULL")
        points = tuple(self.control_points)
        if any(not isinstance(cp, ControlPoint) for cp in points):
            raise RecordValueError(f"Delivery DHS_ID {self.dhs_id}: control_points must be ControlPoint")
        object.__setattr__(self, "control_points", tuple(sorted(points, key=lambda cp: cp.point)))

    @property
    def fld_id(self) -> int | None:
        return self.treatment_field.fld_id

    def __repr__(self) -> str:
        return (
            f"Delivery(dhs_id={self.dhs_id}, fld_id={self.treatment_field.fld_id}, "
            f"sit_id={self.site.sit_id}, "
            f"staff_id={self.machine.staff_id}, control_points={len(self.control_points)})"
        )

    __str__ = __repr__
