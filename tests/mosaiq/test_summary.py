"""The treatment-summary query (mosaiq/summary.py): read-only, one parameter, evidence-backed columns only,
and its aggregation per site, on the sandbox-shaped SQLite database through ODBC."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path

import pyodbc

from dicom_backup_dagster.mosaiq.queries import COLUMNS, EVIDENCE, TABLE_ALIASES, validate_query
from dicom_backup_dagster.mosaiq.summary import SUMMARY_COLUMNS, SUMMARY_SQL, site_histories, summarize
from dicom_backup_dagster.sandbox.mosaiq_db import create_mosaiq_db, sqlite_connection_string
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, patients

DECISION = Path(__file__).parents[2] / "docs" / "decisions" / "mosaiq-columns.md"


def test_the_query_is_read_only_and_reads_only_evidenced_columns() -> None:
    assert validate_query("treatment_summary", SUMMARY_SQL, expected_placeholders=1) == SUMMARY_SQL
    tables = {alias: table for table, alias in TABLE_ALIASES.items()}
    read = {f"{tables[a]}.{c}" for a, c in re.findall(r'\b(\w+)\."(\w+)"', SUMMARY_SQL)}
    known = {f"{c.table}.{c.name}" for c in COLUMNS}
    assert read - known == set(SUMMARY_COLUMNS)  # the three new ones, nothing else unevidenced
    text = DECISION.read_text(encoding="utf-8")
    for name, evidence in SUMMARY_COLUMNS.items():
        assert set(evidence) <= set(EVIDENCE) and f"`{name}`" in text, name


def test_site_histories_on_the_sandbox_database(tmp_path: Path) -> None:
    options = SyntheticOptions(patients=2, fractions=3, ct_slices=1, cbct_slices=0, beams=2, control_points=3)
    ps = list(patients(options))
    db = tmp_path / "mosaiq.sqlite"
    create_mosaiq_db(db, ps)
    with pyodbc.connect(sqlite_connection_string(db), autocommit=True) as cn:
        (first,) = site_histories(cn, ps[0].patient_id)  # with a QA beam-on and a stopped last beam
        (second,) = site_histories(cn, ps[1].patient_id)
        assert site_histories(cn, "NO-SUCH-ID") == []
        assert site_histories(cn, "' OR 1=1 --") == []  # a parameter, not SQL
    total_mu = sum(b.meterset for b in ps[0].beams)
    stopped = Decimal(str(round(200 * 0.4 * ps[0].beams[-1].meterset / total_mu, 4)))
    assert first.fractions_delivered == first.fractions_planned == 3
    assert first.total_dose_cgy == Decimal(600)
    assert abs(first.delivered_dose_cgy - (Decimal(600) - stopped)) < Decimal("0.01")
    assert (first.first_date, first.last_date) == (ps[0].treatment_dates[0], ps[0].treatment_dates[-1])
    assert first.site == ps[0].site_name and first.patient_id == ps[0].patient_id
    assert second.delivered_dose_cgy == Decimal(600) and second.course == "20"


def test_summarize_groups_by_site_and_takes_text_datetimes() -> None:
    row = {"SIT_SET_ID": 7, "SIT_ID": 7, "Site_Name": " LUNG ", "Dose_Ttl": "400", "Fractions": 2}
    row |= {"Last_Name": "A", "First_Name": "B", "IDA": "X1 ", "Fractions_Tx": 1, "Dose_Tx_Act": "100"}
    rows = [
        {**row, "Tx_DtTm": "2026-03-02 08:00:00.000"},
        {**row, "Tx_DtTm": dt.datetime(2026, 3, 3, 8), "Fractions_Tx": 2},
        {**row, "SIT_SET_ID": None, "SIT_ID": 9, "Tx_DtTm": "2026-01-05 09:00:00", "Dose_Tx_Act": None},
    ]
    other, lung = summarize(rows)
    assert (other.course, other.delivered_dose_cgy, other.fractions_delivered) == ("9", Decimal(0), 1)
    assert (lung.site, lung.patient_id, lung.patient_name) == ("LUNG", "X1", "A, B")
    assert (lung.delivered_dose_cgy, lung.fractions_delivered) == (Decimal(200), 2)
    assert (lung.first_date, lung.last_date) == (dt.date(2026, 3, 2), dt.date(2026, 3, 3))
