"""Named, parameterized, read-only Mosaiq queries for one treatment window, portable to SQL Server,
SQLite and PostgreSQL (research dicom.md 8.1-8.3).

Every query takes exactly two ``?`` parameters, ``(start, end)``: the half-open window
``start <= Dose_Hst.Tx_DtTm < end`` as naive datetimes on the database's clock. `treatment_window`
computes them in Python for one treatment date in the site timezone (no DATEADD/GETDATE in SQL).

Queries (name -> purpose; rows are read by column *name*, so an override may reorder columns or add the
optional ones listed in `mosaiq.deliveries`):

- ``deliveries``: one row per ``Dose_Hst`` row in the window whose delivery was not in QA mode (no
  ``TrackTreatment`` row with ``WasQAMode = 1``), LEFT JOINed to Patient, Ident, Staff (the machine),
  Site, SiteSetup, TxField, Fld_Hst (as-treated field snapshot), RtPlan and DCMInstance/DCMSeries/DCMStudy
  (the plan's study and series). LEFT JOINs on purpose: a missing Site or Patient row must not make a
  delivery silently vanish from the backup; `mosaiq.deliveries` quarantines it with a reason instead.
  The QA filter is ``NOT EXISTS`` rather than a join, because TrackTreatment has one row per beam-on
  *attempt* and a join would duplicate deliveries.
- ``treated_control_points``: the as-treated control points (``TxFieldPoint_Hst`` via ``Fld_Hst.DHS_ID``)
  of the same deliveries, ordered by DHS_ID then Point.
- ``planned_control_points``: fallback for deliveries that have no as-treated snapshot: the
  ``TxFieldPoint`` rows of the field version that was delivered (``Dose_Hst.FLD_ID`` names the version).

Decision, as-treated vs planned: the as-treated snapshot (Fld_Hst/TxFieldPoint_Hst) wins, because
TxField/TxFieldPoint may have been edited (re-versioned) after the treatment and the record must
describe what was delivered. Only deliveries without any snapshot point use the planned points.

Decision, identifiers: one text for all three databases, with every identifier in ANSI ``"double
quotes"`` and exactly as Mosaiq spells it (``"Ident"."Pat_Id1"``, ``"TxFieldPoint"."Index"``).
PostgreSQL needs that (unquoted names fold to lower case); SQLite accepts it; SQL Server accepts it
with QUOTED_IDENTIFIER ON, which Microsoft's ODBC drivers and FreeTDS (TDS >= 7.0) set at login, and
which `mosaiq.deliveries` also sets explicitly on SQL Server connections (a session SET, no write).
Quoted names are still case-insensitive on SQL Server's usual CI collation. Brackets would work on SQL
Server and SQLite only, and a rewriting hook would make overrides behave differently per database.
Otherwise the SQL sticks to the common subset: ANSI joins, ``NOT EXISTS``, no TOP/LIMIT, no
DATEADD/GETDATE, and no ``WITH (NOLOCK)``: dirty reads could archive a row that is rolled back, under a
deterministic UID that is never rewritten; the nightly run reads at the default READ COMMITTED.

Schema caveat: the default text matches the sandbox's Mosaiq-shaped schema (`sandbox.mosaiq_db`), whose
tables and columns follow public Mosaiq code, except those it marks UNVERIFIED: RtPlan, the DCM* columns,
``TxField.RTP_ID``/``Beam_Number``. Confirm them on the site's Mosaiq (a missing column fails the whole
query with a clear `MosaiqQueryError`) and override the query where they differ.

Site overrides (``[settings.mosaiq_queries]``, name -> SQL) replace a query by name. `resolve_queries`
validates them: known name, a single statement starting with SELECT or WITH, no data-changing keyword
outside strings/comments (``SELECT ... INTO`` creates a table on SQL Server), and the same number of
``?`` placeholders as the default (two: start, end) outside strings and comments. The connection is
read-only as well (`mosaiq.connection`); the check is there to give a clear error at load time.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_QUERIES",
    "PARAMETERS",
    "QueryOverrideError",
    "count_placeholders",
    "resolve_queries",
    "treatment_window",
    "validate_query",
]

#: The parameters every query takes, in order.
PARAMETERS = ("start", "end")

# Shared WHERE clause: the window on Dose_Hst (alias d) and the QA-mode exclusion.
_WINDOW = """d."Tx_DtTm" >= ? AND d."Tx_DtTm" < ?
  AND NOT EXISTS (
    SELECT 1 FROM "TrackTreatment" tt
    WHERE tt."DHS_ID" = d."DHS_ID" AND tt."WasQAMode" = 1
  )"""

DELIVERIES = f"""SELECT
  d."DHS_ID" AS "DHS_ID",
  d."Pat_ID1" AS "Pat_ID1",
  d."SIT_ID" AS "SIT_ID",
  d."FLD_ID" AS "FLD_ID",
  d."Tx_DtTm" AS "Tx_DtTm",
  d."Fractions_Tx" AS "Fractions_Tx",
  d."Meterset" AS "Meterset",
  d."MetersetUnit_Enum" AS "MetersetUnit_Enum",
  d."Modality_Enum" AS "Modality_Enum",
  d."Energy" AS "Energy",
  d."Energy_Unit_Enum" AS "Energy_Unit_Enum",
  d."Termination_Status_Enum" AS "Termination_Status_Enum",
  d."Termination_Verify_Status_Enum" AS "Termination_Verify_Status_Enum",
  d."Machine_ID_Staff_ID" AS "Machine_ID_Staff_ID",
  pt."Pat_ID1" AS "Patient_Pat_ID1",
  pt."Last_Name" AS "Last_Name",
  pt."First_Name" AS "First_Name",
  pt."MIddle_Name" AS "Middle_Name",
  pt."Birth_DtTm" AS "Birth_DtTm",
  pt."Gender" AS "Gender",
  idn."IDA" AS "IDA",
  st."Last_Name" AS "Machine_Name",
  s."SIT_ID" AS "Site_SIT_ID",
  s."SIT_SET_ID" AS "SIT_SET_ID",
  s."Fractions" AS "Fractions",
  ss."Patient_Orient" AS "Patient_Orient",
  tf."FLD_ID" AS "TxField_FLD_ID",
  tf."Field_Label" AS "Field_Label",
  tf."Field_Name" AS "Field_Name",
  tf."Type_Enum" AS "Type_Enum",
  tf."Modality_Enum" AS "Field_Modality_Enum",
  tf."Meterset" AS "Field_Meterset",
  tf."Sad" AS "Sad",
  tf."Beam_Number" AS "Beam_Number",
  tf."Dyn_Wedge" AS "Dyn_Wedge",
  tf."Wdg_Appl" AS "Wdg_Appl",
  tf."Block" AS "Block",
  tf."Comp_Fda" AS "Comp_Fda",
  tf."Bolus" AS "Bolus",
  tf."RTP_ID" AS "RTP_ID",
  fh."FHS_ID" AS "FHS_ID",
  fh."Field_Label" AS "Hst_Field_Label",
  fh."Field_Name" AS "Hst_Field_Name",
  fh."Meterset" AS "Hst_Field_Meterset",
  fh."Type_Enum" AS "Hst_Type_Enum",
  rp."RTP_ID" AS "RtPlan_RTP_ID",
  rp."Plan_UID" AS "Plan_UID",
  di."SOP_Instance_UID" AS "Plan_SOP_Instance_UID",
  se."Series_UID" AS "Plan_Series_UID",
  sd."Study_UID" AS "Plan_Study_UID",
  sd."Study_DtTm" AS "Plan_Study_DtTm",
  sd."Description" AS "Plan_Study_Description"
