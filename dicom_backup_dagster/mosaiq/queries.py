"""Named, parameterized, read-only Mosaiq queries for one treatment window, portable to SQL Server,
SQLite and PostgreSQL, built from a catalogue of the Mosaiq columns they read.

Every query takes exactly two ``?`` parameters, ``(start, end)``: the half-open window
``start <= Dose_Hst.Tx_DtTm < end`` as naive datetimes on the database's clock. `treatment_window`
computes them in Python for one treatment date in the site timezone (no DATEADD/GETDATE in SQL).

Queries (name -> purpose; rows are read by column *name*, see `mosaiq.deliveries`):

- ``deliveries``: one row per ``Dose_Hst`` row in the window whose delivery was not in QA mode (no
  ``TrackTreatment`` row with ``WasQAMode = 1``), LEFT JOINed to Patient, Ident, Staff (the machine),
  Site, SiteSetup, TxField, Fld_Hst (does an as-treated snapshot exist) and, through
  ``TxField.OriginalPlanUID = DCMInstance.SOPInstanceUID``, DCMInstance/DCMSeries/DCMStudy (the RT Plan's
  series and study). LEFT JOINs on purpose: a missing Site or Patient row must not make a delivery
  silently vanish from the backup; `mosaiq.deliveries` quarantines it with a reason instead. The QA
  filter is ``NOT EXISTS`` rather than a join: TrackTreatment has one row per beam-on *attempt*.
- ``treated_control_points``: the control points of deliveries with an as-treated snapshot
  (``TxFieldPoint_Hst`` via ``Fld_Hst.DHS_ID``), ordered by DHS_ID then Point. A value comes from the
  snapshot when the site's ``TxFieldPoint_Hst`` has that column, else from the planned ``TxFieldPoint``
  row of the delivered field version (``Dose_Hst.FLD_ID``) with the same Point.
- ``planned_control_points``: deliveries without any snapshot point: the ``TxFieldPoint`` rows of the
  delivered field version.

Decision, evidence: the default text reads only columns that public code written against a live Mosaiq
reads (or that a real Mosaiq's exported column list shows); `COLUMNS` names the source of each, and
docs/decisions/mosaiq-columns.md lists them with what each one feeds. A column marked optional feeds an
attribute the RT Beams Treatment Record may leave out or empty (Type 2/3): when a site's catalogue lacks
it, `build_queries` simply does not select it and the record goes without. A required column is a key,
a join, the window, or feeds a Type 1 attribute; without it no night can run, and `mosaiq.probe` says so
before the first night instead of an SQL error in the middle of one.

Decision, identifiers: one text for all three databases, with every identifier in ANSI ``"double
quotes"``, spelled as the site's catalogue spells it (Mosaiq's own spelling by default, e.g.
``"Ident"."Pat_Id1"``, ``"Patient"."MIddle_Name"``). PostgreSQL needs that (unquoted names fold to lower
case); SQLite accepts it; SQL Server accepts it with QUOTED_IDENTIFIER ON, which Microsoft's ODBC drivers
and FreeTDS (TDS >= 7.0) set at login, and which `mosaiq.deliveries` also sets explicitly on SQL Server
connections (a session SET, no write). Otherwise the SQL sticks to the common subset: ANSI joins,
``NOT EXISTS``, no TOP/LIMIT, no DATEADD/GETDATE, and no ``WITH (NOLOCK)``: dirty reads could archive a
row that is rolled back, under a deterministic UID that is never rewritten.

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
    "COLUMNS",
    "CONTROL_POINT_COLUMNS",
    "DEFAULT_QUERIES",
    "EVIDENCE",
    "PARAMETERS",
    "Catalogue",
    "Column",
    "MosaiqQueryError",
    "QueryOverrideError",
    "build_queries",
    "count_placeholders",
    "resolve_queries",
    "treatment_window",
    "validate_query",
]

#: The parameters every query takes, in order.
PARAMETERS = ("start", "end")

#: Public sources of the column names (repository + path); keys used in `Column.evidence`.
EVIDENCE: Mapping[str, str] = {
    "orig": "taznux/RadOncBackupSystem src/data_sources/mosaiq.py (SQL written against a live Mosaiq)",
    "pm-types": (
        "pymedphys/pymedphys lib/pymedphys/_mosaiq/mock/data/types_map.toml (a real Mosaiq's columns)"
    ),
    "pm-delivery": "pymedphys/pymedphys lib/pymedphys/_mosaiq/delivery.py",
    "pm-chartchecks": "pymedphys/pymedphys lib/pymedphys/_experimental/chartchecks/helpers.py",
    "pm-sessions": "pymedphys/pymedphys lib/pymedphys/_mosaiq/sessions.py",
}

#: SQL alias of each table in the queries.
TABLE_ALIASES: Mapping[str, str] = {
    "Dose_Hst": "d", "Patient": "pt", "Ident": "idn", "Staff": "st", "Site": "s", "SiteSetup": "ss",
    "TxField": "tf", "Fld_Hst": "fh", "DCMInstance": "di", "DCMSeries": "se", "DCMStudy": "sd",
    "TrackTreatment": "tt", "TxFieldPoint": "p", "TxFieldPoint_Hst": "ph",
}  # fmt: skip


@dataclass(frozen=True)
class Column:
    """One Mosaiq column a default query reads.

    ``alias``: the result-column name `mosaiq.deliveries` reads (None: a key, join or filter column).
    ``required``: without it the query cannot run or a Type 1 attribute has no source; optional columns
    are left out of the SELECT list when the site's catalogue lacks them. ``feeds``: what it is for, in
    the words the probe prints. ``queries``: "deliveries" or "control_points" (both point queries)."""

    table: str
    name: str
    alias: str | None
    required: bool
    feeds: str
    evidence: tuple[str, ...]
    queries: str = "deliveries"


def _c(table: str, name: str, alias: str | None, required: bool, feeds: str, *evidence: str) -> Column:
    return Column(table, name, alias, required, feeds, evidence)


_O, _T, _D, _H, _S = "orig", "pm-types", "pm-delivery", "pm-chartchecks", "pm-sessions"
REQ, OPT = True, False

#: Every column of the ``deliveries`` query, in SELECT order (keys and joins included).
DELIVERY_COLUMNS: tuple[Column, ...] = (
    _c("Dose_Hst", "DHS_ID", "DHS_ID", REQ, "the delivery key (record SOP Instance UID)", _H),
    _c("Dose_Hst", "Pat_ID1", "Pat_ID1", REQ, "join to Patient and Ident", _H),
    _c("Dose_Hst", "SIT_ID", "SIT_ID", REQ, "join to Site", _H),
    _c("Dose_Hst", "FLD_ID", "FLD_ID", REQ, "join to the delivered TxField version", _H),
    _c("Dose_Hst", "SIS_ID", None, REQ, "join to SiteSetup", _H),
    _c("Dose_Hst", "Tx_DtTm", "Tx_DtTm", REQ, "the treatment window; TreatmentDate/Time", _S, _H),
    _c("Dose_Hst", "Fractions_Tx", "Fractions_Tx", OPT, "CurrentFractionNumber (Type 2)", _H, _O),
    _c("Dose_Hst", "Meterset", "Meterset", REQ, "DeliveredPrimaryMeterset", _H),
    _c("Dose_Hst", "MetersetUnit_Enum", "MetersetUnit_Enum", REQ, "PrimaryDosimeterUnit (Type 1)", _H),
    _c("Dose_Hst", "Modality_Enum", "Modality_Enum", OPT, "RadiationType (else TxField.Modality_Enum)", _H),
    _c("Dose_Hst", "Energy", "Energy", OPT, "NominalBeamEnergy fallback (Type 3)", _H),
    _c("Dose_Hst", "Energy_Unit_Enum", "Energy_Unit_Enum", OPT, "NominalBeamEnergyUnit fallback", _H),
    _c("Dose_Hst", "Termination_Status_Enum", "Termination_Status_Enum", REQ,
       "TreatmentTerminationStatus (Type 1)", _H, _O),
    _c("Dose_Hst", "Termination_Verify_Status_Enum", "Termination_Verify_Status_Enum", OPT,
       "TreatmentVerificationStatus (Type 2)", _H, _O),
    _c("Dose_Hst", "Machine_ID_Staff_ID", "Machine_ID_Staff_ID", REQ, "join to Staff (the machine)", _H),
    _c("Patient", "Pat_ID1", "Patient_Pat_ID1", REQ, "join; the patient key", _T, _H, _O),
    _c("Patient", "Last_Name", "Last_Name", REQ, "PatientName", _T, _H, _O),
    _c("Patient", "First_Name", "First_Name", REQ, "PatientName", _T, _H, _O),
    _c("Patient", "MIddle_Name", "Middle_Name", OPT, "PatientName middle name", _T, _O),
    _c("Patient", "Suffix", "Suffix", OPT, "PatientName suffix", _T, _O),
    _c("Patient", "Birth_DtTm", "Birth_DtTm", OPT, "PatientBirthDate (Type 2)", _T, _H),
    _c("Patient", "Sex", "Sex", OPT, "PatientSex (Type 2)", _O),
    _c("Ident", "Pat_Id1", None, REQ, "join to Patient", _T, _H, _O),
    _c("Ident", "IDA", "IDA", REQ, "PatientID (the MRN)", _T, _H, _O),
    _c("Staff", "Staff_ID", None, REQ, "join from Dose_Hst.Machine_ID_Staff_ID", _T, _H),
    _c("Staff", "Last_Name", "Machine_Name", REQ, "TreatmentMachineName", _T, _H, _D),
    _c("Site", "SIT_ID", "Site_SIT_ID", REQ, "join; the prescription site", _T, _H, _S),
    _c("Site", "SIT_SET_ID", "SIT_SET_ID", REQ, "record study/series grouping", _T, _S, _O),
    _c("Site", "Fractions", "Fractions", OPT, "NumberOfFractionsPlanned (Type 2)", _T, _H, _O),
    _c("SiteSetup", "SIS_ID", None, REQ, "join from Dose_Hst.SIS_ID", _H),
    _c("SiteSetup", "Patient_Orient", "Patient_Orient", OPT, "PatientPosition", _H),
    _c("TxField", "FLD_ID", "TxField_FLD_ID", REQ, "join; the field version", _T, _H, _O),
    _c("TxField", "Field_Label", "Field_Label", OPT, "BeamName", _T, _H, _O),
    _c("TxField", "Field_Name", "Field_Name", OPT, "BeamDescription", _T, _H, _O),
    _c("TxField", "Type_Enum", "Type_Enum", REQ, "BeamType; imaging-only fields are skipped", _T, _H, _O),
    _c("TxField", "Modality_Enum", "Field_Modality_Enum", REQ, "RadiationType (Type 1)", _T, _O),
    _c("TxField", "Meterset", "Field_Meterset", OPT, "SpecifiedPrimaryMeterset", _T, _H, _D, _O),
    _c("TxField", "Sad", "Sad", OPT, "SourceAxisDistance (Type 3)", _T, _H, _O),
    _c("TxField", "Dyn_Wedge", "Dyn_Wedge", OPT, "NumberOfWedges / WedgeType (dynamic)", _T, _H),
    _c("TxField", "Wdg_Appl", "Wdg_Appl", OPT, "NumberOfWedges / WedgeType (standard)", _T, _H, _O),
    _c("TxField", "Block", "Block", OPT, "NumberOfBlocks (Type 2)", _T, _H, _O),
    _c("TxField", "Comp_Fda", "Comp_Fda", OPT, "NumberOfCompensators (Type 2)", _T, _H, _O),
    _c("TxField", "Bolus", "Bolus", OPT, "NumberOfBoli (Type 2)", _T, _H, _O),
    _c("TxField", "OriginalPlanUID", "Plan_UID", REQ, "ReferencedRTPlanSequence; study of the record",
       _T, _O),
    _c("TxField", "OriginalBeamNumber", "Beam_Number", OPT, "ReferencedBeamNumber", _T, _O),
    _c("Fld_Hst", "FHS_ID", "FHS_ID", REQ, "is there an as-treated snapshot", _H),
    _c("Fld_Hst", "DHS_ID", None, REQ, "join from Dose_Hst", _H),
    _c("DCMInstance", "SOPInstanceUID", "Plan_SOP_Instance_UID", REQ, "finds the RT Plan instance", _O),
    _c("DCMInstance", "DCMSeries_ID", None, REQ, "join to DCMSeries", _O),
    _c("DCMSeries", "DCMSeries_ID", None, REQ, "join from DCMInstance", _O),
    _c("DCMSeries", "DCMStudy_ID", None, REQ, "join to DCMStudy", _O),
    _c("DCMSeries", "SeriesInstanceUID", "Plan_Series_UID", OPT, "the plan's series (informative)", _O),
    _c("DCMStudy", "DCMStudy_ID", None, REQ, "join from DCMSeries", _O),
    _c("DCMStudy", "StudyInstanceUID", "Plan_Study_UID", REQ, "StudyInstanceUID (Type 1)", _O),
    _c("DCMStudy", "Study_DtTm", "Plan_Study_DtTm", OPT, "StudyDate/StudyTime (Type 2)", _O),
    _c("DCMStudy", "StudyDescription", "Plan_Study_Description", OPT, "StudyDescription (Type 3)", _O),
    _c("DCMStudy", "StudyID", "Plan_Study_ID", OPT, "StudyID (Type 2)", _O),
    _c("TrackTreatment", "DHS_ID", None, REQ, "QA-mode filter", _T, _H),
    _c("TrackTreatment", "WasQAMode", None, REQ, "QA-mode filter", _T, _H, _D),
)  # fmt: skip


@dataclass(frozen=True)
class PointColumn:
    """A control-point column, read from TxFieldPoint (planned) and, where the site's TxFieldPoint_Hst has
    it, from the as-treated snapshot. ``treated_evidence``: public code reads it from TxFieldPoint_Hst."""

    name: str
    alias: str
    required: bool
    feeds: str
    evidence: tuple[str, ...]
    treated_evidence: tuple[str, ...] = ()


def _p(name: str, alias: str, required: bool, feeds: str, evidence: tuple[str, ...],
       treated: tuple[str, ...] = ()) -> PointColumn:  # fmt: skip
    return PointColumn(name, alias, required, feeds, evidence, treated)


#: Control-point columns (TxFieldPoint / TxFieldPoint_Hst), besides the keys.
CONTROL_POINT_COLUMNS: tuple[PointColumn, ...] = (
    _p("Index", "Index", REQ, "CumulativeMetersetWeight, delivered meterset per point", (_D, _T)),
    _p("Energy", "Energy", OPT, "NominalBeamEnergy (Type 3)", (_H, _T, _O)),
    _p("Energy_Unit_Enum", "Energy_Unit_Enum", OPT, "NominalBeamEnergyUnit", (_T, _O)),
    _p("Gantry_Ang", "Gantry_Ang", REQ, "GantryAngle (Type 1C)", (_D, _H, _O)),
    _p("Gantry_Dir_Enum", "Gantry_Dir_Enum", OPT, "GantryRotationDirection (else from the angles)", (_T, _O)),
    _p("Coll_Ang", "Coll_Ang", REQ, "BeamLimitingDeviceAngle (Type 1C)", (_D, _H, _O)),
    _p("Coll_Dir_Enum", "Coll_Dir_Enum", OPT, "BeamLimitingDeviceRotationDirection", (_T, _O)),
    _p("Coll_X1", "Coll_X1", REQ, "ASYMX jaw positions", (_H, _T), (_H,)),
    _p("Coll_X2", "Coll_X2", REQ, "ASYMX jaw positions", (_H, _T), (_H,)),
    _p("Coll_Y1", "Coll_Y1", REQ, "ASYMY jaw positions", (_D, _H, _T), (_H,)),
    _p("Coll_Y2", "Coll_Y2", REQ, "ASYMY jaw positions", (_D, _H, _T), (_H,)),
    _p("A_Leaf_Set", "A_Leaf_Set", REQ, "MLCX leaf positions, bank A", (_D, _T, _O)),
    _p("B_Leaf_Set", "B_Leaf_Set", REQ, "MLCX leaf positions, bank B", (_D, _T, _O)),
    _p("Couch_Vrt", "Couch_Vrt", OPT, "TableTopVerticalPosition (Type 2)", (_H, _O), (_H,)),
    _p("Couch_Lat", "Couch_Lat", OPT, "TableTopLateralPosition (Type 2)", (_H, _O), (_H,)),
    _p("Couch_Lng", "Couch_Lng", OPT, "TableTopLongitudinalPosition (Type 2)", (_H, _O), (_H,)),
    _p("Couch_Ang", "Couch_Ang", OPT, "PatientSupportAngle", (_H, _O), (_H,)),
    _p("Couch_Top", "Couch_Top", OPT, "TableTopEccentricAngle", (_T, _O)),
    _p("Couch_Top_Dir_Enum", "Couch_Top_Dir_Enum", OPT, "TableTopEccentricRotationDirection", (_T, _O)),
    _p("Meterset_Rate", "Meterset_Rate", OPT, "DoseRateDelivered (Type 3)", (_H, _T, _O)),
)  # fmt: skip

COLUMNS: tuple[Column, ...] = (
    *DELIVERY_COLUMNS,
    Column("TxFieldPoint", "FLD_ID", None, REQ, "join from Dose_Hst.FLD_ID", (_D, _H, _T), "control_points"),
    Column("TxFieldPoint", "Point", "Point", REQ, "ControlPointIndex order", (_H, _T, _O), "control_points"),
    *(
        Column("TxFieldPoint", c.name, c.alias, c.required, c.feeds, c.evidence, "control_points")
        for c in CONTROL_POINT_COLUMNS
    ),
    Column("TxFieldPoint_Hst", "FHS_ID", None, REQ, "join from Fld_Hst", (_H,), "control_points"),
    Column("TxFieldPoint_Hst", "Point", "Point", REQ, "as-treated point order", (_H,), "control_points"),
    *(
        Column("TxFieldPoint_Hst", c.name, c.alias, False, c.feeds + ", as treated", c.treated_evidence,
               "control_points")
        for c in CONTROL_POINT_COLUMNS
        if c.treated_evidence
    ),
)  # fmt: skip


class Catalogue:
    """The tables and columns a database has, as the site spells them (matched case-insensitively).

    ``None`` as a catalogue means "the evidence-backed columns, spelled as Mosaiq spells them"."""

    def __init__(self, tables: Mapping[str, Mapping[str, str] | list[str] | tuple[str, ...]]):
        self._tables: dict[str, tuple[str, dict[str, str]]] = {}
        for table, cols in tables.items():
            spelled = {c.lower(): c for c in cols}
            self._tables[table.lower()] = (table, spelled)

    @classmethod
    def evidence(cls) -> Catalogue:
        tables: dict[str, list[str]] = {}
        for col in COLUMNS:
            if col.evidence:
                tables.setdefault(col.table, []).append(col.name)
        return cls(tables)

    def table(self, table: str) -> str | None:
        found = self._tables.get(table.lower())
        return found[0] if found else None

    def column(self, table: str, column: str) -> str | None:
        found = self._tables.get(table.lower())
        return found[1].get(column.lower()) if found else None

    def has(self, table: str, column: str) -> bool:
        return self.column(table, column) is not None


class _Namer:
    """Quoted identifiers as the catalogue spells them (Mosaiq's spelling where the catalogue lacks one:
    the probe has already reported it)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.cat = catalogue

    def t(self, table: str) -> str:
        return f'"{self.cat.table(table) or table}" {TABLE_ALIASES[table]}'

    def c(self, table: str, column: str) -> str:
        return f'{TABLE_ALIASES[table]}."{self.cat.column(table, column) or column}"'


