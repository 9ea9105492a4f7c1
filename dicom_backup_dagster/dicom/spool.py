"""Writing received C-STORE data sets to a spool directory as they arrive (PS3.10 file format).

Each instance is written with its File Meta Information (PS3.10 7.1) from the bytes received, without
decoding the data set, so a study is never held in memory and the bytes on disk are exactly what the peer
sent (the content digest is computed from them later).
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts, StoragePresentationContexts
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

# Offered for every storage class we may receive: uncompressed first, then common lossless/lossy
# encodings so that a source holding compressed images can send them as stored.
STORAGE_TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEG2000,
]

# Radiation oncology first (PS3.4 B.5 Standard SOP Classes), so they always fit in the 128-context limit.
PRIORITY_STORAGE_CLASSES: list[str] = [
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.481.4",  # RT Beams Treatment Record
    "1.2.840.10008.5.1.4.1.1.481.6",  # RT Brachy Treatment Record
    "1.2.840.10008.5.1.4.1.1.481.7",  # RT Treatment Summary Record
    "1.2.840.10008.5.1.4.1.1.481.8",  # RT Ion Plan
    "1.2.840.10008.5.1.4.1.1.481.9",  # RT Ion Beams Treatment Record
    "1.2.840.10008.5.1.4.1.1.66.1",  # Spatial Registration
    "1.2.840.10008.5.1.4.1.1.66.3",  # Deformable Spatial Registration
    "1.2.840.10008.5.1.4.1.1.66.2",  # Spatial Fiducials
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.66.5",  # Surface Segmentation
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
]


def retrieve_storage_classes(limit: int = 127) -> list[str]:
    """Storage SOP Classes to offer with the SCP role on a C-GET association (PS3.4 C.4.3.1.2).

    PS3.8 limits an association to 128 presentation contexts; one is the C-GET model itself, so the default
    is 127: the priority list above, then the rest of pynetdicom's StoragePresentationContexts.
    """
    ordered = list(PRIORITY_STORAGE_CLASSES)
    for cx in [*StoragePresentationContexts, *AllStoragePresentationContexts]:
        uid = str(cx.abstract_syntax)
        if uid not in ordered:
            ordered.append(uid)
    return ordered[:limit]


def all_storage_classes() -> list[str]:
    """Every storage class pynetdicom knows: what our listening SCP accepts (no 128 limit for an SCP)."""
    return retrieve_storage_classes(limit=10_000)


@dataclass(frozen=True)
class ReceivedInstance:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    calling_aet: str


_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")


def write_received(event: Event, spool_dir: Path) -> ReceivedInstance:
    """Write the data set of an EVT_C_STORE event to `spool_dir/<SOPInstanceUID>.dcm` (atomically)."""
    request = cast(C_STORE, event.request)  # EVT_C_STORE carries a C-STORE request
    sop_uid = str(request.AffectedSOPInstanceUID)
    sop_class = str(request.AffectedSOPClassUID)
    # A UID becomes a file name: never let a peer choose a path.
    name = sop_uid if _SAFE_UID.match(sop_uid) else uuid.uuid5(uuid.NAMESPACE_OID, sop_uid).hex
    final = spool_dir / f"{name}.dcm"
    tmp = spool_dir / f".{name}.{uuid.uuid4().hex}.part"
    data = event.encoded_dataset(include_meta=True)
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, final)
    return ReceivedInstance(
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        path=final,
        size=len(data),
        calling_aet=str(event.assoc.requestor.ae_title).strip(),
    )
