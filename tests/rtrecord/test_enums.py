"""Mosaiq enum codes -> DICOM values: documented mappings, unknown codes, quarantine reasons."""

from __future__ import annotations

from decimal import Decimal

import pytest

from dicom_backup_dagster.rtrecord import enums
from dicom_backup_dagster.rtrecord.enums import RecordQuarantined


@pytest.mark.parametrize(
    ("code", "value"),
    [(0, "UNKNOWN"), (1, "NORMAL"), (2, "OPERATOR"), (3, "MACHINE"), (None, "UNKNOWN"), (17, "UNKNOWN")],
)
def test_termination_status(code: int | None, value: str) -> None:
    assert enums.termination_status(code) == value
    assert value in enums.TERMINATION_STATUS_VALUES


@pytest.mark.parametrize(
    ("code", "value"),
    [(1, "VERIFIED"), (2, "VERIFIED_OVR"), (3, "NOT_VERIFIED"), (0, None), (None, None), (9, None)],
)
def test_verification_status(code: int | None, value: str | None) -> None:
    assert enums.verification_status(code) == value


def test_energy_unit_kv_and_unknown_have_no_dicom_value() -> None:
    assert enums.energy_unit(2) == "MV" and enums.energy_unit(3) == "MEV"
    assert enums.energy_unit(1) is None and enums.energy_unit(0) is None and enums.energy_unit(None) is None


@pytest.mark.parametrize(("code", "value"), [(1, "PHOTON"), (2, "ELECTRON"), (3, "PHOTON"), (6, "PROTON")])
def test_radiation_type(code: int, value: str) -> None:
    assert enums.radiation_type(code) == value


@pytest.mark.parametrize("code", [0, None, 8, 9, 20, 99])
def test_radiation_type_underivable_quarantines_with_keys_only(code: int | None) -> None:
    with pytest.raises(RecordQuarantined) as exc:
        enums.radiation_type(code, dhs_id=4242)
    assert "DHS_ID 4242" in exc.value.reason
    assert exc.value.dhs_id == 4242


def test_meterset_units() -> None:
    assert enums.primary_dosimeter_unit(1) == enums.DosimeterUnit("MU", Decimal(1))
    seconds = enums.primary_dosimeter_unit(5)
    assert seconds.dicom == "MINUTE" and seconds.factor * 90 == Decimal("1.5")
    for code in (0, 2, 3, None, 77):
        with pytest.raises(RecordQuarantined):
            enums.primary_dosimeter_unit(code, dhs_id=1)


def test_field_types() -> None:
    assert enums.field_type(1).delivery_type == "TREATMENT" and not enums.field_type(1).dynamic
    assert enums.field_type(13).dynamic and enums.field_type(2).dynamic
    assert enums.field_type(3).delivery_type == "SETUP" and enums.field_type(3).makes_record
    for imaging_only in (4, 5, 9):
        assert not enums.field_type(imaging_only).makes_record
        assert imaging_only in enums.SETUP_FIELD_TYPES
    for other_iod in (15, 18, 21):
        assert not enums.field_type(other_iod).representable
    unknown = enums.field_type(99)
    assert unknown.delivery_type is None and unknown.makes_record and unknown.representable
    assert enums.field_type(None).delivery_type is None
    for ft in enums.FIELD_TYPES.values():
        assert ft.delivery_type is None or ft.delivery_type in enums.TREATMENT_DELIVERY_TYPE_VALUES


def test_beam_type_follows_geometry_for_static_types() -> None:
    assert enums.beam_type(enums.field_type(1), geometry_changes=False) == "STATIC"
    assert enums.beam_type(enums.field_type(1), geometry_changes=True) == "DYNAMIC"
    assert enums.beam_type(enums.field_type(13), geometry_changes=False) == "DYNAMIC"


def test_patient_position_and_sex() -> None:
    assert [enums.patient_position(c) for c in (1, 2, 5, 9)] == ["HFS", "HFP", "FFS", "SITTING"]
    assert enums.patient_position(0) is None and enums.patient_position(None) is None
    assert [enums.patient_sex(s) for s in ("M", "female", " F ", "Other")] == ["M", "F", "F", "O"]
    assert enums.patient_sex(None) is None and enums.patient_sex("U") is None


@pytest.mark.parametrize(
    ("angle", "nxt", "expected"),
    [
        ("181", "185", "CW"),
        ("359", "3", "CW"),
        ("3", "359", "CC"),
        ("90", "90", "NONE"),
        ("90", None, "NONE"),
        ("10", "189", "CW"),
        ("10", "191", "CC"),
    ],
)
def test_rotation_direction_from_angles(angle: str, nxt: str | None, expected: str) -> None:
    got = enums.rotation_direction(Decimal(angle), None if nxt is None else Decimal(nxt))
    assert got == expected


def test_rotation_direction_ambiguous_and_site_map() -> None:
    with pytest.raises(enums.AmbiguousRotation):
        enums.rotation_direction(Decimal(0), Decimal(180))
    assert enums.rotation_direction(Decimal(0), Decimal(180), 1, {1: "CC"}) == "CC"
    # the unverified raw code is ignored without a site map
    assert enums.rotation_direction(Decimal(0), Decimal(10), 2) == "CW"
    assert len(enums.DIRECTION_ENUM) == 0