FROM "Dose_Hst" d
LEFT JOIN "Patient" pt ON pt."Pat_ID1" = d."Pat_ID1"
LEFT JOIN "Ident" idn ON idn."Pat_Id1" = d."Pat_ID1"
LEFT JOIN "Staff" st ON st."Staff_ID" = d."Machine_ID_Staff_ID"
LEFT JOIN "Site" s ON s."SIT_ID" = d."SIT_ID"
LEFT JOIN "SiteSetup" ss ON ss."SIS_ID" = d."SIS_ID"
LEFT JOIN "TxField" tf ON tf."FLD_ID" = d."FLD_ID"
LEFT JOIN "Fld_Hst" fh ON fh."DHS_ID" = d."DHS_ID"
LEFT JOIN "RtPlan" rp ON rp."RTP_ID" = tf."RTP_ID"
LEFT JOIN "DCMInstance" di ON di."SOP_Instance_UID" = rp."Plan_UID"
LEFT JOIN "DCMSeries" se ON se."DCMSeries_ID" = di."DCMSeries_ID"
LEFT JOIN "DCMStudy" sd ON sd."DCMStudy_ID" = se."DCMStudy_ID"
WHERE {_WINDOW}
ORDER BY d."DHS_ID\""""

# Columns shared by TxFieldPoint and TxFieldPoint_Hst (alias p).
_POINT_COLUMNS = """p."Point" AS "Point",
  p."Index" AS "Index",
  p."Energy" AS "Energy",
  p."Energy_Unit_Enum" AS "Energy_Unit_Enum",
  p."Gantry_Ang" AS "Gantry_Ang",
  p."Gantry_Dir_Enum" AS "Gantry_Dir_Enum",
  p."Coll_Ang" AS "Coll_Ang",
  p."Coll_X1" AS "Coll_X1",
  p."Coll_X2" AS "Coll_X2",
  p."Coll_Y1" AS "Coll_Y1",
  p."Coll_Y2" AS "Coll_Y2",
  p."A_Leaf_Set" AS "A_Leaf_Set",
  p."B_Leaf_Set" AS "B_Leaf_Set",
  p."Couch_Vrt" AS "Couch_Vrt",
  p."Couch_Lat" AS "Couch_Lat",
  p."Couch_Lng" AS "Couch_Lng",
  p."Couch_Ang" AS "Couch_Ang",
  p."Meterset_Rate" AS "Meterset_Rate\""""

