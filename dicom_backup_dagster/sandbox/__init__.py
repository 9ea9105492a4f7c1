"""Local stand-ins for a radiation-oncology site: Orthanc main + staging, ARIA (dcmqrscp) and MIM (pynetdicom)
Query/Retrieve simulators, a Mosaiq-shaped database, and deterministic synthetic RT data.

Entry points: sandbox.Sandbox (everything), orthanc.OrthancServer, aria.AriaSimulator, mim.MimSimulator,
synthetic.generate / SyntheticOptions, mosaiq_db.create_mosaiq_db, processes.ManagedProcess; the CLI is
`python -m dicom_backup_dagster.sandbox up|down|status|night`. Nothing here imports dagster, and the
package itself imports nothing so that `python -m dicom_backup_dagster.sandbox.mim` starts quickly.
"""
