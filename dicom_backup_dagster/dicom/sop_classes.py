"""The non-storage SOP classes we negotiate, as pynetdicom's own `SOPClass` objects.

pynetdicom 3.0 creates its SOP class names at import time, so a type checker cannot see them; looking
them up by UID gives the same objects with a static type.
"""

from __future__ import annotations

from pynetdicom.sop_class import SOPClass, uid_to_sop_class

#: Verification SOP Class (PS3.4 A.4): C-ECHO.
Verification: SOPClass = uid_to_sop_class("1.2.840.10008.1.1")
#: Storage Commitment Push Model SOP Class (PS3.4 J.3): N-ACTION / N-EVENT-REPORT.
StorageCommitmentPushModel: SOPClass = uid_to_sop_class("1.2.840.10008.1.20.1")
#: Study Root Query/Retrieve Information Model FIND / MOVE / GET (PS3.4 C.6.2.1).
StudyRootQueryRetrieveInformationModelFind: SOPClass = uid_to_sop_class("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelMove: SOPClass = uid_to_sop_class("1.2.840.10008.5.1.4.1.2.2.2")
StudyRootQueryRetrieveInformationModelGet: SOPClass = uid_to_sop_class("1.2.840.10008.5.1.4.1.2.2.3")
