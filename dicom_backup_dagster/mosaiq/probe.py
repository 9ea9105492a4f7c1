"""Schema probe: does this Mosaiq database hold every table and column the nightly queries read?

An operator runs it before the first night (``python -m dicom_backup_dagster.mosaiq_probe``), and the
Mosaiq backup runs it at the start of every night, so a site whose Mosaiq lacks a column gets one list of
what is missing instead of an SQL error in the middle of a run.

`probe` reads the database's catalogue (``INFORMATION_SCHEMA.COLUMNS`` on SQL Server and PostgreSQL,
``sqlite_master`` plus ``PRAGMA table_info`` on SQLite), compares it with `queries.COLUMNS`, and reports:

- required columns (keys, joins, the window, Type 1 attributes) that are missing: no night can run;
- optional columns that are missing: the query leaves them out and the record leaves the attribute out
  or empty, as the RT Beams Treatment Record IOD allows for Type 2/3 attributes;
- as-treated control-point columns ``TxFieldPoint_Hst`` lacks: the planned ``TxFieldPoint`` value of the
  delivered field version is used instead;
- whether each site override (``[settings.mosaiq_queries]``) parses, and whether every query the night
  would run (built ones and overrides) runs on this database: each is executed once over an empty window
  (start = end), which reads no rows.

`ProbeReport.ok` is True only when a night would run. Names come from the catalogue, so the report never
holds patient data; database errors are reduced to SQLSTATE and the driver's text about the statement.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyodbc

from dicom_backup_dagster.mosaiq.queries import (
    COLUMNS,
    CONTROL_POINT_COLUMNS,
    DEFAULT_QUERIES,
    Catalogue,
    Column,
    MosaiqQueryError,
    QueryOverrideError,
    build_queries,
    count_placeholders,
    validate_query,
)

__all__ = ["MosaiqSchemaError", "ProbeReport", "probe", "probe_or_raise", "read_catalogue"]

#: Which default queries each column group belongs to.
_GROUPS: Mapping[str, tuple[str, ...]] = {
    "deliveries": ("deliveries",),
    "control_points": ("treated_control_points", "planned_control_points"),
}
#: Result columns each query must return (read by name in `mosaiq.deliveries`).
REQUIRED_RESULT_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "deliveries": ("DHS_ID", "Tx_DtTm"),
    "treated_control_points": ("DHS_ID", "Point"),
    "planned_control_points": ("DHS_ID", "Point"),
}
_EMPTY_WINDOW = (dt.datetime(2000, 1, 1), dt.datetime(2000, 1, 1))
TABLES: tuple[str, ...] = tuple(dict.fromkeys(c.table for c in COLUMNS))


class MosaiqSchemaError(MosaiqQueryError):
    """The Mosaiq database lacks what the queries need, or an override does not run; the message is the
    probe's list (table and column names, never row data)."""


