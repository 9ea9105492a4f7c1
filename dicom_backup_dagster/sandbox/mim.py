"""MIM simulator: a pynetdicom Study Root Query/Retrieve SCP over a directory of DICOM files.

Services (PS3.4 Annex C, Study Root Query/Retrieve Information Model):
- C-ECHO (Verification, PS3.4 A.4);
- C-FIND at STUDY, SERIES and IMAGE level (C.4.1) with single value, universal, wildcard (* ?), UID list
  and date/time range matching (C.2.2.2), and ModalitiesInStudy matching any of the study's modalities.
  Hierarchical by default (C.4.1.2.1): a SERIES query needs one
  StudyInstanceUID and an IMAGE query also one SeriesInstanceUID, otherwise 0xC000 Unable to process;
  `relational=True` lifts that (C.4.1.2.2). Optional return keys it can compute are returned
  (NumberOfStudyRelatedSeries/Instances, ModalitiesInStudy, NumberOfSeriesRelatedInstances).
  `max_results=N` cuts every answer at N matches and still ends it with 0x0000, as capped PACS do;
- C-MOVE (C.4.2) only to AEs it knows (else pynetdicom answers 0xA801 Move Destination Unknown), with
  sub-operation accounting done by pynetdicom from the per-instance statuses;
- C-GET (C.4.3) for every storage SOP class;
- C-STORE (Storage SCP, PS3.4 B) into <dir>/incoming/.

The index lives in memory (patient/study/series/instance objects, no pixel data). Reading headers of a
large directory is slow, so the index is cached in <dir>/.mim-index.jsonl, keyed by the directory's file
count, total size and newest mtime.

Run as its own process (`python -m dicom_backup_dagster.sandbox.mim --dir D --port P --aet A
--dest AE=host:port ...`), managed by MimSimulator, so that it behaves like a separate system. It binds to
127.0.0.1. It never logs identifiers (pynetdicom identifier logging is switched off by importing
dicom_backup_dagster.dicom.network), only counts.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_backup_dagster.dicom.association import keep_responses
from dicom_backup_dagster.dicom.network import Peer, enable_tcp_nodelay
from dicom_backup_dagster.sandbox.processes import ManagedProcess, ManagedServer, SandboxError

log = logging.getLogger("dicom_backup_dagster.sandbox.mim")
INDEX_CACHE = ".mim-index.jsonl"
UNABLE_TO_PROCESS = 0xC000
CANCEL = 0xFE00
PENDING = 0xFF00

_HEADER_TAGS = [
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
    "InstanceNumber",
]


# --------------------------------------------------------------------------------------------------
# In-memory index
# --------------------------------------------------------------------------------------------------
class Instance:
    __slots__ = ("number", "path", "series", "sop_class_uid", "sop_instance_uid", "transfer_syntax")

    def __init__(
        self,
        series: Series,
        sop_instance_uid: str,
        sop_class_uid: str,
        number: str,
        path: str,
        transfer_syntax: str,
    ) -> None:
        self.series = series
        self.sop_instance_uid = sop_instance_uid
        self.sop_class_uid = sop_class_uid
        self.number = number
        self.path = path
        self.transfer_syntax = transfer_syntax


class Series:
    __slots__ = ("date", "description", "instances", "modality", "number", "study", "uid")

    def __init__(
        self, study: Study, uid: str, modality: str, number: str, description: str, date: str
    ) -> None:
        self.study = study
        self.uid = uid
        self.modality = modality
        self.number = number
        self.description = description
        self.date = date
        self.instances: dict[str, Instance] = {}


class Study:
    __slots__ = (
        "accession",
        "birth_date",
        "charset",
        "date",
        "description",
        "patient_id",
        "patient_name",
        "series",
        "sex",
        "study_id",
        "time",
        "uid",
    )

    def __init__(self, h: dict[str, str]) -> None:
        self.uid = h["StudyInstanceUID"]
        self.charset = h.get("SpecificCharacterSet", "")
        self.patient_name = h.get("PatientName", "")
        self.patient_id = h.get("PatientID", "")
        self.birth_date = h.get("PatientBirthDate", "")
        self.sex = h.get("PatientSex", "")
        self.date = h.get("StudyDate", "")
        self.time = h.get("StudyTime", "")
        self.accession = h.get("AccessionNumber", "")
        self.study_id = h.get("StudyID", "")
        self.description = h.get("StudyDescription", "")
        self.series: dict[str, Series] = {}

    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series.values())


class Index:
    """Patient/study/series/instance headers of every file under a directory."""

    def __init__(self) -> None:
        self.studies: dict[str, Study] = {}
        self.by_sop: dict[str, Instance] = {}
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.by_sop)

    def add(self, h: dict[str, str], path: str, transfer_syntax: str) -> Instance:
        with self.lock:
            study = self.studies.get(h["StudyInstanceUID"])
            if study is None:
                study = self.studies[h["StudyInstanceUID"]] = Study(h)
            series = study.series.get(h["SeriesInstanceUID"])
            if series is None:
                series = study.series[h["SeriesInstanceUID"]] = Series(
                    study,
                    h["SeriesInstanceUID"],
                    h.get("Modality", ""),
                    h.get("SeriesNumber", ""),
                    h.get("SeriesDescription", ""),
                    h.get("SeriesDate", ""),
                )
            old = self.by_sop.get(h["SOPInstanceUID"])
            if old is not None:
                old.series.instances.pop(old.sop_instance_uid, None)
            inst = Instance(
                series,
                h["SOPInstanceUID"],
                sys.intern(h["SOPClassUID"]),  # a handful of distinct values: share them
                h.get("InstanceNumber", ""),
                path,
                sys.intern(transfer_syntax),
            )
            series.instances[inst.sop_instance_uid] = inst
            self.by_sop[inst.sop_instance_uid] = inst
            return inst


def _header(ds: Dataset) -> dict[str, str]:
    out: dict[str, str] = {}
    for kw in _HEADER_TAGS:
        v = ds.get(kw)
        if v is None:
            continue
        if kw == "SpecificCharacterSet" and not isinstance(v, str):
            v = "\\".join(v)
        out[kw] = str(v)
    return out


def _dir_signature(files: list[Path]) -> dict[str, int]:
    size = newest = 0
    for f in files:
        st = f.stat()
        size += st.st_size
        newest = max(newest, st.st_mtime_ns)
    return {"files": len(files), "bytes": size, "newest": newest}


def _list_files(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    out.sort()
    return out


def load_index(root: str | os.PathLike[str], use_cache: bool = True) -> Index:
    """Read the headers of every DICOM file under root (stop_before_pixels), using the cache when valid."""
    root = Path(root).resolve()
    files = _list_files(root)
    signature = _dir_signature(files)
    cache = root / INDEX_CACHE
    index = Index()
    if use_cache and cache.exists():
        with open(cache, encoding="utf-8") as f:
            first = f.readline()
            if first and json.loads(first) == signature:
                for line in f:
                    rec = json.loads(line)
                    index.add(rec["h"], rec["p"], rec["ts"])
                return index
    tmp = cache.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(json.dumps(signature) + "\n")
        for path in files:
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            h = _header(ds)
            if not all(
                k in h for k in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
            ):
                continue
            ts = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
            index.add(h, str(path), ts)
            out.write(json.dumps({"h": h, "p": str(path), "ts": ts}, separators=(",", ":")) + "\n")
    os.replace(tmp, cache)
    return index


# --------------------------------------------------------------------------------------------------
# Matching (PS3.4 C.2.2.2)
# --------------------------------------------------------------------------------------------------
STUDY_KEYS = {
    "PatientName": lambda st: st.patient_name,
    "PatientID": lambda st: st.patient_id,
    "PatientBirthDate": lambda st: st.birth_date,
    "PatientSex": lambda st: st.sex,
    "StudyInstanceUID": lambda st: st.uid,
    "StudyDate": lambda st: st.date,
    "StudyTime": lambda st: st.time,
    "AccessionNumber": lambda st: st.accession,
    "StudyID": lambda st: st.study_id,
    "StudyDescription": lambda st: st.description,
}
SERIES_KEYS = {
    "SeriesInstanceUID": lambda se: se.uid,
    "Modality": lambda se: se.modality,
    "SeriesNumber": lambda se: se.number,
    "SeriesDescription": lambda se: se.description,
    "SeriesDate": lambda se: se.date,
}
IMAGE_KEYS = {
    "SOPInstanceUID": lambda i: i.sop_instance_uid,
    "SOPClassUID": lambda i: i.sop_class_uid,
    "InstanceNumber": lambda i: i.number,
}
UID_KEYS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
RANGE_KEYS = {"StudyDate", "StudyTime", "SeriesDate", "PatientBirthDate"}
CASE_INSENSITIVE = {"PatientName"}


def _value(ident: Dataset, kw: str) -> str | None:
    """The match value of a key in the identifier: None if absent, '' for universal matching."""
    if kw not in ident:
        return None
    v = ident[kw].value
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v)


def matches(kw: str, pattern: str | None, value: str) -> bool:
    if pattern is None or pattern == "" or pattern == "*":
        return True
    if kw in UID_KEYS:
        return value in pattern.split("\\")  # list of UID matching
    if kw in RANGE_KEYS and "-" in pattern:
        lo, hi = pattern.split("-", 1)
        if not value:
            return False
        v = value[: max(len(lo), len(hi))] if kw.endswith("Time") else value
        return (not lo or v >= lo) and (not hi or v <= hi)
    if "*" in pattern or "?" in pattern:
        if kw in CASE_INSENSITIVE:
            return fnmatch.fnmatchcase(value.upper(), pattern.upper())
        return fnmatch.fnmatchcase(value, pattern)
    if kw in CASE_INSENSITIVE:
        return value.upper() == pattern.upper()
    return value == pattern


def _modalities_match(pattern: str, study: Study) -> bool:
    """ModalitiesInStudy (multi-valued, PS3.4 C.6.2.1.2): a study matches when one of its series'
    modalities matches one of the values asked for."""
    present = {se.modality for se in study.series.values() if se.modality}
    return any(matches("Modality", p, m) for p in pattern.split("\\") for m in present)


def _single_uid(ident: Dataset, kw: str) -> bool:
    v = _value(ident, kw)
    return bool(v) and "\\" not in v and "*" not in v and "?" not in v  # type: ignore[operator]


class QueryError(Exception):
    pass


def select(index: Index, ident: Dataset, relational: bool = False) -> tuple[str, list[Any]]:
    """(level, matching Study/Series/Instance objects) for a Study Root identifier."""
    level = str(ident.get("QueryRetrieveLevel", "")).upper()
    if level not in ("STUDY", "SERIES", "IMAGE"):
        raise QueryError(f"unsupported QueryRetrieveLevel {level!r} for Study Root")
    if not relational:
        if level in ("SERIES", "IMAGE") and not _single_uid(ident, "StudyInstanceUID"):
            raise QueryError("hierarchical query without a single StudyInstanceUID")
        if level == "IMAGE" and not _single_uid(ident, "SeriesInstanceUID"):
            raise QueryError("hierarchical IMAGE query without a single SeriesInstanceUID")
    study_p = {kw: _value(ident, kw) for kw in STUDY_KEYS}
    series_p = {kw: _value(ident, kw) for kw in SERIES_KEYS}
    image_p = {kw: _value(ident, kw) for kw in IMAGE_KEYS}
    modalities_p = _value(ident, "ModalitiesInStudy")
    uid = study_p["StudyInstanceUID"]
    with index.lock:
        if uid and "\\" not in uid and "*" not in uid and "?" not in uid:
            candidates = [index.studies[uid]] if uid in index.studies else []
        else:
            candidates = list(index.studies.values())
    out: list[Any] = []
    for st in candidates:
        if not all(matches(kw, p, STUDY_KEYS[kw](st)) for kw, p in study_p.items()):
            continue
        if modalities_p and not _modalities_match(modalities_p, st):
            continue
        if level == "STUDY":
            out.append(st)
            continue
        for se in list(st.series.values()):
            if not all(matches(kw, p, SERIES_KEYS[kw](se)) for kw, p in series_p.items()):
                continue
            if level == "SERIES":
                out.append(se)
                continue
            for inst in list(se.instances.values()):
                if all(matches(kw, p, IMAGE_KEYS[kw](inst)) for kw, p in image_p.items()):
                    out.append(inst)
    return level, out


def _instances_of(objs: Iterable[Any]) -> list[Instance]:
    out: list[Instance] = []
    for o in objs:
        if isinstance(o, Instance):
            out.append(o)
        elif isinstance(o, Series):
            out.extend(o.instances.values())
        else:
            for se in o.series.values():
                out.extend(se.instances.values())
    return out


# What dcmqrscp silently leaves out of C-FIND responses (docs/decisions/dicom-peers.md); minimal_responses
# mimics it.
DCMQRSCP_OMITS = frozenset(
    {"NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy",
     "NumberOfSeriesRelatedInstances", "SOPClassUID", "RetrieveAETitle"}
)  # fmt: skip


def _response(ident: Dataset, level: str, obj: Any, aet: str, minimal: bool = False) -> Dataset:
    """Echo every requested key, filled from the record where known (return keys, PS3.4 C.4.1.1.3.2).

    With minimal=True the optional keys dcmqrscp omits are left out, as a strict PACS may do.
    """
    inst = obj if isinstance(obj, Instance) else None
    series = inst.series if inst else obj if isinstance(obj, Series) else None
    study: Study = series.study if series else obj
    known: dict[str, Any] = {kw: f(study) for kw, f in STUDY_KEYS.items()}
    if series is not None:
        known.update({kw: f(series) for kw, f in SERIES_KEYS.items()})
        known["NumberOfSeriesRelatedInstances"] = len(series.instances)
    if inst is not None:
        known.update({kw: f(inst) for kw, f in IMAGE_KEYS.items()})
    known["NumberOfStudyRelatedSeries"] = len(study.series)
    known["NumberOfStudyRelatedInstances"] = study.instance_count()
    known["ModalitiesInStudy"] = sorted({s.modality for s in study.series.values() if s.modality})
    ds = Dataset()
    if study.charset:
        ds.SpecificCharacterSet = study.charset.split("\\") if "\\" in study.charset else study.charset
    for elem in ident:
        kw = elem.keyword
        if (
            not kw
            or kw in ("QueryRetrieveLevel", "SpecificCharacterSet")
            or (minimal and kw in DCMQRSCP_OMITS)
        ):
            continue
        if kw in known:
            v = known[kw]
            setattr(ds, kw, v if v != "" else None)
        else:
            setattr(ds, kw, None)  # supported as "unknown": return it empty
    ds.QueryRetrieveLevel = level
    if not minimal:
        ds.RetrieveAETitle = aet
    return ds


# --------------------------------------------------------------------------------------------------
# The SCP (runs inside the simulator process, or in a thread for unit tests)
# --------------------------------------------------------------------------------------------------
class MimServer:
    """The Q/R SCP itself. start() binds 127.0.0.1:port in a background thread; shutdown() stops it."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        aet: str,
        port: int,
        destinations: dict[str, Peer] | None = None,
        relational: bool = False,
        host: str = "127.0.0.1",
        incoming_dir: str | os.PathLike[str] | None = None,
        minimal_responses: bool = False,
        max_results: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.max_results = max_results
        # Received instances go to their own directory so a shared, cached data set is never modified.
        self.incoming_dir = Path(incoming_dir).resolve() if incoming_dir else self.data_dir / "incoming"
        self.aet = aet
        self.port = port
        self.host = host
        self.destinations = {p.aet: p for p in (destinations or {}).values()}
        self.relational = relational
        self.minimal_responses = minimal_responses
        self.index = Index()
        self._ae: Any = None

    def load(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        self.index = load_index(self.data_dir)
        if self.incoming_dir.exists() and not self.incoming_dir.is_relative_to(self.data_dir):
            received = load_index(self.incoming_dir, use_cache=False)
            for inst in received.by_sop.values():
                st, se = inst.series.study, inst.series
                h = {
                    "StudyInstanceUID": st.uid,
                    "SeriesInstanceUID": se.uid,
                    "SOPInstanceUID": inst.sop_instance_uid,
                    "SOPClassUID": inst.sop_class_uid,
                    "PatientID": st.patient_id,
                    "PatientName": st.patient_name,
                    "PatientBirthDate": st.birth_date,
                    "PatientSex": st.sex,
                    "StudyDate": st.date,
                    "StudyTime": st.time,
                    "AccessionNumber": st.accession,
                    "StudyID": st.study_id,
                    "StudyDescription": st.description,
                    "Modality": se.modality,
                    "SeriesNumber": se.number,
                    "SeriesDescription": se.description,
                    "SeriesDate": se.date,
                    "InstanceNumber": inst.number,
                    "SpecificCharacterSet": st.charset,
                }
                self.index.add(h, inst.path, inst.transfer_syntax)
        log.warning(
            "%s index: %d instances in %d studies (%.2f s)",
            self.aet,
            len(self.index),
            len(self.index.studies),
            time.monotonic() - t0,
        )

    def _ae_setup(self) -> Any:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        from dicom_backup_dagster.dicom.sop_classes import (
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelGet,
            StudyRootQueryRetrieveInformationModelMove,
            Verification,
        )

        enable_tcp_nodelay()
        ae = AE(ae_title=self.aet)
        ae.maximum_associations = 16
        ae.acse_timeout = 30
        ae.dimse_timeout = 120
        ae.network_timeout = 120
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            # scp_role: a C-GET requestor acts as Storage SCP on this association (PS3.7 D.3.3.4).
            assert cx.abstract_syntax is not None  # every storage context names its SOP class
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=False, scp_role=True)
        for sop in (
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelGet,
        ):
            ae.add_supported_context(sop)
        self._handlers = [
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_STORE, self._on_store),
        ]
        return ae

    def start(self) -> MimServer:
        self._ae = self._ae_setup()
        self._server = self._ae.start_server((self.host, self.port), block=False, evt_handlers=self._handlers)
        return self

    def shutdown(self) -> None:
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None

    # --- handlers ---------------------------------------------------------------------------------
    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        ident = event.identifier
        try:
            level, objs = select(self.index, ident, self.relational)
        except QueryError as exc:
            log.warning("C-FIND refused: %s", exc)
            yield UNABLE_TO_PROCESS, None
            return
        if self.max_results is not None and len(objs) > self.max_results:
            # A capped PACS: the first N matches, then Success as if that were all.
            log.warning("C-FIND: %d matches cut at max_results %d", len(objs), self.max_results)
            objs = objs[: self.max_results]
        for obj in objs:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, _response(ident, level, obj, self.aet, self.minimal_responses)

    def _matched_instances(self, ident: Dataset) -> list[Instance]:
        _, objs = select(self.index, ident, self.relational)
        return _instances_of(objs)

    def _sub_operations(self, event: Any, instances: list[Instance], operation: str) -> Iterator[Any]:
        """The end of a C-MOVE/C-GET handler: the number of sub-operations, then one data set each."""
        yield len(instances)
        log.warning("%s: %d sub-operations", operation, len(instances))
        for inst in instances:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, dcmread(inst.path)

    def _on_move(self, event: Any) -> Iterator[Any]:
        from pynetdicom import evt
        from pynetdicom.presentation import build_context

        move_destination = event.move_destination
        if isinstance(move_destination, bytes):
            move_destination = move_destination.decode("ascii", "replace")
        dest = self.destinations.get(move_destination.strip())
        if dest is None:
            log.warning("C-MOVE to unknown destination refused")
            yield None, None
            return
        try:
            instances = self._matched_instances(event.identifier)
        except QueryError as exc:
            log.warning("C-MOVE refused: %s", exc)
            yield dest.host, dest.port
            yield 0
            yield UNABLE_TO_PROCESS, None
            return
        syntaxes: dict[str, list[str]] = {}
        for inst in instances:
            ts = syntaxes.setdefault(inst.sop_class_uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            if inst.transfer_syntax not in ts:
                ts.insert(0, inst.transfer_syntax)
        contexts = [build_context(c, t) for c, t in list(syntaxes.items())[:128]]
        # The sub-association's C-STORE responses must survive pynetdicom's reactor race as ours do
        # (dicom.association.keep_responses): at 20,000 instances and two concurrent C-MOVEs this simulator
        # lost some and reported the sub-operations failed (a peer's flake, not the backup's).
        handlers = [(evt.EVT_ESTABLISHED, lambda established: keep_responses(established.assoc))]
        yield dest.host, dest.port, {"contexts": contexts, "evt_handlers": handlers}
        yield from self._sub_operations(event, instances, "C-MOVE")

    def _on_get(self, event: Any) -> Iterator[Any]:
        try:
            instances = self._matched_instances(event.identifier)
        except QueryError as exc:
            log.warning("C-GET refused: %s", exc)
            yield 0
            yield UNABLE_TO_PROCESS, None
            return
        yield from self._sub_operations(event, instances, "C-GET")

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = FileMetaDataset(event.file_meta)
        sop = str(ds.SOPInstanceUID)
        path = self.incoming_dir / f"{sop}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        self.index.add(_header(ds), str(path), str(ds.file_meta.TransferSyntaxUID))
        return 0x0000


# --------------------------------------------------------------------------------------------------
# The managed subprocess
# --------------------------------------------------------------------------------------------------
class MimSimulator(ManagedServer):
    """Runs MimServer as `python -m dicom_backup_dagster.sandbox.mim` under `workdir` (mim.log)."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        aet: str,
        port: int,
        data_dir: str | os.PathLike[str],
        move_destinations: dict[str, Peer] | None = None,
        relational: bool = False,
        incoming_dir: str | os.PathLike[str] | None = None,
        minimal_responses: bool = False,
        max_results: int | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.minimal_responses = minimal_responses
        self.max_results = max_results
        self.incoming_dir = Path(incoming_dir).resolve() if incoming_dir else self.workdir / "incoming"
        self.aet = aet
        self.port = port
        self.data_dir = Path(data_dir).resolve()
        self.move_destinations = dict(move_destinations or {})
        self.relational = relational
        self.process: ManagedProcess | None = None
        self.startup_seconds: float | None = None

    @property
    def peer(self) -> Peer:
        return Peer(self.aet, "127.0.0.1", self.port)

    @property
    def log_path(self) -> Path:
        return self.workdir / "mim.log"

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "dicom_backup_dagster.sandbox.mim",
            "--dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--aet",
            self.aet,
            "--incoming",
            str(self.incoming_dir),
        ]
        for p in self.move_destinations.values():
            argv += ["--dest", f"{p.aet}={p.host}:{p.port}"]
        if self.relational:
            argv.append("--relational")
        if self.minimal_responses:
            argv.append("--minimal-responses")
        if self.max_results is not None:
            argv += ["--max-results", str(self.max_results)]
        return argv

    def start(self, timeout: float = 120.0) -> MimSimulator:
        from dicom_backup_dagster.sandbox.aria import echo_ok

        if self.alive:
            raise SandboxError(f"{self.aet} already running (pid {self.pid})")
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)

        def ready() -> bool:
            return "ready" in self.process.log_tail(5) and echo_ok(self.peer)  # type: ignore[union-attr]

        self._launch(
            ManagedProcess(
                f"MIM simulator {self.aet}",
                self.argv(),
                self.log_path,
                env={"PYTHONUNBUFFERED": "1"},
                cwd=self.workdir,
            ),
            [(ready, f"C-ECHO answer from {self.peer}")],
            timeout,
            started=t0,
            interval=0.05,
        )
        return self


def _parse_dest(text: str) -> Peer:
    aet, _, addr = text.partition("=")
    host, _, port = addr.rpartition(":")
    if not aet or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected AET=host:port, got {text!r}")
    return Peer(aet, host, int(port))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dicom_backup_dagster.sandbox.mim",
        description="MIM-like Study Root Q/R SCP over a directory of DICOM files",
    )
    ap.add_argument("--dir", required=True, help="directory of DICOM files (also receives C-STOREs)")
    ap.add_argument("--incoming", default=None, help="where received instances go (default DIR/incoming)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--aet", default="MIM_SIM")
    ap.add_argument(
        "--dest", type=_parse_dest, action="append", default=[], help="C-MOVE destination AET=host:port"
    )
    ap.add_argument("--relational", action="store_true", help="accept relational (non-hierarchical) queries")
    ap.add_argument(
        "--minimal-responses", action="store_true", help="omit optional C-FIND return keys, like dcmqrscp"
    )
    ap.add_argument(
        "--max-results",
        type=int,
        default=None,
        help="cut every C-FIND answer at N matches, still ending with Success (a capped PACS)",
    )
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = MimServer(
        args.dir,
        args.aet,
        args.port,
        {p.aet: p for p in args.dest},
        args.relational,
        incoming_dir=args.incoming,
        minimal_responses=args.minimal_responses,
        max_results=args.max_results,
    )
    server.load()
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"{args.aet} ready on 127.0.0.1:{args.port}", flush=True)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
