"""A Mosaiq-shaped database holding the synthetic patients' delivery history, written through pyodbc.

The schema is rebuilt from public evidence, not from our queries (docs/decisions/mosaiq-columns.md):
every table and column here appears in SQL written against a live Mosaiq (taznux/RadOncBackupSystem
src/data_sources/mosaiq.py), in pymedphys' Mosaiq queries (lib/pymedphys/_mosaiq/delivery.py,
lib/pymedphys/_experimental/chartchecks/helpers.py), or in the column list pymedphys exported from a
real Mosaiq (lib/pymedphys/_mosaiq/mock/data/types_map.toml); only the first column of TxFieldPoint_Hst
(TFPH_ID, a row key nothing reads) is ours. Where the sources disagree the sandbox follows the exported
column list: its Patient table has no ``Sex`` column (the original's SQL reads ``Patient.Sex``), so a
sandbox night runs with PatientSex left empty, the optional-column fallback a site may meet. Fld_Hst and
TxFieldPoint_Hst hold only the columns public code reads from them; the as-treated control points'
other values come from TxFieldPoint. The database is created and filled THROUGH pyodbc (the SQLite3 ODBC
driver by default), so the production pyodbc code path is what reads it.

Conventions (tested against the synthetic RTPLANs in tests/sandbox/test_mosaiq_db.py):
- Pat_ID1 = 10000 + patient number; Ident.IDA = the DICOM PatientID ("SBX0001").
- One Site (SIT_ID = SIT_SET_ID = patient number * 10) and one SiteSetup (SIS_ID = same) per patient.
- TxField: one row per RTPLAN beam, FLD_ID = patient number * 100 + BeamNumber, Version 0;
  Field_Label = str(BeamNumber), Field_Name = BeamName, Meterset = BeamMeterset (MU),
  Type_Enum 2 (StepNShoot) for STATIC beams and 13 (VMAT) for DYNAMIC ones, OriginalPlanUID = the
  RTPLAN's SOP Instance UID, OriginalBeamNumber/OriginalBeamName = BeamNumber/BeamName.
- DCMStudy/DCMSeries/DCMInstance hold the RTPLAN (DCMInstance.SOPInstanceUID = the plan UID); RtPlan
  links to its DCMInstance row.
- TxFieldPoint: one row per control point; Point = ControlPointIndex, [Index] = CumulativeMetersetWeight;
  Gantry_Ang/Coll_Ang/Couch_Ang in degrees; Coll_X1/X2/Y1/Y2 (jaws) in cm; A_Leaf_Set/B_Leaf_Set = the
  DICOM MLCX bank A / bank B positions in 1/100 cm (= mm * 10) as little-endian int16, one per leaf pair.
- Dose_Hst: one row per delivered beam per fraction (Fractions_Tx = fraction number) at the synthetic
  treatment times; Fld_Hst (FHS_ID = DHS_ID) and TxFieldPoint_Hst (jaws and couch) are the as-treated
  snapshots of the field and its control points; TrackTreatment has one row per beam-delivery attempt
  (DHS_ID links).
- Enum values as pymedphys reads them (docs/decisions/rt-records.md): Termination_Status_Enum 1 Normal /
  2 Operator,
  Termination_Verify_Status_Enum 1 Verified, Energy_Unit_Enum 2 MV, MetersetUnit_Enum 1 MU,
  Modality_Enum 1 X-rays, SiteSetup.Patient_Orient 1 HFS.

Realistic oddities (MosaiqOptions; all on by default, all on patients 1 and 2 so tests can find them):
- qa_delivery: patient 1 gets an extra QA-mode beam-on before fraction 1 (TrackTreatment.WasQAMode = 1,
  its Dose_Hst row has Fractions_Tx 0 and Dose_Tx_Act 0). A backup must not turn it into a patient record.
- operator_terminated: patient 1's last beam of its last fraction was stopped by the operator
  (Termination_Status_Enum 2, PartiallyTreated 1, WasBeamComplete 0, 60 % of the planned meterset).
- null_optional: patient 2's history has NULL in optional columns (Dose_Addtl_Projected,
  SecondaryMeterset, cGrayPerMeterset, TP_Correction_Factor, Termination_Verify_Status_Enum, Edit_ID,
  TxFieldPoint_Hst couch positions).
- odd_name: patient 2 is named O'SANDBOX-MÜLLER^ZOË in Mosaiq (apostrophe and non-ASCII), while its
  DICOM files say SANDBOX^PATIENT0002, as happens when names are corrected in one system only.
So the number of regular (WasQAMode = 0) Dose_Hst rows per patient is fractions x beams.

Portability: the DDL is rendered from SCHEMA for "sqlite" (SQLite3 ODBC) or "postgresql" (psqlODBC).
SQLite accepts the unquoted mixed-case names and T-SQL [brackets] (needed for the reserved word Index);
PostgreSQL folds unquoted names to lower case, so there every identifier is "double-quoted" (and queries
against it must quote them too; docs/decisions/rt-records.md).
"""

