"""Code location entry point: the definitions for the environment selected by DICOM_BACKUP_CONFIG and
DICOM_BACKUP_ENVIRONMENT (see README, "Configuration")."""

from dicom_backup_dagster.config import load_config
from dicom_backup_dagster.defs import build_definitions

defs = build_definitions(load_config())
