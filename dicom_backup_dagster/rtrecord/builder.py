"""Mosaiq `Delivery` -> DICOM RT Beams Treatment Record Storage (1.2.840.10008.5.1.4.1.1.481.4).

One record per delivered field per fraction (one ``Dose_Hst`` row), with every module PS3.3 A.29.3
marks M: Patient (C.7.1.1), General Study (C.7.2.1), RT Series (C.8.8.1), General Equipment (C.7.5.1),
RT General Treatment Record (C.8.8.17), RT Treatment Machine Record (C.8.8.18), RT Beams Session Record
(C.8.8.21) and SOP Common (C.12.1); RT Patient Setup (C.8.8.12, U) when the orientation is known.

API: `render_rt_record` (the pipeline's path: encoded file bytes + UIDs, ~300 VMAT or ~3,500 static
records/s) and `build_rt_record` (a pydicom Dataset for inspection; `encode_rt_record` of it gives the
same bytes), `record_uids`, `write_rt_record`; both raise `RecordQuarantined` / `RecordSkipped`.

Decisions:
- **Study**: the referenced RT Plan's study (DCMStudy), so records sit next to their plan. A delivery
  without a plan reference gets a deterministic study UID per (source, patient key, site set) and an
  empty ReferencedRTPlanSequence (Type 2, zero items allowed).
- **Series**: its own RTRECORD series per (plan, treatment date) - never the plan's series (an RT
  Series holds one modality, PS3.3 C.8.8.1). A night's partition therefore only ever creates series,
  it never grows an older one, so series-level counts stay stable once verified. SeriesNumber is the
  treatment date as YYYYMMDD (sorts chronologically; fits IS), InstanceNumber is the DHS_ID.
- **UIDs** are deterministic, so a re-run regenerates the same instances (Orthanc keeps the first copy
  of a UID and answers Success to a changed copy, docs/decisions/orthanc.md): with a configured root
  R (valid UID, at most 40 characters) SOP = R.1.<format>.<DHS_ID>, series = R.2.<format>.<18-digit
  hash>, study = R.3.<format>.<hash>; without one, ``2.25.<uuid5 integer>`` (PS3.5 B.2) of a name that
  includes ``source_key``. With a root, each Mosaiq source needs its own root (DHS_IDs are only unique
  per database). ``format`` is `RECORD_FORMAT_VERSION`: bump it when the record content changes on
  purpose, to get new UIDs.
- **No clock**: nothing depends on "now" (no InstanceCreationDate/Time), so identical input gives
  byte-identical output and the content digest of a re-run matches what the archive already holds.
- **Control points**: Mosaiq has no per-control-point time, so every TreatmentControlPointDate/Time is
  Dose_Hst.Tx_DtTm. Specified cumulative meterset = planned meterset x ([Index]-Index0)/(IndexN-Index0)
  (pymedphys' reading of [Index]); delivered = min(specified, Dose_Hst.Meterset), and a terminated
  beam keeps only the control points up to where delivery stopped, the last one carrying the
  delivered total. A single-point (static) field gets a closing control point (pymedphys does the
  same). Attributes marked "required for control point 0 or if it changes" are written at CP0 and
  wherever the value changes; NULL in a later point means "unchanged".
- **Geometry**: angles as stored (assumed IEC 61217), normalised to [0, 360); cm -> mm. NULL gantry,
  collimator or couch angle at CP0 -> quarantine; NULL table-top eccentric/pitch/roll -> 0 (axes the
  couch does not have); NULL table-top positions -> empty (Type 2C). Jaws/MLC: `rtrecord.leaves`.
- **Directions**: from consecutive angles (`rtrecord.enums.rotation_direction`); a rotation stored as
  only two control points is quarantined unless a site-confirmed ``direction_map`` covers its code.
- **Equipment**: General Equipment describes what made the instance (this converter); the machine
  that delivered the beam is in TreatmentMachineSequence (its Manufacturer and model only when known,
  each in its own attribute: a model name is not a Manufacturer).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import os
import re
import struct
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from io import BytesIO
from pathlib import Path

from pydicom import dcmwrite
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from dicom_backup_dagster.dicom.digest import DIGEST_TEXT_VRS, LONG_LENGTH_VRS
from dicom_backup_dagster.rtrecord import enums
from dicom_backup_dagster.rtrecord.enums import RecordQuarantined, RecordSkipped
from dicom_backup_dagster.rtrecord.leaves import LeafSetError, leaf_jaw_positions
from dicom_backup_dagster.rtrecord.model import ControlPoint, Delivery

RT_BEAMS_TREATMENT_RECORD_STORAGE = "1.2.840.10008.5.1.4.1.1.481.4"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
#: Our own implementation identity (PS3.7 D.3.3.2): a 2.25 UUID-derived UID generated once for the project.
IMPLEMENTATION_CLASS_UID = "2.25.20156398884368739212072905032839609044"
IMPLEMENTATION_VERSION_NAME = "DICOMBACKUP_010"
#: Part of every generated UID: change it only when records must get new identities.
RECORD_FORMAT_VERSION = 1
UID_ROOT_MAX_LENGTH = 40
#: uuid5 namespace for the 2.25 form (fixed forever: changing it changes every UID).
UID_NAMESPACE = uuid.UUID("7ba2716b-0114-48e5-8c2f-9d601455197f")
SPECIFIC_CHARACTER_SET = "ISO_IR 192"
GENERATOR_MANUFACTURER = "dicom-backup-dagster"
GENERATOR_MODEL = "Mosaiq RT record converter"

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(uid: str) -> bool:
    """PS3.5 9.1: digits and dots, no empty or leading-zero components, at most 64 characters."""
    return isinstance(uid, str) and 0 < len(uid) <= 64 and _UID_RE.fullmatch(uid) is not None


@dataclass(frozen=True, kw_only=True)
class RecordOptions:
    """How records are identified and labelled. ``source_key`` must stay stable (the source alias):
    it is part of every 2.25 UID, so renaming it re-identifies every record."""

    source_key: str = "MOSAIQ"
    uid_root: str | None = None
    institution_name: str | None = None
    #: Mosaiq ``*_Dir_Enum`` code -> CW/CC/NONE, only if confirmed for the site (see rtrecord.enums).
    direction_map: Mapping[int, str] = field(default_factory=lambda: enums.DIRECTION_ENUM)

    def __post_init__(self) -> None:
        if self.uid_root is not None and (
            not is_valid_uid(self.uid_root) or len(self.uid_root) > UID_ROOT_MAX_LENGTH
        ):
            raise ValueError(
                f"uid_root {self.uid_root!r} must be a valid DICOM UID (digits and dots, no leading "
                f"zeros) of at most {UID_ROOT_MAX_LENGTH} characters"
            )
        bad = {v for v in self.direction_map.values() if v not in enums.ROTATION_DIRECTION_VALUES}
        if bad:
            raise ValueError(f"direction_map values must be CW, CC or NONE, not {sorted(bad)}")


@dataclass(frozen=True)
class RecordUids:
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str


def _hash18(key: str) -> str:
    return str(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 10**18 or 1)


def _uuid_uid(key: str) -> str:
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, key).int}"


def record_uids(delivery: Delivery, options: RecordOptions | None = None) -> RecordUids:
    """Deterministic SOP Instance, Series Instance and Study Instance UIDs for a delivery."""
    options = options or RecordOptions()
    fmt = RECORD_FORMAT_VERSION
    src = options.source_key
    site_key = delivery.site.sit_set_id if delivery.site.sit_set_id is not None else delivery.site.sit_id
    if delivery.plan is not None:
        group = f"plan/{delivery.plan.sop_instance_uid}"
    else:
        group = f"patient/{delivery.patient.pat_id1}/siteset/{site_key}"
    series_key = f"{src}/v{fmt}/series/{group}/{delivery.tx_datetime.date().isoformat()}"
    study_key = f"{src}/v{fmt}/study/patient/{delivery.patient.pat_id1}/siteset/{site_key}"
    if options.uid_root:
        root = options.uid_root
        sop = f"{root}.1.{fmt}.{delivery.dhs_id}"
        series = f"{root}.2.{fmt}.{_hash18(series_key)}"
        study = f"{root}.3.{fmt}.{_hash18(study_key)}"
    else:
        sop = _uuid_uid(f"{src}/v{fmt}/sop/dhs/{delivery.dhs_id}")
        series = _uuid_uid(series_key)
        study = _uuid_uid(study_key)
    if delivery.plan is not None:
        study = delivery.plan.study_instance_uid
    return RecordUids(sop, series, study)


# --- value formatting -----------------------------------------------------------------------------------
_MICRO = Decimal("0.000001")


class _DsStrings(dict):
    """Memo of `_ds_uncached` (jaw positions, angles and dose rates repeat across control points)."""

    def __missing__(self, value: Decimal) -> str:
        if len(self) > 50_000:
            self.clear()
        text = self[value] = _ds_uncached(value)
        return text


_DS_STRINGS = _DsStrings()


def _ds(value: Decimal) -> str:
    """Decimal String (PS3.5 6.2, at most 16 characters), exact where it fits, trailing zeros dropped."""
    return _DS_STRINGS[value]


def _ds_uncached(value: Decimal) -> str:
    exponent = value.as_tuple().exponent  # an int for a finite Decimal (the model allows no other)
    if isinstance(exponent, int) and exponent < -6:
        value = value.quantize(_MICRO, rounding=ROUND_HALF_EVEN)
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        whole = text.split(".")[0]
        places = max(0, 16 - len(whole) - 1)
        text = format(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN), "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if len(text) > 16:
            raise ValueError("number too large for a DICOM DS value")
    return text


def _angle(value: Decimal) -> Decimal:
    value = value % 360
    return value + 360 if value < 0 else value


def _mm(cm: Decimal | None) -> str | None:
    return None if cm is None else _ds(cm * 10)


def _da(moment: dt.date) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: dt.datetime) -> str:
    text = moment.strftime("%H%M%S")
    return f"{text}.{moment.microsecond:06d}" if moment.microsecond else text


_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


def _text(value: str | None, limit: int) -> str:
    """LO/SH/CS-safe text: no backslash (the value delimiter) or control characters, cut to ``limit``."""
    if not value:
        return ""
    return _CONTROL.sub(" ", value).strip()[:limit].rstrip()


_PN_BAD = re.compile(r"[\x00-\x1f\x7f\\^=]")


def _person_name(*parts: str | None) -> str:
    """PN with components family^given^middle^prefix^suffix (PS3.5 6.2.1); each at most 64 characters."""
    components = [_PN_BAD.sub(" ", p).strip()[:64].rstrip() if p else "" for p in parts]
    while len(components) > 2 and not components[-1]:
        components.pop()
    # keep "family^given" even when given is empty: a caret-less name is the retired single-string form
    return "^".join(components) if any(components) else ""


# --- control points ---------------------------------------------------------------------------------------
_ANGLE_AXES = (
    # (ControlPoint attribute, raw direction attribute, DICOM angle, DICOM direction, value when NULL at CP0)
    ("gantry_angle", "gantry_dir_enum", "GantryAngle", "GantryRotationDirection", None),
    ("coll_angle", "coll_dir_enum", "BeamLimitingDeviceAngle", "BeamLimitingDeviceRotationDirection", None),
    ("couch_angle", "couch_dir_enum", "PatientSupportAngle", "PatientSupportRotationDirection", None),
    (
        "couch_top_angle",
        "couch_top_dir_enum",
        "TableTopEccentricAngle",
        "TableTopEccentricRotationDirection",
        0,
    ),
    ("couch_pitch", "couch_pitch_dir_enum", "TableTopPitchAngle", "TableTopPitchRotationDirection", 0),
    ("couch_roll", "couch_roll_dir_enum", "TableTopRollAngle", "TableTopRollRotationDirection", 0),
)
_FL_ANGLES = frozenset({"TableTopPitchAngle", "TableTopRollAngle"})
_TABLE_POSITIONS = (
    ("couch_vertical", "TableTopVerticalPosition"),
    ("couch_longitudinal", "TableTopLongitudinalPosition"),
    ("couch_lateral", "TableTopLateralPosition"),
)
_COLUMN_OF = {
    "gantry_angle": "Gantry_Ang",
    "coll_angle": "Coll_Ang",
    "couch_angle": "Couch_Ang",
}


def _carry_forward(points: tuple[ControlPoint, ...], attr: str, default: Decimal | None) -> list:
    values: list = []
    last = default
    for cp in points:
        value = getattr(cp, attr)
        if value is not None:
            last = value
        values.append(last)
    return values


def _quarantine(delivery: Delivery, why: str) -> RecordQuarantined:
    return RecordQuarantined(
        f"DHS_ID {delivery.dhs_id} (FLD_ID {delivery.fld_id}): {why}", dhs_id=delivery.dhs_id
    )


@dataclass(frozen=True)
class _Devices:
    types: tuple[str, ...]
    pairs: tuple[int, ...]
    #: per control point, per device: the LeafJawPositions value already joined with "\\" (cheap to
    #: compare between control points and to encode)
    positions: list[tuple[str, ...]]


def _devices(delivery: Delivery, points: tuple[ControlPoint, ...]) -> _Devices:
    jaws = {k: _carry_forward(points, k, None) for k in ("coll_x1", "coll_x2", "coll_y1", "coll_y2")}
    a_sets = _carry_forward(points, "a_leaf_set", None)
    b_sets = _carry_forward(points, "b_leaf_set", None)
    types: list[str] = []
    pairs: list[int] = []
    if jaws["coll_x1"][0] is not None and jaws["coll_x2"][0] is not None:
        types.append("ASYMX")
        pairs.append(1)
    if jaws["coll_y1"][0] is not None and jaws["coll_y2"][0] is not None:
        types.append("ASYMY")
        pairs.append(1)
    leaf_count = delivery.treatment_field.mlc_leaves
    use_mlc = a_sets[0] is not None and b_sets[0] is not None
    if use_mlc:
        if leaf_count is None:
            leaf_count = min(len(a_sets[0]), len(b_sets[0])) // 2
        use_mlc = leaf_count > 0
    if use_mlc:
        types.append("MLCX")
        pairs.append(int(leaf_count))  # type: ignore[arg-type]
    if not types:
        raise _quarantine(delivery, "no jaw or MLC positions at control point 0 (BeamLimitingDevice Type 1)")
    positions = []
    mlc: tuple[bytes | None, bytes | None, str] | None = None
    for i in range(len(points)):
        row: list[str] = []
        for device in types:
            if device == "ASYMX":
                row.append(f"{_ds(jaws['coll_x1'][i] * 10)}\\{_ds(jaws['coll_x2'][i] * 10)}")
            elif device == "ASYMY":
                row.append(f"{_ds(jaws['coll_y1'][i] * 10)}\\{_ds(jaws['coll_y2'][i] * 10)}")
            elif mlc is not None and mlc[0] == a_sets[i] and mlc[1] == b_sets[i]:
                row.append(mlc[2])  # same leaves as the previous point (step-and-shoot segment ends)
            else:
                try:
                    text = "\\".join(leaf_jaw_positions(a_sets[i], b_sets[i], leaf_count))
                except LeafSetError as exc:
                    raise _quarantine(delivery, f"control point {points[i].point}: {exc}") from None
                mlc = (a_sets[i], b_sets[i], text)
                row.append(text)
        positions.append(tuple(row))
    return _Devices(tuple(types), tuple(pairs), positions)


def _metersets(
    delivery: Delivery, points: tuple[ControlPoint, ...], factor: Decimal
) -> tuple[tuple[ControlPoint, ...], list[str], list[str], str | None, str]:
    """(kept points, specified per point, delivered per point, specified total, delivered total)."""
    delivered_total = delivery.delivered_meterset
    if delivered_total is None:
        raise _quarantine(delivery, "Dose_Hst.Meterset is NULL (DeliveredMeterset Type 1)")
    planned = delivery.treatment_field.meterset
    indexes = [cp.index for cp in points]
    if len(delivery.control_points) == 1:  # single stored point + the synthesised closing point
        weights = [Decimal(0), Decimal(1)]
    else:
        if any(i is None for i in indexes):
            raise _quarantine(delivery, "a control point has a NULL [Index] (cumulative meterset weight)")
        first, last = indexes[0], indexes[-1]
        if last <= first or any(b < a for a, b in itertools.pairwise(indexes)):  # type: ignore[operator]
            raise _quarantine(delivery, "[Index] must be non-decreasing and end above its first value")
        span = last - first  # type: ignore[operator]
        weights = [(i - first) / span for i in indexes]  # type: ignore[operator]
    scale = planned if planned is not None else delivered_total
    specified = [w * scale for w in weights]
    kept = 1
    while kept < len(points) and specified[kept - 1] < delivered_total:
        kept += 1
    delivered = [min(s, delivered_total) for s in specified[:kept]]
    delivered[-1] = delivered_total
    spec_strs = [_ds(s * factor) for s in specified[:kept]] if planned is not None else [""] * kept
    return (
        points[:kept],
        spec_strs,
        [_ds(d * factor) for d in delivered],
        None if planned is None else _ds(planned * factor),
        _ds(delivered_total * factor),
    )


def _geometry_changes(points: tuple[ControlPoint, ...], devices: _Devices) -> bool:
    for attr, *_ in _ANGLE_AXES:
        values = {v for v in _carry_forward(points, attr, None) if v is not None}
        if len(values) > 1:
            return True
    return len(set(devices.positions)) > 1


def _control_points(
    delivery: Delivery,
    points: tuple[ControlPoint, ...],
    devices: _Devices,
    specified: list[str],
    delivered: list[str],
    options: RecordOptions,
) -> list[_Item]:
    date, time = _da(delivery.tx_datetime), _tm(delivery.tx_datetime)
    n = len(points)
    angles: dict[str, list] = {}
    directions: dict[str, list[str]] = {}
    for attr, dir_attr, _kw, _dkw, null_default in _ANGLE_AXES:
        values = _carry_forward(points, attr, None if null_default is None else Decimal(null_default))
        if values[0] is None:
            raise _quarantine(delivery, f"{_COLUMN_OF[attr]} is NULL at control point 0 (Type 1C)")
        values = [_angle(v) for v in values]
        angles[attr] = values
        dirs = []
        for i in range(n):
            nxt = values[i + 1] if i + 1 < n else None
            raw = getattr(points[i], dir_attr)
            if nxt is not None and nxt != values[i] and n == 2 and raw not in options.direction_map:
                raise _quarantine(
                    delivery,
                    f"{attr} rotates between only two control points; the direction cannot be derived "
                    "(Mosaiq direction codes are unverified: configure a direction map)",
                )
            try:
                dirs.append(enums.rotation_direction(values[i], nxt, raw, options.direction_map))
            except enums.AmbiguousRotation:
                raise _quarantine(
                    delivery, f"{attr} turns exactly 180 degrees between control points"
                ) from None
        directions[attr] = dirs
    table = {attr: _carry_forward(points, attr, None) for attr, _ in _TABLE_POSITIONS}
    energy_values = [cp.energy if cp.energy is not None else delivery.energy for cp in points]
    unit_codes = [
        cp.energy_unit_enum if cp.energy_unit_enum is not None else delivery.energy_unit_enum for cp in points
    ]
    dose_rates = _carry_forward(points, "dose_rate", None)

    items: list[_Item] = []
    previous_energy: tuple[str, str] | None = None
    for i in range(n):
        cp: _Item = [
            ("ReferencedControlPointIndex", str(i)),
            ("TreatmentControlPointDate", date),
            ("TreatmentControlPointTime", time),
            ("SpecifiedMeterset", specified[i] or None),
            ("DeliveredMeterset", delivered[i]),
            ("DoseRateSet", None if (rate := dose_rates[i]) is None else _ds(rate)),
            ("DoseRateDelivered", None),  # Mosaiq does not record the delivered rate; never copy the set rate
        ]
        unit = enums.energy_unit(unit_codes[i])
        if (value := energy_values[i]) is not None and unit is not None:
            energy = (_ds(value), unit)
            if energy != previous_energy:
                cp.append(("NominalBeamEnergy", energy[0]))
                cp.append(("NominalBeamEnergyUnit", energy[1]))
            previous_energy = energy
        if i == 0 or devices.positions[i] != devices.positions[i - 1]:
            bld = [
                [("RTBeamLimitingDeviceType", device), ("LeafJawPositions", devices.positions[i][d])]
                for d, device in enumerate(devices.types)
                if i == 0 or devices.positions[i][d] != devices.positions[i - 1][d]
            ]
            cp.append(("BeamLimitingDevicePositionSequence", bld))
        for attr, _dir_attr, keyword, dir_keyword, _null in _ANGLE_AXES:
            values, dirs = angles[attr], directions[attr]
            if i == 0 or values[i] != values[i - 1] or dirs[i] != dirs[i - 1]:
                # Pitch and roll are FL (float), the other angles DS (PS3.6)
                cp.append((keyword, float(values[i]) if keyword in _FL_ANGLES else _ds(values[i])))
                cp.append((dir_keyword, dirs[i]))
        for attr, keyword in _TABLE_POSITIONS:
            values = table[attr]
            if i == 0 or values[i] != values[i - 1]:
                cp.append((keyword, _mm(values[i])))
        items.append(cp)
    return items


# --- encoding ---------------------------------------------------------------------------------------------
# A VMAT beam has ~100-180 control points with 160+ leaf values each. Going through pydicom's DataElement
# machinery (value validation per DS value, per-element writer dispatch) ran at ~8 VMAT records/s. So a
# record is first described as plain (keyword, value) lists, then either encoded directly as PS3.10 file
# bytes in Explicit VR Little Endian (PS3.5 7.1.2, 7.5: defined-length sequences and items, exactly as
# pydicom writes them) by `render_rt_record`, or turned into a pydicom Dataset by `build_rt_record`.
# Tests assert that both give byte-identical files for every kind of delivery.
_Item = list  # [(keyword, value)]; value: str | list[str] | float | int | bytes | None | list[_Item] (SQ)
_TAGS: dict[str, tuple[int, str]] = {}
_PREAMBLE = b"\0" * 128 + b"DICM"


def _tag(keyword: str) -> tuple[int, str]:
    found = _TAGS.get(keyword)
    if found is None:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(keyword)
        found = _TAGS[keyword] = (tag, dictionary_VR(tag))
    return found


_SCALAR_CACHE: dict[tuple[str, object], tuple[int, bytes, bytes]] = {}
#: What dicom.digest.content_digest hashes of an element, fed to SHA-256 in tag order: the tag (4 bytes
#: big-endian), then for a sequence b"SQ" + item count (4 bytes) + per item b"ITEM" <item> b"END", else the
#: value length (8 bytes) + the value field, text VRs without trailing space/NUL padding. Building it while
#: encoding gives the digest of the encoded bytes without parsing them again with pydicom, which cost
#: ~4x the encoding itself (tests assert equality with content_digest for every kind of record).
_Encoded = tuple[int, bytes, bytes]  # (tag, element bytes, digest input)


#: Values that are (nearly) never repeated: caching them would only evict the ones that are.
_UNIQUE_VALUES = frozenset({"DeliveredMeterset", "SpecifiedMeterset", "SOPInstanceUID", "InstanceNumber"})


def _encode_element(keyword: str, value: object) -> _Encoded:
    # Control points repeat most scalar values (date, time, directions, unchanged angles): memoise them.
    if (value is None or (isinstance(value, str) and len(value) <= 64)) and keyword not in _UNIQUE_VALUES:
        key = (keyword, value)
        found = _SCALAR_CACHE.get(key)
        if found is None:
            if len(_SCALAR_CACHE) > 50_000:
                _SCALAR_CACHE.clear()
            found = _SCALAR_CACHE[key] = _encode_uncached(keyword, value)
        return found
    return _encode_uncached(keyword, value)


@dataclass(frozen=True)
class _Layout:
    """What every element of one keyword starts with, computed once: its tag, VR, the header bytes before
    the value length, and the tag as the digest input starts it."""

    tag: int
    vr: str
    head: bytes
    long_length: bool
    digest_tag: bytes
    digest_strips: bool


_LAYOUTS: dict[str, _Layout] = {}


def _layout(keyword: str) -> _Layout:
    found = _LAYOUTS.get(keyword)
    if found is None:
        tag, vr = _tag(keyword)
        long_length = vr in LONG_LENGTH_VRS
        head = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode()) + (b"\0\0" if long_length else b"")
        found = _LAYOUTS[keyword] = _Layout(
            tag, vr, head, long_length, tag.to_bytes(4, "big"), vr in DIGEST_TEXT_VRS
        )
    return found


def _encode_uncached(keyword: str, value: object) -> _Encoded:
    layout = _layout(keyword)
    vr = layout.vr
    if value.__class__ is str:  # the common case (DS, IS, CS, DA, TM, UI ... text), first
        payload = value.encode("utf-8")
        if len(payload) % 2:
            payload += b"\0" if vr == "UI" else b" "
    elif vr == "SQ":
        items = [_encode_item(item) for item in value]  # type: ignore[attr-defined]
        payload = b"".join([data for data, _ in items])
        digest_input = (
            layout.digest_tag
            + b"SQ"
            + len(items).to_bytes(4, "big")
            + b"".join([b"ITEM" + hashed + b"END" for _, hashed in items])
        )
        return layout.tag, layout.head + len(payload).to_bytes(4, "little") + payload, digest_input
    elif vr == "FL":
        payload = b"" if value is None else struct.pack("<f", value)
    elif vr == "UL":
        payload = b"" if value is None else struct.pack("<I", value)
    elif isinstance(value, bytes):
        payload = value + b"\0" if len(value) % 2 else value
    else:
        if value is None:
            text = ""
        elif isinstance(value, list):
            text = "\\".join(value)
        else:
            text = str(value)
        # ISO_IR 192 (UTF-8) is declared on every record; the other VRs here are ASCII by definition.
        payload = text.encode("utf-8")
        if len(payload) % 2:
            payload += b"\0" if vr == "UI" else b" "
    hashed = payload.rstrip(b" \x00") if layout.digest_strips else payload
    digest_input = layout.digest_tag + len(hashed).to_bytes(8, "big") + hashed
    length = len(payload).to_bytes(4 if layout.long_length else 2, "little")
    return layout.tag, layout.head + length + payload, digest_input


def _encode_dataset(item: _Item) -> tuple[bytes, bytes]:
    """(encoded elements, digest input), both in tag order (no group 0002 or group lengths here)."""
    # _encode_element's cache lookup inlined: this loop runs ~500 times per VMAT record.
    cache = _SCALAR_CACHE
    encoded = []
    for keyword, value in item:
        found = (
            cache.get((keyword, value))
            if value is None or (value.__class__ is str and len(value) <= 64)
            else None
        )
        encoded.append(found if found is not None else _encode_element(keyword, value))
    encoded.sort()  # by tag: tags are unique within a data set, so the bytes are never compared
    return b"".join([e[1] for e in encoded]), b"".join([e[2] for e in encoded])


def _encode_item(item: _Item) -> tuple[bytes, bytes]:
    body, hashed = _encode_dataset(item)
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body, hashed


def _as_dataset(item: _Item, into: Dataset | None = None) -> Dataset:
    ds = Dataset() if into is None else into
    for keyword, value in item:
        if _tag(keyword)[1] == "SQ":
            value = Sequence([_as_dataset(child) for child in value])
        setattr(ds, keyword, value)
    return ds


def _file_meta(sop_instance_uid: str) -> _Item:
    return [
        ("FileMetaInformationVersion", b"\x00\x01"),
        ("MediaStorageSOPClassUID", RT_BEAMS_TREATMENT_RECORD_STORAGE),
        ("MediaStorageSOPInstanceUID", sop_instance_uid),
        ("TransferSyntaxUID", ExplicitVRLittleEndian),
        ("ImplementationClassUID", IMPLEMENTATION_CLASS_UID),
        ("ImplementationVersionName", IMPLEMENTATION_VERSION_NAME),
    ]


# --- the record -------------------------------------------------------------------------------------------
def _record_items(delivery: Delivery, options: RecordOptions) -> tuple[RecordUids, _Item]:
    """Every module of the record as (keyword, value) pairs; raises RecordQuarantined / RecordSkipped."""
    fld = delivery.treatment_field
    ft = _record_field_type(delivery)
    modality = delivery.modality_enum if delivery.modality_enum is not None else fld.modality_enum
    radiation = enums.radiation_type(modality, dhs_id=delivery.dhs_id)
    unit = enums.primary_dosimeter_unit(delivery.meterset_unit_enum, dhs_id=delivery.dhs_id)
    points = _checked_points(delivery)
    points, specified, delivered, specified_total, delivered_total = _metersets(delivery, points, unit.factor)
    devices = _devices(delivery, points)
    uids = record_uids(delivery, options)
    position = enums.patient_position(delivery.site.patient_orientation)

    ds = _general_items(delivery, uids, options)
    # RT Patient Setup (C.8.8.12, U): only when the orientation is known
    if position is not None:
        ds.append(("PatientSetupSequence", [[("PatientSetupNumber", "1"), ("PatientPosition", position)]]))
    ds.append(("TreatmentMachineSequence", [_machine_item(delivery, options)]))
    # RT Beams Session Record (C.8.8.21)
    fractions = delivery.site.fractions_planned
    ds.append(("NumberOfFractionsPlanned", None if fractions is None else str(fractions)))
    ds.append(("PrimaryDosimeterUnit", unit.dicom))
    beam: _Item = [
        ("BeamType", enums.beam_type(ft, _geometry_changes(points, devices))),
        ("RadiationType", radiation),
        (
            "BeamLimitingDeviceLeafPairsSequence",
            [
                [("RTBeamLimitingDeviceType", device), ("NumberOfLeafJawPairs", str(count))]
                for device, count in zip(devices.types, devices.pairs, strict=True)
            ],
        ),
    ]
    beam.extend(_beam_field_items(delivery))
    beam.append(("TreatmentDeliveryType", ft.delivery_type or ""))
    beam.append(("TreatmentTerminationStatus", enums.termination_status(delivery.termination_status_enum)))
    beam.append(("TreatmentVerificationStatus", enums.verification_status(delivery.verify_status_enum) or ""))
    if specified_total is not None:
        beam.append(("SpecifiedPrimaryMeterset", specified_total))
    beam.append(("DeliveredPrimaryMeterset", delivered_total))
    if fld.sad_cm is not None:
        beam.append(("SourceAxisDistance", _ds(fld.sad_cm * 10)))
    if position is not None:
        beam.append(("ReferencedPatientSetupNumber", "1"))
    cps = _control_points(delivery, points, devices, specified, delivered, options)
    beam.append(("NumberOfControlPoints", str(len(cps))))
    beam.append(("ControlPointDeliverySequence", cps))
    ds.append(("TreatmentSessionBeamSequence", [beam]))
    return uids, ds


def _record_field_type(delivery: Delivery) -> enums.FieldType:
    """The field type, if it makes a record: imaging-only fields are skipped, unrepresentable quarantined."""
    fld = delivery.treatment_field
    ft = enums.field_type(fld.type_enum)
    if not ft.makes_record:
        raise RecordSkipped(
            f"DHS_ID {delivery.dhs_id} (FLD_ID {fld.fld_id}): "
            f"field type {ft.code} ({ft.label}) is imaging only",
            dhs_id=delivery.dhs_id,
        )
    if not ft.representable:
        raise _quarantine(
            delivery, f"field type {ft.code} ({ft.label}) has no RT Beams Treatment Record form"
        )
    return ft


def _checked_points(delivery: Delivery) -> tuple[ControlPoint, ...]:
    """The control points, at least two: a single (static) point is doubled to get a closing point."""
    points = delivery.control_points
    if not points:
        raise _quarantine(delivery, "no control points")
    if len({cp.point for cp in points}) != len(points):
        raise _quarantine(delivery, "two control points share a Point number")
    if len(points) == 1:
        points = (points[0], points[0])
    return tuple(points)


def _general_items(delivery: Delivery, uids: RecordUids, options: RecordOptions) -> _Item:
    """SOP Common, Patient, General Study, RT Series, General Equipment and RT General Treatment Record."""
    tx = delivery.tx_datetime
    plan = delivery.plan
    p = delivery.patient
    study_moment = plan.study_datetime if plan is not None else None
    ds: _Item = [
        ("SpecificCharacterSet", SPECIFIC_CHARACTER_SET),
        # SOP Common (C.12.1)
        ("SOPClassUID", RT_BEAMS_TREATMENT_RECORD_STORAGE),
        ("SOPInstanceUID", uids.sop_instance_uid),
        # Patient (C.7.1.1): all Type 2
        ("PatientName", _person_name(p.last_name, p.first_name, p.middle_name, p.prefix, p.suffix)),
        ("PatientID", _text(p.ida, 64)),
        ("PatientBirthDate", _da(p.birth_date) if p.birth_date else ""),
        ("PatientSex", enums.patient_sex(p.sex) or ""),
        # General Study (C.7.2.1): the plan's study
        ("StudyInstanceUID", uids.study_instance_uid),
        ("StudyDate", _da(study_moment) if study_moment else ""),
        ("StudyTime", _tm(study_moment) if study_moment else ""),
        (
            "ReferringPhysicianName",
            _person_name(*(plan.referring_physician or "").split("^")[:5]) if plan is not None else "",
        ),
        ("StudyID", _text(plan.study_id, 16) if plan is not None else ""),
        ("AccessionNumber", _text(plan.accession_number, 16) if plan is not None else ""),
        # RT Series (C.8.8.1): our own series per (plan, treatment date)
        ("Modality", "RTRECORD"),
        ("SeriesInstanceUID", uids.series_instance_uid),
        ("SeriesNumber", tx.strftime("%Y%m%d")),
        ("SeriesDate", _da(tx)),
        ("SeriesDescription", f"Mosaiq treatment records {tx.date().isoformat()}"),
        ("OperatorsName", ""),
        # General Equipment (C.7.5.1): the equipment that made this instance is this converter
        ("Manufacturer", GENERATOR_MANUFACTURER),
        ("ManufacturerModelName", GENERATOR_MODEL),
        ("SoftwareVersions", f"record format {RECORD_FORMAT_VERSION}"),
        # RT General Treatment Record (C.8.8.17)
        ("InstanceNumber", str(delivery.dhs_id)),
        ("TreatmentDate", _da(tx)),
        ("TreatmentTime", _tm(tx)),
    ]
    if plan is not None and plan.study_description:
        ds.append(("StudyDescription", _text(plan.study_description, 64)))
    if options.institution_name:
        ds.append(("InstitutionName", _text(options.institution_name, 64)))
    refs: list[_Item] = []
    if plan is not None:
        refs.append(
            [("ReferencedSOPClassUID", RT_PLAN_STORAGE), ("ReferencedSOPInstanceUID", plan.sop_instance_uid)]
        )
    ds.append(("ReferencedRTPlanSequence", refs))
    return ds


def _machine_item(delivery: Delivery, options: RecordOptions) -> _Item:
    """The one TreatmentMachineSequence item (RT Treatment Machine Record, C.8.8.18)."""
    m = delivery.machine
    return [
        ("TreatmentMachineName", _text(m.name, 16)),
        ("Manufacturer", _text(m.manufacturer, 64)),
        ("InstitutionName", _text(m.institution_name or options.institution_name, 64)),
        ("ManufacturerModelName", _text(m.model, 64)),
        ("DeviceSerialNumber", _text(m.serial_number, 64)),
    ]


def _beam_field_items(delivery: Delivery) -> _Item:
    """What the beam takes from the field: number, name, description, wedges, accessories, fraction."""
    fld = delivery.treatment_field
    beam: _Item = []
    if fld.beam_number is not None:
        beam.append(("ReferencedBeamNumber", str(fld.beam_number)))
    if fld.label:
        beam.append(("BeamName", _text(fld.label, 64)))
    if fld.name:
        beam.append(("BeamDescription", _text(fld.name, 1024)))
    number_of_wedges = fld.number_of_wedges or 0  # Type 1: NULL (not mapped) is written as 0
    beam.append(("NumberOfWedges", str(number_of_wedges)))
    if number_of_wedges:
        wedges = [
            [("WedgeNumber", str(number)), ("WedgeType", fld.wedge_type or "")]
            for number in range(1, number_of_wedges + 1)
        ]
        beam.append(("RecordedWedgeSequence", wedges))
    for keyword, count in (
        ("NumberOfCompensators", fld.number_of_compensators),
        ("NumberOfBoli", fld.number_of_boli),
        ("NumberOfBlocks", fld.number_of_blocks),
        ("CurrentFractionNumber", delivery.fraction_number),
    ):
        beam.append((keyword, None if count is None else str(count)))
    return beam


@dataclass(frozen=True)
class RenderedRecord:
    """An encoded record: PS3.10 file bytes (Explicit VR Little Endian) plus its UIDs.

    ``digest`` is dicom.digest.content_digest(data) (the bytes that get sent), computed while encoding.
    """

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    data: bytes
    #: dicom.digest.content_digest(data), computed while encoding
    digest: str = ""

    def __repr__(self) -> str:  # the bytes hold PHI
        return f"RenderedRecord(sop_instance_uid={self.sop_instance_uid!r}, {len(self.data)} bytes)"


def render_rt_record(delivery: Delivery, options: RecordOptions | None = None) -> RenderedRecord:
    """Fast path for the pipeline: the encoded file bytes for one delivery, without a pydicom Dataset.

    Byte-identical to ``encode_rt_record(build_rt_record(delivery, options))``. Raises
    `RecordQuarantined` / `RecordSkipped` like `build_rt_record`.
    """
    uids, items = _record_items(delivery, options or RecordOptions())
    meta, _ = _encode_dataset(_file_meta(uids.sop_instance_uid))  # group 0002 is not in the digest
    group_length = _encode_element("FileMetaInformationGroupLength", len(meta))[1]
    body, digest_input = _encode_dataset(items)
    return RenderedRecord(
        uids.sop_instance_uid,
        uids.series_instance_uid,
        uids.study_instance_uid,
        _PREAMBLE + group_length + meta + body,
        hashlib.sha256(digest_input).hexdigest(),
    )


def build_rt_record(delivery: Delivery, options: RecordOptions | None = None) -> Dataset:
    """The RT Beams Treatment Record for one delivery (PS3.3 A.29) as a pydicom Dataset, file meta included.

    Raises `RecordQuarantined` (reason with keys only) when a Type 1 value cannot be derived, and
    `RecordSkipped` for imaging-only fields that are not treatment beams.
    """
    uids, items = _record_items(delivery, options or RecordOptions())
    ds = _as_dataset(items)
    meta = FileMetaDataset()
    _as_dataset(_file_meta(uids.sop_instance_uid), meta)
    ds.file_meta = meta
    return ds


def encode_rt_record(ds: Dataset) -> bytes:
    """PS3.10 file bytes (preamble, File Meta, Explicit VR Little Endian). Hash *these* bytes for the
    content digest: they are what gets sent (see dicom.digest)."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def write_rt_record(record: Dataset | RenderedRecord, path: str | os.PathLike[str]) -> bytes:
    """Encode (a Dataset) and write atomically (temp file + rename in the same directory); returns the
    bytes written."""
    data = record.data if isinstance(record, RenderedRecord) else encode_rt_record(record)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".rtrecord-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return data
