"""Pure DICOM networking and data handling (PS3.4 services, PS3.7 DIMSE, PS3.8 upper layer).

Nothing here imports dagster: `defs/` composes these functions into assets, checks and jobs.
"""
