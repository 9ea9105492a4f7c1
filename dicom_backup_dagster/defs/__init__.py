"""Everything Dagster: resources, assets, checks, jobs, schedules and sensors, built from the site config."""

from __future__ import annotations

from dagster import Definitions

from dicom_backup_dagster.config import SiteConfig
from dicom_backup_dagster.defs.connectivity import build_connectivity_defs
from dicom_backup_dagster.defs.resources import build_resources


def build_definitions(site: SiteConfig) -> Definitions:
    env = site.environment
    return Definitions.merge(
        Definitions(resources=build_resources(env)),
        build_connectivity_defs(env),
    )