def _window(n: _Namer) -> str:
    """The window on Dose_Hst (alias d) and the QA-mode exclusion, shared by every query."""
    tx, dhs = n.c("Dose_Hst", "Tx_DtTm"), n.c("Dose_Hst", "DHS_ID")
    return f"""{tx} >= ? AND {tx} < ?
  AND NOT EXISTS (
    SELECT 1 FROM {n.t("TrackTreatment")}
    WHERE {n.c("TrackTreatment", "DHS_ID")} = {dhs} AND {n.c("TrackTreatment", "WasQAMode")} = 1
  )"""


def _select_list(items: list[tuple[str, str]]) -> str:
    return ",\n  ".join(f'{expr} AS "{alias}"' for expr, alias in items)


def _deliveries(cat: Catalogue) -> str:
    n = _Namer(cat)
    items = [
        (n.c(col.table, col.name), col.alias)
        for col in DELIVERY_COLUMNS
        if col.alias is not None and (col.required or cat.has(col.table, col.name))
    ]
    j = n.c
    return f"""SELECT
  {_select_list(items)}
FROM {n.t("Dose_Hst")}
LEFT JOIN {n.t("Patient")} ON {j("Patient", "Pat_ID1")} = {j("Dose_Hst", "Pat_ID1")}
LEFT JOIN {n.t("Ident")} ON {j("Ident", "Pat_Id1")} = {j("Dose_Hst", "Pat_ID1")}
LEFT JOIN {n.t("Staff")} ON {j("Staff", "Staff_ID")} = {j("Dose_Hst", "Machine_ID_Staff_ID")}
LEFT JOIN {n.t("Site")} ON {j("Site", "SIT_ID")} = {j("Dose_Hst", "SIT_ID")}
LEFT JOIN {n.t("SiteSetup")} ON {j("SiteSetup", "SIS_ID")} = {j("Dose_Hst", "SIS_ID")}
LEFT JOIN {n.t("TxField")} ON {j("TxField", "FLD_ID")} = {j("Dose_Hst", "FLD_ID")}
LEFT JOIN {n.t("Fld_Hst")} ON {j("Fld_Hst", "DHS_ID")} = {j("Dose_Hst", "DHS_ID")}
LEFT JOIN {n.t("DCMInstance")} ON {j("DCMInstance", "SOPInstanceUID")} = {j("TxField", "OriginalPlanUID")}
LEFT JOIN {n.t("DCMSeries")} ON {j("DCMSeries", "DCMSeries_ID")} = {j("DCMInstance", "DCMSeries_ID")}
LEFT JOIN {n.t("DCMStudy")} ON {j("DCMStudy", "DCMStudy_ID")} = {j("DCMSeries", "DCMStudy_ID")}
WHERE {_window(n)}
ORDER BY {j("Dose_Hst", "DHS_ID")}"""


