"""The whole sandbox site: Orthanc main + staging, ARIA (dcmqrscp), MIM (pynetdicom), a Mosaiq-shaped DB.

Sandbox(root).start() generates (or reuses) the synthetic data set, starts every peer on free loopback
ports with each other registered, builds the Mosaiq SQLite database, and writes <root>/environments.toml in
the shape of config/environments.example.toml (environment "SANDBOX"). Passwords are generated per run;
the TOML only names their environment variables, whose values come from Sandbox.env_vars() (and, for
shells, from <root>/sandbox.env, mode 0600).

Who may talk to whom (Orthanc refuses every AE it does not list in DicomModalities,
docs/decisions/orthanc.md):
- ORTHANC_MAIN lists the script AE, ORTHANC_STAGE, ARIA_SIM and MIM_SIM: they store into it (C-MOVE
  sub-operations from the sources and from staging) and the script queries/retrieves from it.
- ORTHANC_STAGE lists the script AE (C-STORE of RT records, C-MOVE to main) and ORTHANC_MAIN (destination).
- ARIA_SIM and MIM_SIM can C-MOVE to ORTHANC_MAIN, ORTHANC_STAGE and the script AE.
- STANDBY_SIM (a pynetdicom Q/R + Storage SCP, empty at start) is the site's standby system: the restore
  target STANDBY_SIM (ORTHANC_MAIN lists it as a C-MOVE destination) and the restore drill's scratch AE.

Layout: <root>/cache/<options key>/ (generated data, reused across starts), <root>/run/ (fresh per start:
peer configs, storage, logs, mosaiq.sqlite), <root>/state.json (PIDs and ports, for `sandbox down`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.sandbox.aria import MAX_STUDIES, AriaSimulator
from dicom_backup_dagster.sandbox.mim import MimSimulator
from dicom_backup_dagster.sandbox.mosaiq_db import MosaiqOptions, create_mosaiq_db
from dicom_backup_dagster.sandbox.orthanc import OrthancServer
from dicom_backup_dagster.sandbox.processes import ManagedProcess, SandboxError, free_port
from dicom_backup_dagster.sandbox.synthetic import Manifest, SyntheticOptions, generate, patients

ENVIRONMENT = "SANDBOX"
MAIN_AET, STAGE_AET, ARIA_AET, MIM_AET = "ORTHANC_MAIN", "ORTHANC_STAGE", "ARIA_SIM", "MIM_SIM"
STANDBY_ALIAS = STANDBY_AET = "STANDBY_SIM"  # alias = AE title, as for ORTHANC_MAIN
ORTHANC_PASSWORD_ENV = "SANDBOX_ORTHANC_PASSWORD"
STAGE_PASSWORD_ENV = "SANDBOX_ORTHANC_STAGE_PASSWORD"
MOSAIQ_PASSWORD_ENV = "SANDBOX_MOSAIQ_DB_PASSWORD"
SLACK_WEBHOOK_ENV = "SANDBOX_SLACK_WEBHOOK_URL"
PAGERDUTY_KEY_ENV = "SANDBOX_PAGERDUTY_ROUTING_KEY"
STATE_FILE = "state.json"
DCMQRSCP_MAX_INSTANCES = 5000
DESCRIPTION = "Local sandbox: Orthanc main + staging, ARIA/MIM simulators, Mosaiq-shaped SQLite"


@dataclass(frozen=True)
class SandboxOptions:
    data: SyntheticOptions = field(default_factory=SyntheticOptions)
    mosaiq: MosaiqOptions = field(default_factory=MosaiqOptions)
    script_aet: str = "DICOM_BACKUP"
    orthanc_username: str = "backup"
    timezone: str = "America/New_York"
    mim_transfer: str = "c-get"  # how the backup retrieves from MIM (the example site's choice)
    # Regenerated RT records reuse their UIDs on staging: without OverwriteInstances Orthanc keeps the old
    # copy and answers Success (docs/decisions/orthanc.md).
    staging_overwrites: bool = True
    cache_dir: Path | None = None  # default <root>/cache; share it between roots to skip regeneration
    # ARIA_SIM implementation: "dcmqrscp" (strict, like a real PACS; slow to index beyond a few thousand
    # files and limited to 500 studies), "pynetdicom" (the MIM simulator with dcmqrscp-like minimal C-FIND
    # responses; for benchmark-sized data) or "auto" (dcmqrscp when the ARIA share fits).
    aria_backend: str = "auto"
    # Loopback Slack / PagerDuty / SMTP sinks (sandbox/sinks.py) as the site's notification channels, so
    # that alerts can be seen and tried; the CLI turns them on, tests that bring their own channels don't.
    alert_sinks: bool = False
    dagster_ui_url: str | None = None  # run links in the alerts (the night's UI, when its port is known)
    # settings.first_day = the first day with data (the UI then shows no "missing" days before it); off for
    # tests that back up days before the synthetic data.
    partitions_from_data: bool = False
    # A second site SANDBOX_B in the same file (one Dagster instance, one code location per site,
    # docs/decisions/multi-site.md): its source MIM_B is the same MIM_SIM (a remote AE two sites share,
    # so they share its pool) and its archive MAIN_B the same main Orthanc.
    second_site: bool = False
    executor: str = "in_process"  # settings.executor of every site ("celery": steps on Celery workers)


SECOND_SITE = "SANDBOX_B"


@dataclass
class _Ports:
    main_dicom: int
    main_http: int
    stage_dicom: int
    stage_http: int
    aria: int
    mim: int
    script: int
    sinks_http: int
    sinks_smtp: int
    standby: int

    @classmethod
    def allocate(cls) -> _Ports:
        return cls(*(free_port() for _ in range(10)))


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string literal is a valid TOML basic string


class Sandbox:
    """All sandbox peers. Use as a context manager, or start()/stop()."""

    def __init__(self, root_dir: str | os.PathLike[str], options: SandboxOptions | None = None) -> None:
        self.root = Path(root_dir).resolve()
        self.options = options or SandboxOptions()
        self.cache_dir = Path(self.options.cache_dir or self.root / "cache").resolve()
        self.run_dir = self.root / "run"
        self.config_path = self.root / "environments.toml"
        self.env_file = self.root / "sandbox.env"
        self.state_path = self.root / STATE_FILE
        self.ports: _Ports | None = None
        self.passwords: dict[str, str] = {}
        self.main: OrthancServer | None = None
        self.stage: OrthancServer | None = None
        self.aria: AriaSimulator | MimSimulator | None = None
        self.aria_backend: str | None = None
        self.mim: MimSimulator | None = None
        self.standby: MimSimulator | None = None
        self.manifest: Manifest | None = None
        self.mosaiq_path = self.run_dir / "mosaiq" / "mosaiq.sqlite"
        self.mosaiq_counts: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.start_seconds: float | None = None
        self.tracked: dict[str, ManagedProcess] = {}  # started beside the peers (the Dagster UI of a night)
        self.tracked_ports: dict[str, int] = {}
        self.alerts_dir = self.root / "alerts"  # what the loopback notification sinks received

    def track(self, name: str, process: ManagedProcess, port: int | None = None) -> None:
        """Record a process in state.json so that `sandbox down` stops it too (by PID, then its group)."""
        self.tracked[name] = process
        if port is not None:
            self.tracked_ports[name] = port
        self._write_state(running=True)

    # --- public view --------------------------------------------------------------------------------
    @property
    def dates(self) -> list[dt.date]:
        """Every date with sandbox data (planning and treatment days), sorted."""
        from dicom_backup_dagster.sandbox.synthetic import all_dates

        return all_dates(self.options.data)

    @property
    def standby_peer(self) -> Peer:
        """The standby system: restore target STANDBY_SIM and the restore drill's scratch AE."""
        self._require_ports()
        assert self.ports is not None
        return Peer(STANDBY_AET, "127.0.0.1", self.ports.standby)

    @property
    def script_peer(self) -> Peer:
        self._require_ports()
        assert self.ports is not None
        return Peer(self.options.script_aet, "127.0.0.1", self.ports.script)

    def peers(self) -> dict[str, Peer]:
        """Config alias -> Peer for every DICOM peer of the sandbox."""
        self._require_ports()
        p = self.ports
        assert p is not None
        return {
            "ARIA": Peer(ARIA_AET, "127.0.0.1", p.aria),
            "MIM": Peer(MIM_AET, "127.0.0.1", p.mim),
            "ORTHANC_MAIN": Peer(MAIN_AET, "127.0.0.1", p.main_dicom),
            "ORTHANC_STAGE": Peer(STAGE_AET, "127.0.0.1", p.stage_dicom),
        }

    def env_vars(self) -> dict[str, str]:
        """The secret environment variables the TOML names (values generated per run)."""
        out = dict(self.passwords)
        if self.options.alert_sinks and self.ports is not None:
            out[SLACK_WEBHOOK_ENV] = f"http://127.0.0.1:{self.ports.sinks_http}/slack"
            out[PAGERDUTY_KEY_ENV] = "sandbox-routing-key"
        return out

    def _require_ports(self) -> None:
        if self.ports is None:
            raise SandboxError("the sandbox has not been started")

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self._refuse_if_running()
        for attempt in range(1, 4):
            try:
                self._start()
                break
            except BaseException as exc:
                self.stop()
                # free_port() cannot reserve a port: another process may bind it first. Try new ports.
                if attempt < 3 and isinstance(exc, SandboxError) and "already in use" in str(exc):
                    continue
                raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _refuse_if_running(self) -> None:
        from dicom_backup_dagster.sandbox.processes import pid_alive

        state = read_state(self.root)
        if state and state.get("running"):
            alive = [name for name, p in state.get("processes", {}).items() if pid_alive(int(p["pid"]))]
            if alive:
                raise SandboxError(
                    f"a sandbox is already running in {self.root} ({', '.join(alive)}); "
                    f"stop it with `python -m dicom_backup_dagster.sandbox down --root {self.root}`"
                )

    def _timed(self, name: str, fn: Callable[[], Any]) -> Any:
        t = time.monotonic()
        try:
            return fn()
        finally:
            self.timings[name] = round(time.monotonic() - t, 3)

    def _start(self) -> None:
        o = self.options
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        self.ports = p = _Ports.allocate()
        self.passwords = {
            ORTHANC_PASSWORD_ENV: secrets.token_urlsafe(18),
            STAGE_PASSWORD_ENV: secrets.token_urlsafe(18),
            MOSAIQ_PASSWORD_ENV: secrets.token_urlsafe(18),
        }
        data_dir = self.cache_dir / o.data.key()
        self.manifest = manifest = self._timed("generate_data", lambda: generate(data_dir, o.data))
        peers = self.peers()
        script = self.script_peer
        main_peer, stage_peer = peers["ORTHANC_MAIN"], peers["ORTHANC_STAGE"]
        destinations = {"orthanc_main": main_peer, "orthanc_stage": stage_peer, "script": script}
        self.main = OrthancServer(
            self.run_dir / "orthanc_main",
            MAIN_AET,
            p.main_dicom,
            p.main_http,
            o.orthanc_username,
            self.passwords[ORTHANC_PASSWORD_ENV],
            {"script": script, "stage": stage_peer, "aria": peers["ARIA"], "mim": peers["MIM"],
             "standby": self.standby_peer},
        )  # fmt: skip
        self.stage = OrthancServer(
            self.run_dir / "orthanc_stage",
            STAGE_AET,
            p.stage_dicom,
            p.stage_http,
            o.orthanc_username,
            self.passwords[STAGE_PASSWORD_ENV],
            {"script": script, "main": main_peer},
            overwrite_instances=o.staging_overwrites,
        )
        self.aria_backend = self._choose_aria_backend(manifest)
        if self.aria_backend == "dcmqrscp":
            self.aria = AriaSimulator(self.run_dir / "aria", ARIA_AET, p.aria, destinations)
        else:
            self.aria = MimSimulator(
                self.run_dir / "aria", ARIA_AET, p.aria, manifest.source_dir("ARIA"), destinations,
                minimal_responses=True,
            )  # fmt: skip
        self.mim = MimSimulator(
            self.run_dir / "mim", MIM_AET, p.mim, manifest.source_dir("MIM"), destinations,
            relational=True,  # like MIM: the nightly run then finds late series by SeriesDate
        )  # fmt: skip
        standby_dir = self.run_dir / "standby"
        self.standby = MimSimulator(
            standby_dir, STANDBY_AET, p.standby, standby_dir / "data", relational=True
        )

        def aria() -> None:
            sim = self.aria
            if isinstance(sim, AriaSimulator):
                sim.reset()
                index_cache = (
                    self.cache_dir
                    / f"aria-index-{hashlib.sha256(str(sim.db_dir).encode()).hexdigest()[:12]}.dat"
                )
                files = (r.path for r in manifest.for_source("ARIA"))
                self._timed("aria_index", lambda: sim.add_files(files, index_cache=index_cache))
            self._timed("aria_start", sim.start)  # type: ignore[union-attr]

        def mosaiq() -> None:
            self.mosaiq_counts = self._timed("mosaiq_db", self._build_mosaiq)

        if o.alert_sinks:
            shutil.rmtree(self.alerts_dir, ignore_errors=True)
            sinks = ManagedProcess(
                "ALERT_SINKS",
                [sys.executable, "-m", "dicom_backup_dagster.sandbox.sinks", str(self.alerts_dir),
                 str(p.sinks_http), str(p.sinks_smtp)],
                self.run_dir / "alert_sinks.log",
            )  # fmt: skip
            self.tracked["ALERT_SINKS"] = sinks.start()

        jobs = {
            "orthanc_main": lambda: self._timed("orthanc_main", self.main.start),  # type: ignore[union-attr]
            "orthanc_stage": lambda: self._timed("orthanc_stage", self.stage.start),  # type: ignore[union-attr]
            "mim": lambda: self._timed("mim", self.mim.start),  # type: ignore[union-attr]
            "standby": lambda: self._timed("standby", self.standby.start),  # type: ignore[union-attr]
            "aria": aria,
            "mosaiq": mosaiq,
        }
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = {name: pool.submit(fn) for name, fn in jobs.items()}
            errors = []
            for name, fut in futures.items():
                exc = fut.exception()
                if exc is not None:
                    errors.append(f"{name}: {exc}")
            if errors:
                raise SandboxError("sandbox start failed:\n" + "\n".join(errors))
        self._write_toml()
        self._write_env_file()
        self._write_state(running=True)

    def _choose_aria_backend(self, manifest: Manifest) -> str:
        """dcmqrscp unless the ARIA share is too big for it (quadratic indexing, at most 500 studies)."""
        backend = self.options.aria_backend
        if backend != "auto":
            return backend
        instances, studies = 0, set()
        for r in manifest.for_source("ARIA"):
            instances += 1
            studies.add(r.study_instance_uid)
        return (
            "dcmqrscp"
            if instances <= DCMQRSCP_MAX_INSTANCES and len(studies) <= MAX_STUDIES
            else "pynetdicom"
        )

    def _build_mosaiq(self) -> dict[str, int]:
        """Build the DB once per (data, mosaiq) options in the cache, then copy it into the run dir."""
        o = self.options
        key = hashlib.sha256(f"{o.data.key()}/{o.mosaiq}".encode()).hexdigest()[:16]
        cached = self.cache_dir / f"mosaiq-{key}.sqlite"
        counts_file = cached.with_suffix(".json")
        if not (cached.exists() and counts_file.exists()):
            counts = create_mosaiq_db(cached, patients(o.data), o.mosaiq)
            counts_file.write_text(json.dumps(counts))
        self.mosaiq_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, self.mosaiq_path)
        return dict(json.loads(counts_file.read_text()))

    def stop(self) -> None:
        """Stop every peer by PID (in parallel: Orthanc needs 1-3 s to shut down); mark the state stopped."""
        servers: list[Any] = [
            s for s in (self.main, self.stage, self.aria, self.mim, self.standby) if s is not None
        ]
        servers += self.tracked.values()
        errors: list[str] = []
        lock = threading.Lock()

        def stop_one(s: Any) -> None:
            try:
                s.stop()
            except Exception as exc:
                with lock:
                    errors.append(f"{type(s).__name__}: {exc}")

        threads = [threading.Thread(target=stop_one, args=(s,)) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.state_path.exists():
            self._write_state(running=False)
        if errors:
            raise SandboxError("sandbox stop failed: " + "; ".join(errors))

    @contextlib.contextmanager
    def peer_stopped(self, alias: str) -> Iterator[None]:
        """Stop one peer ("ARIA", "MIM", "ORTHANC_MAIN", "ORTHANC_STAGE") for the duration of the block,
        then start it again on the same port with the same data: for outage tests on a shared sandbox."""
        servers = {"ARIA": self.aria, "MIM": self.mim, "ORTHANC_MAIN": self.main, "ORTHANC_STAGE": self.stage}
        server = servers[alias]
        if server is None:
            raise SandboxError("the sandbox has not been started")
        server.stop()
        try:
            yield
        finally:
            if isinstance(server, OrthancServer):
                server.start(fresh=False)
            else:
                server.start()
            self._write_state(running=True)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- files ---------------------------------------------------------------------------------------
    def toml_text(self) -> str:
        self._require_ports()
        o, p = self.options, self.ports
        assert p is not None
        e = ENVIRONMENT
        lines = [
            "# Written by dicom_backup_dagster.sandbox for this run (ports and passwords change per start).",
            "# Secrets are not in this file: export the variables from sandbox.env (or Sandbox.env_vars()).",
            f"default_environment = {_toml_str(e)}",
            "",
            f"[{e}]",
            f"description = {_toml_str(DESCRIPTION)}",
            'default_source = "ARIA"',
            'default_backup = "ORTHANC_MAIN"',
            "",
            f"[{e}.script_ae]",
            f"aet = {_toml_str(o.script_aet)}",
            f"port = {p.script}",
            "",
            f"[{e}.sources.ARIA]",
            'type = "aria"',
            f"aet = {_toml_str(ARIA_AET)}",
            'ip = "127.0.0.1"',
            f"port = {p.aria}",
            'query_level = "IMAGE"',
            "",
            f"[{e}.sources.MIM]",
            'type = "mim"',
            f"aet = {_toml_str(MIM_AET)}",
            'ip = "127.0.0.1"',
            f"port = {p.mim}",
            f"transfer = {_toml_str(o.mim_transfer)}",
            "relational = true",
            "",
            f"[{e}.sources.MOSAIQ]",
            'type = "mosaiq"',
            'db_server = "127.0.0.1"',
            f"db_database = {_toml_str(str(self.mosaiq_path))}",
            'db_username = "mosaiq_ro"',
            f"db_password_env = {_toml_str(MOSAIQ_PASSWORD_ENV)}",
            'odbc_driver = "SQLite3"',
            'staging_target_alias = "ORTHANC_STAGE"',
            "",
        ]
        for alias, aet, dicom, http, env in (
            ("ORTHANC_MAIN", MAIN_AET, p.main_dicom, p.main_http, ORTHANC_PASSWORD_ENV),
            ("ORTHANC_STAGE", STAGE_AET, p.stage_dicom, p.stage_http, STAGE_PASSWORD_ENV),
        ):
            lines += [
                f"[{e}.backup_targets.{alias}]",
                'type = "orthanc"',
                f"aet = {_toml_str(aet)}",
                'ip = "127.0.0.1"',
                f"port = {dicom}",
                f'rest_url = "http://127.0.0.1:{http}"',
                f"rest_username = {_toml_str(o.orthanc_username)}",
                f"rest_password_env = {_toml_str(env)}",
                "",
            ]
        lines += [
            f"[{e}.settings]",
            "max_uids_per_run = 5000",
            f"timezone = {_toml_str(o.timezone)}",
            *([f"first_day = {self.dates[0].isoformat()}"] if o.partitions_from_data else []),
            'schedule = "30 1 * * *"',
            "lookback_days = 3",
            "verification_fraction = 0.0",
            # A peer stopped in the sandbox fails a step after seconds of retries, not minutes.
            "max_retries = 2",
            # The standby SCP doubles as the restore drill's scratch AE (two studies a drill).
            f"restore_drill_target = {_toml_str(STANDBY_ALIAS)}",
            "restore_drill_studies = 2",
            "retry_delay_s = 2",
            # The synthetic data is dated early in 2026: a two-year sweep window reaches it.
            "sweep_days = 730",
            "",
            f"[{e}.settings.timeouts]",
            "acse = 30",
            "dimse = 120",
            "network = 60",
            "connect = 10",
            "",
            f"[{e}.restore_targets.{STANDBY_ALIAS}]",
            f"aet = {_toml_str(STANDBY_AET)}",
            'ip = "127.0.0.1"',
            f"port = {p.standby}",
            "",
        ]
        if o.executor != "in_process":
            lines.insert(lines.index(f"[{e}.settings]") + 1, f"executor = {_toml_str(o.executor)}")
        if o.alert_sinks:
            lines += self._notification_lines()
        if o.second_site:
            lines += self._second_site_lines()
        return "\n".join(lines)

    def _second_site_lines(self) -> list[str]:
        """SANDBOX_B: MIM_B on MIM_SIM into MAIN_B (the main Orthanc), aliases distinct from SANDBOX's."""
        o, p, e = self.options, self.ports, SECOND_SITE
        assert p is not None
        return [
            f"[{e}]",
            'description = "Second sandbox site: the same MIM_SIM and main Orthanc under its own aliases"',
            'default_source = "MIM_B"',
            'default_backup = "MAIN_B"',
            f"[{e}.script_ae]",
            f"aet = {_toml_str(o.script_aet)}",
            f"[{e}.sources.MIM_B]",
            'type = "mim"',
            f"aet = {_toml_str(MIM_AET)}",
            'ip = "127.0.0.1"',
            f"port = {p.mim}",
            f"transfer = {_toml_str(o.mim_transfer)}",
            f"[{e}.backup_targets.MAIN_B]",
            'type = "orthanc"',
            f"aet = {_toml_str(MAIN_AET)}",
            'ip = "127.0.0.1"',
            f"port = {p.main_dicom}",
            f'rest_url = "http://127.0.0.1:{p.main_http}"',
            f"rest_username = {_toml_str(o.orthanc_username)}",
            f"rest_password_env = {_toml_str(ORTHANC_PASSWORD_ENV)}",
            f"[{e}.settings]",
            f"executor = {_toml_str(o.executor)}",
            "max_uids_per_run = 5000",
            f"timezone = {_toml_str(o.timezone)}",
            *([f"first_day = {self.dates[0].isoformat()}"] if o.partitions_from_data else []),
            'schedule = "30 1 * * *"',
            "verification_fraction = 0.0",
            "max_retries = 2",
            "retry_delay_s = 2",
            "sweep_days = 730",
            "",
        ]

    def workspace_text(self) -> str:
        """A workspace.yaml with one code location per site of the sandbox's TOML."""
        sites = [ENVIRONMENT, *([SECOND_SITE] if self.options.second_site else [])]
        entries = [
            f"  - python_module:\n      module_name: dicom_backup_dagster.sites\n      attribute: {s}\n"
            f"      location_name: {s}\n"
            for s in sites
        ]
        return "load_from:\n" + "".join(entries)

    def _notification_lines(self) -> list[str]:
        """The loopback sinks as Slack, PagerDuty and e-mail (every severity reaches each of them)."""
        e, p = ENVIRONMENT, self.ports
        assert p is not None
        ui = (
            [f"dagster_ui_url = {_toml_str(self.options.dagster_ui_url)}"]
            if self.options.dagster_ui_url
            else []
        )
        return [
            f"[{e}.notifications]",
            *ui,
            "timeout_s = 5",
            f"[{e}.notifications.routes]",
            'critical = ["pagerduty", "slack", "email"]',
            'high = ["slack", "email"]',
            'low = ["slack", "email"]',
            f"[{e}.notifications.slack]",
            f"webhook_url_env = {_toml_str(SLACK_WEBHOOK_ENV)}",
            f"[{e}.notifications.pagerduty]",
            f"routing_key_env = {_toml_str(PAGERDUTY_KEY_ENV)}",
            f'events_url = "http://127.0.0.1:{p.sinks_http}/pagerduty"',
            f"[{e}.notifications.email]",
            'smtp_host = "127.0.0.1"',
            f"smtp_port = {p.sinks_smtp}",
            "starttls = false",
            'from = "dicom-backup@sandbox.invalid"',
            'to = ["radonc-it@sandbox.invalid"]',
            "",
        ]

    def _write_toml(self) -> None:
        self.config_path.write_text(self.toml_text(), encoding="utf-8")
        (self.root / "workspace.yaml").write_text(self.workspace_text(), encoding="utf-8")

    def _write_env_file(self) -> None:
        text = "".join(f"export {k}={v}\n" for k, v in self.env_vars().items())
        text += (
            f"export DICOM_BACKUP_CONFIG={self.config_path}\nexport DICOM_BACKUP_ENVIRONMENT={ENVIRONMENT}\n"
        )
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def state(self, running: bool) -> dict[str, Any]:
        procs: dict[str, Any] = {}
        for name, s in (
            ("ORTHANC_MAIN", self.main),
            ("ORTHANC_STAGE", self.stage),
            ("ARIA", self.aria),
            ("MIM", self.mim),
            ("STANDBY", self.standby),
        ):
            if s is not None and s.process is not None and s.pid is not None:
                procs[name] = {"pid": s.pid, "argv": s.process.argv, "log": str(s.process.log_path)}
        for name, p in self.tracked.items():
            if p.pid is not None:
                procs[name] = {"pid": p.pid, "argv": p.argv, "log": str(p.log_path)}
                if name in self.tracked_ports:
                    procs[name]["port"] = self.tracked_ports[name]
        return {
            "running": running,
            "controller_pid": os.getpid(),
            "root": str(self.root),
            "config_path": str(self.config_path),
            "env_file": str(self.env_file),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "start_seconds": self.start_seconds,
            "ports": vars(self.ports) if self.ports else {},
            "processes": procs,
            "peers": {k: str(v) for k, v in self.peers().items()} if self.ports else {},
            "instances": len(self.manifest) if self.manifest else 0,
            "aria_backend": self.aria_backend,
        }

    def _write_state(self, running: bool) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(running), indent=2))
        os.replace(tmp, self.state_path)

    def summary(self) -> str:
        """Human-readable ports and paths (no secrets, no patient data)."""
        lines = [f"sandbox root: {self.root}"]
        if self.main and self.stage:
            lines.append(
                f"  ORTHANC_MAIN   {self.main.peer}  REST {self.main.rest_url}  (pid {self.main.pid})"
            )
            lines.append(
                f"  ORTHANC_STAGE  {self.stage.peer}  REST {self.stage.rest_url}  (pid {self.stage.pid})"
            )
        if self.aria:
            lines.append(f"  ARIA           {self.aria.peer}  {self.aria_backend} (pid {self.aria.pid})")
        if self.mim:
            lines.append(f"  MIM            {self.mim.peer}  pynetdicom Q/R SCP (pid {self.mim.pid})")
        if self.standby:
            lines.append(
                f"  STANDBY        {self.standby.peer}  restore target, scratch (pid {self.standby.pid})"
            )
        lines.append(f"  MOSAIQ         {self.mosaiq_path}  (SQLite3 ODBC)")
        if self.ports:
            lines.append(f"  script AE      {self.script_peer}")
        if self.manifest:
            counts: dict[str, int] = {}
            for r in self.manifest:
                counts[r.source] = counts.get(r.source, 0) + 1
            per_source = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            days = self.dates
            n = len(self.manifest)
            lines.append(f"  data: {n} instances ({per_source}); dates {days[0]} .. {days[-1]}")
        lines.append(f"  config: {self.config_path}")
        lines.append(f"  secrets: {self.env_file} (source it: set -a; . {self.env_file})")
        if self.start_seconds is not None:
            steps = ", ".join(f"{k} {v}s" for k, v in self.timings.items())
            lines.append(f"  started in {self.start_seconds:.2f} s  ({steps})")
        return "\n".join(lines)


