"""Backing up a Query/Retrieve source (ARIA, MIM) or Mosaiq RT records into the archive, and proving it.
No dagster here.

manifest   InstanceEntry JSON-lines manifests (streamed, atomic), ManifestHandle (an asset's value)
inventory  C-FIND walk STUDY -> SERIES -> IMAGE of a StudyDate window, oldest first; archive presence
plan       inventory minus archived, max_uids_per_run cut, the rest deferred
transfer   RetrieveSession (reused association), transfer() per series, finalize() by presence on main
verify     presence check, content-digest sample via C-GET from source and archive
baseline   trailing-median rules for volume and duration
errors     which DICOM failures are transient (retry) and which are configuration errors
records    Mosaiq deliveries -> spooled RT records, C-STORE to staging, the verified manifests
staging    which verified RT records may leave the staging Orthanc (clean_staging)
"""
