"""Daemon heartbeats as a running dagster-daemon writes them (every 30 s), for the probe and exporter tests.

Dagster 1.13 has no public way to write a heartbeat: `DaemonHeartbeat` is only in its private
`dagster._daemon` package, imported here and nowhere else.
"""

from dagster import DagsterInstance
from dagster._daemon.types import DaemonHeartbeat


def beat(instance: DagsterInstance, daemon_type: str, timestamp: float, daemon_id: str) -> None:
    instance.add_daemon_heartbeat(
        DaemonHeartbeat(timestamp=timestamp, daemon_type=daemon_type, daemon_id=daemon_id, errors=[])
    )
