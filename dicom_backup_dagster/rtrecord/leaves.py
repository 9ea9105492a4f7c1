"""Mosaiq MLC leaf sets -> DICOM Leaf/Jaw Positions (300A,011C), PS3.3 C.8.8.14 / C.8.8.21.

Storage (pymedphys `_mosaiq/delivery.py`, `decode_msq_mlc`): ``TxFieldPoint.A_Leaf_Set`` and
``B_Leaf_Set`` (and their ``_Hst`` snapshots) are fixed-width binary records of little-endian signed
16-bit integers in 1/100 cm, one record per bank per control point. Only the first ``MLC_Leaves``
values are leaves; the rest of the record is padding. Trailing zero bytes can be real leaf positions,
so records must never be stripped (pymedphys warns about NumPy ``bytes`` arrays doing exactly that).

DICOM order and sign: LeafJawPositions lists leaf subscripts 1..N of bank 1 then 1..N of bank 2
(PS3.3 C.8.8.14: "IEC leaf subscript order 101, 102, ... 1N, 201, 202, ... 2N"), in mm in the
IEC BEAM LIMITING DEVICE coordinate system, so bank 1 is the negative side.
We put the whole A bank first, then the whole B bank, each in stored order, and keep the stored
sign: value_mm = raw / 10. This is what pymedphys implies end to end: its Mosaiq reader builds a
"bipolar" array as (10*B reversed, -10*A reversed) and its DICOM reader builds the same array from
(bank 2 reversed, -bank 1 reversed), so bank 1 = +10*A cm and bank 2 = +10*B cm with the same leaf
order. Mosaiq therefore stores signed IEC coordinates (an open A leaf is negative). This chain is
pymedphys' and has not been checked on our own live Mosaiq; `rt_conformance` flags any leaf pair whose
bank-1 value exceeds its bank-2 value, which is what a sign error would produce.
Jaws follow the same reading (pymedphys: Y1_dicom = 10 * Coll_Y1): mm = cm * 10, no sign change.
"""

from __future__ import annotations

import struct
from decimal import Decimal


class LeafSetError(ValueError):
    """A leaf record is shorter than the declared leaf count, or the two banks disagree."""


def decode_leaf_set(raw: bytes | bytearray | memoryview, leaf_count: int | None = None) -> tuple[int, ...]:
    """Raw little-endian int16 values of one bank (1/100 cm). ``leaf_count`` None: every whole value.

    An odd trailing byte (seen by pymedphys on some databases) is ignored when leaf_count is None.
    """
    data = bytes(raw)
    available = len(data) // 2
    count = available if leaf_count is None else int(leaf_count)
    if count < 0:
        raise LeafSetError(f"leaf count must not be negative, got {count}")
    if count > available:
        raise LeafSetError(f"a leaf set holds {len(data)} bytes, fewer than {2 * count} for {count} leaves")
    return struct.unpack_from(f"<{count}h", data, 0)


def raw_to_mm_str(value: int) -> str:
    """1/100 cm integer -> exact decimal string in mm (one decimal at most), e.g. -1234 -> "-123.4"."""
    whole, tenth = divmod(abs(value), 10)
    sign = "-" if value < 0 else ""
    return f"{sign}{whole}" if tenth == 0 else f"{sign}{whole}.{tenth}"


class _MmStrings(dict):
    """Memo of `raw_to_mm_str`: a VMAT record converts ~30,000 leaf values drawn from a few hundred."""

    def __missing__(self, value: int) -> str:
        text = self[value] = raw_to_mm_str(value)
        return text


_MM_STRINGS = _MmStrings()


def raw_to_mm(value: int) -> Decimal:
    return Decimal(value) / 10


def leaf_jaw_positions(
    a_leaf_set: bytes | bytearray | memoryview,
    b_leaf_set: bytes | bytearray | memoryview,
    leaf_count: int | None = None,
) -> tuple[str, ...]:
    """DICOM LeafJawPositions for an MLC (2N values, mm, as DS strings): whole A bank, then whole B bank.

    Without ``leaf_count`` both banks must decode to the same number of leaves.
    """
    a = decode_leaf_set(a_leaf_set, leaf_count)
    b = decode_leaf_set(b_leaf_set, leaf_count)
    if len(a) != len(b):
        raise LeafSetError(f"A bank has {len(a)} leaves but B bank has {len(b)}")
    lookup = _MM_STRINGS.__getitem__
    return tuple(map(lookup, a)) + tuple(map(lookup, b))


def encode_leaf_set(positions_mm: list[float] | tuple[float, ...], padded_to: int | None = None) -> bytes:
    """Inverse of `decode_leaf_set` for tests and the sandbox: mm -> int16 1/100 cm, zero-padded."""
    values = [round(p * 10) for p in positions_mm]
    if padded_to is not None:
        values += [0] * (padded_to - len(values))
    return struct.pack(f"<{len(values)}h", *values)
