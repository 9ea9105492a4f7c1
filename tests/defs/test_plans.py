"""The asset bodies' plans on their own, without Dagster wiring or peers."""

from dataclasses import replace

from dicom_backup_dagster.backup.manifest import InstanceEntry
from dicom_backup_dagster.config import BackupTarget, MosaiqSource, Settings
from dicom_backup_dagster.defs.keys import SourceNames
from dicom_backup_dagster.defs.mosaiq_backup import MosaiqPlan, move_requests
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.dicom.retrieve import MAX_UIDS_PER_REQUEST
from dicom_backup_dagster.rtrecord.builder import RecordOptions


def _plan(staging_type: str) -> MosaiqPlan:
    source = MosaiqSource(
        alias="MOSAIQ",
        db_server="db",
        db_port=None,
        db_database="MOSAIQ",
        db_username="ro",
        db_password_env="MOSAIQ_PW",
        odbc_driver="ODBC Driver 18 for SQL Server",
        staging_target_alias="STAGE",
    )
    staging = BackupTarget("STAGE", staging_type, "STAGE_AE", "127.0.0.1", 4243)
    return MosaiqPlan(
        names=SourceNames("MOSAIQ", "STAGE_AE"),
        source=source,
        settings=Settings(),
        staging=staging,
        archive=Peer("MAIN_AE", "127.0.0.1", 4242),
        archive_alias="MAIN",
        options=RecordOptions(source_key="MOSAIQ"),
    )


def _records(series: int, per_series: int) -> list[InstanceEntry]:
    return [
        InstanceEntry("1.2.3", f"1.2.3.{s}", f"1.2.3.{s}.{i}")
        for s in range(series)
        for i in range(per_series)
    ]


def test_an_orthanc_staging_gets_instance_lists_across_series():
    records = _records(series=300, per_series=1)
    requests, series = move_requests(_plan("orthanc"), records)
    assert series == 300
    assert [key for key, _ in requests] == [None, None]  # 300 UIDs in two lists of at most 200
    assert [len(chunk) for _, chunk in requests] == [MAX_UIDS_PER_REQUEST, 100]


def test_any_other_staging_gets_one_request_per_series():
    plan = _plan("dicom_scp")
    requests, series = move_requests(plan, _records(series=3, per_series=2))
    assert series == 3 and len(requests) == 3
    assert requests[0] == (("1.2.3", "1.2.3.0"), ["1.2.3.0.0", "1.2.3.0.1"])
    assert plan.database_key == "mosaiq_mosaiq" and plan.names.pool == "dicom_STAGE_AE"
    assert replace(plan, staging=replace(plan.staging, type="orthanc")).stage == plan.stage


def test_the_content_check_says_how_large_its_sample_is():
    from types import SimpleNamespace

    from dicom_backup_dagster.defs.qr_backup import content_verified_description

    def sample(fraction: float) -> str:
        plan = SimpleNamespace(
            alias="ARIA", archive_alias="MAIN", settings=Settings(verification_fraction=fraction)
        )
        return content_verified_description(plan).split("Sample: ")[1]  # type: ignore[arg-type]

    assert sample(0.0) == "one instance per series (verification_fraction 0)."
    assert sample(0.05) == "5% of each series' instances, rounded up (verification_fraction 0.05)."
    assert sample(1.0) == "every instance (verification_fraction 1)."
