"""Mosaiq rows -> typed `Delivery` objects for one treatment window, through a pyodbc connection.

`read_deliveries` runs the three queries of `mosaiq.queries` one after the other on one connection (SQL
Server without MARS allows one open result set per connection): the ``deliveries`` rows (one per
Dose_Hst row, a day's worth, held in memory), then the as-treated and the planned control points,
streamed in DHS_ID order and grouped into `Delivery` objects as each DHS_ID's points end.
`iter_deliveries` yields the outcomes one by one for callers that stream further.

Every Dose_Hst row in the window ends up in exactly one of three lists, so nothing disappears silently:

- ``deliveries``: a typed `Delivery` (control points ordered by Point);
- ``skipped``: imaging-only fields (kV Setup, CT, MV CT: `enums.field_type(...).makes_record` False),
  which by design make no treatment record;
- ``quarantined``: the row cannot make a valid record. The reason names database keys (DHS_ID, FLD_ID,
  Pat_ID1, SIT_ID), column names and enumeration codes only, never PHI. Causes found here: no
  Patient or Site row, neither a TxField nor a Fld_Hst row, no control points, a value of the wrong type
  (`RecordValueError`), joins that matched several rows that disagree, and a missing plan (below).
  Causes found when rendering (unknown Modality_Enum, NULL angle at control point 0, ...) come from
  `render_deliveries`, which wraps `rtrecord.builder.render_rt_record`.

QA-mode deliveries (``TrackTreatment.WasQAMode = 1``) are excluded by the query: they are not patient
treatments and are not backed up.

Decision, a plan that Mosaiq references but the DCM tables lack (``TxField.OriginalPlanUID`` with no
``DCMInstance.SOPInstanceUID`` row, or one without its DCMSeries -> DCMStudy chain): **quarantine** by
default (``on_missing_plan="quarantine"``). Reason: the record's study comes from the plan
(`rtrecord.builder.record_uids`); a record made without the plan would get a patient-derived study UID,
and once Mosaiq's DCM rows appear a re-run (lookback) would send the same SOP Instance UID in another
study, which Orthanc stores as a second instance. Quarantined rows are retried by every run whose window
covers them, and the count is reported, so the gap is visible and closes by itself when the source is
fixed. ``on_missing_plan="omit_reference"`` instead makes the record with an empty
ReferencedRTPlanSequence (Type 2, zero items is valid) and lists the DHS_ID in ``plan_missing``. A field
with a blank ``OriginalPlanUID`` (made in Mosaiq itself, not imported from a planning system) is not an
error: its record has an empty ReferencedRTPlanSequence either way.

Column mapping (by result-column name, case-insensitive, so an override may reorder columns; every column
except DHS_ID and Tx_DtTm, and DHS_ID and Point for control points, may be absent and then reads as
NULL: that is how an optional column the site's Mosaiq lacks leaves its attribute out). The default
columns and their public evidence are `queries.COLUMNS` (docs/decisions/mosaiq-columns.md). Header
columns only an override can add: ``MLC_Leaves`` (leaf pairs; without it the count is taken from the
leaf-set length), ``Prefix``, ``Machine_Manufacturer``, ``Machine_Model``, ``Machine_Serial_Number``,
``Machine_Institution``, ``Plan_Accession_Number``, ``Plan_Referring_Physician``, and an as-treated field
snapshot ``Hst_Field_Label``/``Hst_Field_Name``/``Hst_Field_Meterset``/``Hst_Type_Enum`` (preferred over
TxField when present). Control-point columns are those of `records.ControlPoint`. Field choices
(unverified on a live Mosaiq): ``Dyn_Wedge`` non-blank -> one DYNAMIC wedge, else ``Wdg_Appl`` non-blank
-> one STANDARD wedge, else none; ``Block``/``Bolus``: 0 -> 0, else unknown count (empty Type 2);
``Comp_Fda`` blank -> 0, otherwise unknown; ``Patient.Sex`` (MALE/FEMALE/M/F/O) -> PatientSex.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyodbc

from dicom_backup_dagster.mosaiq.probe import MosaiqSchemaError, probe_or_raise
from dicom_backup_dagster.mosaiq.queries import MosaiqQueryError, treatment_window
from dicom_backup_dagster.rtrecord import enums
from dicom_backup_dagster.rtrecord.builder import (
    RecordOptions,
    RenderedRecord,
    is_valid_uid,
    render_rt_record,
)
from dicom_backup_dagster.rtrecord.enums import RecordQuarantined, RecordSkipped
from dicom_backup_dagster.rtrecord.model import (
    ControlPoint,
    Delivery,
    Field,
    Machine,
    Patient,
    PlanReference,
    RecordValueError,
    Site,
    to_int,
    to_text,
)

__all__ = [
    "DeliveryBatch",
    "MosaiqQueryError",
    "MosaiqSchemaError",
    "Quarantined",
    "RenderBatch",
    "Skipped",
    "iter_deliveries",
    "read_deliveries",
    "read_deliveries_for_date",
    "render_deliveries",
]

MissingPlan = Literal["quarantine", "omit_reference"]
FETCH_SIZE = 2000


@dataclass(frozen=True)
class Quarantined:
    """A delivery that cannot become a valid record. ``reason`` holds keys and codes only (no PHI)."""

    dhs_id: int | None
    reason: str


@dataclass(frozen=True)
class Skipped:
    """A delivery that makes no record by design (imaging-only field)."""

    dhs_id: int | None
    reason: str


Outcome = Delivery | Quarantined | Skipped


@dataclass
class DeliveryBatch:
    """Everything one window of Mosaiq rows became. Each DHS_ID is in exactly one of the three lists."""

    deliveries: list[Delivery] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    #: DHS_IDs made without ReferencedRTPlanSequence because the DCM tables lack the plan
    #: (only with on_missing_plan="omit_reference").
    plan_missing: list[int] = field(default_factory=list)
    #: rows read per query name
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        return {
            "deliveries": len(self.deliveries),
            "quarantined": len(self.quarantined),
            "skipped": len(self.skipped),
            "plan_missing": len(self.plan_missing),
        }


# --- column mapping ------------------------------------------------------------------------------------
_CP_COLUMNS: dict[str, str] = {
    column.strip("[]").lower(): attr for attr, (_kind, column) in ControlPoint._COLUMNS.items()
}


class _Columns:
    """Result-column name (case-insensitive) -> position; absent columns read as None."""

    def __init__(self, description: Sequence[Sequence[Any]] | None, query: str, required: Iterable[str]):
        if not description:
            raise MosaiqQueryError(f"Mosaiq query {query!r} returned no result set")
        self.index = {str(d[0]).lower(): i for i, d in enumerate(description)}
        missing = [c for c in required if c.lower() not in self.index]
        if missing:
            raise MosaiqQueryError(
                f"Mosaiq query {query!r} lacks the required column(s) {', '.join(missing)}"
            )

    def getter(self, name: str) -> Callable[[Sequence[Any]], Any]:
        i = self.index.get(name.lower())
        if i is None:
            return lambda _row: None
        return lambda row: row[i]

    def has(self, name: str) -> bool:
        return name.lower() in self.index


def _query_error(name: str, exc: pyodbc.Error) -> MosaiqQueryError:
    state = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    return MosaiqQueryError(f"Mosaiq query {name!r} failed: [{state}] {' '.join(text.split())}")


def _execute(conn: pyodbc.Connection, name: str, sql: str, params: Sequence[Any]) -> pyodbc.Cursor:
    try:
        return conn.cursor().execute(sql, *params)
    except pyodbc.Error as exc:
        raise _query_error(name, exc) from None


def _rows(cursor: pyodbc.Cursor, name: str) -> Iterator[Sequence[Any]]:
    while True:
        try:
            chunk = cursor.fetchmany(FETCH_SIZE)
        except pyodbc.Error as exc:
            raise _query_error(name, exc) from None
        if not chunk:
            return
        yield from chunk


def _prepare_connection(conn: pyodbc.Connection) -> None:
    """SQL Server: make sure "double-quoted" names are identifiers (see mosaiq.queries)."""
    try:
        dbms = str(conn.getinfo(pyodbc.SQL_DBMS_NAME))
    except pyodbc.Error:
        return
    if "sql server" in dbms.lower():
        conn.cursor().execute("SET QUOTED_IDENTIFIER ON").close()


# --- header rows -> the parts of a Delivery ------------------------------------------------------------
@dataclass
class _Header:
    """A parsed ``deliveries`` row: everything but the control points, or why it cannot be used."""

    dhs_id: int | None
    raw: tuple[Any, ...]
    build: Callable[[tuple[ControlPoint, ...]], Delivery] | None = None
    outcome: Quarantined | Skipped | None = None
    plan_missing: bool = False


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _count_from_flag(value: Any) -> int | None:
    """An accessory column as a count. Mosaiq's TxField.Block/Bolus are VARCHAR (a code or name, per a
    real Mosaiq's column list), older schemas hold a bit: blank or 0 -> 0 (none); NULL -> None (unknown);
    anything else -> None (present, number unknown: written as an empty Type 2 value)."""
    if value is None:
        return None
    if isinstance(value, (bool, int)):
        return 0 if int(value) == 0 else None
    text = to_text(value)
    return 0 if text is None or text == "0" else None


#: Result columns of the ``deliveries`` query read by name (see the module docstring).
_HEADER_COLUMNS = (
    "DHS_ID", "Pat_ID1", "SIT_ID", "FLD_ID", "Tx_DtTm", "Fractions_Tx", "Meterset", "MetersetUnit_Enum",
    "Modality_Enum", "Energy", "Energy_Unit_Enum", "Termination_Status_Enum",
    "Termination_Verify_Status_Enum", "Machine_ID_Staff_ID", "Patient_Pat_ID1", "Last_Name",
    "First_Name", "Middle_Name", "Prefix", "Suffix", "Birth_DtTm", "Sex", "IDA", "Machine_Name",
    "Machine_Manufacturer", "Machine_Model", "Machine_Serial_Number", "Machine_Institution",
    "Site_SIT_ID", "SIT_SET_ID", "Fractions", "Patient_Orient", "TxField_FLD_ID", "Field_Label",
    "Field_Name", "Type_Enum", "Field_Modality_Enum", "Field_Meterset", "Sad", "Beam_Number",
    "MLC_Leaves", "Dyn_Wedge", "Wdg_Appl", "Block", "Comp_Fda", "Bolus", "FHS_ID",
    "Hst_Field_Label", "Hst_Field_Name", "Hst_Field_Meterset", "Hst_Type_Enum",
    "Plan_UID", "Plan_SOP_Instance_UID", "Plan_Series_UID", "Plan_Study_UID", "Plan_Study_DtTm",
    "Plan_Study_Description", "Plan_Study_ID", "Plan_Accession_Number", "Plan_Referring_Physician",
)  # fmt: skip


class _HeaderParser:
    def __init__(self, cols: _Columns, on_missing_plan: MissingPlan) -> None:
        self.on_missing_plan = on_missing_plan
        names = _HEADER_COLUMNS
        self.get = {n: cols.getter(n) for n in names}
        self.has_hst = cols.has("FHS_ID")

    def parse(self, row: Sequence[Any]) -> _Header:
        g = {n: f(row) for n, f in self.get.items()}
        raw = tuple(row)
        try:
            dhs_id = to_int(g["DHS_ID"], "Dose_Hst.DHS_ID")
        except RecordValueError as exc:
            return _Header(None, raw, outcome=Quarantined(None, f"a Dose_Hst row: {exc}"))
        if dhs_id is None:
            return _Header(None, raw, outcome=Quarantined(None, "a Dose_Hst row has a NULL DHS_ID"))
        try:
            return self._parse(dhs_id, g, raw)
        except RecordValueError as exc:
            return _Header(dhs_id, raw, outcome=Quarantined(dhs_id, f"DHS_ID {dhs_id}: {exc}"))

    def _parse(self, dhs_id: int, g: dict[str, Any], raw: tuple[Any, ...]) -> _Header:
        def quarantine(why: str) -> _Header:
            return _Header(dhs_id, raw, outcome=Quarantined(dhs_id, f"DHS_ID {dhs_id}: {why}"))

        fld_key = to_int(g["FLD_ID"], "Dose_Hst.FLD_ID")
        has_field = g["TxField_FLD_ID"] is not None
        has_hst = g["FHS_ID"] is not None
        if not has_field and not has_hst:
            return quarantine(f"FLD_ID {fld_key} has neither a TxField nor a Fld_Hst row")

        def pick(hst: str, plan: str) -> Any:
            value = g[hst] if has_hst else None
            return g[plan] if value is None else value

        type_enum = to_int(pick("Hst_Type_Enum", "Type_Enum"), "TxField.Type_Enum")
        ft = enums.field_type(type_enum)
        if not ft.makes_record:
            return _Header(
                dhs_id,
                raw,
                outcome=Skipped(
                    dhs_id,
                    f"DHS_ID {dhs_id} (FLD_ID {fld_key}): field type {ft.code} ({ft.label}) is imaging only",
                ),
            )
        if g["Patient_Pat_ID1"] is None:
            return quarantine(f"no Patient row for Pat_ID1 {to_int(g['Pat_ID1'], 'Dose_Hst.Pat_ID1')}")
        if g["Site_SIT_ID"] is None:
            return quarantine(f"no Site row for SIT_ID {to_int(g['SIT_ID'], 'Dose_Hst.SIT_ID')}")

        plan: PlanReference | None = None
        plan_missing = False
        plan_uid = to_text(g["Plan_UID"])  # TxField.OriginalPlanUID is CHAR: space padded
        if plan_uid is not None:
            if g["Plan_SOP_Instance_UID"] is None or _blank(g["Plan_Study_UID"]):
                plan_missing = True
                why = (
                    f"TxField FLD_ID {fld_key} references an RT Plan (TxField.OriginalPlanUID) that "
                    "DCMInstance/DCMSeries/DCMStudy do not hold"
                )
                if self.on_missing_plan == "quarantine":
                    return quarantine(
                        why + " (record not made: its study/series would change once the plan appears; "
                        "fix the DCM tables or set on_missing_plan='omit_reference')"
                    )
            else:
                plan = PlanReference(
                    sop_instance_uid=plan_uid,
                    study_instance_uid=g["Plan_Study_UID"],
                    series_instance_uid=g["Plan_Series_UID"],
                    study_datetime=g["Plan_Study_DtTm"],
                    study_description=g["Plan_Study_Description"],
                    study_id=g["Plan_Study_ID"],
                    accession_number=g["Plan_Accession_Number"],
                    referring_physician=g["Plan_Referring_Physician"],
                )
                if not (is_valid_uid(plan.sop_instance_uid) and is_valid_uid(plan.study_instance_uid)):
                    return quarantine(
                        f"TxField FLD_ID {fld_key}: the plan or study UID is not a valid DICOM UID"
                    )

        dyn_wedge, wedge = g["Dyn_Wedge"], g["Wdg_Appl"]
        if not _blank(dyn_wedge):
            wedges, wedge_type = 1, "DYNAMIC"
        elif not _blank(wedge):
            wedges, wedge_type = 1, "STANDARD"
        else:
            wedges, wedge_type = 0, None
        comp = g["Comp_Fda"]
        treatment_field = Field(
            fld_id=g["TxField_FLD_ID"] if has_field else fld_key,
            label=pick("Hst_Field_Label", "Field_Label"),
            name=pick("Hst_Field_Name", "Field_Name"),
            type_enum=type_enum,
            modality_enum=g["Field_Modality_Enum"],
            meterset=pick("Hst_Field_Meterset", "Field_Meterset"),
            sad_cm=g["Sad"],
            mlc_leaves=g["MLC_Leaves"],
            beam_number=g["Beam_Number"],
            number_of_wedges=wedges,
            wedge_type=wedge_type,
            number_of_blocks=_count_from_flag(g["Block"]),
            number_of_boli=_count_from_flag(g["Bolus"]),
            number_of_compensators=None if comp is None else (0 if _blank(comp) else None),
        )
        patient = Patient(
            pat_id1=g["Patient_Pat_ID1"],
            ida=g["IDA"],
            last_name=g["Last_Name"],
            first_name=g["First_Name"],
            middle_name=g["Middle_Name"],
            prefix=g["Prefix"],
            suffix=g["Suffix"],
            birth_date=g["Birth_DtTm"],
            sex=to_text(g["Sex"]),
        )
        machine = Machine(
            staff_id=g["Machine_ID_Staff_ID"],
            name=g["Machine_Name"],
            manufacturer=g["Machine_Manufacturer"],
            model=g["Machine_Model"],
            serial_number=g["Machine_Serial_Number"],
            institution_name=g["Machine_Institution"],
        )
        site = Site(
            sit_id=g["Site_SIT_ID"],
            sit_set_id=g["SIT_SET_ID"],
            fractions_planned=g["Fractions"],
            patient_orientation=g["Patient_Orient"],
        )
        values = dict(
            dhs_id=dhs_id,
            patient=patient,
            machine=machine,
            site=site,
            treatment_field=treatment_field,
            tx_datetime=g["Tx_DtTm"],
            fraction_number=g["Fractions_Tx"],
            delivered_meterset=g["Meterset"],
            meterset_unit_enum=g["MetersetUnit_Enum"],
            modality_enum=g["Modality_Enum"],
            energy=g["Energy"],
            energy_unit_enum=g["Energy_Unit_Enum"],
            termination_status_enum=g["Termination_Status_Enum"],
            verify_status_enum=g["Termination_Verify_Status_Enum"],
            plan=plan,
        )
        Delivery(**values)  # validate now (types, NULL Tx_DtTm), so the error is reported per row

        def build(points: tuple[ControlPoint, ...]) -> Delivery:
            return Delivery(**values, control_points=points)

        return _Header(dhs_id, raw, build=build, plan_missing=plan_missing)


class _PointParser:
    def __init__(self, cols: _Columns) -> None:
        self.dhs = cols.getter("DHS_ID")
        present = [(attr, cols.index[col]) for col, attr in _CP_COLUMNS.items() if cols.has(col)]
        self.attrs = tuple(attr for attr, _ in present)
        # one C-level call per row instead of a Python lambda per column (tens of thousands of rows a day)
        self.values: Callable[[Sequence[Any]], tuple[Any, ...]]
        if not present:
            self.values = lambda _row: ()
        elif len(present) == 1:
            one = operator.itemgetter(present[0][1])
            self.values = lambda row: (one(row),)
        else:
            self.values = operator.itemgetter(*(i for _, i in present))

    def dhs_id(self, row: Sequence[Any]) -> int | None:
        return to_int(self.dhs(row), "DHS_ID")

    def parse(self, row: Sequence[Any]) -> ControlPoint:
        return ControlPoint(**dict(zip(self.attrs, self.values(row), strict=True)))


# --- the reader ----------------------------------------------------------------------------------------
def iter_deliveries(
    conn: pyodbc.Connection,
    start: Any,
    end: Any,
    *,
    queries: Mapping[str, str] | None = None,
    on_missing_plan: MissingPlan = "quarantine",
    stats: DeliveryBatch | None = None,
) -> Iterator[Outcome]:
    """Yield a `Delivery`, `Quarantined` or `Skipped` for every non-QA Dose_Hst row with
    ``start <= Tx_DtTm < end``. ``queries``: the site's overrides (``Settings.mosaiq_queries``), validated
    by `queries.resolve_queries`. ``stats`` (optional) receives row counts and ``plan_missing``.
    Runs `probe.probe` first and raises `probe.MosaiqSchemaError` (a `MosaiqQueryError`) listing every
    missing table/column and every override that does not parse or run. Raises `MosaiqQueryError` if a
    query fails later or returns an unusable shape (then discard what was already yielded)."""
    if on_missing_plan not in ("quarantine", "omit_reference"):
        raise ValueError("on_missing_plan must be 'quarantine' or 'omit_reference'")
    params = (start, end)
    stats = stats if stats is not None else DeliveryBatch()
    _prepare_connection(conn)
    # The probe first: a missing column or an override that does not run fails here with the whole list.
    sql = probe_or_raise(conn, queries)

    headers: dict[int, _Header] = {}
    yield from _read_headers(conn, sql["deliveries"], params, on_missing_plan, headers, stats)

    pending: dict[int, _Header] = {}
    for dhs_id in sorted(headers):
        header = headers[dhs_id]
        if header.outcome is not None:
            yield header.outcome
        else:
            pending[dhs_id] = header

    finished: set[int] = set()  # DHS_IDs whose control points are complete (treated first, then planned)
    for name in ("treated_control_points", "planned_control_points"):
        yield from _read_control_points(conn, name, sql[name], params, pending, finished, stats)

    for dhs_id in sorted(pending):
        yield Quarantined(
            dhs_id, f"DHS_ID {dhs_id}: no control points (neither TxFieldPoint_Hst nor TxFieldPoint rows)"
        )


def _read_headers(
    conn: pyodbc.Connection,
    sql: str,
    params: tuple[Any, Any],
    on_missing_plan: MissingPlan,
    headers: dict[int, _Header],
    stats: DeliveryBatch,
) -> Iterator[Outcome]:
    """The ``deliveries`` query into `headers` (DHS_ID -> header); yields the rows without a usable DHS_ID.
    A DHS_ID whose joined rows differ is quarantined."""
    cursor = _execute(conn, "deliveries", sql, params)
    parser = _HeaderParser(_Columns(cursor.description, "deliveries", ("DHS_ID", "Tx_DtTm")), on_missing_plan)
    count = 0
    for row in _rows(cursor, "deliveries"):
        count += 1
        header = parser.parse(row)
        if header.dhs_id is None:
            yield header.outcome  # type: ignore[misc]
            continue
        seen = headers.get(header.dhs_id)
        if seen is None:
            headers[header.dhs_id] = header
        elif seen.raw != header.raw:
            headers[header.dhs_id] = _Header(
                header.dhs_id,
                seen.raw,
                outcome=Quarantined(
                    header.dhs_id,
                    f"DHS_ID {header.dhs_id}: the joins matched several rows that differ (duplicate Ident, "
                    "Fld_Hst or DCM rows)",
                ),
            )
    cursor.close()
    stats.rows["deliveries"] = count


def _read_control_points(
    conn: pyodbc.Connection,
    name: str,
    sql: str,
    params: tuple[Any, Any],
    pending: dict[int, _Header],
    finished: set[int],
    stats: DeliveryBatch,
) -> Iterator[Outcome]:
    """One control-point query (ordered by DHS_ID, Point): each DHS_ID's run of rows finishes its pending
    delivery. A DHS_ID seen in two separate runs means the query is not ordered: MosaiqQueryError."""
    cursor = _execute(conn, name, sql, params)
    points = _PointParser(_Columns(cursor.description, name, ("DHS_ID", "Point")))
    count = 0
    current: int | None = None
    group: list[ControlPoint] = []
    broken: str | None = None
    for row in _rows(cursor, name):
        count += 1
        try:
            dhs_id = points.dhs_id(row)
        except RecordValueError:
            continue
        if dhs_id != current:
            if current is not None:
                finished.add(current)
                yield from _finish(pending, stats, current, group, broken)
            if dhs_id in finished:
                cursor.close()
                raise MosaiqQueryError(
                    f"Mosaiq query {name!r} returned the control points of DHS_ID {dhs_id} in two "
                    "separate runs: it must ORDER BY DHS_ID (then Point); discard this window's results"
                )
            current, group, broken = dhs_id, [], None
        if dhs_id not in pending or broken is not None:
            continue
        try:
            group.append(points.parse(row))
        except RecordValueError as exc:
            broken = f"DHS_ID {dhs_id}: control point: {exc}"
    if current is not None:
        finished.add(current)
        yield from _finish(pending, stats, current, group, broken)
    cursor.close()
    stats.rows[name] = count


def _finish(
    pending: dict[int, _Header],
    stats: DeliveryBatch,
    dhs_id: int,
    group: list[ControlPoint],
    broken: str | None,
) -> Iterator[Outcome]:
    header = pending.pop(dhs_id, None)
    if header is None or header.build is None:
        return
    if broken is not None:
        yield Quarantined(dhs_id, broken)
        return
    try:
        delivery = header.build(tuple(group))
    except RecordValueError as exc:
        yield Quarantined(dhs_id, f"DHS_ID {dhs_id}: {exc}")
        return
    if header.plan_missing:
        stats.plan_missing.append(dhs_id)
    yield delivery


def read_deliveries(
    conn: pyodbc.Connection,
    start: Any,
    end: Any,
    *,
    queries: Mapping[str, str] | None = None,
    on_missing_plan: MissingPlan = "quarantine",
) -> DeliveryBatch:
    """All outcomes for the window ``[start, end)``, each list sorted by DHS_ID."""
    began = time.perf_counter()
    batch = DeliveryBatch()
    for outcome in iter_deliveries(
        conn, start, end, queries=queries, on_missing_plan=on_missing_plan, stats=batch
    ):
        if isinstance(outcome, Delivery):
            batch.deliveries.append(outcome)
        elif isinstance(outcome, Skipped):
            batch.skipped.append(outcome)
        else:
            batch.quarantined.append(outcome)
    key = lambda o: (o.dhs_id is None, o.dhs_id or 0)  # noqa: E731
    batch.deliveries.sort(key=key)
    batch.quarantined.sort(key=key)
    batch.skipped.sort(key=key)
    batch.plan_missing.sort()
    batch.seconds = time.perf_counter() - began
    return batch


def read_deliveries_for_date(
    conn: pyodbc.Connection,
    day: Any,
    site_timezone: str = "UTC",
    *,
    database_timezone: str | None = None,
    queries: Mapping[str, str] | None = None,
    on_missing_plan: MissingPlan = "quarantine",
) -> DeliveryBatch:
    """`read_deliveries` for one treatment date in the site timezone (see `queries.treatment_window`)."""
    start, end = treatment_window(day, site_timezone, database_timezone)
    return read_deliveries(conn, start, end, queries=queries, on_missing_plan=on_missing_plan)


# --- rendering -----------------------------------------------------------------------------------------
@dataclass
class RenderBatch:
    """Rendered records plus the deliveries the renderer quarantined or skipped."""

    records: list[tuple[Delivery, RenderedRecord]] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def render_deliveries(deliveries: Iterable[Delivery], options: RecordOptions | None = None) -> RenderBatch:
    """`render_rt_record` for each delivery; one that cannot be rendered is quarantined/skipped, the
    others proceed."""
    out = RenderBatch()
    for delivery in deliveries:
        try:
            out.records.append((delivery, render_rt_record(delivery, options)))
        except RecordQuarantined as exc:
            out.quarantined.append(Quarantined(delivery.dhs_id, exc.reason))
        except RecordSkipped as exc:
            out.skipped.append(Skipped(delivery.dhs_id, exc.reason))
    return out