@dataclass
class ProbeReport:
    dbms: str
    catalogue: Catalogue
    missing_tables: list[str] = field(default_factory=list)
    missing_required: list[Column] = field(default_factory=list)
    left_out: list[Column] = field(default_factory=list)
    #: control-point columns the site's TxFieldPoint_Hst lacks: read from the planned TxFieldPoint row
    from_planned: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    override_problems: dict[str, str] = field(default_factory=dict)
    query_problems: dict[str, str] = field(default_factory=dict)
    queries: dict[str, str] = field(default_factory=dict)
    checked_required: int = 0
    checked_optional: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.missing_tables or self.missing_required or self.override_problems or self.query_problems
        )

    def _missing_columns(self) -> list[Column]:
        """Missing required columns of tables that exist (a missing table is one line, not one per column)."""
        return [c for c in self.missing_required if c.table not in self.missing_tables]

    def problems(self) -> list[str]:
        """One line per reason a night would not run."""
        out = [f"table {t} is missing" for t in self.missing_tables]
        out += [
            f"column {c.table}.{c.name} is missing (needed for {c.feeds})" for c in self._missing_columns()
        ]
        out += [f"override {n!r} does not parse: {why}" for n, why in self.override_problems.items()]
        out += [f"query {n!r} does not run: {why}" for n, why in self.query_problems.items()]
        return out

    def lines(self) -> list[str]:
        """The operator-facing report."""
        out = [f"Mosaiq schema probe ({self.dbms})"]
        present_required = self.checked_required - len(self.missing_required)
        out.append(f"Required columns: {present_required} of {self.checked_required} present")
        out += [f"  MISSING table {t}" for t in self.missing_tables]
        out += [f"  MISSING {c.table}.{c.name} (needed for {c.feeds})" for c in self._missing_columns()]
        present_optional = self.checked_optional - len(self.left_out)
        out.append(f"Optional columns: {present_optional} of {self.checked_optional} present")
        out += [f"  left out: {c.table}.{c.name} -> {c.feeds} is not written" for c in self.left_out]
        if self.from_planned:
            out.append(
                f"As-treated control points: {len(self.from_planned)} column(s) not in TxFieldPoint_Hst; "
                "the planned TxFieldPoint value of the delivered field version is used"
            )
            out.append("  from plan: " + ", ".join(self.from_planned))
        if not self.overrides:
            out.append("Overrides: none")
        for name in self.overrides:
            why = self.override_problems.get(name)
            out.append(f"Override {name!r}: " + (f"DOES NOT PARSE: {why}" if why else "parses"))
        for name in DEFAULT_QUERIES:
            if name in self.query_problems:
                out.append(f"Query {name!r}: DOES NOT RUN: {self.query_problems[name]}")
            elif name in self.queries:
                out.append(f"Query {name!r}: runs (tried on an empty window)")
            elif name in self.override_problems:
                out.append(f"Query {name!r}: not tried (its override does not parse)")
            else:
                out.append(f"Query {name!r}: not tried (fix the missing columns first)")
        if self.ok:
            out.append(
                "RESULT: OK, a night would run"
                + (" (with the attributes above left out)" if self.left_out else "")
            )
        else:
            out.append(
                "RESULT: NOT READY, a night would fail: fix the MISSING / DOES NOT lines above "
                "(grant the backup login SELECT on them, or override the query in "
                "[settings.mosaiq_queries])"
            )
        return out

    def summary(self) -> str:
        return (
            "the Mosaiq database is not ready for the backup queries: "
            + "; ".join(self.problems())
            + (". Run `python -m dicom_backup_dagster.mosaiq_probe` for the full report")
        )


def _driver_error(exc: pyodbc.Error) -> str:
    state = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    return f"[{state}] {' '.join(text.split())}"


def _dbms(conn: pyodbc.Connection) -> str:
    try:
        return str(conn.getinfo(pyodbc.SQL_DBMS_NAME))
    except pyodbc.Error:
        return "unknown database"


def read_catalogue(conn: pyodbc.Connection, tables: tuple[str, ...] = TABLES) -> tuple[str, Catalogue]:
    """(DBMS name, the tables of ``tables`` the database has with their columns)."""
    dbms = _dbms(conn)
    wanted = {t.lower() for t in tables}
    found: dict[str, list[str]] = {}
    cur = conn.cursor()
    try:
        if "sqlite" in dbms.lower():
            names = [
                r[0] for r in cur.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
            ]
            for name in names:
                if str(name).lower() in wanted:
                    quoted = '"' + str(name).replace('"', '""') + '"'
                    found[str(name)] = [str(r[1]) for r in cur.execute(f"PRAGMA table_info({quoted})")]
        else:
            marks = ", ".join("?" for _ in wanted)
            rows = cur.execute(
                "SELECT TABLE_NAME, COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS "
                f"WHERE LOWER(TABLE_NAME) IN ({marks})",
                *sorted(wanted),
            ).fetchall()
            for table, column in rows:
                found.setdefault(str(table), []).append(str(column))
    except pyodbc.Error as exc:
        raise MosaiqQueryError(
            f"could not read the {dbms} catalogue (INFORMATION_SCHEMA / PRAGMA): {_driver_error(exc)}; "
            "the backup login needs to see the Mosaiq tables' definitions"
        ) from None
    finally:
        cur.close()
    return dbms, Catalogue(found)


