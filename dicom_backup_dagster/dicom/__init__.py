"""Pure DICOM networking and data handling (PS3.4 services, PS3.7 DIMSE, PS3.8 upper layer).

Nothing here imports dagster: `defs/` composes these functions into assets, checks and jobs.

network     Peer, Timeouts, make_ae (TCP_NODELAY, timeouts; identifier logging off)
association associate()/association(): open or raise AssociationError with the reason
status      status_meaning / status_category / status_advice (PS3.7 Annex C, PS3.4 B/C/J)
errors      DicomError and AssociationError, DimseTimeout, SubOperationError, StoreError,
            StorageCommitmentError
echo        c_echo -> seconds
find        FindSession, find_studies/find_series/find_instances/walk_hierarchy -> frozen records
move, get   c_move / c_get -> RetrieveResult (sub-operation accounting in retrieve.py)
store       c_store_files -> StoreResult (one association, per-instance status)
scp         StorageSCP: our listening AE (move destination, commitment reports)
commitment  request_storage_commitment -> CommitmentResult (N-ACTION + N-EVENT-REPORT)
digest      content_digest: transfer-syntax-independent SHA-256 of a data set
spool       received-file writing and the storage SOP class lists for role negotiation
"""
