"""Everything Dagster: resources, assets, checks, jobs, schedules and sensors, built from the site config."""

from __future__ import annotations

import os
import re
from typing import Any

from dagster import (
    Definitions,
    ExecutorDefinition,
    InitExecutorContext,
    executor,
    in_process_executor,
    multiple_process_executor_requirements,
)

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
from dicom_backup_dagster.defs.treatment_summary import build_treatment_summary_defs

BROKER_ENV_VAR = "DICOM_BACKUP_CELERY_BROKER"
BACKEND_ENV_VAR = "DICOM_BACKUP_CELERY_BACKEND"


def celery_queue(env: EnvironmentConfig) -> str:
    """The site's Celery queue: ``settings.celery_queue`` or ``dicom-backup-<environment>``."""
    return env.settings.celery_queue or "dicom-backup-" + re.sub(r"[^a-z0-9_.-]", "-", env.name.lower())


class BrokerUnreachable(Exception):
    """The Celery broker or result backend of a site does not answer at run start."""


def check_broker(site: str, queue: str, urls: dict[str, str], timeout_s: float = 3.0) -> None:
    """Connect once to the broker and the result backend (seconds, not Celery's ~20 s of retries); raise
    BrokerUnreachable naming the URL (password masked), the variable it comes from and what to do."""
    from kombu import Connection
    from kombu.utils.url import maybe_sanitize_url

    for variable, url in urls.items():
        try:
            with Connection(url, connect_timeout=timeout_s) as connection:
                connection.ensure_connection(
                    max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s
                )
        except Exception as exc:  # kombu wraps every transport's error in its own classes
            raise BrokerUnreachable(
                f"site {site}: the Celery {'broker' if variable == BROKER_ENV_VAR else 'result backend'} "
                f"{maybe_sanitize_url(url)} (${variable}) does not answer ({type(exc).__name__}: {exc}); "
                f"no step was sent to the queue {queue!r}. Start Redis there (systemctl start redis-server) "
                f"or set {variable} in /etc/dicom-backup/dicom-backup.env to the broker's URL, then "
                're-execute the run; or set settings.executor = "in_process" to run the steps on the '
                "Dagster host."
            ) from None


def build_executor(env: EnvironmentConfig) -> ExecutorDefinition:
    """``in_process`` (one process per run), or dagster-celery: every step a task on the site's queue,
    so only the workers started with ``-q <queue>`` (deploy/README.md) run this site's steps. At run start
    the broker is checked with one quick connection, so a broker that is down fails the run in seconds
    with its URL and the fix, not after Celery's retries with "Retry limit exceeded"."""
    if env.settings.executor == "in_process":
        return in_process_executor
    from dagster_celery import celery_executor  # optional extra [celery]

    broker = os.environ.get(BROKER_ENV_VAR, "redis://127.0.0.1:6379/0")
    backend = os.environ.get(BACKEND_ENV_VAR, broker)
    queue = celery_queue(env)

    @executor(
        name="celery_executor",
        config_schema=celery_executor.config_schema.as_field(),
        requirements=multiple_process_executor_requirements(),
    )
    def site_celery_executor(context: InitExecutorContext) -> Any:
        config = context.executor_config
        urls = {
            BROKER_ENV_VAR: str(config.get("broker") or broker),
            BACKEND_ENV_VAR: str(config.get("backend") or backend),
        }
        if urls[BACKEND_ENV_VAR] == urls[BROKER_ENV_VAR]:
            del urls[BACKEND_ENV_VAR]
        check_broker(env.name, queue, urls)
        return celery_executor.executor_creation_fn(context)  # type: ignore[misc]

    config: dict[str, Any] = {
        "broker": broker,
        "backend": backend,
        "config_source": {"task_default_queue": queue},
    }
    return site_celery_executor.configured(config, name="celery_executor")


def build_definitions(site: SiteConfig) -> Definitions:
    """The code location of the selected environment. When the file defines several (sites sharing one
    instance, docs/decisions/multi-site.md), pools are named by AE@host:port, the summary is
    `nightly_summary/<site>`, the alert history `alerts/history/<site>` and the drill `restore_drill/<site>`;
    the other names come from the aliases, which `config check --all` keeps distinct across the sites."""
    env, multi_site = site.environment, len(site.environment_names) > 1
    backups = Definitions.merge(
        # In process by default: a backup step spends its time waiting on DICOM peers, and a night's
        # backfill is dozens of runs, for which a process per step costs more than the work.
        Definitions(resources=build_resources(env), executor=build_executor(env)),
        build_connectivity_defs(env),
        build_qr_backup_defs(env, multi_site=multi_site),
        build_on_demand_defs(env, multi_site=multi_site),
        build_sweep_defs(env, multi_site=multi_site),
        build_mosaiq_backup_defs(env, multi_site=multi_site),
        build_staging_cleanup_defs(env),
        build_alert_defs(env, multi_site=multi_site),
        build_report_defs(env),
        build_restore_defs(env),
        build_treatment_summary_defs(env),
        build_drill_defs(env, multi_site=multi_site),
    )
    return Definitions.merge(backups, build_summary_defs(env, backups, multi_site=multi_site))
