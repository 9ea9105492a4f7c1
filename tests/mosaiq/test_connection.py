"""Mosaiq ODBC connections against real drivers: SQLite3 ODBC on a temp file, psqlODBC on a private
PostgreSQL cluster with password authentication (the shared 127.0.0.1:5432 server trusts every password,
so it cannot tell a wrong one)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyodbc
import pytest

from dicom_backup_dagster.config import MosaiqSource, Secret
from dicom_backup_dagster.mosaiq import connection
from dicom_backup_dagster.mosaiq.connection import (
    MosaiqConnection,
    MosaiqConnectionError,
    connect,
    odbc_connection_string,
    odbc_quote,
)

PG_PASSWORD = "Pg;pass}w{ord=1"  # every character ODBC brace quoting has to handle
PG_DRIVER = "PostgreSQL Unicode"


def mosaiq(**overrides: object) -> MosaiqSource:
    base = MosaiqSource(
        alias="MOSAIQ_DB",
        type="mosaiq",
        db_server="mosaiq-sql",
        db_port=1433,
        db_database="MOSAIQ",
        db_username="backup_ro",
        db_password_env="UCLA_MOSAIQ_DB_PASSWORD",
        odbc_driver="FreeTDS",
        odbc_options={},
        staging_target_alias="STAGE",
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def with_password(source: MosaiqSource, password: str) -> MosaiqSource:
    return replace(source, password_secret=Secret(source.db_password_env, password))


# ------------------------------------------------------------------------------------ connection strings


def test_odbc_quote() -> None:
    assert odbc_quote("plain") == "plain"
    assert odbc_quote("a;b") == "{a;b}"
    assert odbc_quote("a}b") == "{a}}b}"
    assert odbc_quote("{x") == "{{x}"
    assert odbc_quote(" lead") == "{ lead}"
    assert odbc_quote("") == "{}"


def test_freetds_string_has_port_and_read_only_intent() -> None:
    s = odbc_connection_string(mosaiq(odbc_options={"TDS_Version": "7.4"}), "p;w}d")
    assert s == (
        "DRIVER={FreeTDS};SERVER=mosaiq-sql;PORT=1433;DATABASE=MOSAIQ;UID=backup_ro;PWD={p;w}}d};"
        "ApplicationIntent=ReadOnly;TDS_Version=7.4"
    )


def test_microsoft_driver_puts_the_port_in_server() -> None:
    s = odbc_connection_string(
        mosaiq(
            odbc_driver="ODBC Driver 18 for SQL Server",
            odbc_options={"Encrypt": "yes", "applicationintent": "ReadWrite"},
        ),
        "pw",
    )
    assert s.startswith("DRIVER={ODBC Driver 18 for SQL Server};SERVER=mosaiq-sql,1433;DATABASE=MOSAIQ;")
    assert "PORT=" not in s and "Encrypt=yes" in s
    # An explicit option replaces the default rather than duplicating the attribute.
    assert "applicationintent=ReadWrite" in s and "ApplicationIntent=ReadOnly" not in s


def test_postgresql_and_sqlite_strings() -> None:
    pg = odbc_connection_string(mosaiq(odbc_driver=PG_DRIVER, db_port=None), "pw")
    assert (
        pg == "DRIVER={PostgreSQL Unicode};SERVER=mosaiq-sql;DATABASE=MOSAIQ;UID=backup_ro;PWD=pw;ReadOnly=1"
    )
    lite = odbc_connection_string(mosaiq(odbc_driver="SQLite3", db_database="/tmp/a;b.sqlite"), "")
    assert lite == "DRIVER={SQLite3};Database={/tmp/a;b.sqlite};NoCreat=1"


# ------------------------------------------------------------------------------------ SQLite3 ODBC


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "mosaiq.sqlite"
    cn = pyodbc.connect(f"DRIVER={{SQLite3}};Database={path}", autocommit=True)
    cn.execute(
        'CREATE TABLE Dose_Hst (DHS_ID INTEGER PRIMARY KEY, Pat_ID1 INTEGER, Tx_DtTm TEXT, "Index" TEXT)'
    )
    cn.execute("INSERT INTO Dose_Hst VALUES (1, 10001, '2026-01-02 10:00:00', '0.5')")
    cn.execute("INSERT INTO Dose_Hst VALUES (2, 10001, '2026-01-03 10:00:00', '1.5')")
    cn.close()
    return path


def test_sqlite_round_trip_and_read_only(sqlite_db: Path) -> None:
    src = mosaiq(odbc_driver="SQLite3", db_server="", db_port=None, db_database=str(sqlite_db))
    cn = connect(src, timeout_s=5)
    try:
        rows = cn.execute(
            "SELECT DHS_ID, [Index] FROM Dose_Hst WHERE Tx_DtTm > ? ORDER BY DHS_ID", "2026-01-02 12:00:00"
        ).fetchall()
        assert [tuple(r) for r in rows] == [(2, "1.5")]
        with pytest.raises(pyodbc.Error, match="readonly"):
            cn.execute("INSERT INTO Dose_Hst VALUES (3, 1, 'x', 'y')")
    finally:
        cn.close()
    check = pyodbc.connect(f"DRIVER={{SQLite3}};Database={sqlite_db}")
    assert check.execute("SELECT COUNT(*) FROM Dose_Hst").fetchone()[0] == 2
    check.close()


def test_sqlite_missing_file_fails_instead_of_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "mosaiq.sqlite"
    src = mosaiq(odbc_driver="SQLite3", db_server="", db_port=None, db_database=str(missing))
    with pytest.raises(MosaiqConnectionError) as info:
        connect(src)
    text = str(info.value)
    assert text.startswith(
        f"could not open the Mosaiq database {missing} on local SQLite file for source MOSAIQ_DB"
    )
    assert "does not exist or cannot be opened" in text and "check db_database" in text
    assert not missing.exists()
    missing.parent.mkdir()
    with pytest.raises(MosaiqConnectionError):
        connect(src)
    assert not missing.exists()  # NoCreat=1: no empty database appears


def test_missing_driver_lists_installed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    src = with_password(mosaiq(odbc_driver="No Such Driver 99"), "pw-not-shown")
    with pytest.raises(MosaiqConnectionError) as info:
        connect(src, timeout_s=2)
    text = str(info.value)
    assert "ODBC driver 'No Such Driver 99' is not installed" in text and "SQLite3" in text
    assert "pw-not-shown" not in text


def test_driver_text_is_scrubbed_of_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver that echoes the connection string (some do) must not leak the password."""
    secret = "Sup3r;Secret}"

    def echoing_connect(conn_str: str, **_: object) -> None:
        raise pyodbc.OperationalError("08001", f"[vendor] cannot connect with '{conn_str}' (pw {secret})")

    monkeypatch.setattr(connection.pyodbc, "connect", echoing_connect)
    with pytest.raises(MosaiqConnectionError) as info:
        connect(with_password(mosaiq(), secret))
    err = info.value
    assert secret not in str(err) and "Secret" not in str(err) and "***" in str(err)
    assert err.__cause__ is None and err.__suppress_context__  # the raw driver error is not chained
    assert str(err).startswith(
        "could not open the Mosaiq database MOSAIQ on mosaiq-sql:1433 for source "
        "MOSAIQ_DB as user backup_ro: the database server is unreachable"
    )


