"""defs/keys.py: the names every defs module, the UI and the alerts share."""

import dagster as dg

from dicom_backup_dagster.defs import keys


def test_source_names_derive_every_name_from_the_alias():
    names = keys.SourceNames("ARIA", "ARIA_SIM")
    assert names.inventory == dg.AssetKey(["ARIA", "inventory"])
    assert names.archived == dg.AssetKey(["ARIA", "archived"])
    assert names.reconciled == keys.sweep_key("ARIA") == dg.AssetKey(["ARIA", "reconciled"])
    assert (names.job, names.schedule) == ("ARIA_backup", "ARIA_backup_schedule")
    assert (names.sweep_job, names.sweep_schedule) == (
        "ARIA_reconciliation_sweep",
        "ARIA_reconciliation_sweep_schedule",
    )
    assert (names.pool, names.group) == ("dicom_ARIA_SIM", "aria_backup")
    assert names.tags == {"dicom_backup/source": "ARIA"}


def test_steps_name_their_source():
    sources = {"ARIA", "MIM"}
    assert keys.source_of_step("ARIA__archived", sources) == "ARIA"
    assert keys.source_of_step("MIM__archived_complete_in_archive", sources) == "MIM"
    assert keys.source_of_step("check_connectivity", sources) is None
    assert keys.source_of_step("MOSAIQ__staged", sources) is None
    assert keys.source_of_step(None, sources) is None


def test_asset_keys_name_their_source_or_peer():
    assert keys.archived_source(dg.AssetKey(["MIM", "archived"]), {"MIM"}) == "MIM"
    assert keys.archived_source(dg.AssetKey(["MIM", "inventory"]), {"MIM"}) is None
    assert keys.archived_source(dg.AssetKey(["X", "archived"]), {"MIM"}) is None
    assert keys.peer_alias(keys.peer_asset_key("ORTHANC_MAIN")) == "ORTHANC_MAIN"
    assert keys.peer_alias(dg.AssetKey(["ARIA", "archived"])) is None


def test_dagster_system_tags_keep_their_values():
    # The UI, the backfill daemon and the exporter read these strings.
    assert keys.BACKFILL_ID_TAG == "dagster/backfill"
    assert keys.PARTITION_NAME_TAG == "dagster/partition"
    assert keys.SCHEDULE_NAME_TAG == "dagster/schedule_name"
    assert keys.WILL_RETRY_TAG == "dagster/will_retry"