from __future__ import annotations

import datetime as dt
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyodbc

from dicom_backup_dagster.sandbox.synthetic import Beam, ControlPoint, Delivery, SyntheticPatient

# Generic column types, rendered per dialect.
INT, SMALL, TINY, BIT, DEC, FLOAT, TEXT, DTM, BIN = (
    "int",
    "small",
    "tiny",
    "bit",
    "dec",
    "float",
    "text",
    "dtm",
    "bin",
)
_TYPES = {
    "sqlite": {
        INT: "INTEGER",
        SMALL: "SMALLINT",
        TINY: "TINYINT",
        BIT: "BIT",
        DEC: "DECIMAL(12,4)",
        FLOAT: "FLOAT",
        TEXT: "VARCHAR(255)",
        DTM: "DATETIME",
        BIN: "BLOB",
    },
    "postgresql": {
        INT: "INTEGER",
        SMALL: "SMALLINT",
        TINY: "SMALLINT",
        BIT: "SMALLINT",
        DEC: "NUMERIC(12,4)",
        FLOAT: "DOUBLE PRECISION",
        TEXT: "VARCHAR(255)",
        DTM: "TIMESTAMP",
        BIN: "BYTEA",
    },
}

# table -> [(column, type)]; the first column is the primary key.
SCHEMA: dict[str, list[tuple[str, str]]] = {
    "Patient": [
        ("Pat_ID1", INT),
        ("Last_Name", TEXT),
        ("First_Name", TEXT),
        ("MIddle_Name", TEXT),
        ("Suffix", TEXT),
        ("Birth_DtTm", DTM),
        ("Clin_Status", SMALL),
        ("Create_DtTm", DTM),
        ("Edit_DtTm", DTM),
    ],
    "Ident": [("Pat_Id1", INT), ("IDA", TEXT), ("IDB", TEXT), ("Version", SMALL), ("Edit_DtTm", DTM)],
    "Staff": [
        ("Staff_ID", INT),
        ("Last_Name", TEXT),
        ("First_Name", TEXT),
        ("Initials", TEXT),
        ("User_Name", TEXT),
        ("Type", TEXT),
        ("Category", TEXT),
        ("Machine_Type", TINY),
    ],
    "Site": [
        ("SIT_ID", INT),
        ("SIT_SET_ID", INT),
        ("Pat_ID1", INT),
        ("Version", SMALL),
        ("Site_Name", TEXT),
        ("Dose_Tx", DEC),
        ("Dose_Ttl", DEC),
        ("Fractions", SMALL),
        ("Target", TEXT),
        ("Rx_Depth", DEC),
        ("Target_Units", TEXT),
        ("Technique", TEXT),
        ("Modality", TEXT),
        ("Modality_Enum", TINY),
        ("Frac_Pattern", TEXT),
        ("Notes", TEXT),
        ("Status_Enum", TINY),
        ("Edit_DtTm", DTM),
    ],
    "SiteSetup": [
        ("SIS_ID", INT),
        ("SIT_Set_ID", INT),
        ("Version", SMALL),
        ("Isocenter_Position_X", DEC),
        ("Isocenter_Position_Y", DEC),
        ("Isocenter_Position_Z", DEC),
        ("Patient_Orient", TINY),
        ("Status_Enum", TINY),
    ],
    # The original system's SQL joins RtPlan.DCMInstance_ID to DCMInstance and reads Label, Pat_ID1.
    "RtPlan": [("DCMInstance_ID", INT), ("Pat_ID1", INT), ("Label", TEXT)],
    "TxField": [
        ("FLD_ID", INT),
        ("FLD_SET_ID", INT),
        ("Version", SMALL),
        ("Pat_ID1", INT),
        ("SIT_Set_ID", INT),
        ("OriginalPlanUID", TEXT),
        ("OriginalBeamNumber", INT),
        ("OriginalBeamName", TEXT),
        ("Field_Label", TEXT),
        ("Field_Name", TEXT),
        ("Machine_ID_Staff_ID", INT),
        ("Type_Enum", TINY),
        ("Meterset", DEC),
        ("MetersetUnit_Enum", TINY),
        ("Modality_Enum", TINY),
        ("ControlPoints", SMALL),
        ("Sad", DEC),
        ("Ssd", DEC),
        ("Dyn_Wedge", TEXT),
        ("Wdg_Appl", TEXT),
        ("Block", TEXT),
        ("Comp_Fda", TEXT),
        ("Bolus", TEXT),
        ("Tol_Tbl_ID", INT),
        ("BackupTimer", DEC),
        ("IsHidden", BIT),
        ("Sanct_ID", INT),
        ("Edit_DtTm", DTM),
    ],
    "TxFieldPoint": [
        ("TFP_ID", INT),
        ("FLD_ID", INT),
        ("Point", SMALL),
        ("Index", DEC),
        ("Energy", SMALL),
        ("Energy_Unit_Enum", TINY),
        ("Gantry_Ang", DEC),
        ("Gantry_Dir_Enum", TINY),
        ("Coll_Ang", DEC),
        ("Coll_Dir_Enum", TINY),
        ("Coll_X1", DEC),
        ("Coll_X2", DEC),
        ("Coll_Y1", DEC),
        ("Coll_Y2", DEC),
        ("Field_X", DEC),
        ("Field_Y", DEC),
        ("A_Leaf_Set", BIN),
        ("B_Leaf_Set", BIN),
        ("Couch_Vrt", DEC),
        ("Couch_Lat", DEC),
        ("Couch_Lng", DEC),
        ("Couch_Ang", DEC),
        ("Couch_Ang_Dir_Enum", TINY),
        ("Couch_Top", DEC),
        ("Couch_Top_Dir_Enum", TINY),
        ("Meterset_Rate", DEC),
    ],
    "Dose_Hst": [
        ("DHS_ID", INT),
        ("Pat_ID1", INT),
        ("SIT_ID", INT),
        ("FLD_ID", INT),
        ("SIS_ID", INT),
        ("Tx_DtTm", DTM),
        ("Fractions_Tx", SMALL),
        ("Dose_Tx_Act", DEC),
        ("Dose_Ttl_Act", DEC),
        ("Dose_Addtl_Projected", DEC),
        ("Machine_ID_Staff_ID", INT),
        ("Energy", SMALL),
        ("Energy_Unit_Enum", TINY),
        ("Meterset", DEC),
        ("MetersetUnit_Enum", TINY),
        ("SecondaryMeterset", DEC),
        ("SecondaryMetersetUnit_Enum", TINY),
        ("cGrayPerMeterset", FLOAT),
        ("TP_Correction_Factor", DEC),
        ("Termination_Status_Enum", TINY),
        ("Termination_Verify_Status_Enum", TINY),
        ("WasVerified", BIT),
        ("WasOverridden", BIT),
        ("PartiallyTreated", BIT),
        ("VMIError", BIT),
        ("NewFieldDef", BIT),
        ("HasBeenCharted", BIT),
        ("Modality_Enum", TINY),
        ("Type_Enum", TINY),
        ("Create_DtTm", DTM),
        ("Create_ID", INT),
        ("Edit_DtTm", DTM),
        ("Edit_ID", INT),
    ],
    "Fld_Hst": [("FHS_ID", INT), ("DHS_ID", INT), ("Pat_ID1", INT), ("Tx_DtTm", DTM)],
    "TxFieldPoint_Hst": [
        ("TFPH_ID", INT),
        ("FHS_ID", INT),
        ("Point", SMALL),
        ("Coll_X1", DEC),
        ("Coll_X2", DEC),
        ("Coll_Y1", DEC),
        ("Coll_Y2", DEC),
        ("Field_X", DEC),
        ("Field_Y", DEC),
        ("Couch_Vrt", DEC),
        ("Couch_Lat", DEC),
        ("Couch_Lng", DEC),
        ("Couch_Ang", DEC),
    ],
    "TrackTreatment": [
        ("TTX_ID", INT),
        ("Pat_ID1", INT),
        ("FLD_ID", INT),
        ("SIT_ID", INT),
        ("Machine_ID_Staff_ID", INT),
        ("Create_DtTm", DTM),
        ("Edit_DtTm", DTM),
        ("WasQAMode", BIT),
        ("WasBeamComplete", BIT),
        ("WasBeamOn", BIT),
        ("WasCanceled", BIT),
        ("WasRecorded", BIT),
        ("DHS_ID", INT),
    ],
    # Columns as the original system's SQL reads them.
    "DCMStudy": [
        ("DCMStudy_ID", INT),
        ("StudyInstanceUID", TEXT),
        ("StudyID", TEXT),
        ("StudyDescription", TEXT),
        ("Study_DtTm", DTM),
    ],
    "DCMSeries": [
        ("DCMSeries_ID", INT),
        ("DCMStudy_ID", INT),
        ("SeriesInstanceUID", TEXT),
        ("SeriesNumber", INT),
        ("SeriesDescription", TEXT),
        ("Series_DtTm", DTM),
    ],
    "DCMInstance": [("DCMInstance_ID", INT), ("DCMSeries_ID", INT), ("SOPInstanceUID", TEXT)],
}
INDEXES = [
    ("Dose_Hst", ("Tx_DtTm",)),
    ("Dose_Hst", ("Pat_ID1",)),
    ("Dose_Hst", ("Edit_DtTm",)),
    ("TxFieldPoint", ("FLD_ID",)),
    ("TxFieldPoint_Hst", ("FHS_ID",)),
    ("Fld_Hst", ("DHS_ID",)),
    ("TrackTreatment", ("DHS_ID",)),
    ("TxField", ("Pat_ID1",)),
    ("DCMInstance", ("SOPInstanceUID",)),
]
RESERVED = {"Index"}
MACHINE_STAFF_IDS = {"SBX_LINAC1": 2001, "SBX_LINAC2": 2002}
THERAPIST_ID = 3001