# ------------------------------------------------------------------------------------ PostgreSQL (psqlODBC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    for candidate in (
        shutil.which(name),
        f"/usr/local/bin/{name}",
        *sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True),
    ):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[tuple[int, str]]:
    """A throwaway PostgreSQL with scram-sha-256 on 127.0.0.1:<free port>; user pg, password PG_PASSWORD."""
    with private_postgres() as cluster:
        yield cluster


@contextlib.contextmanager
def private_postgres() -> Iterator[tuple[int, str]]:
    """pg_cluster's body, for other test modules: (port, ODBC connection string with the password)."""
    initdb, postgres = _pg_bin("initdb"), _pg_bin("postgres")
    if not (initdb and postgres) or PG_DRIVER not in pyodbc.drivers():
        pytest.skip("PostgreSQL server binaries or psqlODBC not installed")
    root = Path(tempfile.mkdtemp(prefix="mosaiq-pg-"))
    as_user: dict[str, object] = {}
    pwfile = root / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:  # postgres refuses to run as root
        nobody = pwd.getpwnam("nobody")
        as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        for path in (root, pwfile):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
    proc: subprocess.Popen[bytes] | None = None
    log = None
    try:
        subprocess.run(
            [initdb, "-D", str(root / "data"), "-U", "pg", "--auth=scram-sha-256", f"--pwfile={pwfile}"],
            check=True,
            capture_output=True,
            timeout=60,
            **as_user,
        )  # type: ignore[call-overload]
        port = _free_port()
        log = open(root / "pg.log", "wb")  # noqa: SIM115 - closed in finally (outlives this block)
        proc = subprocess.Popen(
            [
                postgres,
                "-D",
                str(root / "data"),
                "-p",
                str(port),
                "-k",
                str(root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            **as_user,
        )  # type: ignore[call-overload]
        good = odbc_connection_string(with_password(pg_source(port), PG_PASSWORD), PG_PASSWORD)
        deadline = time.monotonic() + 30
        while True:
            try:
                pyodbc.connect(good, timeout=2).close()
                break
            except pyodbc.Error:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "private PostgreSQL did not start: " + (root / "pg.log").read_text()
                    ) from None
                time.sleep(0.1)
        yield port, good
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if log is not None:
            log.close()
        shutil.rmtree(root, ignore_errors=True)


def pg_source(port: int, **overrides: object) -> MosaiqSource:
    fields: dict[str, object] = {
        "odbc_driver": PG_DRIVER,
        "db_server": "127.0.0.1",
        "db_port": port,
        "db_database": "postgres",
        "db_username": "pg",
    }
    return mosaiq(**{**fields, **overrides})


def test_pg_connects_with_a_brace_quoted_password_read_only(pg_cluster: tuple[int, str]) -> None:
    port, _ = pg_cluster
    cn = connect(with_password(pg_source(port), PG_PASSWORD), timeout_s=5)
    try:
        assert cn.execute("SELECT 40 + ?", 2).fetchone()[0] == 42
        with pytest.raises(pyodbc.Error, match="readonly"):
            cn.execute("CREATE TABLE should_not_exist (a int)")
    finally:
        cn.close()


def test_pg_wrong_password_says_login_failed_and_names_the_variable(pg_cluster: tuple[int, str]) -> None:
    port, _ = pg_cluster
    wrong = "wrong;Pa}ss"
    with pytest.raises(MosaiqConnectionError) as info:
        connect(with_password(pg_source(port), wrong), timeout_s=5)
    text = str(info.value)
    assert text.startswith(
        f"could not open the Mosaiq database postgres on 127.0.0.1:{port} for source MOSAIQ_DB "
        "as user pg: login failed — check the password in $UCLA_MOSAIQ_DB_PASSWORD"
    )
    assert "password authentication failed" in text  # the driver's own words, kept
    assert wrong not in text and PG_PASSWORD not in text and "Pa}ss" not in text
    assert info.value.what_failed == "login failed" and info.value.__cause__ is None


def test_pg_missing_database(pg_cluster: tuple[int, str]) -> None:
    port, _ = pg_cluster
    with pytest.raises(MosaiqConnectionError) as info:
        connect(with_password(pg_source(port, db_database="MOSAIQ_NOPE"), PG_PASSWORD), timeout_s=5)
    assert info.value.what_failed == "the database does not exist or cannot be opened"
    assert "check db_database (MOSAIQ_NOPE)" in str(info.value) and PG_PASSWORD not in str(info.value)


def test_unreachable_server() -> None:
    if PG_DRIVER not in pyodbc.drivers():
        pytest.skip("psqlODBC not installed")
    port = _free_port()  # nothing listens here
    with pytest.raises(MosaiqConnectionError) as info:
        connect(with_password(pg_source(port), "pw-unreachable"), timeout_s=3)
    assert info.value.what_failed == "the database server is unreachable"
    assert f"check db_server/db_port (127.0.0.1:{port})" in str(info.value)
    assert "pw-unreachable" not in str(info.value)


def test_explicit_password_as_a_dagster_resource_passes_it(pg_cluster: tuple[int, str]) -> None:
    """defs/resources.py builds a MosaiqConnection without a variable and passes the EnvVar's value."""
    port, _ = pg_cluster
    src = MosaiqConnection(
        alias="MOSAIQ",
        db_server="127.0.0.1",
        db_port=port,
        db_database="postgres",
        db_username="pg",
        odbc_driver=PG_DRIVER,
    )
    assert src.db_password_env == ""
    cn = connect(src, timeout_s=5, password=PG_PASSWORD)
    assert cn.execute("SELECT 1").fetchone()[0] == 1
    cn.close()
    with pytest.raises(MosaiqConnectionError, match="login failed — check the configured password"):
        connect(src, timeout_s=5, password="nope")
