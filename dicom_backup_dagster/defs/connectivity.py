"""`connectivity_check`: C-ECHO every DICOM peer of the site and open every Mosaiq database.

One log line per peer, one `peers/<alias>` asset observation per peer (so each peer's page in the UI
plots its latency over time), and a failed run naming every peer that is down.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetObservation,
    AssetSpec,
    DefaultScheduleStatus,
    Definitions,
    Failure,
    MetadataValue,
    OpExecutionContext,
    ScheduleDefinition,
    job,
    op,
)

from dicom_backup_dagster.config import EnvironmentConfig, MosaiqSource
from dicom_backup_dagster.defs.keys import CONNECTIVITY_JOB, KIND_TAG, peer_asset_key
from dicom_backup_dagster.defs.resources import DicomNetwork, MosaiqDatabase, mosaiq_resource_key
from dicom_backup_dagster.dicom import stats
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.mosaiq.connection import MosaiqConnectionError

PEER_GROUP = "connectivity"


@dataclass(frozen=True)
class PeerResult:
    alias: str
    check: str  # what was tried, e.g. "C-ECHO" or "ODBC connect"
    address: str  # AE@host:port or database@server; never credentials
    seconds: float | None  # None when the peer is down
    problem: str | None = None

    @property
    def up(self) -> bool:
        return self.problem is None

    def log_line(self) -> str:
        if self.up:
            return f"UP    {self.alias}: {self.check} {self.address} in {1000 * (self.seconds or 0):.1f} ms"
        return f"DOWN  {self.alias}: {self.check} {self.address} failed: {self.problem}"


def _timed(alias: str, check: str, address: str, attempt: Callable[[], object]) -> PeerResult:
    start = time.perf_counter()
    try:
        attempt()
    except (DicomError, MosaiqConnectionError) as error:
        return PeerResult(alias, check, address, None, str(error))
    return PeerResult(alias, check, address, time.perf_counter() - start)


def check_dicom_peer(dicom: DicomNetwork, alias: str, peer: Peer) -> PeerResult:
    return _timed(alias, "C-ECHO", str(peer), lambda: dicom.echo(peer))


def check_mosaiq(database: MosaiqDatabase) -> PeerResult:
    def open_and_query() -> None:
        conn = database.connect()
        try:
            conn.cursor().execute("SELECT 1").fetchone()
        finally:
            conn.close()

    address = f"database {database.database} on {database.server}" + (
        f":{database.port}" if database.port else ""
    )
    return _timed(database.alias, "ODBC connect", address, open_and_query)


def build_connectivity_defs(env: EnvironmentConfig) -> Definitions:
    dicom_peers = env.peers()
    mosaiq_keys = {
        source.alias: mosaiq_resource_key(source.alias)
        for source in env.sources.values()
        if isinstance(source, MosaiqSource)
    }
    every_alias = [*dicom_peers, *mosaiq_keys]

    @op(
        name="check_connectivity",
        description="C-ECHO every DICOM peer and open every Mosaiq database of this site.",
        required_resource_keys={"dicom", *mosaiq_keys.values()},
    )
    def check_connectivity(context: OpExecutionContext) -> dict[str, bool]:
        with stats.collecting() as dimse:
            results = [check_dicom_peer(context.resources.dicom, a, p) for a, p in dicom_peers.items()]
        results += [check_mosaiq(getattr(context.resources, key)) for key in mosaiq_keys.values()]
        metadata: dict[str, Any] = {}
        for result in results:
            (context.log.info if result.up else context.log.error)(result.log_line())
            peer_metadata: dict[str, Any] = {
                "up": int(result.up),
                "latency_ms": MetadataValue.float(round(1000 * result.seconds, 3))
                if result.seconds is not None
                else MetadataValue.null(),
                "address": result.address,
                "check": result.check,
            }
            if result.alias in dicom_peers:  # that peer's C-ECHO (or failed association) for the exporter
                peer_metadata["dimse"] = MetadataValue.json(dimse.to_metadata(dicom_peers[result.alias].aet))
            context.log_event(
                AssetObservation(asset_key=peer_asset_key(result.alias), metadata=peer_metadata)
            )
            metadata[f"{result.alias} up"] = int(result.up)
            if result.seconds is not None:
                metadata[f"{result.alias} latency ms"] = round(1000 * result.seconds, 3)
        down = [r for r in results if not r.up]
        metadata["peers checked"] = len(results)
        metadata["peers down"] = len(down)
        if down:
            raise Failure(
                description=f"{len(down)} of {len(results)} peers unreachable: "
                + "; ".join(r.log_line().removeprefix("DOWN  ") for r in down),
                metadata=metadata,
                allow_retries=False,
            )
        context.add_output_metadata(metadata)
        return {r.alias: r.up for r in results}

    @job(
        name=CONNECTIVITY_JOB,
        description=(
            "Checks that this site's DICOM peers answer C-ECHO and that its Mosaiq databases open. "
            "Fails naming every peer that is down."
        ),
        tags={KIND_TAG: "connectivity"},
    )
    def connectivity_check() -> None:
        check_connectivity()

    schedule = ScheduleDefinition(
        name=f"{CONNECTIVITY_JOB}_schedule",
        job=connectivity_check,
        cron_schedule=env.settings.connectivity_schedule,
        execution_timezone=env.settings.timezone,
        default_status=DefaultScheduleStatus.STOPPED,
        description="Runs connectivity_check (every 15 minutes by default; settings.connectivity_schedule).",
    )
    peer_specs = [
        AssetSpec(
            key=peer_asset_key(alias),
            group_name=PEER_GROUP,
            description=f"Reachability of {alias}, observed by connectivity_check.",
        )
        for alias in every_alias
    ]
    return Definitions(assets=peer_specs, jobs=[connectivity_check], schedules=[schedule])