@dataclass(frozen=True)
class MosaiqOptions:
    """Which realistic oddities to include (see the module docstring)."""

    qa_delivery: bool = True
    operator_terminated: bool = True
    null_optional: bool = True
    odd_name: bool = True


def quote(name: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f'"{name}"'
    return f"[{name}]" if name in RESERVED else name


def ddl(dialect: str = "sqlite") -> list[str]:
    """CREATE TABLE / CREATE INDEX statements for the dialect ("sqlite" or "postgresql")."""
    types = _TYPES[dialect]
    out = []
    for table, cols in SCHEMA.items():
        body = ", ".join(
            f"{quote(c, dialect)} {types[t]}" + (" PRIMARY KEY" if i == 0 else "")
            for i, (c, t) in enumerate(cols)
        )
        out.append(f"CREATE TABLE {quote(table, dialect)} ({body})")
    for table, indexed in INDEXES:
        name = f"IX_{table}_{'_'.join(indexed)}"
        out.append(
            f"CREATE INDEX {quote(name, dialect)} ON {quote(table, dialect)} "
            f"({', '.join(quote(c, dialect) for c in indexed)})"
        )
    return out


def sqlite_connection_string(path: str | os.PathLike[str], driver: str = "SQLite3") -> str:
    return f"DRIVER={{{driver}}};Database={Path(path).resolve()}"


def leaf_bytes(positions_mm: Sequence[float]) -> bytes:
    """Leaf positions (mm) as Mosaiq stores them: little-endian int16 in 1/100 cm."""
    return struct.pack(f"<{len(positions_mm)}h", *(round(p * 10) for p in positions_mm))


def leaf_positions_mm(blob: bytes) -> list[float]:
    """Inverse of leaf_bytes."""
    return [v / 10 for v in struct.unpack(f"<{len(blob) // 2}h", blob)]


def _d(x: float) -> Decimal:
    return Decimal(str(round(x, 4)))


class _Writer:
    def __init__(self, cursor: pyodbc.Cursor, dialect: str) -> None:
        self.cur = cursor
        self.dialect = dialect
        self.rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in SCHEMA}
        self.counts: dict[str, int] = dict.fromkeys(SCHEMA, 0)

    def add(self, table: str, **values: Any) -> None:
        cols = SCHEMA[table]
        unknown = set(values) - {c for c, _ in cols}
        if unknown:
            raise KeyError(f"{table} has no column(s) {sorted(unknown)}")
        self.rows[table].append(tuple(values.get(c) for c, _ in cols))
        if len(self.rows[table]) >= 2000:
            self.flush(table)

    def flush(self, table: str | None = None) -> None:
        for t in [table] if table else list(self.rows):
            rows = self.rows[t]
            if not rows:
                continue
            cols = ", ".join(quote(c, self.dialect) for c, _ in SCHEMA[t])
            marks = ", ".join("?" for _ in SCHEMA[t])
            self.cur.executemany(f"INSERT INTO {quote(t, self.dialect)} ({cols}) VALUES ({marks})", rows)
            self.counts[t] += len(rows)
            self.rows[t] = []