TREATED_CONTROL_POINTS = f"""SELECT
  d."DHS_ID" AS "DHS_ID",
  {_POINT_COLUMNS}
FROM "TxFieldPoint_Hst" p
JOIN "Fld_Hst" fh ON fh."FHS_ID" = p."FHS_ID"
JOIN "Dose_Hst" d ON d."DHS_ID" = fh."DHS_ID"
WHERE {_WINDOW}
ORDER BY d."DHS_ID", p."Point\""""

PLANNED_CONTROL_POINTS = f"""SELECT
  d."DHS_ID" AS "DHS_ID",
  {_POINT_COLUMNS},
  p."Coll_Dir_Enum" AS "Coll_Dir_Enum",
  p."Couch_Ang_Dir_Enum" AS "Couch_Ang_Dir_Enum"
FROM "TxFieldPoint" p
JOIN "Dose_Hst" d ON d."FLD_ID" = p."FLD_ID"
WHERE {_WINDOW}
  AND NOT EXISTS (
    SELECT 1 FROM "Fld_Hst" fh
    JOIN "TxFieldPoint_Hst" ph ON ph."FHS_ID" = fh."FHS_ID"
    WHERE fh."DHS_ID" = d."DHS_ID"
  )
ORDER BY d."DHS_ID", p."Point\""""

DEFAULT_QUERIES: Mapping[str, str] = {
    "deliveries": DELIVERIES,
    "treated_control_points": TREATED_CONTROL_POINTS,
    "planned_control_points": PLANNED_CONTROL_POINTS,
}


class QueryOverrideError(ValueError):
    """A site's query override is unusable; the message says which query and why (never the SQL text)."""