def _point_items(cat: Catalogue, n: _Namer, treated: bool) -> list[tuple[str, str]]:
    items = []
    for col in CONTROL_POINT_COLUMNS:
        if treated and cat.has("TxFieldPoint_Hst", col.name):
            items.append((n.c("TxFieldPoint_Hst", col.name), col.alias))
        elif col.required or cat.has("TxFieldPoint", col.name):
            items.append((n.c("TxFieldPoint", col.name), col.alias))
    return items


def _treated(cat: Catalogue) -> str:
    n = _Namer(cat)
    j = n.c
    items = [(j("Dose_Hst", "DHS_ID"), "DHS_ID"), (j("TxFieldPoint_Hst", "Point"), "Point")]
    items += _point_items(cat, n, treated=True)
    return f"""SELECT
  {_select_list(items)}
FROM {n.t("TxFieldPoint_Hst")}
JOIN {n.t("Fld_Hst")} ON {j("Fld_Hst", "FHS_ID")} = {j("TxFieldPoint_Hst", "FHS_ID")}
JOIN {n.t("Dose_Hst")} ON {j("Dose_Hst", "DHS_ID")} = {j("Fld_Hst", "DHS_ID")}
LEFT JOIN {n.t("TxFieldPoint")} ON {j("TxFieldPoint", "FLD_ID")} = {j("Dose_Hst", "FLD_ID")}
  AND {j("TxFieldPoint", "Point")} = {j("TxFieldPoint_Hst", "Point")}
WHERE {_window(n)}
ORDER BY {j("Dose_Hst", "DHS_ID")}, {j("TxFieldPoint_Hst", "Point")}"""


