"""Everything Dagster: resources, assets, checks, jobs, schedules and sensors, built from the site config."""

from __future__ import annotations

import os
import re
from typing import Any

from dagster import Definitions, ExecutorDefinition, in_process_executor

from dicom_backup_dagster.config import EnvironmentConfig, SiteConfig
from dicom_backup_dagster.defs.alerts import build_alert_defs
from dicom_backup_dagster.defs.connectivity import build_connectivity_defs
from dicom_backup_dagster.defs.drill import build_drill_defs
from dicom_backup_dagster.defs.mosaiq_backup import build_mosaiq_backup_defs
from dicom_backup_dagster.defs.on_demand import build_on_demand_defs
from dicom_backup_dagster.defs.qr_backup import build_qr_backup_defs
from dicom_backup_dagster.defs.reports import build_report_defs
from dicom_backup_dagster.defs.resources import build_resources
from dicom_backup_dagster.defs.restore import build_restore_defs
from dicom_backup_dagster.defs.staging_cleanup import build_staging_cleanup_defs
from dicom_backup_dagster.defs.summary import build_summary_defs
from dicom_backup_dagster.defs.sweep import build_sweep_defs

BROKER_ENV_VAR = "DICOM_BACKUP_CELERY_BROKER"
BACKEND_ENV_VAR = "DICOM_BACKUP_CELERY_BACKEND"


def celery_queue(env: EnvironmentConfig) -> str:
    """The site's Celery queue: ``settings.celery_queue`` or ``dicom-backup-<environment>``."""
    return env.settings.celery_queue or "dicom-backup-" + re.sub(r"[^a-z0-9_.-]", "-", env.name.lower())


def build_executor(env: EnvironmentConfig) -> ExecutorDefinition:
    """``in_process`` (one process per run), or dagster-celery: every step a task on the site's queue,
    so only the workers started with ``-q <queue>`` (deploy/README.md) run this site's steps."""
    if env.settings.executor == "in_process":
        return in_process_executor
    from dagster_celery import celery_executor  # optional extra [celery]

    broker = os.environ.get(BROKER_ENV_VAR, "redis://127.0.0.1:6379/0")
    config: dict[str, Any] = {
        "broker": broker,
        "backend": os.environ.get(BACKEND_ENV_VAR, broker),
        "config_source": {"task_default_queue": celery_queue(env)},
    }
    return celery_executor.configured(config, name="celery_executor")


def build_definitions(site: SiteConfig) -> Definitions:
    env = site.environment
    backups = Definitions.merge(
        # In process by default: a backup step spends its time waiting on DICOM peers, and a night's
        # backfill is dozens of runs, for which a process per step costs more than the work.
        Definitions(resources=build_resources(env), executor=build_executor(env)),
        build_connectivity_defs(env),
        build_qr_backup_defs(env),
        build_on_demand_defs(env),
        build_sweep_defs(env),
        build_mosaiq_backup_defs(env),
        build_staging_cleanup_defs(env),
        build_alert_defs(env),
        build_report_defs(env),
        build_restore_defs(env),
        build_drill_defs(env),
    )
    return Definitions.merge(backups, build_summary_defs(env, backups))
