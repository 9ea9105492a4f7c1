"""Transfer-syntax-independent content digest of a DICOM data set (docs/decisions/verification.md).

File MD5s never match across a DICOM hop: receivers rewrite the File Meta Information (group 0002,
PS3.10 7.1), DCMTK drops Data Set Trailing Padding (FFFC,FFFC), and C-GET may change Implicit VR to
Explicit VR Little Endian (PS3.5 A.1/A.2). Element *values* survive. So the digest is SHA-256 over
(tag, value bytes) in tag order, recursing into sequences, and skipping group 0002, group lengths
(gggg,0000) and (FFFC,FFFC).

Value bytes are the little-endian value field as encoded on the wire: identical in Implicit and Explicit
VR Little Endian, and read without decoding (pydicom's raw elements), so VR lookups (private tags read as
UN under Implicit VR) cannot change the result. Trailing space/NUL padding (PS3.5 6.2) is removed from
standard text elements only; binary values, pixel data and private elements are hashed as they are.

Pitfall (found in the lab): a Dataset built in memory is not what gets sent. Values such as Python ints in
FL elements, or strings longer than the VR allows, only take their final form when encoded, and the
receiver hashes the decoded bytes. Compute the expected digest from the encoded bytes you actually sent
(the file path or the bytes), not from the Dataset object you built. For a Dataset argument this module
encodes elements that are no longer raw, which covers the common cases but is not a substitute.
Limits: a legitimately transcoded copy (e.g. compressed pixel data, Big Endian) gets a different digest.
"""

from __future__ import annotations

import hashlib
import os
import struct
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_sequence
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

