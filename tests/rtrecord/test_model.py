"""Delivery model: driver-independent normalisation, PHI-free repr, leaf-set decoding.

The factories at the top build hand-made deliveries (static, step-and-shoot, VMAT, electrons,
terminated) and are shared with tests/rtrecord/test_builder.py and test_conformance.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import struct
from decimal import Decimal
from typing import Any

import pytest

from dicom_backup_dagster.rtrecord.leaves import (
    LeafSetError,
    decode_leaf_set,
    encode_leaf_set,
    leaf_jaw_positions,
    raw_to_mm_str,
)
from dicom_backup_dagster.rtrecord.model import (
    ControlPoint,
    Delivery,
    Field,
    Machine,
    Patient,
    PlanReference,
    RecordValueError,
    Site,
    to_decimal,
)

# Obviously fake patient data; the PHI strings are asserted absent from reprs and messages.
LAST, FIRST, IDA = "O'Brien-Smith", "Zoë", "MRN-778899"
BIRTH = dt.date(1961, 7, 4)
LEAVES = 80
TX = dt.datetime(2024, 3, 5, 9, 41, 17)


def patient(**kw: Any) -> Patient:
    base: dict[str, Any] = dict(
        pat_id1=501, ida=IDA, last_name=LAST, first_name=FIRST, middle_name="Q", birth_date=BIRTH, sex="F"
    )
    base.update(kw)
    return Patient(**base)


def bank(opening_mm: float, shift_mm: float = 0.0, leaves: int = LEAVES) -> tuple[bytes, bytes]:
    """A/B leaf sets (signed IEC, mm) for a symmetric opening, padded to 100 leaves like Mosaiq records."""
    a = encode_leaf_set([-opening_mm / 2 + shift_mm] * leaves, padded_to=100)
    b = encode_leaf_set([opening_mm / 2 + shift_mm] * leaves, padded_to=100)
    return a, b


def point(i: int, index: float | str | Decimal | None, **kw: Any) -> ControlPoint:
    a, b = bank(100.0)
    base: dict[str, Any] = dict(
        point=i,
        index=None if index is None else str(index),
        energy=6,
        energy_unit_enum=2,
        gantry_angle="0",
        coll_angle="0",
        couch_angle="0",
        coll_x1="-5",
        coll_x2="5",
        coll_y1="-6",
        coll_y2="6.5",
        a_leaf_set=a,
        b_leaf_set=b,
        couch_vertical="-12.3",
        couch_lateral="0.4",
        couch_longitudinal="98.7",
        dose_rate="600",
    )
    base.update(kw)
    return ControlPoint(**base)


def delivery(control_points: list[ControlPoint] | None = None, **kw: Any) -> Delivery:
    fld = kw.pop("treatment_field", None) or Field(
        fld_id=7001,
        label="1",
        name="AP Pelvis",
        type_enum=1,
        modality_enum=1,
        meterset="150",
        sad_cm="100",
        mlc_leaves=LEAVES,
        beam_number=1,
    )
    base: dict[str, Any] = dict(
        dhs_id=900001,
        patient=patient(),
        machine=Machine(staff_id=31, name="LINAC 3", manufacturer="Elekta", model="Versa HD"),
        site=Site(sit_id=40, sit_set_id=41, fractions_planned=25, patient_orientation=1),
        treatment_field=fld,
        tx_datetime=TX,
        fraction_number=4,
        delivered_meterset="150",
        meterset_unit_enum=1,
        modality_enum=1,
        termination_status_enum=1,
        verify_status_enum=1,
        control_points=tuple(control_points if control_points is not None else [point(0, 0)]),
        plan=PlanReference(
            sop_instance_uid="1.2.826.0.1.3680043.8.498.1001",
            study_instance_uid="1.2.826.0.1.3680043.8.498.1000",
            series_instance_uid="1.2.826.0.1.3680043.8.498.1002",
            study_id="RT1",
            study_description="Pelvis RT",
            study_datetime=dt.datetime(2024, 2, 20, 14, 0),
        ),
    )
    base.update(kw)
    return Delivery(**base)


def static_delivery(**kw: Any) -> Delivery:
    return delivery([point(0, 0)], **kw)


def step_and_shoot_delivery(**kw: Any) -> Delivery:
    """5 segments = 10 control points; the MLC shape changes between segments, not within one."""
    points = []
    for seg in range(5):
        a, b = bank(40.0 + 10 * seg, shift_mm=seg - 2)
        for j in range(2):
            i = 2 * seg + j
            points.append(point(i, 20 * seg + 20 * j, a_leaf_set=a, b_leaf_set=b, gantry_angle=str(40 * seg)))
    fld = Field(
        fld_id=7002,
        label="2",
        name="IMRT",
        type_enum=2,
        modality_enum=1,
        meterset="200",
        sad_cm=100,
        mlc_leaves=LEAVES,
        beam_number=2,
    )
    return delivery(points, **{"treatment_field": fld, "delivered_meterset": "200", "dhs_id": 900002, **kw})


def vmat_delivery(n: int = 91, **kw: Any) -> Delivery:
    """A 360-degree CW arc from 181 through 0 to 177 (4-degree steps), MLC moving every point."""
    points = []
    for i in range(n):
        a, b = bank(20.0 + (i % 9) * 5, shift_mm=(i % 7) - 3)
        points.append(
            point(
                i,
                Decimal(100) * i / (n - 1),
                gantry_angle=str((181 + 4 * i) % 360),
                a_leaf_set=a,
                b_leaf_set=b,
                dose_rate=None if i else "400",
            )
        )
    fld = Field(
        fld_id=7003,
        label="3",
        name="VMAT arc",
        type_enum=13,
        modality_enum=1,
        meterset="512.4",
        sad_cm="100",
        mlc_leaves=LEAVES,
        beam_number=3,
    )
    return delivery(points, **{"treatment_field": fld, "delivered_meterset": "512.4", "dhs_id": 900003, **kw})


def electron_delivery(**kw: Any) -> Delivery:
    points = [
        point(
            0,
            0,
            energy=9,
            energy_unit_enum=3,
            a_leaf_set=None,
            b_leaf_set=None,
            coll_x1="-10",
            coll_x2="10",
            coll_y1="-10",
            coll_y2="10",
        )
    ]
    fld = Field(
        fld_id=7004,
        label="E1",
        name="Electron boost",
        type_enum=1,
        modality_enum=2,
        meterset="210",
        sad_cm="100",
        beam_number=4,
    )
    defaults = {
        "treatment_field": fld,
        "modality_enum": 2,
        "energy": 9,
        "energy_unit_enum": 3,
        "delivered_meterset": "210",
        "dhs_id": 900004,
    }
    return delivery(points, **{**defaults, **kw})


def terminated_delivery(**kw: Any) -> Delivery:
    """Operator stopped the VMAT arc at 40% of the planned meterset; not verified."""
    defaults = {
        "delivered_meterset": Decimal("512.4") * Decimal("0.4"),
        "termination_status_enum": 2,
        "verify_status_enum": 3,
        "dhs_id": 900005,
    }
    return vmat_delivery(**{**defaults, **kw})


ALL_KINDS = {
    "static": static_delivery,
    "step_and_shoot": step_and_shoot_delivery,
    "vmat": vmat_delivery,
    "electron": electron_delivery,
    "operator_terminated": terminated_delivery,
}


# --- normalisation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("120", Decimal("120")),
        ("  12.50 ", Decimal("12.50")),
        (Decimal("7.1"), Decimal("7.1")),
        (3, Decimal(3)),
        (0.1, Decimal("0.1")),
        ("", None),
        (None, None),
    ],
)
def test_decimal_from_every_driver_shape(raw: object, expected: Decimal | None) -> None:
    assert to_decimal(raw) == expected


def test_sqlite_and_freetds_rows_give_equal_deliveries() -> None:
    """SQLite3 ODBC returns DECIMAL as str, FreeTDS as Decimal: the model must not care."""
    as_str = point(0, "12.500", gantry_angle="180.5", couch_vertical="-1.20")
    as_dec = point(0, Decimal("12.500"), gantry_angle=Decimal("180.5"), couch_vertical=Decimal("-1.20"))
    assert as_str == as_dec
    assert isinstance(as_str.gantry_angle, Decimal)
    assert isinstance(as_str.index, Decimal)


def test_ints_datetimes_and_bytes_are_normalised() -> None:
    cp = ControlPoint(
        point="3",
        energy_unit_enum=Decimal(2),
        a_leaf_set=memoryview(b"\x01\x00"),
        b_leaf_set=bytearray(b"\x02\x00"),
    )
    assert cp.point == 3 and cp.energy_unit_enum == 2
    assert cp.a_leaf_set == b"\x01\x00" and type(cp.b_leaf_set) is bytes
    d = delivery(tx_datetime="2024-03-05 09:41:17", patient=patient(birth_date="1961-07-04 00:00:00"))
    assert d.tx_datetime == TX
    assert d.patient.birth_date == BIRTH


def test_bad_values_raise_without_echoing_them() -> None:
    with pytest.raises(RecordValueError) as exc:
        ControlPoint(point=0, gantry_angle="SECRET-VALUE")
    assert "Gantry_Ang" in str(exc.value)
    assert "SECRET" not in str(exc.value)
    with pytest.raises(RecordValueError):
        ControlPoint(point="1.5")
    with pytest.raises(RecordValueError):
        delivery(tx_datetime=None)


def test_repr_and_str_carry_keys_only() -> None:
    d = vmat_delivery()
    for text in (repr(d), str(d), repr(d.patient), str(d.patient), repr(d.control_points[0]), repr([d])):
        for secret in (LAST, FIRST, IDA, "1961", "O'Brien"):
            assert secret not in text
    assert "dhs_id=900003" in repr(d) and "fld_id=7003" in repr(d)


def test_frozen_and_control_points_sorted() -> None:
    d = delivery([point(2, 100), point(0, 0), point(1, 50)])
    assert [cp.point for cp in d.control_points] == [0, 1, 2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.dhs_id = 1  # type: ignore[misc]
    with pytest.raises(RecordValueError):
        delivery(patient="not a patient")


# --- leaves ------------------------------------------------------------------------------------------------
def test_leaf_set_is_little_endian_int16_hundredths_of_cm() -> None:
    raw = struct.pack("<4h", -1234, 0, 5, 32767)
    assert decode_leaf_set(raw) == (-1234, 0, 5, 32767)
    assert [raw_to_mm_str(v) for v in (-1234, 0, 5, -5, 32767)] == ["-123.4", "0", "0.5", "-0.5", "3276.7"]


def test_padding_beyond_leaf_count_is_ignored_but_trailing_zero_leaves_kept() -> None:
    raw = struct.pack("<3h", 100, 0, 0) + b"\x00" * 10  # last real leaf is 0: bytes end in zeros
    assert decode_leaf_set(raw, 3) == (100, 0, 0)
    assert len(decode_leaf_set(raw)) == 8
    with pytest.raises(LeafSetError):
        decode_leaf_set(raw[:4], 3)
    assert decode_leaf_set(b"\x01\x00\x07") == (1,)  # odd trailing byte dropped when counting


def test_leaf_jaw_positions_whole_a_bank_then_whole_b_bank() -> None:
    a = struct.pack("<3h", -100, -200, -300)
    b = struct.pack("<3h", 100, 250, 300)
    assert leaf_jaw_positions(a, b) == ("-10", "-20", "-30", "10", "25", "30")
    with pytest.raises(LeafSetError):
        leaf_jaw_positions(a, b[:4])
