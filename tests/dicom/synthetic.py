"""Small synthetic RT patient for the DICOM tests: CT slices + RTSTRUCT + RTPLAN + RTDOSE, fresh UIDs.

Built from pydicom's bundled test files with obviously fake identifiers ("SANDBOX^TEST").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid


@dataclass(frozen=True)
class SyntheticInstance:
    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str


def _load(name: str) -> Dataset:
    return dcmread(get_testdata_file(name), force=True)


def _stamp(ds: Dataset, patient_id: str, study_uid: str, series_uid: str, number: int) -> Dataset:
    ds.PatientName = "SANDBOX^TEST"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.InstanceNumber = number
    return ds


def make_patient(
    directory: Path, *, patient_id: str = "SANDBOX001", ct_slices: int = 3, implicit_vr: bool = False
) -> list[SyntheticInstance]:
    """Write one synthetic patient (one study, 4 series) to `directory`; returns what was written."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    out: list[Dataset] = []
    ct_series = generate_uid()
    for i in range(ct_slices):
        ds = _stamp(_load("CT_small.dcm"), patient_id, study_uid, ct_series, i + 1)
        ds.ImagePositionPatient = [0.0, 0.0, float(i * 5)]
        out.append(ds)
    for name in ("rtstruct.dcm", "rtplan.dcm", "rtdose.dcm"):
        out.append(_stamp(_load(name), patient_id, study_uid, generate_uid(), 1))
    ts = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
    written = []
    for ds in out:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ts
        ds.file_meta = meta
        path = directory / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True, implicit_vr=implicit_vr, little_endian=True)
        written.append(
            SyntheticInstance(
                path,
                study_uid,
                str(ds.SeriesInstanceUID),
                str(ds.SOPInstanceUID),
                str(ds.SOPClassUID),
                str(ds.Modality),
            )
        )
    return written


def make_study(
    directory: Path,
    *,
    study_date: str,
    study_time: str | None,
    modality: str = "CT",
    patient_id: str = "SANDBOX_CAP",
) -> SyntheticInstance:
    """One study of one instance (CT_small for "CT", rtplan for "RTPLAN") at a chosen date and time.

    study_time None leaves StudyTime out of the file; "" writes it empty (the two differ on Orthanc)."""
    directory.mkdir(parents=True, exist_ok=True)
    source = {"CT": "CT_small.dcm", "RTPLAN": "rtplan.dcm"}[modality]
    ds = _stamp(_load(source), patient_id, generate_uid(), generate_uid(), 1)
    ds.StudyDate = study_date
    if study_time is None:
        del ds.StudyTime
    else:
        ds.StudyTime = study_time
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path = directory / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return SyntheticInstance(
        path,
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        str(ds.SOPClassUID),
        str(ds.Modality),
    )
