"""Monitoring: the `dicom-backup-exporter` (Prometheus metrics read from the Dagster instance and Orthanc),
and the Dagster-side helper that writes each asset's DIMSE statistics into its metadata.

exporter      DagsterStateCollector (prometheus_client custom collector) and the `main()` HTTP server
orthanc       Orthanc REST /statistics and /system reader (no dagster)
metrics       metric names, help texts and the pure aggregation of run metadata (no dagster)
dimse         `with_dimse_metadata` decorator for assets and checks (imports dagster)
"""
