"""The PostgreSQL variant of dagster.yaml (dagster-postgres) runs the project's job on 127.0.0.1:5432."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from dicom_backup_dagster.config import load_config
from dicom_backup_dagster.defs import build_definitions
from tests.postgres import PG, throwaway_database

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def postgres_database():
    with throwaway_database("dagster_test") as name:
        yield name


def test_postgres_instance_runs_connectivity_check(postgres_database, sandbox, monkeypatch):
    for key, value in {
        "DAGSTER_PG_HOST": PG["host"],
        "DAGSTER_PG_PORT": str(PG["port"]),
        "DAGSTER_PG_USER": PG["user"],
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": postgres_database,
        **sandbox.env_vars(),
    }.items():
        monkeypatch.setenv(key, value)
    job = build_definitions(load_config(sandbox.config_path, "SANDBOX")).resolve_job_def("connectivity_check")

    instance = DagsterInstance.from_config(str(REPO / "dagster_home" / "postgres"))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        result = job.execute_in_process(instance=instance)
        assert result.success
        stored = instance.get_run_by_id(result.run_id)
        assert stored is not None and stored.status == DagsterRunStatus.SUCCESS
    finally:
        instance.dispose()

    with psycopg2.connect(dbname=postgres_database, **PG) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cur.fetchone() == ("SUCCESS",)
        cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", (result.run_id,))
        assert cur.fetchone()[0] > 5
