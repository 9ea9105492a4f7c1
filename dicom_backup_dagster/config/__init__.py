"""Site configuration: environments.toml -> typed, validated, frozen model (docs/configuration.md).

One table per environment (site); the file and environment come from ``$DICOM_BACKUP_CONFIG`` and
``$DICOM_BACKUP_ENVIRONMENT`` (or ``default_environment``). Secrets are only named in the file and read for
the selected environment alone. One :class:`ConfigError` lists every problem with file, environment,
dotted key and fix.
"""

from dicom_backup_dagster.config.cli import _summary, main
from dicom_backup_dagster.config.loader import CONFIG_ENV_VAR, ENVIRONMENT_ENV_VAR, load_config
from dicom_backup_dagster.config.models import (
    BackupTarget,
    ConfigError,
    ConfigIssue,
    EnvironmentConfig,
    MosaiqSource,
    QRSource,
    RestoreTarget,
    ScriptAE,
    Secret,
    Settings,
    SiteConfig,
    Source,
)

# fmt: off
__all__ = [
    "CONFIG_ENV_VAR", "ENVIRONMENT_ENV_VAR", "BackupTarget", "ConfigError", "ConfigIssue",
    "EnvironmentConfig", "MosaiqSource", "QRSource", "RestoreTarget", "ScriptAE", "Secret", "Settings",
    "SiteConfig", "Source", "_summary", "load_config", "main",
]
# fmt: on
