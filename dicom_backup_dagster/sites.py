"""One code location per environment (site) of the TOML: ``dicom_backup_dagster.sites:<ENVIRONMENT>``.

Each environment is an attribute of this module, built on first use from ``$DICOM_BACKUP_CONFIG``::

    load_from:                      # workspace.yaml: one entry per site
      - python_module: {module_name: dicom_backup_dagster.sites, attribute: UCLA, location_name: UCLA}

    dagster code-server start -m dicom_backup_dagster.sites -a UCLA --location-name UCLA

The code pointer names the site, so a Celery worker that re-imports a run's job loads that site whatever
``$DICOM_BACKUP_ENVIRONMENT`` says. Secrets are read for that site alone (docs/decisions/multi-site.md).
"""

from dagster import Definitions

from dicom_backup_dagster.config import load_config
from dicom_backup_dagster.defs import build_definitions

_built: dict[str, Definitions] = {}


def __getattr__(name: str) -> Definitions:
    if name.startswith("_"):  # dunders and private names probed by importers and tools
        raise AttributeError(name)
    if name not in _built:
        _built[name] = build_definitions(load_config(environment=name))
    return _built[name]
