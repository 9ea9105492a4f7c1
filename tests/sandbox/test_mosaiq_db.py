"""Mosaiq-shaped DB through pyodbc + SQLite3 ODBC: consistent with the synthetic RTPLANs, with oddities."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path

import pyodbc
import pytest
from pydicom import dcmread

from dicom_backup_dagster.sandbox.mosaiq_db import (
    MosaiqOptions,
    create_mosaiq_db,
    ddl,
    fill,
    leaf_positions_mm,
    sqlite_connection_string,
)
from dicom_backup_dagster.sandbox.synthetic import Manifest, SyntheticOptions, generate, patients

OPTS = SyntheticOptions(patients=3, ct_slices=2, fractions=4, cbct_slices=1, control_points=5, seed=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return generate(tmp_path_factory.mktemp("syn"), OPTS)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> pyodbc.Connection:
    path = tmp_path_factory.mktemp("mq") / "mosaiq.sqlite"
    counts = create_mosaiq_db(path, patients(OPTS))
    assert counts["Dose_Hst"] > 0 and path.exists()
    cn = pyodbc.connect(sqlite_connection_string(path))
    assert cn.getinfo(pyodbc.SQL_DRIVER_NAME).endswith("sqlite3odbc.so")
    yield cn
    cn.close()


def _plans(data: Manifest) -> dict[int, object]:
    return {r.patient: dcmread(r.path) for r in data if r.modality == "RTPLAN"}


def test_delivery_count_is_fractions_times_beams(db: pyodbc.Connection, data: Manifest) -> None:
    rows = db.execute(
        "SELECT Ident.IDA, COUNT(*) FROM Dose_Hst "
        "JOIN Ident ON Ident.Pat_Id1 = Dose_Hst.Pat_ID1 "
        "JOIN TrackTreatment ON TrackTreatment.DHS_ID = Dose_Hst.DHS_ID "
        "WHERE TrackTreatment.WasQAMode = 0 GROUP BY Ident.IDA ORDER BY Ident.IDA"
    ).fetchall()
    plans = _plans(data)
    assert [(r[0], r[1]) for r in rows] == [
        (plans[n].PatientID, OPTS.fractions * len(plans[n].BeamSequence))
        for n in sorted(plans)  # type: ignore[attr-defined]
    ]


def test_fields_and_control_points_match_rtplan(db: pyodbc.Connection, data: Manifest) -> None:
    for plan in _plans(data).values():
        uid = plan.SOPInstanceUID  # type: ignore[attr-defined]
        # the original system's plan chain: DCMInstance.SOPInstanceUID = TxField.OriginalPlanUID
        link = db.execute(
            "SELECT DCMStudy.StudyInstanceUID FROM DCMInstance "
            "JOIN RtPlan ON RtPlan.DCMInstance_ID = DCMInstance.DCMInstance_ID "
            "JOIN DCMSeries ON DCMSeries.DCMSeries_ID = DCMInstance.DCMSeries_ID "
            "JOIN DCMStudy ON DCMStudy.DCMStudy_ID = DCMSeries.DCMStudy_ID "
            "WHERE DCMInstance.SOPInstanceUID = ?",
            uid,
        ).fetchone()
        assert link is not None and link[0] == plan.StudyInstanceUID  # type: ignore[attr-defined]
        fields = db.execute(
            "SELECT FLD_ID, OriginalBeamNumber, Field_Name, Meterset, ControlPoints FROM TxField "
            "WHERE OriginalPlanUID = ? ORDER BY OriginalBeamNumber",
            uid,
        ).fetchall()
        mu = {
            r.ReferencedBeamNumber: Decimal(str(r.BeamMeterset))
            for r in plan.FractionGroupSequence[0].ReferencedBeamSequence
        }  # type: ignore[attr-defined]
        assert [f[1] for f in fields] == [b.BeamNumber for b in plan.BeamSequence]  # type: ignore[attr-defined]
        for f, beam in zip(fields, plan.BeamSequence, strict=True):  # type: ignore[attr-defined]
            assert f[2] == beam.BeamName and Decimal(str(f[3])) == mu[beam.BeamNumber]
            points = db.execute(
                "SELECT Point, [Index], Gantry_Ang, A_Leaf_Set, B_Leaf_Set FROM TxFieldPoint "
                "WHERE FLD_ID = ? ORDER BY Point",
                f[0],
            ).fetchall()
            assert len(points) == f[4] == beam.NumberOfControlPoints
            gantry = None
            for pt, cp in zip(points, beam.ControlPointSequence, strict=True):
                assert pt[0] == cp.ControlPointIndex
                # SQLite3 ODBC returns DECIMAL as str: normalise as production code must (research 8.3).
                assert Decimal(str(pt[1])) == Decimal(str(cp.CumulativeMetersetWeight))
                gantry = float(cp.GantryAngle) if "GantryAngle" in cp else gantry
                assert float(Decimal(str(pt[2]))) == gantry
                mlc = next(
                    d for d in cp.BeamLimitingDevicePositionSequence if d.RTBeamLimitingDeviceType == "MLCX"
                )
                assert leaf_positions_mm(pt[3]) + leaf_positions_mm(pt[4]) == [
                    float(x) for x in mlc.LeafJawPositions
                ]


def test_delivery_dates_are_cbct_dates_and_history_snapshots(db: pyodbc.Connection, data: Manifest) -> None:
    for p in patients(OPTS):
        days = db.execute(
            "SELECT DISTINCT Dose_Hst.Tx_DtTm FROM Dose_Hst JOIN TrackTreatment ON TrackTreatment.DHS_ID = "
            "Dose_Hst.DHS_ID WHERE Dose_Hst.Pat_ID1 = ? AND TrackTreatment.WasQAMode = 0",
            10000 + p.number,
        ).fetchall()
        assert all(isinstance(d[0], dt.datetime) for d in days)
        assert sorted({d[0].date() for d in days}) == p.treatment_dates
        cbct = sorted({r.date for r in data if r.patient == p.number and r.modality == "CT"})[1:]
        assert cbct == [d.strftime("%Y%m%d") for d in p.treatment_dates]
    orphans = db.execute(
        "SELECT COUNT(*) FROM Dose_Hst LEFT JOIN Fld_Hst ON Fld_Hst.DHS_ID = Dose_Hst.DHS_ID "
        "WHERE Fld_Hst.FHS_ID IS NULL"
    ).fetchone()[0]
    assert orphans == 0
    snap = db.execute(
        "SELECT COUNT(*) FROM TxFieldPoint_Hst JOIN Fld_Hst ON Fld_Hst.FHS_ID = TxFieldPoint_Hst.FHS_ID"
    ).fetchone()[0]
    total_points = db.execute(
        "SELECT SUM(TxField.ControlPoints) FROM Dose_Hst JOIN TxField ON TxField.FLD_ID = Dose_Hst.FLD_ID"
    ).fetchone()[0]
    assert snap == total_points


def test_oddities(db: pyodbc.Connection) -> None:
    qa = db.execute(
        "SELECT Dose_Hst.Pat_ID1, Dose_Hst.Fractions_Tx FROM Dose_Hst JOIN TrackTreatment ON "
        "TrackTreatment.DHS_ID = Dose_Hst.DHS_ID WHERE TrackTreatment.WasQAMode = 1"
    ).fetchall()
    assert [tuple(r) for r in qa] == [(10001, 0)]
    term = db.execute(
        "SELECT Pat_ID1, PartiallyTreated FROM Dose_Hst WHERE Termination_Status_Enum = 2"
    ).fetchall()
    assert [tuple(r) for r in term] == [(10001, 1)]
    name = db.execute("SELECT Last_Name, First_Name FROM Patient WHERE Pat_ID1 = 10002").fetchone()
    assert tuple(name) == ("O'SANDBOX-MÜLLER", "ZOË")
    by_param = db.execute("SELECT COUNT(*) FROM Patient WHERE Last_Name = ?", "O'SANDBOX-MÜLLER").fetchone()[
        0
    ]
    assert by_param == 1
    nulls = db.execute(
        "SELECT COUNT(*) FROM Dose_Hst WHERE Pat_ID1 = 10002 AND cGrayPerMeterset IS NULL"
    ).fetchone()
    assert nulls[0] == OPTS.fractions * 2  # patient 2 is VMAT: 2 arcs
    machine = db.execute("SELECT Last_Name FROM Staff WHERE Staff_ID = 2001").fetchone()[0]
    assert machine.rstrip() == "SBX_LINAC1" and machine != machine.rstrip()  # CHAR padding like Mosaiq


def test_oddities_can_be_switched_off(tmp_path: Path) -> None:
    path = tmp_path / "plain.sqlite"
    create_mosaiq_db(path, patients(OPTS), MosaiqOptions(False, False, False, False))
    cn = pyodbc.connect(sqlite_connection_string(path))
    try:
        assert cn.execute("SELECT COUNT(*) FROM TrackTreatment WHERE WasQAMode = 1").fetchone()[0] == 0
        assert (
            cn.execute("SELECT COUNT(*) FROM Dose_Hst WHERE Termination_Status_Enum <> 1").fetchone()[0] == 0
        )
    finally:
        cn.close()


def test_same_schema_on_postgresql() -> None:
    """The DDL renders for PostgreSQL (every identifier quoted) and fills through psqlODBC."""
    try:
        cn = pyodbc.connect(
            "DRIVER={PostgreSQL Unicode};SERVER=127.0.0.1;PORT=5432;DATABASE=test;UID=postgres",
            timeout=3,
        )
    except pyodbc.Error as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc.args[-1][:80]}")
    schema = f"mq_{uuid.uuid4().hex[:8]}"
    try:
        cn.execute(f"CREATE SCHEMA {schema}")
        cn.execute(f"SET search_path TO {schema}")
        assert all('"' in s for s in ddl("postgresql"))
        counts = fill(cn, patients(OPTS), dialect="postgresql")
        cn.commit()
        got = cn.execute('SELECT COUNT(*) FROM "Dose_Hst"').fetchone()[0]
        assert got == counts["Dose_Hst"]
        idx = cn.execute('SELECT "Index" FROM "TxFieldPoint" WHERE "Point" = 0 LIMIT 1').fetchone()[0]
        assert isinstance(idx, Decimal)
    finally:
        cn.rollback()
        cn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cn.commit()
        cn.close()
