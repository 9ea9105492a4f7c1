"""dicom-backup-dagster: verified backup of radiation-oncology DICOM into Orthanc, orchestrated by Dagster."""

__version__ = "0.1.0"
