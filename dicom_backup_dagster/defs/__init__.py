"""Everything Dagster: resources, assets, checks, jobs, schedules and sensors, built from the site config."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from dicom_backup_dagster.config import SiteConfig
from dicom_backup_dagster.defs.alerts import build_alert_defs
from dicom_backup_dagster.defs.connectivity import build_connectivity_defs
from dicom_backup_dagster.defs.mosaiq_backup import build_mosaiq_backup_defs
from dicom_backup_dagster.defs.on_demand import build_on_demand_defs
from dicom_backup_dagster.defs.qr_backup import build_qr_backup_defs
from dicom_backup_dagster.defs.reports import build_report_defs
from dicom_backup_dagster.defs.resources import build_resources
from dicom_backup_dagster.defs.restore import build_restore_defs
from dicom_backup_dagster.defs.staging_cleanup import build_staging_cleanup_defs
from dicom_backup_dagster.defs.summary import build_summary_defs
from dicom_backup_dagster.defs.sweep import build_sweep_defs


def build_definitions(site: SiteConfig) -> Definitions:
    env = site.environment
    backups = Definitions.merge(
        # One process per run: a backup step spends its time waiting on DICOM peers, and a night's backfill
        # is dozens of runs, for which a process per step (the default) costs more than the work.
        Definitions(resources=build_resources(env), executor=in_process_executor),
        build_connectivity_defs(env),
        build_qr_backup_defs(env),
        build_on_demand_defs(env),
        build_sweep_defs(env),
        build_mosaiq_backup_defs(env),
        build_staging_cleanup_defs(env),
        build_alert_defs(env),
        build_report_defs(env),
        build_restore_defs(env),
    )
    return Definitions.merge(backups, build_summary_defs(env, backups))
