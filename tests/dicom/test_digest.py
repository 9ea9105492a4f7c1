"""content_digest: equal across transfer-syntax re-encodings and meta rewrites; different on any value
change."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_backup_dagster.dicom.digest import content_digest, file_digest

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "rtstruct.dcm"]

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


def _encode(ds: Dataset, implicit: bool) -> bytes:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return out.getvalue()


def _load(name: str) -> Dataset:
    ds = dcmread(get_testdata_file(name), force=True)
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        from pydicom.dataset import FileMetaDataset

        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


@pytest.mark.parametrize("name", FILES)
def test_equal_across_implicit_and_explicit_vr(name: str) -> None:
    implicit = _encode(_load(name), implicit=True)
    explicit = _encode(_load(name), implicit=False)
    assert implicit != explicit  # the encodings really differ ...
    assert content_digest(implicit) == content_digest(explicit)  # ... the content does not
    # Re-encode the re-read data (what a receiver does) both ways round.
    again = _encode(dcmread(io.BytesIO(explicit)), implicit=True)
    assert content_digest(again) == content_digest(implicit)


def test_same_from_path_bytes_and_dataset(tmp_path: Path) -> None:
    path = Path(get_testdata_file("rtplan.dcm"))
    by_path = content_digest(path)
    assert content_digest(str(path)) == by_path
    assert content_digest(path.read_bytes()) == by_path
    ds = dcmread(path)
    assert content_digest(ds) == by_path
    # Elements decoded by access take the re-encoding path: still the same digest.
    _ = ds.PatientName, ds.BeamSequence[0].ControlPointSequence[0].GantryAngle, ds.RTPlanLabel
    assert content_digest(ds) == by_path


def test_meta_rewrite_and_trailing_padding_are_ignored() -> None:
    ds = _load("CT_small.dcm")
    before = content_digest(_encode(ds, implicit=False))
    ds.file_meta.ImplementationClassUID = "1.2.276.0.7230010.3.0.3.6.7"
    ds.file_meta.ImplementationVersionName = "OFFIS_DCMTK_367"
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 16)  # Data Set Trailing Padding
    assert content_digest(_encode(ds, implicit=False)) == before


def test_in_memory_number_types_do_not_matter() -> None:
    """The FL pitfall from the lab (int 0 vs 0.0 after a round trip) is neutralised by re-encoding."""
    a, b = Dataset(), Dataset()
    a.add_new(0x300A0146, "FL", 0)  # an FL element, e.g. Wedge-related
    b.add_new(0x300A0146, "FL", 0.0)
    assert content_digest(a) == content_digest(b)


def _set(path: tuple[str | int, ...], value: object) -> Callable[[Dataset], None]:
    def mutate(ds: Dataset) -> None:
        target: object = ds
        for step in path[:-1]:
            target = target[step] if isinstance(step, int) else getattr(target, step)  # type: ignore[index]
        setattr(target, str(path[-1]), value)

    return mutate


def _flip_pixel(ds: Dataset) -> None:
    data = bytearray(ds.PixelData)
    data[len(data) // 2] ^= 0x01
    ds.PixelData = bytes(data)


def _zero_last_pixel_byte(ds: Dataset) -> None:
    data = bytearray(ds.PixelData)
    data[-1] = 0 if data[-1] else 1
    ds.PixelData = bytes(data)


def _change_private(ds: Dataset) -> None:
    ds[0x00091001].value = "CHANGED"


def _remove_element(ds: Dataset) -> None:
    del ds.SliceThickness


def _add_element(ds: Dataset) -> None:
    ds.ImageComments = "added"


CT_MUTATIONS = {
    "window_center": _set(("WindowCenter",), 41),
    "image_position": _set(("ImagePositionPatient",), [0.0, 0.0, 1.5]),
    "sequence_item": _set(("OtherPatientIDsSequence", 0, "TypeOfPatientID"), "RFID"),
    "pixel_data": _flip_pixel,
    "pixel_data_last_byte": _zero_last_pixel_byte,
    "private_element": _change_private,
    "removed_element": _remove_element,
    "added_element": _add_element,
}
PLAN_MUTATIONS = {
    "gantry_angle_in_nested_sequence": _set(
        ("BeamSequence", 0, "ControlPointSequence", 0, "GantryAngle"), 1.0
    ),
    "fractions_planned": _set(("FractionGroupSequence", 0, "NumberOfFractionsPlanned"), 31),
    "plan_label": _set(("RTPlanLabel",), "Plan2"),
}


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        *(("CT_small.dcm", m) for m in CT_MUTATIONS.values()),
        *(("rtplan.dcm", m) for m in PLAN_MUTATIONS.values()),
    ],
    ids=[*CT_MUTATIONS, *PLAN_MUTATIONS],
)
def test_any_value_change_changes_the_digest(
    name: str, mutate: Callable[[Dataset], None], implicit: bool
) -> None:
    original = content_digest(_encode(_load(name), implicit=implicit))
    ds = _load(name)
    mutate(ds)
    assert content_digest(_encode(ds, implicit=implicit)) != original


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("name", FILES)
def test_file_digest_is_content_digest(name: str, implicit: bool, tmp_path: Path) -> None:
    """What the content checks use on retrieved files (file_digest walks Explicit VR Little Endian bytes
    without pydicom, falls back otherwise) gives content_digest's value for images and RT objects alike."""
    path = tmp_path / "retrieved.dcm"
    path.write_bytes(_encode(_load(name), implicit=implicit))
    assert file_digest(path) == content_digest(path)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("CT_small.dcm", CT_MUTATIONS["pixel_data_last_byte"]),
        ("rtplan.dcm", PLAN_MUTATIONS["fractions_planned"]),
    ],
    ids=["pixel_data_last_byte", "fractions_planned"],
)
def test_file_digest_sees_a_value_change(
    name: str, mutate: Callable[[Dataset], None], implicit: bool, tmp_path: Path
) -> None:
    before, after = tmp_path / "before.dcm", tmp_path / "after.dcm"
    before.write_bytes(_encode(_load(name), implicit=implicit))
    ds = _load(name)
    mutate(ds)
    after.write_bytes(_encode(ds, implicit=implicit))
    assert file_digest(after) != file_digest(before)
