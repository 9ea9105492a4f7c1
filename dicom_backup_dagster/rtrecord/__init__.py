"""RT Beams Treatment Records (PS3.3 A.29): the delivered-treatment model and the DICOM record made of it.

The neutral layer between the Mosaiq side (`mosaiq/`: SQL rows -> `model.Delivery`) and the DICOM side
(`dicom/`: networking, content digest). Neither of those imports the other; both may import this package,
and this package imports nothing of `mosaiq/`. No dagster.

model        Delivery and its parts (patient, machine, site, field, control points, plan reference),
             values normalised on construction; repr shows database keys only (no PHI)
enums        Mosaiq codes -> the values of PS3.3 C.8.8.21 (RT Beams Session Record), C.8.8.17 and
             C.7.1.1 (radiation type, termination status, rotation direction, ...);
             RecordQuarantined / RecordSkipped
leaves       Mosaiq leaf-set bytes -> Leaf/Jaw Positions (300A,011C) in mm, PS3.3 C.8.8.14 / C.8.8.21
builder      Delivery -> RT Beams Treatment Record Storage instance (PS3.3 A.29; UID
             1.2.840.10008.5.1.4.1.1.481.4) with deterministic UIDs and bytes
conformance  our IOD check of a record: PS3.3 A.29.3 and the modules it lists (C.8.8.17/18/21, C.7.x,
             C.12.1)
"""
