"""Transfer-syntax-independent content digest of a DICOM data set (research dicom.md section 6).

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

_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_TRAILING_PADDING = 0xFFFCFFFC
_ITEM_TAG = b"\xfe\xff\x00\xe0"


def _dictionary_vr(tag: BaseTag) -> str | None:
    if tag.is_private:
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
        if dict_vr in _TEXT_VRS:
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
