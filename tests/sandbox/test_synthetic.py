"""Synthetic RT data: deterministic, valid DICOM, internally consistent, obviously fake."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_backup_dagster.sandbox.synthetic import (
    CT_IMAGE,
    RT_DOSE,
    RT_PLAN,
    RT_STRUCT,
    SPATIAL_REG,
    Manifest,
    SyntheticOptions,
    generate,
    patients,
)

OPTS = SyntheticOptions(patients=3, ct_slices=5, fractions=4, cbct_slices=3, control_points=6, seed=42)
CLASS_OF = {"CT": CT_IMAGE, "RTSTRUCT": RT_STRUCT, "RTPLAN": RT_PLAN, "RTDOSE": RT_DOSE, "REG": SPATIAL_REG}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return generate(tmp_path_factory.mktemp("syn"), OPTS)


def _digest(m: Manifest) -> dict[str, str]:
    return {r.relpath: hashlib.sha256(r.path.read_bytes()).hexdigest() for r in m}


def test_deterministic_and_seed_sensitive(data: Manifest, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", OPTS)
    assert [r.to_json() for r in again] == [r.to_json() for r in data]
    assert _digest(again) == _digest(data)  # byte-identical files, pixel data included
    other = generate(
        tmp_path / "other", SyntheticOptions(**{**OPTS.to_json(), "start_date": OPTS.start_date, "seed": 43})
    )
    assert not {r.sop_instance_uid for r in other} & {r.sop_instance_uid for r in data}


def test_reuse_skips_regeneration(data: Manifest) -> None:
    before = data.path.stat().st_mtime_ns
    again = generate(data.root, OPTS)
    assert again.path.stat().st_mtime_ns == before and len(again) == len(data)


def test_counts_sources_and_dates(data: Manifest) -> None:
    recs = list(data)
    assert len(recs) == len(data) == OPTS.expected_instances()
    assert len({r.sop_instance_uid for r in recs}) == len(recs)
    for p in patients(OPTS):
        mine = [r for r in recs if r.patient == p.number]
        expected_source = "MIM" if p.number % 3 == 0 else "ARIA"
        assert {r.source for r in mine if r.modality != "REG"} == {expected_source}
        assert [r.source for r in mine if r.modality == "REG"] == ["MIM"]
        cbct_dates = sorted({r.date for r in mine if r.modality == "CT" and r.date != mine[0].date})
        assert cbct_dates == [d.strftime("%Y%m%d") for d in p.treatment_dates]
        assert all(d.weekday() < 5 for d in p.treatment_dates)
        assert len(p.treatment_dates) == OPTS.fractions
    assert sorted({r.date for r in recs}) == [d.strftime("%Y%m%d") for d in data.dates]


def test_files_are_valid_and_consistent(data: Manifest) -> None:
    recs = list(data)
    ct_slices: dict[str, set[str]] = {}
    pixel_hashes = set()
    for r in recs:
        ds = dcmread(r.path)
        assert ds.SOPInstanceUID == r.sop_instance_uid == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.SOPClassUID == r.sop_class_uid == CLASS_OF[r.modality]
        assert ds.StudyDate == r.date and ds.StudyInstanceUID == r.study_instance_uid
        assert str(ds.PatientName).startswith("SANDBOX^PATIENT") and ds.PatientID.startswith("SBX")
        assert ds.PatientBirthDate.startswith("1900")
        if r.modality == "CT":
            assert ds.pixel_array.shape == (OPTS.image_size, OPTS.image_size)
            pixel_hashes.add(hashlib.sha1(ds.PixelData).hexdigest())
            ct_slices.setdefault(ds.SeriesInstanceUID, set()).add(ds.SOPInstanceUID)
    assert len(pixel_hashes) == sum(1 for r in recs if r.modality == "CT")  # no two slices alike
    for r in recs:
        if r.modality == "RTSTRUCT":
            ds = dcmread(r.path)
            series = (
                ds.ReferencedFrameOfReferenceSequence[0]
                .RTReferencedStudySequence[0]
                .RTReferencedSeriesSequence[0]
            )
            refs = {c.ReferencedSOPInstanceUID for c in series.ContourImageSequence}
            assert refs == ct_slices[series.SeriesInstanceUID]
        if r.modality == "RTPLAN":
            ds = dcmread(r.path)
            fg = ds.FractionGroupSequence[0]
            assert fg.NumberOfFractionsPlanned == OPTS.fractions
            assert fg.NumberOfBeams == len(ds.BeamSequence) == len(fg.ReferencedBeamSequence)
            for beam in ds.BeamSequence:
                cps = beam.ControlPointSequence
                assert beam.NumberOfControlPoints == len(cps) == OPTS.control_points
                assert float(cps[0].CumulativeMetersetWeight) == 0.0
                assert (
                    float(cps[-1].CumulativeMetersetWeight)
                    == float(beam.FinalCumulativeMetersetWeight)
                    == 1.0
                )
                mlc = [
                    d
                    for d in cps[0].BeamLimitingDevicePositionSequence
                    if d.RTBeamLimitingDeviceType == "MLCX"
                ]
                assert len(mlc[0].LeafJawPositions) == 160
                if beam.BeamType == "DYNAMIC":
                    assert len({float(c.GantryAngle) for c in cps}) == len(cps)  # the gantry moves
        if r.modality == "RTDOSE":
            ds = dcmread(r.path)
            plan = next(x for x in recs if x.modality == "RTPLAN" and x.patient == r.patient)
            assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.sop_instance_uid


def test_dciodvfy_finds_no_errors(data: Manifest) -> None:
    for modality in CLASS_OF:
        rec = next(r for r in data if r.modality == modality)
        out = subprocess.run(["dciodvfy", str(rec.path)], capture_output=True, text=True, check=False)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (modality, errors)


def test_options_validate() -> None:
    with pytest.raises(ValueError):
        SyntheticOptions(patients=0)
    with pytest.raises(ValueError):
        SyntheticOptions(control_points=1)


def test_parallel_generation_equals_serial(tmp_path: Path) -> None:
    opts = SyntheticOptions(patients=4, ct_slices=2, fractions=1, cbct_slices=1, seed=9)
    serial = generate(tmp_path / "serial", opts, workers=1)
    parallel = generate(tmp_path / "parallel", opts, workers=2)
    assert [r.to_json() for r in parallel] == [r.to_json() for r in serial]
    assert _digest(parallel) == _digest(serial)


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        generate(tmp_path, SyntheticOptions(patients=1, ct_slices=1, fractions=0))
    assert (tmp_path / "precious.txt").exists()
