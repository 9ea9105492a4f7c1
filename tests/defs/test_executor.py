"""The site setting `executor` picks Dagster's executor; `celery` routes every step to the site's queue."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from dagster import in_process_executor

from dicom_backup_dagster.config import load_config
from dicom_backup_dagster.defs import build_executor, celery_queue

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "environments.example.toml"


def test_executor_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("UCLA_MOSAIQ_DB_PASSWORD", "UCLA_ORTHANC_MAIN_PASSWORD", "UCLA_ORTHANC_STAGE_PASSWORD"):
        monkeypatch.setenv(var, "x")
    env = load_config(EXAMPLE, "UCLA").environment
    assert build_executor(env) is in_process_executor and celery_queue(env) == "dicom-backup-ucla"
    monkeypatch.setenv("DICOM_BACKUP_CELERY_BROKER", "redis://127.0.0.1:6379/15")
    celery = build_executor(replace(env, settings=replace(env.settings, executor="celery")))
    assert celery.name == "celery_executor"
    assert celery.config_schema._config_fn({}) == {  # type: ignore[attr-defined]
        "broker": "redis://127.0.0.1:6379/15",
        "backend": "redis://127.0.0.1:6379/15",
        "config_source": {"task_default_queue": "dicom-backup-ucla"},
    }
    queued = replace(env, settings=replace(env.settings, executor="celery", celery_queue="near-aria"))
    assert celery_queue(queued) == "near-aria"