def read_state(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(root) / STATE_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def stop_from_state(root: str | os.PathLike[str], timeout: float = 15.0) -> list[str]:
    """Stop the processes a `sandbox up` recorded in <root>/state.json; returns what was stopped.

    A PID is only signalled if its command line still matches the recorded one (PIDs get reused).
    """
    from dicom_backup_dagster.sandbox.processes import pid_alive, pid_cmdline, stop_pid

    state = read_state(root)
    if not state:
        return []
    stopped: list[str] = []
    controller = state.get("controller_pid")
    if state.get("running") and controller and controller != os.getpid() and pid_alive(int(controller)):
        cmd = " ".join(pid_cmdline(int(controller)))
        if "dicom_backup_dagster.sandbox" in cmd or "dicom-backup-sandbox" in cmd:
            stop_pid(int(controller), timeout=timeout, group=False)  # its own handler stops the peers
            stopped.append(f"controller (pid {controller})")
    lock = threading.Lock()

    def one(name: str, info: dict[str, Any]) -> None:
        pid = int(info["pid"])
        if pid_alive(pid) and pid_cmdline(pid)[:1] == list(info.get("argv", []))[:1]:
            stop_pid(pid, timeout=timeout)
            with lock:
                stopped.append(f"{name} (pid {pid})")

    threads = [threading.Thread(target=one, args=item) for item in state.get("processes", {}).items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state["running"] = False
    path = Path(root) / STATE_FILE
    path.write_text(json.dumps(state, indent=2))
    return stopped