def _dry_run(conn: pyodbc.Connection, name: str, sql: str) -> str | None:
    """None if ``sql`` runs over an empty window and returns the columns the reader needs; else why not."""
    cur = conn.cursor()
    try:
        cur.execute(sql, *_EMPTY_WINDOW)
        names = {str(d[0]).lower() for d in cur.description or ()}
        cur.fetchall()
    except pyodbc.Error as exc:
        return _driver_error(exc)
    finally:
        cur.close()
    lacking = [c for c in REQUIRED_RESULT_COLUMNS[name] if c.lower() not in names]
    if lacking:
        return f"returns no column named {', '.join(lacking)}"
    return None


def probe(conn: pyodbc.Connection, overrides: Mapping[str, str] | None = None) -> ProbeReport:
    """Compare the database's catalogue with what the queries read; build the night's queries."""
    dbms, cat = read_catalogue(conn)
    report = ProbeReport(dbms, cat, overrides=sorted(overrides or {}))
    valid = _valid_overrides(overrides or {}, report)
    blocked = _check_columns(cat, valid, report)
    if cat.table("TxFieldPoint_Hst") is not None:
        report.from_planned = [
            c.name
            for c in CONTROL_POINT_COLUMNS
            if not cat.has("TxFieldPoint_Hst", c.name) and (c.required or cat.has("TxFieldPoint", c.name))
        ]
    _choose_queries(cat, valid, blocked, report)
    for name, sql in report.queries.items():
        why = _dry_run(conn, name, sql)
        if why is not None:
            report.query_problems[name] = why
    return report


def _valid_overrides(overrides: Mapping[str, str], report: ProbeReport) -> dict[str, str]:
    """The site's overrides that parse (name -> SQL); the others go to ``report.override_problems``."""
    valid: dict[str, str] = {}
    for name, sql in overrides.items():
        if name not in DEFAULT_QUERIES:
            report.override_problems[name] = (
                f"unknown query name; the queries are {', '.join(DEFAULT_QUERIES)}"
            )
            continue
        try:
            valid[name] = validate_query(name, sql, count_placeholders(DEFAULT_QUERIES[name]))
        except QueryOverrideError as exc:
            report.override_problems[name] = str(exc)
    return valid


def _check_columns(cat: Catalogue, valid: Mapping[str, str], report: ProbeReport) -> set[str]:
    """Every column the built queries read, against the catalogue; returns the groups that cannot run
    (a required table or column is missing). Groups whose queries are all overridden are not checked."""
    blocked: set[str] = set()
    for group, names in _GROUPS.items():
        if all(n in valid for n in names):
            continue  # every query of the group is the site's own
        for col in (c for c in COLUMNS if c.queries == group):
            if col.table == "TxFieldPoint_Hst" and not col.required:
                continue  # an as-treated value the site lacks comes from the plan: `from_planned`
            if _check_column(cat, col, report):
                blocked.add(group)
    return blocked


def _check_column(cat: Catalogue, col: Column, report: ProbeReport) -> bool:
    """Count and record one column; True when it is required and missing (its group cannot run)."""
    if col.required:
        report.checked_required += 1
    else:
        report.checked_optional += 1
    if cat.table(col.table) is None:
        if col.table not in report.missing_tables:
            report.missing_tables.append(col.table)
        if col.required:
            report.missing_required.append(col)
        return col.required
    if cat.has(col.table, col.name):
        return False
    if col.required:
        report.missing_required.append(col)
    else:
        report.left_out.append(col)
    return col.required


def _choose_queries(cat: Catalogue, valid: Mapping[str, str], blocked: set[str], report: ProbeReport) -> None:
    """The night's queries: the site's valid override, else the query built for this catalogue unless its
    group is blocked or its override was rejected."""
    built = build_queries(cat)
    for group, names in _GROUPS.items():
        for name in names:
            if name in valid:
                report.queries[name] = valid[name]
            elif group not in blocked and name not in report.override_problems:
                report.queries[name] = built[name]


def probe_or_raise(conn: pyodbc.Connection, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The night's queries, or MosaiqSchemaError with the probe's list of what is missing."""
    report = probe(conn, overrides)
    if not report.ok:
        raise MosaiqSchemaError(report.summary())
    return report.queries
