"""Health probes for the four long-lived processes, for systemd/Docker health checks and runbooks.

- dagster-webserver: GET <webserver>/server_info, healthy on 200 with JSON `dagster_version`. There is no
  /health route: the single-page app answers any path, /health included, with 200.
- dagster-daemon: `dagster-daemon liveness-check` (needs DAGSTER_HOME), healthy on exit 0 "Daemon live".
  Set DAGSTER_DAEMON_HEARTBEAT_TOLERANCE=300 (the default, 1800 s, is too lax for alerting).
- dicom-backup-exporter: GET <exporter>/metrics, healthy on 200 with `dicom_backup_exporter_dagster_up 1.0`.
- Orthanc: GET <orthanc>/system with REST credentials, healthy on 200 with JSON `DicomAet`.

`python -m dicom_backup_dagster.monitoring.probes --webserver URL --exporter URL --orthanc URL --daemon`
runs the chosen probes, prints one line each and exits 1 if any failed. Orthanc credentials come from
DICOM_BACKUP_ORTHANC_USERNAME / _PASSWORD. No dagster import: the probes work when Dagster is broken.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from dicom_backup_dagster.monitoring.orthanc import OrthancTarget
from dicom_backup_dagster.orthanc import OrthancRestError

EXPORTER_UP_LINE = "dicom_backup_exporter_dagster_up 1.0"


@dataclass(frozen=True)
class ProbeResult:
    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def _get(name: str, url: str, timeout: float) -> requests.Response | ProbeResult:
    try:
        return requests.get(url, timeout=timeout)
    except requests.RequestException as error:
        return ProbeResult(name, False, f"GET {url}: {type(error).__name__}; is the process running?")


def probe_webserver(base_url: str, timeout: float = 5.0) -> ProbeResult:
    name = "dagster-webserver"
    url = base_url.rstrip("/") + "/server_info"
    response = _get(name, url, timeout)
    if isinstance(response, ProbeResult):
        return response
    try:
        version = response.json().get("dagster_version") if response.status_code == 200 else None
    except ValueError:
        version = None
    if not version:
        return ProbeResult(name, False, f"GET {url}: HTTP {response.status_code} without dagster_version")
    return ProbeResult(name, True, f"dagster {version} at {base_url}")


def probe_exporter(base_url: str, timeout: float = 15.0) -> ProbeResult:
    name = "dicom-backup-exporter"
    url = base_url.rstrip("/") + "/metrics"
    response = _get(name, url, timeout)
    if isinstance(response, ProbeResult):
        return response
    if response.status_code != 200:
        return ProbeResult(name, False, f"GET {url}: HTTP {response.status_code}")
    if EXPORTER_UP_LINE not in response.text:
        return ProbeResult(name, False, f"{url} answers but cannot read the Dagster storage (dagster_up 0)")
    return ProbeResult(name, True, f"{url} serves metrics, Dagster storage readable")


def probe_orthanc(target: OrthancTarget) -> ProbeResult:
    name = f"Orthanc {target.name}"
    try:
        system = target.get("/system")
    except OrthancRestError as error:
        return ProbeResult(name, False, str(error))
    if "DicomAet" not in system:
        return ProbeResult(name, False, f"{target.url}/system answered without DicomAet")
    return ProbeResult(
        name, True, f"Orthanc {system.get('Version')} AET {system['DicomAet']} at {target.url}"
    )


def probe_daemon(dagster_home: str | os.PathLike[str] | None = None, timeout: float = 60.0) -> ProbeResult:
    """`dagster-daemon liveness-check`: exit 0 when every required daemon sent a recent heartbeat."""
    name = "dagster-daemon"
    executable = shutil.which("dagster-daemon") or str(Path(sys.executable).with_name("dagster-daemon"))
    env = dict(os.environ)
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    if not env.get("DAGSTER_HOME"):
        return ProbeResult(name, False, "DAGSTER_HOME is not set: point it at the instance's folder")
    try:
        done = subprocess.run(
            [executable, "liveness-check"], env=env, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return ProbeResult(name, False, f"dagster-daemon liveness-check: {type(error).__name__}")
    output = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode != 0:
        return ProbeResult(name, False, f"liveness-check exit {done.returncode}: {output or 'no output'}")
    return ProbeResult(name, True, output or "Daemon live")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webserver", help="e.g. http://127.0.0.1:3000")
    parser.add_argument("--exporter", help="e.g. http://127.0.0.1:9108")
    parser.add_argument("--orthanc", help="e.g. http://127.0.0.1:8042 (credentials from the environment)")
    parser.add_argument("--daemon", action="store_true", help="run dagster-daemon liveness-check")
    args = parser.parse_args(argv)
    results = []
    if args.webserver:
        results.append(probe_webserver(args.webserver))
    if args.daemon:
        results.append(probe_daemon())
    if args.exporter:
        results.append(probe_exporter(args.exporter))
    if args.orthanc:
        target = OrthancTarget.from_env() or OrthancTarget("orthanc", args.orthanc)
        results.append(
            probe_orthanc(OrthancTarget(target.name, args.orthanc, target.username, target.password))
        )
    for result in results:
        print(result)
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