def _point_values(beam: Beam, cp: ControlPoint) -> dict[str, Any]:
    return {
        "Point": cp.index,
        "Index": _d(cp.cumulative_weight),
        "Energy": beam.energy,
        "Energy_Unit_Enum": 2,
        "Gantry_Ang": _d(cp.gantry_angle),
        "Gantry_Dir_Enum": {"NONE": 0, "CW": 1, "CC": 2}[beam.gantry_direction],  # our guess; no public map
        "Coll_Ang": _d(beam.collimator_angle),
        "Coll_X1": _d(cp.jaw_x[0] / 10),
        "Coll_X2": _d(cp.jaw_x[1] / 10),
        "Coll_Y1": _d(cp.jaw_y[0] / 10),
        "Coll_Y2": _d(cp.jaw_y[1] / 10),
        "A_Leaf_Set": leaf_bytes(cp.mlc_a),
        "B_Leaf_Set": leaf_bytes(cp.mlc_b),
        "Couch_Vrt": _d(0.0),
        "Couch_Lat": _d(0.0),
        "Couch_Lng": _d(0.0),
        "Couch_Ang": _d(beam.couch_angle),
        "Meterset_Rate": _d(beam.dose_rate),
    }


_TREATED_POINT_COLUMNS = frozenset(c for c, _ in SCHEMA["TxFieldPoint_Hst"])


