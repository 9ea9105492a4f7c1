"""Mosaiq queries: portable T-SQL subset (sqlglot), placeholder counting, override validation, windows.

Execution against SQLite3 ODBC and psqlODBC is in test_deliveries.py (every query runs there on both).
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlglot
from sqlglot import exp

from dicom_backup_dagster.config import Settings
from dicom_backup_dagster.mosaiq.queries import (
    DEFAULT_QUERIES,
    PARAMETERS,
    QueryOverrideError,
    count_placeholders,
    resolve_queries,
    treatment_window,
    validate_query,
)

NAMES = sorted(DEFAULT_QUERIES)


@pytest.mark.parametrize("name", NAMES)
def test_every_query_parses_as_one_tsql_select(name: str) -> None:
    statements = sqlglot.parse(DEFAULT_QUERIES[name], read="tsql")
    assert len(statements) == 1 and isinstance(statements[0], exp.Select)
    # and it survives the other two dialects' parsers as well
    for dialect in ("postgres", "sqlite"):
        assert isinstance(sqlglot.parse_one(DEFAULT_QUERIES[name], read=dialect), exp.Select)


@pytest.mark.parametrize("name", NAMES)
def test_every_identifier_is_double_quoted_and_no_dialect_only_syntax(name: str) -> None:
    sql = DEFAULT_QUERIES[name]
    tree = sqlglot.parse_one(sql, read="tsql")
    aliases = {t.alias for t in tree.find_all(exp.Table) if t.alias}
    for table in tree.find_all(exp.Table):
        assert table.this.quoted, f"table {table.name} not quoted"
    for column in tree.find_all(exp.Column):
        assert column.this.quoted, f"column {column.name} not quoted"
        assert column.table in aliases, f"column {column.name} not qualified by a table alias"
    for alias in tree.find_all(exp.Alias):
        assert alias.args["alias"].quoted
    words = sql.upper().replace("(", " ").replace(")", " ").split()
    for banned in ("TOP", "LIMIT", "NOLOCK", "DATEADD", "GETDATE", "NOW", "FETCH", "OFFSET", "ILIKE"):
        assert banned not in words, banned
    assert "[" not in sql and "`" not in sql  # brackets would fail on PostgreSQL
    assert count_placeholders(sql) == len(PARAMETERS) * sql.count('d."Tx_DtTm" >= ?') == 2


def test_count_placeholders_skips_strings_identifiers_and_comments() -> None:
    sql = """SELECT '?', N'it''s ?', "a?b", [c?] -- a ? comment
    /* another ? */ FROM t WHERE x = ? AND y IN (?, ?)"""
    assert count_placeholders(sql) == 3


def test_validate_accepts_select_and_with_and_strips_one_semicolon() -> None:
    assert validate_query("q", "  SELECT a FROM t WHERE b >= ? AND b < ? ;\n") == (
        "SELECT a FROM t WHERE b >= ? AND b < ?"
    )
    cte = '-- site version\nWITH x AS (SELECT "Set" FROM t WHERE b >= ? AND b < ?) SELECT * FROM x'
    assert validate_query("q", cte) == cte.strip()
    # REPLACE is a string function in a SELECT; keywords inside strings and quoted names are data
    ok = "SELECT REPLACE(n, ' ', ''), 'DELETE' AS \"Update\" FROM t WHERE b >= ? AND b < ?"
    assert validate_query("q", ok) == ok


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("UPDATE t SET a = ? WHERE b = ?", "must start with SELECT or WITH, not UPDATE"),
        ("EXEC sp_who ?, ?", "must start with SELECT or WITH, not EXEC"),
        ("-- only a comment", "must start with SELECT or WITH, not nothing"),
        ("SELECT 1 WHERE ? < ?; DELETE FROM t", "single statement, found 2"),
        ("SELECT a INTO copy FROM t WHERE b >= ? AND b < ?", "must only read, but uses INTO"),
        ("WITH x AS (SELECT 1 AS a) DELETE FROM t WHERE ? < ?", "must only read, but uses DELETE"),
        ("SELECT a FROM t WHERE b >= ?", "has 1 '?' placeholder(s) but must have exactly 2"),
        ("SELECT a FROM t WHERE b >= ? AND b < ? AND c = ?", "has 3 '?' placeholder(s)"),
        ("SELECT 'unterminated FROM t WHERE ? < ?", "unterminated"),
        ('SELECT "unterminated FROM t WHERE ? < ?', "unterminated"),
    ],
)
def test_validate_rejects_with_a_clear_error(sql: str, message: str) -> None:
    with pytest.raises(QueryOverrideError) as info:
        validate_query("deliveries", sql)
    text = str(info.value)
    assert message in text and "'deliveries'" in text
    if sql.strip():
        assert sql.strip() not in text  # the SQL itself is not echoed


def test_resolve_applies_valid_overrides_from_settings_and_rejects_unknown_names() -> None:
    override = DEFAULT_QUERIES["deliveries"].replace("ORDER BY", 'AND d."Pat_ID1" = 10001\nORDER BY')
    settings = Settings(mosaiq_queries={"deliveries": override})
    queries = resolve_queries(settings.mosaiq_queries)
    assert queries["deliveries"] == override
    assert queries["treated_control_points"] == DEFAULT_QUERIES["treated_control_points"]
    assert resolve_queries(None) == dict(DEFAULT_QUERIES)
    with pytest.raises(QueryOverrideError, match="'dose_history' is unknown; the queries are: deliveries, "):
        resolve_queries({"dose_history": "SELECT 1 WHERE ? < ?"})


def test_treatment_window_is_local_midnight_to_midnight() -> None:
    day = dt.date(2026, 3, 8)  # DST starts in the US
    assert treatment_window(day, "America/Los_Angeles") == (dt.datetime(2026, 3, 8), dt.datetime(2026, 3, 9))
    same = treatment_window(day, "America/Los_Angeles", "America/Los_Angeles")
    assert same == (dt.datetime(2026, 3, 8), dt.datetime(2026, 3, 9))
    start, end = treatment_window(day, "America/Los_Angeles", "UTC")
    assert (start, end) == (dt.datetime(2026, 3, 8, 8), dt.datetime(2026, 3, 9, 7))
    assert end - start == dt.timedelta(hours=23) and start.tzinfo is None
    start, end = treatment_window(dt.date(2026, 11, 1), "America/New_York", "UTC")
    assert end - start == dt.timedelta(hours=25)


def test_queries_built_for_a_catalogue_skip_absent_optional_columns_and_use_its_spelling() -> None:
    from dicom_backup_dagster.mosaiq.queries import COLUMNS, Catalogue, build_queries

    tables: dict[str, list[str]] = {}
    for col in COLUMNS:
        if (col.table, col.name) != ("Patient", "Sex"):
            # a case-sensitive database that spells one table and one column its own way
            name = "dose_hst" if col.table == "Dose_Hst" else col.table
            tables.setdefault(name, []).append("tx_dttm" if col.name == "Tx_DtTm" else col.name)
    built = build_queries(Catalogue(tables))
    assert 'pt."Sex"' not in built["deliveries"] and 'pt."Sex"' in DEFAULT_QUERIES["deliveries"]
    for sql in built.values():
        assert '"Dose_Hst"' not in sql and ('FROM "dose_hst" d' in sql or 'JOIN "dose_hst" d' in sql)
        assert 'd."tx_dttm" >= ? AND d."tx_dttm" < ?' in sql and '"Tx_DtTm" >=' not in sql
        assert count_placeholders(sql) == 2
    # required columns stay in even when the catalogue lacks them: the probe reports them instead
    lacking = build_queries(Catalogue({t: c for t, c in tables.items() if t != "TxField"}))
    assert 'tf."OriginalPlanUID"' in lacking["deliveries"] and 'tf."Sad"' not in lacking["deliveries"]
