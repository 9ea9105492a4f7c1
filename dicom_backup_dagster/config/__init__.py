"""Site configuration: environments.toml -> typed, validated, frozen model.

One TOML file holds one table per environment (site), e.g. ``[UCLA]`` and ``[TJU]``. Which file and which
environment are used is chosen by ``$DICOM_BACKUP_CONFIG`` and ``$DICOM_BACKUP_ENVIRONMENT`` (or the
file's ``default_environment``). Secrets never live in the file: it names environment variables
(``db_password_env``, ``rest_password_env``) that are read only for the selected environment, and their
values never appear in ``repr``/``str`` of the models or in any error message.

Validation collects every problem it can find and raises one :class:`ConfigError` whose message names the
file, the environment, the dotted key (``UCLA.sources.ARIA_MAIN.port``) and the fix, so an operator can
correct a file in one pass. docs/configuration.md is the reference for every key.
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
    ae_title_problem,
)
from dicom_backup_dagster.mosaiq.connection import is_sqlite_driver

# fmt: off
__all__ = [
    "CONFIG_ENV_VAR", "ENVIRONMENT_ENV_VAR", "BackupTarget", "ConfigError", "ConfigIssue",
    "EnvironmentConfig", "MosaiqSource", "QRSource", "RestoreTarget", "ScriptAE", "Secret", "Settings",
    "SiteConfig", "Source", "_summary", "ae_title_problem", "is_sqlite_driver", "load_config", "main",
]
# fmt: on