def fill(
    connection: pyodbc.Connection,
    patients: Iterable[SyntheticPatient],
    options: MosaiqOptions | None = None,
    dialect: str = "sqlite",
    create: bool = True,
) -> dict[str, int]:
    """Create the tables (if create), insert every patient's plan and delivery history; return row counts."""
    options = options or MosaiqOptions()
    cur = connection.cursor()
    if create:
        for stmt in ddl(dialect):
            cur.execute(stmt)
    w = _Writer(cur, dialect)
    w.add(
        "Staff",
        Staff_ID=THERAPIST_ID,
        Last_Name="THERAPIST",
        First_Name="SANDBOX",
        Initials="ST",
        User_Name="sbx_rtt",
        Type="Therapist",
        Category="RTT",
        Machine_Type=None,
    )
    for name, sid in MACHINE_STAFF_IDS.items():
        # Staff.Last_Name is CHAR(30) in Mosaiq, so machine names come back space padded.
        w.add(
            "Staff",
            Staff_ID=sid,
            Last_Name=name.ljust(30),
            First_Name="",
            Initials="",
            User_Name="",
            Type="Machine",
            Category="Linac",
            Machine_Type=1,
        )
    dhs_id = tfph_id = ttx_id = dcm_series_id = 0
    for p in patients:
        n = p.number
        pat = 10000 + n
        odd_name = options.odd_name and n == 2
        nulls = options.null_optional and n == 2
        created = dt.datetime.combine(p.planning_date, dt.time(9, 0))
        w.add(
            "Patient",
            Pat_ID1=pat,
            Last_Name="O'SANDBOX-MÜLLER" if odd_name else "SANDBOX",
            First_Name="ZOË" if odd_name else f"PATIENT{n:04d}",
            MIddle_Name=None if nulls else "",
            Suffix=None if nulls else "",
            Birth_DtTm=dt.datetime.combine(p.birth_date, dt.time()),
            Clin_Status=1,
            Create_DtTm=created,
            Edit_DtTm=created,
        )
        w.add("Ident", Pat_Id1=pat, IDA=p.patient_id, IDB=None, Version=0, Edit_DtTm=created)
        sit = n * 10
        total_cgy = 100 * p.fraction_dose_gy * len(p.treatment_dates)
        w.add(
            "Site",
            SIT_ID=sit,
            SIT_SET_ID=sit,
            Pat_ID1=pat,
            Version=0,
            Site_Name=p.site_name,
            Dose_Tx=_d(p.fraction_dose_gy * 100),
            Dose_Ttl=_d(total_cgy),
            Fractions=p.options.fractions,
            Target="PTV",
            Rx_Depth=None,
            Target_Units="cGy",
            Technique=p.technique,
            Modality="X",
            Modality_Enum=1,
            Frac_Pattern="1/day, 5/wk",
            Notes=None,
            Status_Enum=5,
            Edit_DtTm=created,
        )
        w.add(
            "SiteSetup",
            SIS_ID=sit,
            SIT_Set_ID=sit,
            Version=0,
            Isocenter_Position_X=_d(0),
            Isocenter_Position_Y=_d(0),
            Isocenter_Position_Z=_d(0),
            Patient_Orient=1,
            Status_Enum=5,
        )
        dcm_series_id += 1  # noqa: SIM113 - one DCMSeries per patient today, more kinds later
        w.add(
            "DCMStudy",
            DCMStudy_ID=n,
            StudyInstanceUID=p.planning_study_uid,
            StudyID=f"PLAN{n:04d}",
            StudyDescription="RT planning",
            Study_DtTm=dt.datetime.combine(p.planning_date, dt.time(10, 0)),
        )
        w.add(
            "DCMSeries",
            DCMSeries_ID=dcm_series_id,
            DCMStudy_ID=n,
            SeriesInstanceUID=p.uid("series", "rtplan"),
            SeriesNumber=1,
            SeriesDescription=f"Plan {p.technique}",
            Series_DtTm=dt.datetime.combine(p.planning_date, dt.time(13, 0)),
        )
        w.add("DCMInstance", DCMInstance_ID=n, DCMSeries_ID=dcm_series_id, SOPInstanceUID=p.plan_uid)
        w.add("RtPlan", DCMInstance_ID=n, Pat_ID1=pat, Label=f"{p.site_name[:8]}_{p.technique}"[:16])
        beams = {b.number: b for b in p.beams}
        total_mu = sum(b.meterset for b in p.beams)
        machine_id = MACHINE_STAFF_IDS[p.machine]
        for b in p.beams:
            fld = n * 100 + b.number
            w.add(
                "TxField",
                FLD_ID=fld,
                FLD_SET_ID=fld,
                Version=0,
                Pat_ID1=pat,
                SIT_Set_ID=sit,
                OriginalPlanUID=p.plan_uid,
                OriginalBeamNumber=b.number,
                OriginalBeamName=b.name,
                Field_Label=str(b.number),
                Field_Name=b.name,
                Machine_ID_Staff_ID=machine_id,
                Type_Enum=2 if b.beam_type == "STATIC" else 13,
                Meterset=_d(b.meterset),
                MetersetUnit_Enum=1,
                Modality_Enum=1,
                ControlPoints=len(b.control_points),
                Sad=_d(100.0),
                Ssd=None,
                Dyn_Wedge="",
                Wdg_Appl="",
                Block="",
                Comp_Fda="",
                Bolus="",
                Tol_Tbl_ID=1,
                BackupTimer=_d(b.meterset / b.dose_rate + 0.5),
                IsHidden=0,
                Sanct_ID=None,
                Edit_DtTm=created,
            )
            for cp in b.control_points:
                w.add(
                    "TxFieldPoint",
                    TFP_ID=fld * 1000 + cp.index,
                    FLD_ID=fld,
                    **_point_values(b, cp),
                    Coll_Dir_Enum=0,
                    Field_X=_d((cp.jaw_x[1] - cp.jaw_x[0]) / 10),
                    Field_Y=_d((cp.jaw_y[1] - cp.jaw_y[0]) / 10),
                    Couch_Ang_Dir_Enum=0,
                    Couch_Top=_d(0.0),
                    Couch_Top_Dir_Enum=0,
                )
        deliveries = list(p.deliveries)
        extra: list[tuple[Any, bool]] = [(d, False) for d in deliveries]
        if options.qa_delivery and n == 1 and deliveries:
            first = deliveries[0]
            qa_start = first.start - dt.timedelta(minutes=45)
            extra.insert(
                0, (Delivery(0, first.beam_number, qa_start, qa_start + dt.timedelta(minutes=1)), True)
            )
        cumulative = Decimal(0)
        last = deliveries[-1] if deliveries else None
        for d, qa in extra:
            b = beams[d.beam_number]
            fld = n * 100 + b.number
            dhs_id += 1
            terminated = options.operator_terminated and n == 1 and d is last and not qa
            delivered_mu = b.meterset * (0.6 if terminated else 1.0)
            dose_cgy = Decimal(0) if qa else _d(100 * p.fraction_dose_gy * delivered_mu / total_mu)
            cumulative += dose_cgy
            edit = d.end + dt.timedelta(seconds=30)
            w.add(
                "Dose_Hst",
                DHS_ID=dhs_id,
                Pat_ID1=pat,
                SIT_ID=sit,
                FLD_ID=fld,
                SIS_ID=sit,
                Tx_DtTm=d.start,
                Fractions_Tx=d.fraction,
                Dose_Tx_Act=dose_cgy,
                Dose_Ttl_Act=cumulative,
                Dose_Addtl_Projected=None if nulls else _d(0),
                Machine_ID_Staff_ID=machine_id,
                Energy=b.energy,
                Energy_Unit_Enum=2,
                Meterset=_d(delivered_mu),
                MetersetUnit_Enum=1,
                SecondaryMeterset=None if nulls else _d(b.meterset / b.dose_rate * 60 + 5),
                SecondaryMetersetUnit_Enum=None if nulls else 5,
                cGrayPerMeterset=None if nulls else float(dose_cgy) / delivered_mu if delivered_mu else 0.0,
                TP_Correction_Factor=None if nulls else _d(1.0),
                Termination_Status_Enum=2 if terminated else 1,
                Termination_Verify_Status_Enum=None if nulls else 1,
                WasVerified=1,
                WasOverridden=0,
                PartiallyTreated=1 if terminated else 0,
                VMIError=0,
                NewFieldDef=0,
                HasBeenCharted=1,
                Modality_Enum=1,
                Type_Enum=2 if b.beam_type == "STATIC" else 13,
                Create_DtTm=d.start,
                Create_ID=THERAPIST_ID,
                Edit_DtTm=edit,
                Edit_ID=None if nulls else THERAPIST_ID,
            )
            w.add("Fld_Hst", FHS_ID=dhs_id, DHS_ID=dhs_id, Pat_ID1=pat, Tx_DtTm=d.start)
            for cp in b.control_points:
                tfph_id += 1
                vals = {k: v for k, v in _point_values(b, cp).items() if k in _TREATED_POINT_COLUMNS}
                vals.update(
                    Field_X=_d((cp.jaw_x[1] - cp.jaw_x[0]) / 10), Field_Y=_d((cp.jaw_y[1] - cp.jaw_y[0]) / 10)
                )
                if nulls:
                    vals.update(Couch_Vrt=None, Couch_Lat=None, Couch_Lng=None)
                w.add("TxFieldPoint_Hst", TFPH_ID=tfph_id, FHS_ID=dhs_id, **vals)
            ttx_id += 1
            w.add(
                "TrackTreatment",
                TTX_ID=ttx_id,
                Pat_ID1=pat,
                FLD_ID=fld,
                SIT_ID=sit,
                Machine_ID_Staff_ID=machine_id,
                Create_DtTm=d.start,
                Edit_DtTm=d.end,
                WasQAMode=1 if qa else 0,
                WasBeamComplete=0 if terminated else 1,
                WasBeamOn=1,
                WasCanceled=0,
                WasRecorded=0 if qa else 1,
                DHS_ID=dhs_id,
            )
    w.flush()
    return dict(w.counts)


def create_mosaiq_db(
    path: str | os.PathLike[str],
    patients: Iterable[SyntheticPatient],
    options: MosaiqOptions | None = None,
    driver: str = "SQLite3",
) -> dict[str, int]:
    """Create a fresh SQLite Mosaiq-shaped database at `path` through pyodbc; returns row counts per table."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    for f in (path, tmp):
        if f.exists():
            f.unlink()
    cn = pyodbc.connect(sqlite_connection_string(tmp, driver), autocommit=False)
    try:
        counts = fill(cn, patients, options, "sqlite")
        cn.commit()
    finally:
        cn.close()
    os.replace(tmp, path)
    return counts
