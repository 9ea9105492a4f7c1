"""The Mosaiq schema probe against real databases: SQLite3 ODBC copies of the sandbox's evidence-built
Mosaiq (with columns dropped or added), and a private scram-sha-256 PostgreSQL reached through psqlODBC,
both through the function and through ``python -m dicom_backup_dagster.mosaiq_probe``."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pyodbc
import pytest
import sqlglot
from pydicom import dcmread
from sqlglot import exp

from dicom_backup_dagster.mosaiq.deliveries import MosaiqSchemaError, read_deliveries, render_deliveries
from dicom_backup_dagster.mosaiq.probe import probe
from dicom_backup_dagster.mosaiq.queries import COLUMNS, DEFAULT_QUERIES, EVIDENCE, TABLE_ALIASES
from dicom_backup_dagster.sandbox.mosaiq_db import create_mosaiq_db, fill, sqlite_connection_string
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, patients
from tests.config.conftest import dump_toml, valid_config
from tests.mosaiq.test_connection import PG_DRIVER, PG_PASSWORD, _free_port, private_postgres

OPTS = SyntheticOptions(patients=2, fractions=2, control_points=3, seed=7)
PATIENTS = list(patients(OPTS))
ALL = ("2000-01-01 00:00:00", "2100-01-01 00:00:00")
REPO = Path(__file__).resolve().parents[2]
DECISION = REPO / "docs" / "decisions" / "mosaiq-columns.md"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "mosaiq.sqlite"
    create_mosaiq_db(path, PATIENTS)
    return path


@pytest.fixture
def db(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the sandbox Mosaiq for the test to alter."""
    path = tmp_path / "mosaiq.sqlite"
    shutil.copyfile(pristine, path)
    return path


