"""Read-only ODBC connections to the Mosaiq database (SQL Server in production, SQLite/PostgreSQL in tests).

The connection string carries the password, so it is never logged, and every driver message is scrubbed
of the password before it reaches an exception. Read-only is asked for at every layer the driver honours:
``ApplicationIntent=ReadOnly`` for SQL Server drivers, ``ReadOnly=1`` for psqlODBC, ``PRAGMA query_only``
for SQLite, and pyodbc's ``readonly=True`` (SQL_ATTR_ACCESS_MODE) where the driver accepts it. The login
that db_username names should still have SELECT rights only: that is the real guarantee.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import field

import pyodbc
from pydantic.dataclasses import dataclass

__all__ = [
    "MANAGED_ATTRIBUTES",
    "MosaiqConnection",
    "MosaiqConnectionError",
    "connect",
    "is_sqlite_driver",
    "odbc_connection_string",
    "odbc_quote",
]


def is_sqlite_driver(driver: str) -> bool:
    return driver.strip().strip("{}").strip().lower().startswith("sqlite")


@dataclass(frozen=True)
class MosaiqConnection:
    """How to open one Mosaiq database through ODBC. The site configuration's MosaiqSource extends it;
    a Dagster resource builds it directly and passes the password it resolved itself."""

    alias: str
    db_server: str
    db_port: int | None
    db_database: str
    db_username: str
    odbc_driver: str
    odbc_options: dict[str, str] = field(default_factory=dict, hash=False)
    #: The variable holding the password; named in login-failure advice, read by `password`.
    db_password_env: str = ""

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite_driver(self.odbc_driver)

    @property
    def password(self) -> str:
        value = os.environ.get(self.db_password_env) if self.db_password_env else None
        if not value:
            raise ValueError(
                f"environment variable {self.db_password_env or '(none named)'} is not set or empty"
            )
        return value


class MosaiqConnectionError(Exception):
    """The Mosaiq database could not be opened. The message says what failed and what to do; it never
    contains the password (driver text is scrubbed)."""

    def __init__(
        self,
        alias: str,
        server: str,
        database: str,
        what_failed: str,
        what_to_do: str,
        *,
        username: str = "",
        sqlstate: str | None = None,
        driver_message: str = "",
    ) -> None:
        self.alias = alias
        self.server = server
        self.database = database
        self.what_failed = what_failed
        self.what_to_do = what_to_do
        self.username = username
        self.sqlstate = sqlstate
        self.driver_message = driver_message
        user = f" as user {username}" if username else ""
        detail = f" [driver: {sqlstate + ' ' if sqlstate else ''}{driver_message}]" if driver_message else ""
        super().__init__(
            f"could not open the Mosaiq database {database} on {server} for source {alias}{user}: "
            f"{what_failed} — {what_to_do}{detail}"
        )


def odbc_quote(value: str) -> str:
    """Quote an ODBC connection-string value when it needs it: ``{...}`` with ``}`` doubled (ODBC
    SQLDriverConnect grammar), for values containing ``;``, ``{``, ``}``, ``=`` or outer spaces."""
    if value and not re.search(r"[;{}=]", value) and value == value.strip():
        return value
    return "{" + value.replace("}", "}}") + "}"


def _driver_kind(driver: str) -> str:
    name = driver.lower()
    if is_sqlite_driver(driver):
        return "sqlite"
    if "postgres" in name:
        return "postgresql"
    if "freetds" in name or "tds" in name:
        return "freetds"
    if "sql server" in name:
        return "mssql"
    return "other"


def _server_label(source: MosaiqConnection) -> str:
    if source.is_sqlite:
        return "local SQLite file"
    return f"{source.db_server}:{source.db_port}" if source.db_port else source.db_server


# Attributes _attributes() derives from the source's own keys (lower case -> that key): the configuration
# refuses them in odbc_options, where they would conflict.
# fmt: off
MANAGED_ATTRIBUTES = {
    "driver": "odbc_driver", "server": "db_server", "port": "db_port", "database": "db_database",
    "uid": "db_username", "pwd": "db_password_env", "dsn": "odbc_driver/db_server (DSNs are not used)",
}
# fmt: on


def _attributes(source: MosaiqConnection, password: str) -> dict[str, str]:
    driver = source.odbc_driver.strip().strip("{}")
    kind = _driver_kind(driver)
    attrs: dict[str, str] = {"DRIVER": driver}
    if kind == "sqlite":
        # NoCreat: a wrong path must fail, not silently create an empty database that yields zero
        # deliveries (a backup gap nobody would notice).
        attrs.update({"Database": source.db_database, "NoCreat": "1"})
    else:
        if kind == "mssql":
            # Microsoft's driver has no PORT keyword; the port goes into SERVER as "host,port".
            attrs["SERVER"] = f"{source.db_server},{source.db_port}" if source.db_port else source.db_server
        else:
            attrs["SERVER"] = source.db_server
            if source.db_port:
                attrs["PORT"] = str(source.db_port)
        attrs.update({"DATABASE": source.db_database, "UID": source.db_username, "PWD": password})
        if kind in ("mssql", "freetds"):
            # Routes to a readable secondary on an Availability Group listener; harmless otherwise.
            attrs["ApplicationIntent"] = "ReadOnly"
        elif kind == "postgresql":
            attrs["ReadOnly"] = "1"
    lowered = {k.lower(): k for k in attrs}
    for key, value in source.odbc_options.items():
        attrs.pop(lowered.get(key.lower(), key), None)
        attrs[key] = value
    return attrs


def odbc_connection_string(source: MosaiqConnection, password: str) -> str:
    """The ODBC connection string for ``source``. It contains the password: never log it.

    SQLite drivers: ``DRIVER;Database;NoCreat=1``; others: ``DRIVER;SERVER;PORT;DATABASE;UID;PWD`` plus the
    read-only attribute of the driver family, then ``odbc_options`` (which may override those defaults).
    """
    parts = []
    for key, value in _attributes(source, password).items():
        # DRIVER is always braced, as drivers document it ("DRIVER={ODBC Driver 18 for SQL Server}").
        quoted = "{" + value.replace("}", "}}") + "}" if key == "DRIVER" else odbc_quote(value)
        parts.append(f"{key}={quoted}")
    return ";".join(parts)


def _scrub(text: str, secrets: Mapping[str, str]) -> str:
    for secret in sorted({s for s in secrets.values() if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _classify(source: MosaiqConnection, sqlstate: str, message: str) -> tuple[str, str]:
    """(what failed, what to do) from the SQLSTATE and driver text of a failed SQLDriverConnect."""
    low = message.lower()
    env = (
        f"the password in ${source.db_password_env}" if source.db_password_env else "the configured password"
    )
    if sqlstate == "IM002" or "can't open lib" in low or ("file not found" in low and "driver" in low):
        installed = ", ".join(pyodbc.drivers()) or "none"
        return (
            f"ODBC driver {source.odbc_driver!r} is not installed",
            f"install it (e.g. apt-get install tdsodbc for FreeTDS) or set odbc_driver to an installed "
            f"driver ({installed})",
        )
    if (
        sqlstate == "28000"
        or "login failed" in low
        or "password authentication failed" in low
        or ("role" in low and "does not exist" in low)
        or "authentication failed" in low
    ):
        return (
            "login failed",
            f"check {env} and the user name db_username ({source.db_username}) and that "
            "this login may connect to the database",
        )
    if ("database" in low and ("does not exist" in low or "cannot open database" in low)) or (
        source.is_sqlite and ("connect failed" in low or "unable to open" in low)
    ):
        return (
            "the database does not exist or cannot be opened",
            f"check db_database ({source.db_database}) and that the login has access to it",
        )
    if (
        sqlstate in ("08001", "08S01", "HYT00", "HYT01")
        or "connection refused" in low
        or "could not connect" in low
        or "unable to connect" in low
        or "timeout" in low
        or "could not translate host name" in low
    ):
        return (
            "the database server is unreachable",
            f"check db_server/db_port ({_server_label(source)}), DNS, firewalls, and that the server "
            "accepts TCP connections",
        )
    return (
        "the ODBC driver reported an error",
        f"see the driver message; check odbc_driver and odbc_options ({env})",
    )


def connect(
    source: MosaiqConnection, timeout_s: float = 10, *, password: str | None = None
) -> pyodbc.Connection:
    """Open a read-only, autocommit connection to the Mosaiq database of ``source``.

    ``password`` defaults to ``source.password`` (the value of ``$db_password_env``); a Dagster resource
    passes the one it resolved from its EnvVar. SQLite has no authentication, so none is read for it.
    Autocommit keeps no transaction open between queries, so the backup never holds locks or a snapshot
    on the clinical database. Raises MosaiqConnectionError with the password scrubbed from driver text.
    """
    if password is None:
        password = "" if source.is_sqlite else source.password
    conn_str = odbc_connection_string(source, password)
    secrets = {"password": password, "quoted": odbc_quote(password) if password else "", "conn": conn_str}
    login_timeout = max(1, round(timeout_s))
    try:
        try:
            conn = pyodbc.connect(conn_str, autocommit=True, readonly=True, timeout=login_timeout)
        except pyodbc.Error as exc:
            # Some drivers reject SQL_ATTR_ACCESS_MODE ("optional feature not implemented"); the other
            # read-only measures still apply.
            if _sqlstate(exc) not in ("HYC00", "HY092", "HY024"):
                raise
            conn = pyodbc.connect(conn_str, autocommit=True, timeout=login_timeout)
        if source.is_sqlite:
            try:
                conn.execute("PRAGMA query_only = 1")
            except pyodbc.Error:
                conn.close()
                raise
    except pyodbc.Error as exc:
        sqlstate = _sqlstate(exc)
        message = " ".join(_scrub(_message(exc), secrets).split())
        what, todo = _classify(source, sqlstate, message)
        raise MosaiqConnectionError(
            source.alias,
            _server_label(source),
            source.db_database,
            what,
            todo,
            username="" if source.is_sqlite else source.db_username,
            sqlstate=sqlstate or None,
            driver_message=message,
        ) from None
    return conn


def _sqlstate(exc: pyodbc.Error) -> str:
    first = exc.args[0] if exc.args else ""
    return first if isinstance(first, str) and re.fullmatch(r"[0-9A-Z]{5}", first) else ""


def _message(exc: pyodbc.Error) -> str:
    return str(exc.args[1]) if len(exc.args) > 1 else str(exc)
