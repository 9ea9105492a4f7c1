"""The names the UI, the alerts, the exporter and the tests rely on: run tags, asset keys, job, schedule
and check names, and how a step key names its asset. Every other defs module takes them from here."""

from collections.abc import Iterable
from dataclasses import dataclass

from dagster import AssetKey

# Dagster's own run tags ("dagster/backfill", "dagster/partition", ...). Dagster 1.13 exports no public
# names for them (they are documented only as tag strings); this is the one import of them from its
# private module.
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    BACKFILL_ID_TAG,
    PARTITION_NAME_TAG,
    SCHEDULE_NAME_TAG,
    SENSOR_NAME_TAG,
    WILL_RETRY_TAG,
)

from dicom_backup_dagster.logs import SOURCE_TAG

__all__ = [
    "ARCHIVED",
    "ASSET_PARTITION_RANGE_END_TAG",
    "ASSET_PARTITION_RANGE_START_TAG",
    "BACKFILL_ID_TAG",
    "CONNECTIVITY_JOB",
    "IGNORE_BULK_HOURS_TAG",
    "KIND_TAG",
    "NOTHING_MISSED",
    "PARTITION_NAME_TAG",
    "PAUSED_TAG",
    "PEERS_PREFIX",
    "SCHEDULE_NAME_TAG",
    "SENSOR_NAME_TAG",
    "SOURCE_TAG",
    "SWEEP_COVERAGE",
    "TEST_ALERT_JOB",
    "WILL_RETRY_TAG",
    "SourceNames",
    "archived_source",
    "nightly_schedule_name",
    "peer_alias",
    "peer_asset_key",
    "pool_id",
    "source_of_step",
    "sweep_job_name",
    "sweep_key",
]

# Our run tags
KIND_TAG = "dicom_backup/kind"  # on the jobs that back up no source (connectivity, notifications, cleanup)
IGNORE_BULK_HOURS_TAG = "dicom_backup/ignore_bulk_hours"  # "true": run now whatever bulk_hours says
PAUSED_TAG = "dicom_backup/bulk_hours"  # "paused until ..." / "resumed ..." on a run waiting for its window

# Jobs and checks that are not per source
CONNECTIVITY_JOB = "connectivity_check"
TEST_ALERT_JOB = "send_test_alert"
NOTHING_MISSED = "nothing_missed"  # sweep check: the sweep found nothing the nightly runs had missed
SWEEP_COVERAGE = "sweep_coverage"  # sweep check: every study of the window reconciled in time

ARCHIVED = "archived"  # the last asset of every source: `<source>/archived`
PEERS_PREFIX = "peers"  # connectivity_check observes `peers/<alias>`


def peer_asset_key(alias: str) -> AssetKey:
    return AssetKey([PEERS_PREFIX, alias])


def peer_alias(key: AssetKey | None) -> str | None:
    """The peer alias of a `peers/<alias>` key, else None."""
    if key is None or len(key.path) != 2 or key.path[0] != PEERS_PREFIX:
        return None
    return key.path[1]


def site_key(key: AssetKey, site: str, *, multi_site: bool) -> AssetKey:
    """`key`, or `key/<site>` when several sites share the instance: for the assets whose key is not
    a source alias (summary, alert history, restore drill; docs/decisions/multi-site.md)."""
    return AssetKey([*key.path, site]) if multi_site else key


def pool_id(aet: str, host: str, port: int, *, multi_site: bool = False) -> str:
    """What names a source's pool (`dicom_<pool_id>`): the AE title alone when the file has one site (the
    pool names operators have set limits for), `AET@host:port` when several sites share the instance, so
    two sites' sources on one remote AE share its pool and two AEs of one title on two hosts do not."""
    return f"{aet}@{host}:{port}" if multi_site else aet


def nightly_schedule_name(job_name: str) -> str:
    """The nightly schedule of a source's backup job (defs/hours.py tells nightly runs by it)."""
    return f"{job_name}_schedule"


def sweep_job_name(alias: str) -> str:
    return f"{alias}_reconciliation_sweep"


def sweep_key(alias: str) -> AssetKey:
    return AssetKey([alias, "reconciled"])


@dataclass(frozen=True)
class SourceNames:
    """The Dagster names every backup source has, derived from its alias in one place; `pool_aet` is the
    AE title whose associations the source's steps hold (the source itself, or a Mosaiq source's staging)."""

    alias: str
    pool_aet: str = ""

    def key(self, name: str) -> AssetKey:
        return AssetKey([self.alias, name])

    @property
    def archived(self) -> AssetKey:
        return self.key(ARCHIVED)

    @property
    def inventory(self) -> AssetKey:  # Q/R sources
        return self.key("inventory")

    @property
    def deliveries(self) -> AssetKey:  # Mosaiq sources: deliveries -> rt_records -> staged -> archived
        return self.key("deliveries")

    @property
    def rt_records(self) -> AssetKey:
        return self.key("rt_records")

    @property
    def staged(self) -> AssetKey:
        return self.key("staged")

    @property
    def reconciled(self) -> AssetKey:  # the sweep of a Q/R source
        return sweep_key(self.alias)

    @property
    def on_demand(self) -> AssetKey:  # a Q/R source's on-demand backup of given studies
        return self.key("on_demand")

    @property
    def job(self) -> str:
        return f"{self.alias}_backup"

    @property
    def studies_job(self) -> str:
        return f"{self.alias}_backup_studies"

    @property
    def schedule(self) -> str:
        return nightly_schedule_name(self.job)

    @property
    def sweep_job(self) -> str:
        return sweep_job_name(self.alias)

    @property
    def sweep_schedule(self) -> str:
        return f"{self.sweep_job}_schedule"

    @property
    def pool(self) -> str:
        return f"dicom_{self.pool_aet}"

    @property
    def group(self) -> str:
        return f"{self.alias.lower()}_backup"

    @property
    def tags(self) -> dict[str, str]:
        """The run tags of the source's jobs."""
        return {SOURCE_TAG: self.alias}


def source_of_step(step_key: str | None, sources: Iterable[str]) -> str | None:
    """The source whose asset or check a step executes, if it is one of `sources`. Dagster names an asset
    step after the asset key joined by "__" (ARIA/archived -> ARIA__archived) and a check step after its
    asset plus the check name (ARIA__archived_complete_in_archive): the source is the first part."""
    if not step_key:
        return None
    head = step_key.split("__", 1)[0]
    return head if head in set(sources) else None


def archived_source(key: AssetKey | None, sources: Iterable[str]) -> str | None:
    """The source of a `<source>/archived` key, if it is one of `sources`."""
    if key is None or len(key.path) != 2 or key.path[1] != ARCHIVED or key.path[0] not in set(sources):
        return None
    return key.path[0]