def alter(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as cn:
        for sql in statements:
            cn.execute(sql)


@pytest.fixture
def connect_db(db: Path) -> Iterator[Any]:
    opened: list[pyodbc.Connection] = []

    def open_() -> pyodbc.Connection:
        cn = pyodbc.connect(sqlite_connection_string(db))
        opened.append(cn)
        return cn

    yield open_
    for cn in opened:
        cn.close()


# ------------------------------------------------------------------------------------- the sandbox schema


def test_the_sandbox_schema_is_ready_with_patient_sex_left_out(connect_db: Any) -> None:
    report = probe(connect_db())
    assert report.ok, report.lines()
    assert [f"{c.table}.{c.name}" for c in report.left_out] == ["Patient.Sex"]
    # TxFieldPoint_Hst holds only the jaws and couch public code reads from it; the rest is the plan's
    assert "Gantry_Ang" in report.from_planned and "Coll_X1" not in report.from_planned
    lines = report.lines()
    assert "  left out: Patient.Sex -> PatientSex (Type 2) is not written" in lines
    assert lines[-1] == "RESULT: OK, a night would run (with the attributes above left out)"
    assert 'pt."Sex"' not in report.queries["deliveries"] and 'pt."Sex"' in DEFAULT_QUERIES["deliveries"]


def test_a_site_with_patient_sex_gets_it(db: Path, connect_db: Any) -> None:
    alter(db, 'ALTER TABLE "Patient" ADD "Sex" VARCHAR(16)', """UPDATE "Patient" SET "Sex" = 'FEMALE'""")
    conn = connect_db()
    assert probe(conn).left_out == []
    batch = read_deliveries(conn, *ALL)
    sexes = {dcmread(BytesIO(r.data)).PatientSex for _, r in render_deliveries(batch.deliveries).records}
    assert sexes == {"F"}


def test_a_missing_optional_column_leaves_its_attribute_out_and_the_night_runs(
    db: Path, connect_db: Any
) -> None:
    alter(db, 'ALTER TABLE "Patient" DROP COLUMN "Birth_DtTm"', 'ALTER TABLE "TxField" DROP COLUMN "Sad"')
    conn = connect_db()
    report = probe(conn)
    assert report.ok
    assert {f"{c.table}.{c.name}" for c in report.left_out} == {
        "Patient.Sex",
        "Patient.Birth_DtTm",
        "TxField.Sad",
    }
    batch = read_deliveries(conn, *ALL)
    assert batch.quarantined == [] and len(batch.deliveries) == OPTS.fractions * sum(
        len(p.beams) for p in PATIENTS
    )
    for _, record in render_deliveries(batch.deliveries).records:
        ds = dcmread(BytesIO(record.data))
        assert ds.PatientBirthDate == "" and "SourceAxisDistance" not in ds.TreatmentSessionBeamSequence[0]


# --------------------------------------------------------------------------------- what blocks a night


def test_a_missing_required_column_is_listed_and_the_night_fails_with_the_list(
    db: Path, connect_db: Any
) -> None:
    alter(db, 'ALTER TABLE "TxField" DROP COLUMN "OriginalPlanUID"')
    conn = connect_db()
    report = probe(conn)
    assert not report.ok
    lines = report.lines()
    assert (
        "  MISSING TxField.OriginalPlanUID (needed for ReferencedRTPlanSequence; study of the record)"
        in lines
    )
    assert "Query 'deliveries': not tried (fix the missing columns first)" in lines
    assert "Query 'treated_control_points': runs (tried on an empty window)" in lines
    assert lines[-1].startswith("RESULT: NOT READY, a night would fail")
    with pytest.raises(MosaiqSchemaError) as info:
        read_deliveries(conn, *ALL)
    text = str(info.value)
    assert "column TxField.OriginalPlanUID is missing" in text and "no such column" not in text
    assert "python -m dicom_backup_dagster.mosaiq_probe" in text


def test_a_missing_table_is_listed(db: Path, connect_db: Any) -> None:
    alter(db, 'DROP TABLE "DCMStudy"')
    report = probe(connect_db())
    assert not report.ok and report.missing_tables == ["DCMStudy"]
    assert "  MISSING table DCMStudy" in report.lines()


def test_an_unparsable_override_is_reported_and_blocks(connect_db: Any) -> None:
    bad = 'SELECT "DHS_ID" FROM "Dose_Hst" WHERE "Tx_DtTm" >= ?; DELETE FROM "Dose_Hst"'
    report = probe(connect_db(), {"deliveries": bad, "nightly_extra": "SELECT 1"})
    assert not report.ok
    lines = report.lines()
    assert (
        "Override 'deliveries': DOES NOT PARSE: Mosaiq query 'deliveries' override: must be a single "
        "statement, found 2"
    ) in lines
    assert any(
        line.startswith("Override 'nightly_extra': DOES NOT PARSE: unknown query name") for line in lines
    )
    assert "Query 'deliveries': not tried (its override does not parse)" in lines


def test_an_override_that_parses_but_does_not_run_is_reported(connect_db: Any) -> None:
    sql = 'SELECT d."DHS_ID", d."Point" FROM "Dose_Hst" d WHERE d."Tx_DtTm" >= ? AND d."Tx_DtTm" < ?'
    report = probe(connect_db(), {"planned_control_points": sql})
    assert not report.ok and list(report.query_problems) == ["planned_control_points"]
    assert "Override 'planned_control_points': parses" in report.lines()
    assert "no such column: d.Point" in report.query_problems["planned_control_points"]


def test_an_override_replaces_the_columns_it_covers(db: Path, connect_db: Any) -> None:
    """A site whose Mosaiq lacks a required column can still run a night with its own query."""
    alter(db, 'ALTER TABLE "TxField" DROP COLUMN "OriginalPlanUID"')
    minimal = (
        'SELECT d."DHS_ID" AS "DHS_ID", d."Tx_DtTm" AS "Tx_DtTm" FROM "Dose_Hst" d '
        'WHERE d."Tx_DtTm" >= ? AND d."Tx_DtTm" < ?'
    )
    report = probe(connect_db(), {"deliveries": minimal})
    assert report.ok, report.lines()
    assert report.queries["deliveries"] == minimal


# ---------------------------------------------------------------------- every column read has its evidence


def _columns_read(sql: str) -> set[str]:
    aliases = {a: t for t, a in TABLE_ALIASES.items()}
    tree = sqlglot.parse_one(sql, read="tsql")
    return {f"{aliases[c.table]}.{c.name}" for c in tree.find_all(exp.Column) if c.table}


def test_every_column_the_default_queries_read_is_documented_with_its_evidence() -> None:
    read = set().union(*(_columns_read(sql) for sql in DEFAULT_QUERIES.values()))
    listed = {f"{c.table}.{c.name}": c for c in COLUMNS}
    assert read == set(listed), read ^ set(listed)
    text = DECISION.read_text(encoding="utf-8")
    for name, col in listed.items():
        assert col.evidence and set(col.evidence) <= set(EVIDENCE), name
        assert f"`{name}`" in text, f"{name} is not in {DECISION.name}"
    for source in EVIDENCE.values():
        assert source.split(" (")[0].split(" ")[-1] in text


# ----------------------------------------------------------------------------------- the command line


def _cli(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_BACKUP_")}
    return subprocess.run(
        [sys.executable, "-m", "dicom_backup_dagster.mosaiq_probe", "--config", str(config), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def _config(tmp_path: Path, mosaiq: dict[str, Any], overrides: dict[str, str] | None = None) -> Path:
    data = valid_config()
    site = data["SITE_A"]
    site["sources"]["MOSAIQ"] = {**site["sources"]["MOSAIQ"], **mosaiq}
    if overrides is None:
        del site["settings"]["mosaiq_queries"]
    else:
        site["settings"]["mosaiq_queries"] = overrides
    path = tmp_path / "environments.toml"
    path.write_text(dump_toml(data), encoding="utf-8")
    return path


SECRETS = {"SITE_A_MAIN_PW": "main-pw-1", "SITE_A_STAGE_PW": "stage-pw-2"}


def test_cli_on_sqlite_ready_then_not_ready(db: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, {"db_database": str(db)})
    env = {**SECRETS, "SITE_A_MOSAIQ_PW": "unused"}
    ok = _cli(config, env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == "== MOSAIQ" and "RESULT: OK" in ok.stdout
    alter(db, 'ALTER TABLE "Dose_Hst" DROP COLUMN "Termination_Status_Enum"')
    bad = _cli(config, env)
    assert bad.returncode == 1
    assert (
        "  MISSING Dose_Hst.Termination_Status_Enum (needed for TreatmentTerminationStatus (Type 1))"
        in bad.stdout
    )


def test_cli_reports_an_unparsable_override_from_the_configuration(db: Path, tmp_path: Path) -> None:
    config = _config(
        tmp_path, {"db_database": str(db)}, {"deliveries": 'UPDATE "Dose_Hst" SET "Meterset" = 0'}
    )
    out = _cli(config, {**SECRETS, "SITE_A_MOSAIQ_PW": "unused"})
    assert out.returncode == 2 and out.stdout == ""
    assert (
        "mosaiq_queries.deliveries" in out.stderr
        and "must start with SELECT or WITH, not UPDATE" in out.stderr
    )


@pytest.fixture(scope="module")
def pg_mosaiq() -> Iterator[int]:
    """The private scram-sha-256 cluster holding the sandbox Mosaiq in its postgres database."""
    with private_postgres() as (port, _):
        from dicom_backup_dagster.mosaiq.connection import odbc_quote

        cn = pyodbc.connect(
            f"DRIVER={{{PG_DRIVER}}};SERVER=127.0.0.1;PORT={port};DATABASE=postgres;UID=pg;"
            f"PWD={odbc_quote(PG_PASSWORD)}"
        )
        fill(cn, PATIENTS, dialect="postgresql")
        cn.commit()
        cn.close()
        yield port


def _pg(port: int) -> dict[str, Any]:
    return {
        "db_server": "127.0.0.1",
        "db_port": port,
        "db_database": "postgres",
        "db_username": "pg",
        "odbc_driver": PG_DRIVER,
    }


def test_cli_on_postgresql_reads_information_schema(pg_mosaiq: int, tmp_path: Path) -> None:
    out = _cli(_config(tmp_path, _pg(pg_mosaiq)), {**SECRETS, "SITE_A_MOSAIQ_PW": PG_PASSWORD})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Mosaiq schema probe (PostgreSQL)" in out.stdout
    assert "  left out: Patient.Sex -> PatientSex (Type 2) is not written" in out.stdout
    assert PG_PASSWORD not in out.stdout + out.stderr


def test_cli_wrong_password_fails_naming_the_variable_never_the_secret(
    pg_mosaiq: int, tmp_path: Path
) -> None:
    wrong = "Wr0ng;pa}ss{word"
    out = _cli(_config(tmp_path, _pg(pg_mosaiq)), {**SECRETS, "SITE_A_MOSAIQ_PW": wrong})
    assert out.returncode == 3 and "RESULT" not in out.stdout
    assert "login failed — check the password in $SITE_A_MOSAIQ_PW" in out.stderr
    assert "password authentication failed" in out.stderr
    for secret in (wrong, "pa}ss", PG_PASSWORD):
        assert secret not in out.stdout + out.stderr


def test_cli_unreachable_server_fails_naming_host_and_port_never_the_secret(tmp_path: Path) -> None:
    if PG_DRIVER not in pyodbc.drivers():
        pytest.skip("psqlODBC not installed")
    port = _free_port()  # nothing listens here
    secret = "Unre4chable;Secret"
    out = _cli(_config(tmp_path, _pg(port)), {**SECRETS, "SITE_A_MOSAIQ_PW": secret}, "--timeout", "3")
    assert out.returncode == 3
    assert "the database server is unreachable" in out.stderr
    assert f"check db_server/db_port (127.0.0.1:{port})" in out.stderr
    assert secret not in out.stdout + out.stderr
