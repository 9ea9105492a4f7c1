"""A small monitored night on the shared sandbox, recorded in one persistent Dagster instance.

`monitored_night` runs, against the real sandbox peers and with the repository's dagster.yaml
`python_logs` section (JSON logs): connectivity_check (all peers up), the ARIA, MIM and MOSAIQ backups of
one day each, connectivity_check again with the MIM simulator stopped (MIM down), and an ARIA backup with
ARIA stopped (a failed run with failed C-FINDs). The exporter tests then compare what the exporter serves
with what Dagster stored.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from prometheus_client import generate_latest

from dicom_backup_dagster.config import load_config
from dicom_backup_dagster.defs.connectivity import build_connectivity_defs
from dicom_backup_dagster.defs.mosaiq_backup import build_mosaiq_backup_defs
from dicom_backup_dagster.defs.qr_backup import build_qr_backup_defs
from dicom_backup_dagster.defs.resources import BackupStorage, build_resources
from dicom_backup_dagster.monitoring.exporter import DagsterStateCollector, build_registry
from dicom_backup_dagster.monitoring.orthanc import OrthancTarget
from dicom_backup_dagster.sandbox.sandbox import ENVIRONMENT, Sandbox
from tests.monitoring.daemon import beat

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")


@dataclass
class Night:
    instance: dg.DagsterInstance
    results: dict[str, Any]  # name -> ExecuteInProcessResult
    log_file: Path
    days: dict[str, dt.date]
    orthanc: OrthancTarget  # the sandbox's main archive, REST with credentials
    heartbeat: float  # the SCHEDULER heartbeat recorded after the runs


def _first_day(sandbox: Sandbox, source: str) -> dt.date:
    first = min(r.date for r in sandbox.manifest.for_source(source))
    return first if isinstance(first, dt.date) else dt.datetime.strptime(str(first), "%Y%m%d").date()


@pytest.fixture(scope="session")
def monitored_night(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Night]:
    home = tmp_path_factory.mktemp("monitored_home")
    log_file = home / "logs" / "dicom_backup.jsonl"
    python_logs = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())["python_logs"]
    from tests.defs.test_mosaiq_backup import DAY as MOSAIQ_DAY

    days = {"ARIA": _first_day(sandbox, "ARIA"), "MIM": _first_day(sandbox, "MIM"), "MOSAIQ": MOSAIQ_DAY}
    with dg.instance_for_test(temp_dir=str(home), overrides={"python_logs": python_logs}) as instance:
        results: dict[str, Any] = {}
        # Environment only while the runs execute: other tests of the session must not see it.
        with pytest.MonkeyPatch.context() as mp:
            for name, value in sandbox.env_vars().items():
                mp.setenv(name, value)
            mp.setenv("DICOM_BACKUP_LOG_FILE", str(log_file))
            env = load_config(sandbox.config_path, ENVIRONMENT).environment
            storage = BackupStorage(base_dir=str(home / "backup_storage"))
            # The production definitions minus the step retry policy (30 s+ backoff): a failed run fails
            # at once.
            defs = dg.Definitions.merge(
                dg.Definitions(
                    resources=build_resources(env, storage=storage), executor=dg.in_process_executor
                ),
                build_connectivity_defs(env),
                build_qr_backup_defs(env, retry_policy=None),
                build_mosaiq_backup_defs(env, retry_policy=None),
            )

            def run(name: str, job: str, partition: dt.date | None = None) -> None:
                results[name] = defs.resolve_job_def(job).execute_in_process(
                    instance=instance,
                    partition_key=partition.isoformat() if partition else None,
                    raise_on_error=False,
                )

            run("connectivity_up", "connectivity_check")
            for source in ("ARIA", "MIM", "MOSAIQ"):
                run(f"{source}_backup", f"{source}_backup", days[source])
            with sandbox.peer_stopped("MIM"):
                run("connectivity_mim_down", "connectivity_check")
            with sandbox.peer_stopped("ARIA"):
                run("ARIA_down", "ARIA_backup", days["ARIA"])
            main = env.main_target
            orthanc = OrthancTarget(
                name=main.alias,
                url=str(main.rest_url),
                username=main.rest_username,
                password=main.rest_password,
            )
        # A daemon heartbeat as dagster-daemon writes it (the daemon itself is not started here).
        heartbeat = time.time()
        beat(instance, "SCHEDULER", heartbeat, "test")
        yield Night(instance, results, log_file, days, orthanc, heartbeat)


@pytest.fixture(scope="session")
def exposition(monitored_night: Night) -> str:
    """One refresh of the exporter over the monitored night, with the sandbox's main Orthanc."""
    collector = DagsterStateCollector(lambda: monitored_night.instance, orthanc=monitored_night.orthanc)
    assert collector.refresh(), collector.last_error
    return generate_latest(build_registry(collector)).decode()
