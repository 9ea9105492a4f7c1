"""Which DICOM failures a retry can fix, and which need a person to change a configuration.

Retrying a rejected AE title or an unknown move destination only delays the alert; retrying a refused
connection, a timeout, an aborted association, an out-of-resources archive or a partial C-MOVE often
succeeds (a peer restarting, a full association table, a disk being cleaned up).
"""

from __future__ import annotations

from dicom_backup_dagster.dicom.errors import (
    AssociationError,
    DicomError,
    DimseTimeout,
    StoreError,
    SubOperationError,
    UnreadableResponse,
)

MOVE_DESTINATION_UNKNOWN = 0xA801

# A-ASSOCIATE-RJ reasons (PS3.8 9.3.4) that name a configuration problem on one side or the other.
CONFIGURATION_REJECT_REASONS = frozenset(
    {
        "Calling AE title not recognised",
        "Called AE title not recognised",
        "Application context name not supported",
    }
)


def is_configuration_error(error: DicomError) -> bool:
    """True when retrying cannot help: a rejected AE title, a refused SOP class, an unknown destination."""
    if isinstance(error, AssociationError):
        return error.reject_reason in CONFIGURATION_REJECT_REASONS or (
            "accepted no presentation context" in error.detail
        )
    return error.status == MOVE_DESTINATION_UNKNOWN


def is_transient(error: DicomError) -> bool:
    """True when the same request may well succeed a little later."""
    retryable = isinstance(
        error, (AssociationError, DimseTimeout, SubOperationError, StoreError, UnreadableResponse)
    )
    return retryable and not is_configuration_error(error)
