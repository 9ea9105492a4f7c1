"""install -> night -> upgrade -> night -> failed upgrade (switched back) -> rollback -> night, on loopback.

The README's "Running in production" procedure with deploy/release.sh, two releases built from this
repository (this tree as 0.1.0 and a copy bumped to 0.1.1) and a third whose code does not load.
PostgreSQL (127.0.0.1:5432) is the Dagster storage, one database for the whole cycle. The services run
from the units release.sh installed: tests/deploy/fake_systemctl.py starts each unit's own ExecStart line
without systemd. The peers are one sandbox's (Orthanc main and staging, ARIA, MIM, the Mosaiq-shaped
database). A night here is what shows the services work, kept short: connectivity_check and one day of
ARIA's backup (the job with its partition tag, as a backfill would wait for the backfill daemon's 30 s
ticks), launched together over GraphQL against the production webserver. Both releases share this
checkout's virtual environment (`--venv`): each release's own source comes first on the import path
(PYTHONPATH in the units), and building a venv takes about a minute.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dicom_backup_dagster.sandbox.__main__ import SANDBOX_BACKUP_ASSETS
from dicom_backup_dagster.sandbox.night import DagsterGraphQL
from dicom_backup_dagster.sandbox.processes import free_port
from dicom_backup_dagster.sandbox.sandbox import ENVIRONMENT, Sandbox, SandboxOptions
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions
from tests.postgres import PG, throwaway_database

REPO = Path(__file__).resolve().parents[2]
RELEASE_SH = REPO / "deploy" / "release.sh"
SHIM = Path(__file__).with_name("fake_systemctl.py")
REPOSITORY = "__repository__"
SOURCE = "ARIA"  # the source whose backup of one day each night runs
TAGS = {"dicom_backup/launched_by": "release-cycle-test"}
# A healthy start takes 20-40 s on 2 busy cores; the failed upgrade is found by its first probe.
PROBE_TIMEOUT = 90


def copy_release(dest: Path, version: str, broken: bool = False) -> Path:
    """A release source tree: this checkout with another version (and, if broken, code that fails)."""
    shutil.copytree(
        REPO,
        dest,
        ignore=shutil.ignore_patterns(".git", ".venv", ".sandbox", "__pycache__", "*_cache", "*.egg-info"),
    )
    for path, pattern in (
        (dest / "pyproject.toml", r'^version = ".*"'),
        (dest / "dicom_backup_dagster" / "__init__.py", r'^__version__ = ".*"'),
    ):
        key = pattern.split(" ")[0].lstrip("^")
        path.write_text(re.sub(pattern, f'{key} = "{version}"', path.read_text(), count=1, flags=re.M))
    if broken:
        definitions = dest / "dicom_backup_dagster" / "definitions.py"
        definitions.write_text('raise RuntimeError("this release does not load")\n' + definitions.read_text())
    return dest


class Host:
    """The backup host's directories under tmp, and release.sh run against them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix, self.conf = root / "opt", root / "etc"
        self.state, self.logs, self.units = root / "var" / "lib", root / "var" / "log", root / "units"
        self.systemd_state = root / "fake-systemd"
        root.mkdir(parents=True, exist_ok=True)
        self.systemctl = root / "systemctl"
        self.systemctl.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{SHIM}" "$@"\n')
        self.systemctl.chmod(0o755)
        self.web_port, self.exporter_port, self.code_port = free_port(), free_port(), free_port()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PREFIX": str(self.prefix),
            "CONF_DIR": str(self.conf),
            "STATE_DIR": str(self.state),
            "LOG_DIR": str(self.logs),
            "UNIT_DIR": str(self.units),
            "FAKE_SYSTEMD_STATE": str(self.systemd_state),
            "SYSTEMCTL": str(self.systemctl),
            "CREATE_USER": "0",
            "PROBE_TIMEOUT": str(PROBE_TIMEOUT),
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def release(
        self, *args: str, timeout: float = 600, probe_timeout: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if probe_timeout is not None:
            env["PROBE_TIMEOUT"] = str(probe_timeout)
        started = time.monotonic()
        done = subprocess.run(
            ["bash", str(RELEASE_SH), *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        print(
            f"release.sh {' '.join(args[:1])}: exit {done.returncode} in {time.monotonic() - started:.1f} s"
        )
        print(done.stderr)
        return done

    def current(self) -> str:
        return os.readlink(self.prefix / "current")

    def services(self) -> list[str]:
        return sorted(p.name[: -len(".json")] for p in self.systemd_state.glob("*.service.json"))

    def stop_everything(self) -> None:
        units = self.services()
        if units:
            subprocess.run([str(self.systemctl), "stop", *units], env=self.env, timeout=120, check=False)


def write_site_config(host: Host, sandbox: Sandbox) -> None:
    """What the operator writes into /etc/dicom-backup before `release.sh install` (README step 3)."""
    host.conf.mkdir(parents=True)
    shutil.copy(sandbox.config_path, host.conf / "environments.toml")
    main = sandbox.main
    assert main is not None
    common = {
        "DAGSTER_PG_HOST": PG["host"],
        "DAGSTER_PG_PORT": str(PG["port"]),
        "DAGSTER_PG_USER": PG["user"],
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": host.pg_db,  # type: ignore[attr-defined]
        "DICOM_BACKUP_WEBSERVER_PORT": str(host.web_port),
        "DICOM_BACKUP_EXPORTER_PORT": str(host.exporter_port),
        "DICOM_BACKUP_ORTHANC_URL": main.rest_url,
        "DICOM_BACKUP_ORTHANC_NAME": "ORTHANC_MAIN",
        "DICOM_BACKUP_ORTHANC_USERNAME": main.username,
        "DICOM_BACKUP_ORTHANC_PASSWORD": main.password,
    }
    site = {"DICOM_BACKUP_CODE_PORT": str(host.code_port), **sandbox.env_vars()}
    for name, values in (("dicom-backup.env", common), (f"site-{ENVIRONMENT}.env", site)):
        path = host.conf / name
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        path.chmod(0o600)
    workspace = (REPO / "deploy" / "systemd" / "workspace.yaml").read_text()
    workspace = workspace.replace("port: 4266", f"port: {host.code_port}").replace(
        "location_name: UCLA", f"location_name: {ENVIRONMENT}"
    )
    (host.conf / "workspace.yaml").write_text(workspace)


def night(host: Host, sandbox: Sandbox, day: str) -> None:
    """connectivity_check and SOURCE's backup of `day`, launched together; both succeed, every check of
    the backup passes and the archive holds every SOURCE instance of that day."""
    client = DagsterGraphQL(host.url, timeout_s=60, location=ENVIRONMENT)
    launched = [
        client.launch_job("connectivity_check", tags=TAGS),
        client.launch_job(f"{SOURCE}_backup", tags={**TAGS, "dagster/partition": day}),
    ]
    runs = [client.wait_for_run(run_id, timeout_s=300) for run_id in launched]
    for run in runs:
        print(f"night {day}: {run['jobName']} {run['runId']} {run['status']}")
        assert run["status"] == "SUCCESS", run
    checks = client.check_evaluations(launched[1])
    assert checks
    assert all(c["success"] for c in checks), checks
    assert sandbox.manifest is not None and sandbox.main is not None
    uids = [r.sop_instance_uid for r in sandbox.manifest.for_source(SOURCE) if r.date == day.replace("-", "")]
    assert uids
    assert all(sandbox.main.has_instance(uid) for uid in uids)


def canceled_backfill(client: DagsterGraphQL, day: str) -> str:
    """An operator's one-day backfill of SOURCE, canceled at once: a backfill for the history to keep, for
    one backfill daemon tick (every 30 s) to mark canceled rather than two to run and finish it."""
    paths = [[SOURCE, asset] for asset in SANDBOX_BACKUP_ASSETS[SOURCE]]
    backfill_id = client.launch_backfill(paths, [(day, day)], title=f"release cycle {day}", tags=TAGS)
    data = client.query(
        "mutation($id: String!) { cancelPartitionBackfill(backfillId: $id) { __typename } }",
        {"id": backfill_id},
    )
    assert data["cancelPartitionBackfill"]["__typename"] == "CancelBackfillSuccess", data
    return backfill_id


def history(client: DagsterGraphQL) -> dict[str, Any]:
    """What must survive an upgrade and a rollback: runs, backfills, schedule states."""
    data = client.query(
        """query($s: RepositorySelector!) {
             runsOrError { ... on Runs { results { runId status } } }
             partitionBackfillsOrError { ... on PartitionBackfills { results { id status } } }
             schedulesOrError(repositorySelector: $s) { ... on Schedules { results { name
               scheduleState { status } } } } }""",
        {"s": {"repositoryLocationName": ENVIRONMENT, "repositoryName": REPOSITORY}},
    )
    return {
        "runs": {r["runId"]: r["status"] for r in data["runsOrError"]["results"]},
        "backfills": {b["id"]: b["status"] for b in data["partitionBackfillsOrError"]["results"]},
        "schedules": {s["name"]: s["scheduleState"]["status"] for s in data["schedulesOrError"]["results"]},
    }


def assert_kept(earlier: dict[str, Any], later: dict[str, Any]) -> None:
    """Every run and backfill of `earlier` is still there with its status; the schedules' states are."""
    assert earlier["runs"].items() <= later["runs"].items()
    assert earlier["backfills"].items() <= later["backfills"].items()
    assert later["schedules"] == earlier["schedules"]


def start_schedule(client: DagsterGraphQL, name: str) -> None:
    data = client.query(
        """mutation($s: ScheduleSelector!) { startSchedule(scheduleSelector: $s) { __typename
             ... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }""",
        {"s": {"repositoryLocationName": ENVIRONMENT, "repositoryName": REPOSITORY, "scheduleName": name}},
    )
    assert data["startSchedule"]["__typename"] == "ScheduleStateResult", data


def running_release(host: Host, unit: str) -> tuple[str, str]:
    """(PYTHONPATH, dicom_backup_dagster.__version__) as the running unit's process imports it."""
    record = host.systemd_state / f"{unit}.json"
    import json

    info = json.loads(record.read_text())
    environ = Path(f"/proc/{info['pid']}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    version = subprocess.run(
        [info["argv"][0].rsplit("/", 1)[0] + "/python", "-c",
         "import dicom_backup_dagster as d; print(d.__version__)"],
        env=env, capture_output=True, text=True, check=True, cwd=os.readlink(f"/proc/{info['pid']}/cwd"),
    ).stdout.strip()  # fmt: skip
    return env["PYTHONPATH"], version


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_install_upgrade_rollback_keep_history_schedules_and_archive(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    venv = Path(sys.prefix)
    assert (venv / "bin" / "dagster").exists()
    new = copy_release(tmp_path / "src-0.1.1", "0.1.1")
    broken = copy_release(tmp_path / "src-0.1.2", "0.1.2", broken=True)
    data = SyntheticOptions(patients=1, ct_slices=4, fractions=1, cbct_slices=2)
    host = Host(tmp_path / "host")
    code_unit = f"dicom-backup-code@{ENVIRONMENT}.service"
    with (
        throwaway_database("dagster_deploy") as pg_db,
        Sandbox(tmp_path / "sandbox", SandboxOptions(data=data)) as sandbox,
    ):
        host.pg_db = pg_db  # type: ignore[attr-defined]
        write_site_config(host, sandbox)
        assert sandbox.manifest is not None and sandbox.main is not None
        days = Counter(r.date for r in sandbox.manifest.for_source(SOURCE))
        day = dt.datetime.strptime(days.most_common(1)[0][0], "%Y%m%d").date().isoformat()
        timings["sandbox"] = time.monotonic() - t0
        try:
            # 1. install the first release
            t = time.monotonic()
            done = host.release("install", str(REPO), "--venv", str(venv))
            assert done.returncode == 0, done.stdout + done.stderr
            assert host.current() == "releases/0.1.0"
            assert "OK   code location SANDBOX: LOADED" in done.stderr
            for name in ("dicom-backup.env", f"site-{ENVIRONMENT}.env"):
                assert stat.S_IMODE((host.conf / name).stat().st_mode) == 0o600
            assert (host.state / "dagster_home" / "dagster.yaml").resolve() == host.conf / "dagster.yaml"
            assert host.services() == sorted(
                [code_unit, "dicom-backup-daemon.service", "dicom-backup-exporter.service",
                 "dicom-backup-webserver.service"]
            )  # fmt: skip
            assert running_release(host, code_unit) == (f"{host.prefix}/current/src", "0.1.0")
            timings["install"] = time.monotonic() - t

            # 2. a night on the first release; an operator switches a schedule on and cancels a backfill
            t = time.monotonic()
            client = DagsterGraphQL(host.url, timeout_s=60, location=ENVIRONMENT)
            backfill_id = canceled_backfill(client, day)
            night(host, sandbox, day)
            assert client.wait_for_backfill(backfill_id, timeout_s=120)["status"] == "CANCELED"
            before = history(client)
            schedule = sorted(n for n in before["schedules"] if "sweep" in n)[0]
            start_schedule(client, schedule)
            before = history(client)
            assert before["schedules"][schedule] == "RUNNING"
            assert before["runs"]
            assert before["backfills"]
            archived = sandbox.main.count_instances()
            assert archived > 0
            timings["night 1"] = time.monotonic() - t

            # 3. upgrade to 0.1.1 (a dump first, migrate, switch, restart, probes)
            t = time.monotonic()
            done = host.release("upgrade", str(new), "--venv", str(venv))
            assert done.returncode == 0, done.stdout + done.stderr
            assert host.current() == "releases/0.1.1"
            assert os.readlink(host.prefix / "previous") == "releases/0.1.0"
            assert list((host.state / "dumps").glob("pre-upgrade-0.1.0-to-0.1.1-*.dump"))
            assert running_release(host, code_unit)[1] == "0.1.1"
            assert_kept(before, history(client))
            assert sandbox.main.count_instances() == archived
            # The operator changes the configuration for the new release (read at its next restart).
            with open(host.conf / "dicom-backup.env", "a") as f:
                f.write("DICOM_BACKUP_ORTHANC_NAME=ARCHIVE_AFTER_UPGRADE\n")
            timings["upgrade"] = time.monotonic() - t

            t = time.monotonic()
            night(host, sandbox, day)
            after_night_2 = history(client)
            assert_kept(before, after_night_2)
            assert len(after_night_2["runs"]) > len(before["runs"])
            assert sandbox.main.count_instances() == archived
            timings["night 2"] = time.monotonic() - t

            # 4. an upgrade whose code does not load: the first probe fails, 0.1.1 runs again
            t = time.monotonic()
            done = host.release("upgrade", str(broken), "--venv", str(venv), probe_timeout=30)
            assert done.returncode != 0
            assert "FAIL code location SANDBOX" in done.stderr, done.stderr
            assert "a code location failed to load: 0.1.2" in done.stderr, done.stderr
            assert "switching back to 0.1.1" in done.stderr, done.stderr
            assert host.current() == "releases/0.1.1"
            assert os.readlink(host.prefix / "previous") == "releases/0.1.0"
            assert running_release(host, code_unit)[1] == "0.1.1"
            assert_kept(after_night_2, history(client))
            assert sandbox.main.count_instances() == archived
            timings["failed upgrade"] = time.monotonic() - t

            # 5. roll back to 0.1.0: code and configuration
            t = time.monotonic()
            done = host.release("rollback")
            assert done.returncode == 0, done.stdout + done.stderr
            assert host.current() == "releases/0.1.0"
            assert "ARCHIVE_AFTER_UPGRADE" not in (host.conf / "dicom-backup.env").read_text()
            assert (
                "ARCHIVE_AFTER_UPGRADE"
                in (host.prefix / "releases" / "0.1.1" / "config" / "dicom-backup.env").read_text()
            )
            assert running_release(host, code_unit)[1] == "0.1.0"
            assert_kept(after_night_2, history(client))
            assert sandbox.main.count_instances() == archived
            timings["rollback"] = time.monotonic() - t

            t = time.monotonic()
            night(host, sandbox, day)
            after_night_3 = history(client)
            assert_kept(after_night_2, after_night_3)
            assert len(after_night_3["runs"]) > len(after_night_2["runs"])
            assert sandbox.main.count_instances() == archived
            timings["night 3"] = time.monotonic() - t
        finally:
            host.stop_everything()
            for log in sorted(host.systemd_state.glob("*.log")):
                print(
                    f"--- {log.name} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                )
    timings["total"] = time.monotonic() - t0
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
