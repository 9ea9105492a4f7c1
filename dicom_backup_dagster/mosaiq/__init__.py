"""Elekta Mosaiq over SQL (pyodbc): read-only connection, portable queries, schema probe, and the reader
that turns Dose_Hst rows into `rtrecord.model.Delivery` values. No dagster, nothing of `dicom/`.

connection  read-only ODBC connection from the site configuration
queries     the portable, parameterized queries and site overrides
probe       the catalogue against what the queries read (program: `dicom_backup_dagster.mosaiq_probe`)
deliveries  rows -> Delivery / Quarantined / Skipped per DHS_ID, and rendering them into RT records
"""
