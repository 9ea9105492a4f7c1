"""Two sandbox sites on Celery (issue 18): real Redis on loopback (its own database number), two real
workers started with the dagster-celery task module as separate processes, one per site's queue.

One module-scoped setup: a sandbox whose TOML has SANDBOX (ARIA, ...) and SANDBOX_B (MIM_B, on the same
MIM_SIM) with `executor = "celery"`, a filesystem Dagster instance shared by the test (the run
orchestrator) and the workers, which re-import each run's job from `dicom_backup_dagster.sites:<site>`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance, execute_job
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository

from dicom_backup_dagster import sites
from dicom_backup_dagster.defs import BACKEND_ENV_VAR, BROKER_ENV_VAR, BrokerUnreachable
from dicom_backup_dagster.orthanc import OrthancClient
from dicom_backup_dagster.sandbox.processes import ManagedProcess, wait_until
from dicom_backup_dagster.sandbox.sandbox import ENVIRONMENT, SECOND_SITE, Sandbox, SandboxOptions
from tests.conftest import SANDBOX_TEST_DATA

REPO = Path(__file__).resolve().parents[2]
BROKER = "redis://127.0.0.1:6379/13"  # a database of the shared Redis that no other test uses
QUEUES = {ENVIRONMENT: "dicom-backup-sandbox", SECOND_SITE: "dicom-backup-sandbox_b"}
JOBS = {ENVIRONMENT: "ARIA_backup", SECOND_SITE: "MIM_B_backup"}


class Setup:
    def __init__(self, sandbox: Sandbox, home: Path, env: dict[str, str]) -> None:
        self.sandbox, self.home, self.env = sandbox, home, env
        self.instance = DagsterInstance.from_config(str(home))
        self.workers: dict[str, ManagedProcess] = {}

    def worker(self, site: str) -> ManagedProcess:
        argv = [
            *(str(Path(sys.executable).with_name("celery")), "--app", "dagster_celery.app"),
            *("--broker", BROKER, "--result-backend", BROKER, "worker", "--queues", QUEUES[site]),
            *("--hostname", f"{site}@%h", "--concurrency", "1", "--loglevel", "INFO", "--without-gossip"),
            *("--without-mingle", "--without-heartbeat"),
        ]
        process = ManagedProcess(
            f"worker-{site}", argv, self.home / f"worker-{site}.log", env=self.env, cwd=REPO
        )
        process.start()
        self.workers[site] = process
        return process

    def wait_ready(self, site: str) -> None:
        log = self.home / f"worker-{site}.log"
        wait_until(lambda: log.exists() and "ready." in log.read_text(errors="replace"), 60, f"worker {site}")

    def run(self, site: str, day: str, env: dict[str, str] | None = None) -> Any:
        os.environ.update(env or self.env)
        recon = ReconstructableRepository.for_module(
            "dicom_backup_dagster.sites", site, working_directory=str(REPO)
        ).get_reconstructable_job(JOBS[site])
        tags = {"dagster/partition": day}  # one night, as the nightly schedule launches it
        with execute_job(recon, self.instance, tags=tags, raise_on_error=False) as result:
            return result.run_id, result.success

    def events(self, run_id: str, kind: DagsterEventType | None = None) -> list[Any]:
        out = [e for e in self.instance.all_logs(run_id) if e.dagster_event is not None]
        return [e for e in out if kind is None or e.dagster_event.event_type == kind]

    def step_workers(self, run_id: str) -> dict[str, str]:
        """step key -> the Celery worker hostname that executed it (dagster-celery's engine event)."""
        out = {}
        for entry in self.events(run_id, DagsterEventType.ENGINE_EVENT):
            metadata = entry.dagster_event.engine_event_data.metadata
            if "Celery worker" in metadata:
                out[entry.step_key] = metadata["Celery worker"].value
        return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    pytest.importorskip("dagster_celery")
    import redis

    redis.Redis.from_url(BROKER).flushdb()
    root = tmp_path_factory.mktemp("celery_sites")
    options = SandboxOptions(data=SANDBOX_TEST_DATA, second_site=True, executor="celery")
    saved = dict(os.environ)
    with Sandbox(root / "sandbox", options) as sandbox:
        home = root / "dagster_home"
        home.mkdir()
        env = {
            **os.environ,
            **sandbox.env_vars(),
            "DICOM_BACKUP_CONFIG": str(sandbox.config_path),
            "DICOM_BACKUP_STORAGE_DIR": str(root / "storage"),
            BROKER_ENV_VAR: BROKER,
            BACKEND_ENV_VAR: BROKER,
            "DAGSTER_HOME": str(home),
            "PYTHONPATH": str(REPO),
        }
        env.pop("DICOM_BACKUP_ENVIRONMENT", None)  # the code pointer names the site
        s = Setup(sandbox, home, env)
        try:
            for site in QUEUES:
                s.worker(site)
            for site in QUEUES:
                s.wait_ready(site)
            yield s
        finally:
            # Celery's warm shutdown waits for its pool; nothing of a test's is left to finish by now.
            stops = [threading.Thread(target=w.stop, kwargs={"timeout": 2}) for w in s.workers.values()]
            for t in stops:
                t.start()
            for t in stops:
                t.join()
            os.environ.clear()
            os.environ.update(saved)


def _night(sandbox: Sandbox, source: str) -> str:
    """The source's busiest day (YYYY-MM-DD)."""
    assert sandbox.manifest is not None
    d = Counter(r.date for r in sandbox.manifest if r.source == source).most_common(1)[0][0]
    return f"{d[:4]}-{d[4:6]}-{d[6:]}"


def test_a_worker_killed_mid_step_fails_the_run_saying_so(setup: Setup) -> None:
    """SANDBOX_B's inventory hangs on a frozen MIM_SIM; its worker's step process is killed there."""
    mim = setup.sandbox.mim
    assert mim is not None and mim.process is not None and mim.process.pid
    days = _night(setup.sandbox, "MIM")
    outcome: list[Any] = []
    os.kill(mim.process.pid, signal.SIGSTOP)
    try:
        thread = threading.Thread(target=lambda: outcome.append(setup.run(SECOND_SITE, days)), daemon=True)
        thread.start()

        def step_pid() -> int | None:
            for run in setup.instance.get_runs():
                for e in setup.events(run.run_id, DagsterEventType.STEP_START):
                    if e.step_key == "MIM_B__inventory":
                        return e.dagster_event.pid
            return None

        wait_until(lambda: step_pid() is not None, 60, "MIM_B__inventory to start on its worker")
        pid = step_pid()
        assert pid is not None and pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
    finally:
        os.kill(mim.process.pid, signal.SIGCONT)
    thread.join(60)
    run_id, success = outcome[0]
    assert not success
    failure = setup.events(run_id, DagsterEventType.RUN_FAILURE) + setup.events(
        run_id, DagsterEventType.ENGINE_EVENT
    )
    text = " ".join(str(e.dagster_event.message) + str(e.dagster_event.event_specific_data) for e in failure)
    assert "Worker exited prematurely: signal 9 (SIGKILL)" in text, text[:2000]
    assert "MIM_B__inventory" in text
    assert setup.workers[SECOND_SITE].alive  # the worker itself lives on and takes the next run


def test_each_site_runs_on_its_own_worker_and_archives_everything(setup: Setup) -> None:
    sandbox = setup.sandbox
    results: dict[str, Any] = {}
    nights = {ENVIRONMENT: _night(sandbox, "ARIA"), SECOND_SITE: _night(sandbox, "MIM")}
    runs = [
        threading.Thread(target=lambda s=site: results.update({s: setup.run(s, nights[s])}))
        for site in nights
    ]
    for thread in runs:  # both nights at once, each on its site's worker
        thread.start()
    for thread in runs:
        thread.join(120)
    for site, (run_id, success) in results.items():
        assert success, site
        ran_on = setup.step_workers(run_id)
        steps = {e.step_key for e in setup.events(run_id, DagsterEventType.STEP_SUCCESS)}
        assert steps and set(ran_on) == steps, (ran_on, steps)
        assert {h.split("@")[0] for h in ran_on.values()} == {site}, ran_on
        pids = {e.dagster_event.pid for e in setup.events(run_id, DagsterEventType.STEP_START)}
        assert os.getpid() not in pids
        checks = setup.events(run_id, DagsterEventType.ASSET_CHECK_EVALUATION)
        assert checks and all(e.dagster_event.event_specific_data.passed for e in checks)
    # Nothing lost, nothing duplicated (the killed run's day included): main holds exactly the sources'.
    assert sandbox.manifest is not None and sandbox.main is not None
    wanted = {
        r.sop_instance_uid
        for r in sandbox.manifest
        if (r.source, f"{r.date[:4]}-{r.date[4:6]}-{r.date[6:]}")
        in {("ARIA", nights[ENVIRONMENT]), ("MIM", nights[SECOND_SITE])}
    }
    assert len(wanted) > 5
    with OrthancClient(sandbox.main.rest_url, sandbox.main.username, sandbox.main.password) as main:
        on_main = [i.sop_instance_uid for i in main.instances()]
    assert wanted <= set(on_main) and len(on_main) == len(set(on_main))


def test_broker_down_at_launch_fails_in_seconds_naming_it(setup: Setup) -> None:
    down = "redis://:secret@127.0.0.1:1/0"
    # The executor takes the broker URL when the definitions load: forget the loaded ones, ours and
    # Dagster's (ReconstructableJob keeps its last definition, keyed by an equal job, in an lru_cache).
    sites._built.clear()
    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    started = time.monotonic()
    try:
        with pytest.raises(BrokerUnreachable) as error:
            setup.run(
                ENVIRONMENT,
                _night(setup.sandbox, "ARIA"),
                {**setup.env, BROKER_ENV_VAR: down, BACKEND_ENV_VAR: down},
            )
    finally:
        os.environ.update(setup.env)
        sites._built.clear()
    elapsed = time.monotonic() - started
    assert elapsed < 15  # Celery's own retries gave up after ~20 s with "Retry limit exceeded"
    run_id = setup.instance.get_runs(limit=1)[0].run_id
    text = str(error.value)
    assert "redis://:**@127.0.0.1:1/0" in text and "DICOM_BACKUP_CELERY_BROKER" in text
    assert "secret" not in text and "systemctl start redis-server" in text
    assert not setup.events(run_id, DagsterEventType.STEP_START)