#: Text VRs whose trailing space/NUL padding the digest ignores (PS3.5 6.2).
DIGEST_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
#: VRs with a 2-byte reserved field and a 4-byte length in Explicit VR (PS3.5 7.1.2).
LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_TRAILING_PADDING = 0xFFFCFFFC
_ITEM_TAG = b"\xfe\xff\x00\xe0"


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    if (tag >> 16) % 2:  # private
        return None
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _encoded_value(elem: DataElement) -> bytes:
    """The value field of a decoded element, as Implicit VR Little Endian would encode it."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_data_element(fp, elem)
    data = fp.getvalue()[8:]  # tag (4) + length (4)
    if elem.is_undefined_length:
        data = data[:-8]  # the Sequence Delimitation Item written after encapsulated data
    return data


def _as_unknown_sequence(value: bytes) -> Sequence | None:
    """A private/unknown element whose value is an item list is a sequence encoded in Implicit VR Little
    Endian (PS3.5 6.2.2 for UN); parse it so that it hashes like the same sequence with VR SQ."""
    if not value.startswith(_ITEM_TAG):
        return None
    try:
        return read_sequence(BytesIO(value), True, True, len(value), ["iso8859"])
    except Exception:  # not a sequence after all: hash the bytes
        return None


def _hash_sequence(h: Any, items: Sequence) -> None:
    h.update(b"SQ" + len(items).to_bytes(4, "big"))
    for child in items:
        h.update(b"ITEM")
        _update(h, child)
        h.update(b"END")


def _update(h: Any, ds: Dataset) -> None:
    big_endian = ds.original_encoding[1] is False
    for tag in sorted(ds.keys()):
        tag = BaseTag(tag)
        if tag.group == 0x0002 or tag.element == 0x0000 or tag == _TRAILING_PADDING:
            continue
        h.update(int(tag).to_bytes(4, "big"))
        dict_vr = _dictionary_vr(tag)
        item = ds.get_item(tag)
        value: bytes | None = None
        if isinstance(item, RawDataElement) and not big_endian and item.VR != "SQ" and dict_vr != "SQ":
            value = b"" if item.value is None else bytes(item.value)
            if dict_vr is None:
                sequence = _as_unknown_sequence(value)
                if sequence is not None:
                    _hash_sequence(h, sequence)
                    continue
        else:
            elem = ds[tag]
            if isinstance(elem.value, Sequence):
                _hash_sequence(h, elem.value)
                continue
            value = b"" if elem.value is None else _encoded_value(elem)
            if dict_vr is None:
                sequence = _as_unknown_sequence(value)
                if sequence is not None:
                    _hash_sequence(h, sequence)
                    continue
        if dict_vr in DIGEST_TEXT_VRS:
            value = value.rstrip(b" \x00")
        h.update(len(value).to_bytes(8, "big"))
        h.update(value)


def content_digest(source: Dataset | str | os.PathLike[str] | bytes) -> str:
    """Hex SHA-256 content digest of a Dataset, a DICOM file path, or encoded DICOM bytes (a Part 10 file,
    or a bare data set in Implicit VR Little Endian as pynetdicom hands it out)."""
    if isinstance(source, Dataset):
        ds = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        ds = dcmread(BytesIO(bytes(source)), force=True)
    elif isinstance(source, (str, os.PathLike)):
        ds = dcmread(Path(source), force=True)
    else:
        raise TypeError(f"content_digest() takes a Dataset, a path or bytes, not {type(source).__name__}")
    h = hashlib.sha256()
    _update(h, ds)
    return h.hexdigest()


# --- the same digest without pydicom Datasets -------------------------------------------------------------
# content_digest parses the file into a pydicom Dataset and walks it: ~6 ms per VMAT record,
# which made digest checks of a day's records the slowest part of the Mosaiq backup. The records are
# PS3.10 files in Explicit VR Little Endian (what we render, what Orthanc stores and returns), so their
# elements can be walked directly. Same rules as content_digest (tag order, no group 0002 / group lengths /
# (FFFC,FFFC), sequences as b"SQ" + count + ITEM..END, text VRs (by the data dictionary) without trailing
# padding); anything else (another transfer syntax, undefined-length non-sequence values, private or
# unknown elements holding items, a sequence the dictionary and the file disagree on) returns to
# content_digest. Tests assert equality on every kind of record.
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(vr.encode() for vr in LONG_LENGTH_VRS)
_EXPLICIT_LE = b"1.2.840.10008.1.2.1"


class _NotFast(Exception):
    pass


def _dataset(buf: bytes, pos: int, end: int, in_item: bool) -> tuple[bytes, int]:
    """(digest input of the data set from `pos`, position after it): up to `end`, or for an item of
    undefined length up to its Item Delimitation Item."""
    chunks: list[tuple[int, bytes]] = []
    unpack = struct.unpack_from
    while pos < end:
        group, element = unpack("<HH", buf, pos)
        tag = group << 16 | element
        if tag == _ITEM_END:
            if not in_item:
                raise _NotFast
            return b"".join(c for _, c in sorted(chunks)), pos + 8
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = unpack("<I", buf, pos + 8)
            start = pos + 12
        else:
            (length,) = unpack("<H", buf, pos + 6)
            start = pos + 8
        dict_vr = _dictionary_vr(tag)
        if vr == b"SQ":
            hashed, pos = _sequence(buf, start, length)
            chunk = tag.to_bytes(4, "big") + hashed
        else:
            if length == _UNDEFINED or dict_vr == "SQ" or start + length > end:
                raise _NotFast
            value = buf[start : start + length]
            pos = start + length
            if dict_vr is None and value[:4] == _ITEM_TAG:
                raise _NotFast  # content_digest would parse it as an implicit-VR sequence
            if dict_vr in DIGEST_TEXT_VRS:
                value = value.rstrip(b" \x00")
            chunk = tag.to_bytes(4, "big") + len(value).to_bytes(8, "big") + value
        if group != 0x0002 and element != 0x0000 and tag != _TRAILING_PADDING:
            chunks.append((tag, chunk))
    if in_item:
        raise _NotFast  # an undefined-length item ran past its container
    return b"".join(c for _, c in sorted(chunks)), pos


def _sequence(buf: bytes, pos: int, length: int) -> tuple[bytes, int]:
    end = len(buf) if length == _UNDEFINED else pos + length
    items: list[bytes] = []
    while pos < end:
        tag = (struct.unpack_from("<H", buf, pos)[0] << 16) | struct.unpack_from("<H", buf, pos + 2)[0]
        (item_length,) = struct.unpack_from("<I", buf, pos + 4)
        if tag == _SEQUENCE_END:
            if length != _UNDEFINED:
                raise _NotFast
            pos += 8
            return b"SQ" + len(items).to_bytes(4, "big") + b"".join(items), pos
        if tag != _ITEM:
            raise _NotFast
        if item_length == _UNDEFINED:
            hashed, pos = _dataset(buf, pos + 8, len(buf), True)
        else:
            hashed, pos = _dataset(buf, pos + 8, pos + 8 + item_length, False)
        items.append(b"ITEM" + hashed + b"END")
    if length == _UNDEFINED or pos != end:
        raise _NotFast
    return b"SQ" + len(items).to_bytes(4, "big") + b"".join(items), pos


def fast_content_digest(data: bytes) -> str:
    """content_digest(data) for a PS3.10 file, without building a pydicom Dataset when the
    file is Explicit VR Little Endian (falls back to content_digest otherwise)."""
    try:
        if data[128:132] != b"DICM":
            raise _NotFast
        pos, syntax = 132, b""
        while pos + 8 <= len(data):  # File Meta Information: group 0002, always Explicit VR LE
            group, element = struct.unpack_from("<HH", data, pos)
            if group != 0x0002:
                break
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from("<I", data, pos + 8)
                start = pos + 12
            else:
                (length,) = struct.unpack_from("<H", data, pos + 6)
                start = pos + 8
            if element == 0x0010:
                syntax = data[start : start + length].rstrip(b" \x00")
            pos = start + length
        if syntax != _EXPLICIT_LE:
            raise _NotFast
        hashed, _ = _dataset(data, pos, len(data), False)
    except (_NotFast, struct.error):
        return content_digest(data)
    return hashlib.sha256(hashed).hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """content_digest of a DICOM file (what a C-GET wrote to the spool), by fast_content_digest."""
    return fast_content_digest(Path(path).read_bytes())
