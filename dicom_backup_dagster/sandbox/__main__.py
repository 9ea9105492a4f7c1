"""Sandbox CLI: `python -m dicom_backup_dagster.sandbox up|down|status|night --root DIR [data options]`.

up      start every peer, print ports/paths and the start time, and stay in the foreground until Ctrl-C or
        SIGTERM (then stop everything); with --detach, leave the peers running and exit.
down    stop a sandbox started by `up --root DIR` (PIDs from DIR/state.json).
status  show which recorded peers are alive and answering.
night   start the sandbox, serve Dagster and run one night's backup end to end (sandbox/night.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import threading
import zoneinfo
from dataclasses import replace
from pathlib import Path

from dicom_backup_dagster.sandbox.processes import free_port, pid_alive, port_open
from dicom_backup_dagster.sandbox.sandbox import Sandbox, SandboxOptions, read_state, stop_from_state
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, start_date_ending

DEFAULT_ROOT = Path(".sandbox")
# What one sandbox night backs up: the sources of the sandbox's TOML and their assets, upstream first.
SANDBOX_BACKUP_ASSETS = {
    "ARIA": ["inventory", "archived"],
    "MIM": ["inventory", "archived"],
    "MOSAIQ": ["deliveries", "rt_records", "staged", "archived"],
}

ALERTS_HINT = (
    "  alerts: the site's Slack, PagerDuty and e-mail channels are loopback sinks; what they receive is in\n"
    "          {alerts}/slack.jsonl, pagerduty.jsonl and email.jsonl (try the send_test_alert job)"
)


def add_data_arguments(ap: argparse.ArgumentParser) -> None:
    d = SyntheticOptions()
    g = ap.add_argument_group("synthetic data")
    g.add_argument("--patients", type=int, default=d.patients)
    g.add_argument("--ct-slices", type=int, default=d.ct_slices)
    g.add_argument("--fractions", type=int, default=d.fractions)
    g.add_argument("--cbct-slices", type=int, default=d.cbct_slices)
    g.add_argument("--image-size", type=int, default=d.image_size)
    g.add_argument(
        "--start-date",
        type=dt.date.fromisoformat,
        default=None,
        help="first planning date, YYYY-MM-DD (default: so that the data's last day is yesterday)",
    )
    g.add_argument("--span-days", type=int, default=d.span_days)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--cache-dir", type=Path, default=None, help="generated data cache (default ROOT/cache)")


def options_from_args(args: argparse.Namespace) -> SandboxOptions:
    data = SyntheticOptions(
        patients=args.patients,
        ct_slices=args.ct_slices,
        fractions=args.fractions,
        cbct_slices=args.cbct_slices,
        image_size=args.image_size,
        span_days=args.span_days,
        seed=args.seed,
    )
    options = SandboxOptions(data=data, cache_dir=args.cache_dir, alert_sinks=True, partitions_from_data=True)
    if args.start_date is not None:
        start = args.start_date
    else:  # the UI's latest partition is then last night, with data
        yesterday = dt.datetime.now(zoneinfo.ZoneInfo(options.timezone)).date() - dt.timedelta(days=1)
        start = start_date_ending(data, yesterday)
    return replace(options, data=replace(data, start_date=start))


SITES_HINT = (
    "two sites, one code location each: set -a; . {root}/sandbox.env; set +a; "
    "DICOM_BACKUP_CONFIG={root}/environments.toml dagster dev -w {root}/workspace.yaml"
)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def _interrupt_on_termination() -> None:
    """SIGINT, SIGTERM and SIGHUP (Ctrl-C, kill, a service manager, a closed terminal) all stop like Ctrl-C:
    the finally blocks then stop every process the sandbox started, instead of leaving Orthanc, dcmqrscp
    and Dagster behind. SIGINT is set explicitly: a shell starts background jobs with SIGINT ignored, and
    Python then leaves it ignored."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def cmd_up(args: argparse.Namespace) -> int:
    options = replace(options_from_args(args), second_site=args.second_site)
    sandbox = Sandbox(args.root, options)
    print("starting sandbox ...", flush=True)
    sandbox.start()
    print(sandbox.summary(), flush=True)
    if options.second_site:
        print(SITES_HINT.format(root=sandbox.root), flush=True)
    print(ALERTS_HINT.format(alerts=sandbox.alerts_dir), flush=True)
    if args.detach:
        print(f"detached; stop it with: python -m dicom_backup_dagster.sandbox down --root {sandbox.root}")
        return 0
    print("running; Ctrl-C (or `... sandbox down --root DIR`) stops everything", flush=True)
    try:
        _wait_for_signal()
    finally:
        print("stopping sandbox ...", flush=True)
        sandbox.stop()
        print("stopped", flush=True)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if read_state(args.root) is None:
        print(f"no sandbox state in {Path(args.root).resolve()}")
        return 0
    stopped = stop_from_state(args.root)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = read_state(args.root)
    if state is None:
        print(f"no sandbox state in {Path(args.root).resolve()}")
        return 1
    ports = state.get("ports", {})
    port_of = {
        "ORTHANC_MAIN": ports.get("main_http"),
        "ORTHANC_STAGE": ports.get("stage_http"),
        "ARIA": ports.get("aria"),
        "MIM": ports.get("mim"),
        "STANDBY": ports.get("standby"),
        "ALERT_SINKS": ports.get("sinks_http"),
    }
    all_up = True
    for name, info in state.get("processes", {}).items():
        alive = pid_alive(int(info["pid"]))
        port = info.get("port") or port_of.get(name)
        answering = port is not None and port_open(int(port))
        all_up &= alive and answering
        print(
            f"{name:14s} pid {info['pid']:>7}  {'alive' if alive else 'DEAD '}  "
            f"{'answering' if answering else 'not answering'} on port {port}"
        )
    print(f"config: {state.get('config_path')}  (recorded running: {json.dumps(state.get('running'))})")
    return 0 if all_up else 1


