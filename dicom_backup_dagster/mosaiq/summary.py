"""The treatment-summary query (the original system's get_report): one patient's delivery history by site.

Read-only and parameterized: one ``?``, the PatientID (``Ident.IDA``, the MRN). Same dialect rules as
`mosaiq.queries` (ANSI double quotes, no TOP/LIMIT, no dialect functions); rows are aggregated in Python
so that the text runs unchanged on SQL Server, PostgreSQL and SQLite.

Evidence (keys of `queries.EVIDENCE`; docs/decisions/mosaiq-columns.md, section "Treatment summary"):
the tables, joins and the QA-mode filter are those of the backup's ``deliveries`` query; besides its
columns this query reads ``Site.Site_Name`` [T][O], ``Site.Dose_Ttl`` [T][C][O] (the prescribed total, cGy)
and ``Dose_Hst.Dose_Tx_Act`` [C] (dose delivered by that field in that fraction, cGy). A QA-mode beam-on
(a ``TrackTreatment`` row with ``WasQAMode = 1``) is not a fraction, as in the backup.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: Columns read besides the deliveries query's, with their evidence keys (`queries.EVIDENCE`).
SUMMARY_COLUMNS = {
    "Site.Site_Name": ("pm-types", "orig"),
    "Site.Dose_Ttl": ("pm-types", "pm-chartchecks", "orig"),
    "Dose_Hst.Dose_Tx_Act": ("pm-chartchecks",),
}

SUMMARY_SQL = (
    'SELECT s."SIT_SET_ID" AS "SIT_SET_ID", s."SIT_ID" AS "SIT_ID", s."Site_Name" AS "Site_Name", '
    's."Dose_Ttl" AS "Dose_Ttl", s."Fractions" AS "Fractions", pt."Last_Name" AS "Last_Name", '
    'pt."First_Name" AS "First_Name", idn."IDA" AS "IDA", d."Tx_DtTm" AS "Tx_DtTm", '
    'd."Fractions_Tx" AS "Fractions_Tx", d."Dose_Tx_Act" AS "Dose_Tx_Act" '
    'FROM "Ident" idn '
    'JOIN "Patient" pt ON pt."Pat_ID1" = idn."Pat_Id1" '
    'JOIN "Dose_Hst" d ON d."Pat_ID1" = pt."Pat_ID1" '
    'LEFT JOIN "Site" s ON s."SIT_ID" = d."SIT_ID" '
    'WHERE idn."IDA" = ? AND NOT EXISTS (SELECT 1 FROM "TrackTreatment" tt '
    'WHERE tt."DHS_ID" = d."DHS_ID" AND tt."WasQAMode" = 1) '
    'ORDER BY d."Tx_DtTm"'
)


@dataclass(frozen=True)
class SiteHistory:
    """One site (course) of a patient as Mosaiq records it (patient data: the reports directory only)."""

    patient_name: str
    patient_id: str
    course: str  # SIT_SET_ID
    site: str
    total_dose_cgy: Decimal | None
    delivered_dose_cgy: Decimal
    fractions_delivered: int
    fractions_planned: int | None
    first_date: dt.date
    last_date: dt.date


def _when(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value).strip())


def _decimal(value: Any) -> Decimal | None:
    return None if value is None or str(value).strip() == "" else Decimal(str(value))


def summarize(rows: Iterable[Any]) -> list[SiteHistory]:
    """Aggregate SUMMARY_SQL rows (pyodbc rows or mappings, read by column name) per site."""
    sites: dict[str, dict[str, Any]] = {}
    for row in rows:
        names = [c[0] for c in row.cursor_description] if not isinstance(row, dict) else []
        r = row if isinstance(row, dict) else dict(zip(names, row, strict=True))
        key = str(r["SIT_SET_ID"] if r["SIT_SET_ID"] is not None else r["SIT_ID"])
        when = _when(r["Tx_DtTm"])
        fraction = int(r["Fractions_Tx"] or 0)
        new = {"row": r, "first": when, "last": when, "fraction": 0, "dose": Decimal(0)}
        site = sites.setdefault(key, new)
        site["first"], site["last"] = min(site["first"], when), max(site["last"], when)
        site["fraction"] = max(site["fraction"], fraction)
        site["dose"] += _decimal(r["Dose_Tx_Act"]) or Decimal(0)
    out = []
    for key, s in sites.items():
        r = s["row"]
        planned = _decimal(r["Fractions"])
        out.append(
            SiteHistory(
                patient_name=", ".join(str(r[k]).strip() for k in ("Last_Name", "First_Name") if r[k]),
                patient_id=str(r["IDA"]).strip(),
                course=key,
                site=str(r["Site_Name"] or "").strip(),
                total_dose_cgy=_decimal(r["Dose_Ttl"]),
                delivered_dose_cgy=s["dose"],
                fractions_delivered=s["fraction"],
                fractions_planned=None if planned is None else int(planned),
                first_date=s["first"].date(),
                last_date=s["last"].date(),
            )
        )
    return sorted(out, key=lambda h: (h.first_date, h.course))


def site_histories(connection: Any, patient_id: str) -> list[SiteHistory]:
    """Run SUMMARY_SQL for one PatientID on an open (read-only) pyodbc connection."""
    cursor = connection.cursor()
    try:
        cursor.execute(SUMMARY_SQL, (patient_id,))
        return summarize(cursor.fetchall())
    finally:
        cursor.close()
