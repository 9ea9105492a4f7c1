"""Storage Service Class SCU: many C-STOREs over one association (PS3.4 Annex B, PS3.7 9.1.1).

Files are sent by path and, with pynetdicom's STORE_SEND_CHUNKED_DATASET (network.py), as their encoded
data set without decoding it (a path alone does not: pynetdicom 3 then reads and re-encodes the file).
Presentation contexts are built from each file's File Meta Information (SOP Class and Transfer Syntax,
PS3.10 7.1), exactly as the file is encoded; more than 128 distinct pairs are split over consecutive
associations.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from . import stats
from .association import association, no_response_error
from .errors import AssociationError, StoreError
from .network import Peer, Timeouts, make_ae
from .status import WARNING, status_category, status_meaning

MAX_CONTEXTS = 128


@dataclass(frozen=True)
class StoreOutcome:
    """One C-STORE: status None means nothing was sent (no accepted presentation context)."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    status: int | None
    status_meaning: str
    error_comment: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and status_category(self.status) in ("Success", WARNING)


@dataclass(frozen=True)
class StoreResult:
    outcomes: tuple[StoreOutcome, ...]
    seconds: float

    @property
    def stored(self) -> tuple[StoreOutcome, ...]:
        return tuple(o for o in self.outcomes if o.ok)

    @property
    def failed(self) -> tuple[StoreOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)

    @property
    def warnings(self) -> tuple[StoreOutcome, ...]:
        return tuple(
            o for o in self.outcomes if o.status is not None and status_category(o.status) == WARNING
        )


@dataclass(frozen=True)
class _FileInfo:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    has_file_meta: bool = True


def _read_without_meta(path: Path) -> Dataset:
    """A file lacking File Meta Information: decode it and state the transfer syntax it was read with."""
    ds = dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit = ds.original_encoding[0] is not False
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _file_info(path: Path) -> _FileInfo:
    try:
        meta = read_file_meta_info(path)
        return _FileInfo(
            path,
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
    except (AttributeError, KeyError, OSError, ValueError, EOFError, InvalidDicomError):
        ds = _read_without_meta(path)
        return _FileInfo(
            path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID), False
        )


def c_store_files(
    peer: Peer,
    calling_aet: str,
    paths: Iterable[str | os.PathLike[str]],
    *,
    raise_on_failure: bool = True,
    timeouts: Timeouts | None = None,
) -> StoreResult:
    """C-STORE every file in `paths` to `peer`, over one association per 128 (SOP Class, Transfer Syntax).

    Returns every per-instance outcome. With `raise_on_failure`, any failed instance raises StoreError
    (after all files were tried; `.result` holds all outcomes, `.failed_sop_instance_uids` the failures).
    A broken association raises AssociationError / DimseTimeout at once.
    """
    timeouts = timeouts or Timeouts()
    infos = [_file_info(Path(p)) for p in paths]
    pairs: list[tuple[str, str]] = []
    for info in infos:
        pair = (info.sop_class_uid, info.transfer_syntax_uid)
        if pair not in pairs:
            pairs.append(pair)
    outcomes: list[StoreOutcome] = []
    started = time.monotonic()
    for offset in range(0, len(pairs), MAX_CONTEXTS):
        batch = pairs[offset : offset + MAX_CONTEXTS]
        batch_set = set(batch)
        outcomes.extend(
            _store_batch(
                peer,
                calling_aet,
                [i for i in infos if (i.sop_class_uid, i.transfer_syntax_uid) in batch_set],
                batch,
                timeouts,
            )
        )
    result = StoreResult(tuple(outcomes), time.monotonic() - started)
    if raise_on_failure and result.failed:
        first = result.failed[0]
        codes = sorted(
            {
                f"0x{o.status:04X} {o.status_meaning}" if o.status is not None else o.status_meaning
                for o in result.failed
            }
        )
        raise StoreError(
            peer,
            f"{len(result.failed)} of {len(outcomes)} instances failed ({'; '.join(codes)})",
            result=result,
            status=first.status,
            failed_sop_instance_uids=[o.sop_instance_uid for o in result.failed],
        )
    return result


def _store_batch(
    peer: Peer,
    calling_aet: str,
    infos: Sequence[_FileInfo],
    pairs: Sequence[tuple[str, str]],
    timeouts: Timeouts,
) -> list[StoreOutcome]:
    if not infos:
        return []
    ae = make_ae(calling_aet, timeouts)
    for sop_class, ts in pairs:
        ae.add_requested_context(sop_class, [ts])
    outcomes: list[StoreOutcome] = []
    with association(ae, peer, timeouts=timeouts, operation="C-STORE") as assoc:
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for info in infos:
            if (info.sop_class_uid, info.transfer_syntax_uid) not in accepted:
                outcomes.append(
                    StoreOutcome(
                        info.path,
                        info.sop_instance_uid,
                        info.sop_class_uid,
                        None,
                        "not sent: the peer accepted no presentation context for SOP Class "
                        f"{info.sop_class_uid} with transfer syntax {info.transfer_syntax_uid}",
                    )
                )
                continue
            if not assoc.is_established:
                raise AssociationError(
                    peer,
                    f"association lost after {len(outcomes)} C-STOREs",
                    operation="C-STORE",
                    advice="check the peer's log; re-run to send the remaining instances",
                    stage="aborted",
                )
            sent = time.monotonic()
            # A path lets pynetdicom send the encoded data set as is; without file meta it cannot.
            rsp = assoc.send_c_store(info.path if info.has_file_meta else _read_without_meta(info.path))
            stats.record(peer.aet, "C-STORE", rsp.get("Status"), time.monotonic() - sent)
            if "Status" not in rsp:
                raise no_response_error(assoc, peer, "C-STORE", timeouts, time.monotonic() - sent)
            code = int(rsp.Status)
            comment = rsp.get("ErrorComment")
            outcomes.append(
                StoreOutcome(
                    info.path,
                    info.sop_instance_uid,
                    info.sop_class_uid,
                    code,
                    status_meaning(code, "C-STORE"),
                    str(comment) if comment else None,
                )
            )
    return outcomes