def cmd_night(args: argparse.Namespace) -> int:
    from dicom_backup_dagster.sandbox.night import run_night, sandbox_environment

    _interrupt_on_termination()
    port = args.port or free_port()
    options = replace(options_from_args(args), dagster_ui_url=f"http://127.0.0.1:{port}")
    sandbox = Sandbox(args.root, options)
    print("starting sandbox ...", flush=True)
    sandbox.start()
    try:
        print(sandbox.summary(), flush=True)
        print(ALERTS_HINT.format(alerts=sandbox.alerts_dir), flush=True)
        env = sandbox_environment(sandbox.config_path, sandbox.env_vars())
        result = run_night(
            env,
            sandbox.root,
            serve=not args.no_serve,
            port=port,
            dates=sandbox.dates,
            backup_assets=SANDBOX_BACKUP_ASSETS,
            on_started=lambda process: sandbox.track("DAGSTER", process, port),
        )
    finally:
        sandbox.stop()
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dicom_backup_dagster.sandbox",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    for name, fn, helptext in (
        ("up", cmd_up, "start the sandbox (foreground)"),
        ("down", cmd_down, "stop a sandbox started by `up`"),
        ("status", cmd_status, "show the recorded sandbox processes"),
        ("night", cmd_night, "run one sandbox night with Dagster"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="sandbox directory (default .sandbox)")
        p.set_defaults(func=fn)
        if name in ("up", "night"):
            add_data_arguments(p)
        if name == "up":
            p.add_argument("--detach", action="store_true", help="leave the peers running and exit")
            p.add_argument(
                "--second-site",
                action="store_true",
                help="a second site SANDBOX_B in the TOML (MIM_B, MAIN_B)",
            )
        if name == "night":
            p.add_argument(
                "--no-serve", action="store_true", help="exit after the night instead of serving the UI"
            )
            p.add_argument("--port", type=int, default=None, help="Dagster UI port (default: a free one)")
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