# --- a small SQL lexer: enough to skip strings, quoted identifiers and comments ----------------------------
_TOKEN = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<string>N?'(?:[^']|'')*')
  | (?P<ident>"(?:[^"]|"")*"|\[(?:[^\]]|\]\])*\]|`[^`]*`)
  | (?P<word>[A-Za-z_@#][A-Za-z0-9_@#$]*)
  | (?P<param>\?)
  | (?P<semicolon>;)
  | (?P<other>\s+|.)
    """,
    re.VERBOSE | re.DOTALL,
)
_UNTERMINATED = re.compile(r"""N?'|"|\[|/\*""")
#: Keywords that change data or schema, or run code; SELECT ... INTO creates a table on SQL Server.
FORBIDDEN_KEYWORDS = frozenset(
    {
        "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "INTO", "DROP", "CREATE", "ALTER",
        "TRUNCATE", "GRANT", "REVOKE", "DENY", "EXEC", "EXECUTE", "CALL", "DECLARE", "SET", "USE",
        "BACKUP", "RESTORE", "DBCC", "SHUTDOWN", "KILL", "OPENROWSET", "OPENQUERY", "OPENDATASOURCE",
        "BULK", "ATTACH", "DETACH", "PRAGMA", "VACUUM", "COMMIT", "ROLLBACK", "BEGIN",
    }
)  # fmt: skip


@dataclass(frozen=True)
class _Scan:
    words: tuple[str, ...]  # upper-cased bare words outside strings/identifiers/comments, in order
    placeholders: int
    statements: int  # non-empty statements separated by ';'
    unterminated: bool


def _scan(sql: str) -> _Scan:
    words: list[str] = []
    placeholders = 0
    statements = 0
    current_has_content = False
    unterminated = False
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind == "comment":
            if m.group().startswith("/*") and not m.group().endswith("*/"):
                unterminated = True
            continue
        if kind == "other":
            if m.group().strip():
                current_has_content = True
                if _UNTERMINATED.match(m.group()):
                    unterminated = True  # a quote or bracket the patterns above could not close
            continue
        if kind == "semicolon":
            if current_has_content:
                statements += 1
            current_has_content = False
            continue
        current_has_content = True
        if kind == "word":
            words.append(m.group().upper())
        elif kind == "param":
            placeholders += 1
    if current_has_content:
        statements += 1
    return _Scan(tuple(words), placeholders, statements, unterminated)


def count_placeholders(sql: str) -> int:
    """``?`` placeholders outside string literals, quoted identifiers and comments."""
    return _scan(sql).placeholders


def validate_query(name: str, sql: str, expected_placeholders: int = len(PARAMETERS)) -> str:
    """Return ``sql`` (stripped of surrounding blanks and one trailing ';') if it is one read-only
    SELECT/WITH statement with ``expected_placeholders`` ``?`` parameters; else raise QueryOverrideError."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryOverrideError(f"Mosaiq query {name!r}: the override is empty")
    scan = _scan(sql)
    where = f"Mosaiq query {name!r} override"
    if scan.unterminated:
        raise QueryOverrideError(f"{where}: has an unterminated string, quoted name or comment")
    if not scan.words or scan.words[0] not in ("SELECT", "WITH"):
        first = scan.words[0] if scan.words else "nothing"
        raise QueryOverrideError(f"{where}: must start with SELECT or WITH, not {first}")
    if scan.statements != 1:
        raise QueryOverrideError(f"{where}: must be a single statement, found {scan.statements}")
    bad = sorted(set(scan.words) & FORBIDDEN_KEYWORDS)
    if bad:
        raise QueryOverrideError(
            f'{where}: must only read, but uses {", ".join(bad)} (quote a column of that name, e.g. "Set")'
        )
    if scan.placeholders != expected_placeholders:
        raise QueryOverrideError(
            f"{where}: has {scan.placeholders} '?' placeholder(s) but must have exactly "
            f"{expected_placeholders}, in this order: {', '.join(PARAMETERS)} "
            f'(the window start <= "Dose_Hst"."Tx_DtTm" < end)'
        )
    text = sql.strip()
    return text[:-1].rstrip() if text.endswith(";") else text


def resolve_queries(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The default queries with the site's overrides (``Settings.mosaiq_queries``) validated and applied."""
    queries = dict(DEFAULT_QUERIES)
    for name, sql in (overrides or {}).items():
        if name not in DEFAULT_QUERIES:
            known = ", ".join(sorted(DEFAULT_QUERIES))
            raise QueryOverrideError(f"Mosaiq query {name!r} is unknown; the queries are: {known}")
        queries[name] = validate_query(name, sql, count_placeholders(DEFAULT_QUERIES[name]))
    return queries


def treatment_window(
    day: dt.date,
    site_timezone: str | dt.tzinfo = "UTC",
    database_timezone: str | dt.tzinfo | None = None,
) -> tuple[dt.datetime, dt.datetime]:
    """The half-open window ``[start, end)`` of one treatment date as naive datetimes for the database.

    Mosaiq stores local wall-clock times (SQL Server ``datetime``, no offset), so by default
    (``database_timezone`` None or equal to the site's) the window is simply local midnight to the next
    local midnight, whatever DST does that day. If a database keeps another clock (e.g. UTC), pass its
    zone: the site's midnights are converted to it (a DST day is then 23 or 25 hours long).
    """
    site = zoneinfo.ZoneInfo(site_timezone) if isinstance(site_timezone, str) else site_timezone
    start = dt.datetime.combine(day, dt.time())
    end = start + dt.timedelta(days=1)
    if database_timezone is None:
        return start, end
    db = zoneinfo.ZoneInfo(database_timezone) if isinstance(database_timezone, str) else database_timezone
    if db == site:
        return start, end
    return (
        start.replace(tzinfo=site).astimezone(db).replace(tzinfo=None),
        end.replace(tzinfo=site).astimezone(db).replace(tzinfo=None),
    )