def _planned(cat: Catalogue) -> str:
    n = _Namer(cat)
    j = n.c
    items = [(j("Dose_Hst", "DHS_ID"), "DHS_ID"), (j("TxFieldPoint", "Point"), "Point")]
    items += _point_items(cat, n, treated=False)
    return f"""SELECT
  {_select_list(items)}
FROM {n.t("TxFieldPoint")}
JOIN {n.t("Dose_Hst")} ON {j("Dose_Hst", "FLD_ID")} = {j("TxFieldPoint", "FLD_ID")}
WHERE {_window(n)}
  AND NOT EXISTS (
    SELECT 1 FROM {n.t("Fld_Hst")}
    JOIN {n.t("TxFieldPoint_Hst")} ON {j("TxFieldPoint_Hst", "FHS_ID")} = {j("Fld_Hst", "FHS_ID")}
    WHERE {j("Fld_Hst", "DHS_ID")} = {j("Dose_Hst", "DHS_ID")}
  )
ORDER BY {j("Dose_Hst", "DHS_ID")}, {j("TxFieldPoint", "Point")}"""


def build_queries(catalogue: Catalogue | None = None) -> dict[str, str]:
    """The three queries for a database with ``catalogue`` (None: every evidence-backed column)."""
    cat = catalogue if catalogue is not None else Catalogue.evidence()
    return {
        "deliveries": _deliveries(cat),
        "treated_control_points": _treated(cat),
        "planned_control_points": _planned(cat),
    }


DEFAULT_QUERIES: Mapping[str, str] = build_queries()


class MosaiqQueryError(Exception):
    """A query failed or returned an unusable shape. Names the query and SQLSTATE plus the driver's text
    (which is about the statement, not the rows; the connection string never reaches it)."""


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


def resolve_queries(
    overrides: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default: `DEFAULT_QUERIES`; `mosaiq.probe` passes the ones built for the site's catalogue)
    with the site's overrides (``Settings.mosaiq_queries``) validated and applied."""
    queries = dict(base if base is not None else DEFAULT_QUERIES)
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
