"""A stand-in for `systemctl` where there is no running systemd (containers, CI): it starts each unit's
own ExecStart line, as systemd would, from the unit files that `deploy/release.sh` installed.

What it reproduces: template instances (`%i`), `Environment=` then `EnvironmentFile=` (files override, a
leading `-` makes a file optional), `WorkingDirectory=`, `${VAR}` (one word) and `$VAR` (split at white
space) in ExecStart, SIGTERM to the whole process group on stop with SIGKILL after `TimeoutStopSec=`
(several units stop in parallel, as systemd stops units that are not ordered against each other).
What it does not: User=, the sandboxing settings and Restart= (systemd-analyze verify checks those files).

Environment: UNIT_DIR (where the units are), FAKE_SYSTEMD_STATE (PIDs and logs).
Usage: fake_systemctl.py daemon-reload | enable UNIT... | start|stop|restart UNIT... | is-active UNIT
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unit_file(unit_dir: Path, unit: str) -> tuple[Path, str]:
    """(file, instance) for `name.service` or `name@instance.service`."""
    stem, _, suffix = unit.rpartition(".")
    if "@" in stem:
        prefix, _, instance = stem.partition("@")
        return unit_dir / f"{prefix}@.{suffix}", instance
    return unit_dir / unit, ""


def parse_unit(path: Path, instance: str) -> dict[str, list[str]]:
    """[Service] key -> values, in file order, with %i/%I and %% replaced."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section != "Service" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.replace("%%", "\0").replace("%i", instance).replace("%I", instance).replace("\0", "%")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def service_environment(service: dict[str, list[str]]) -> dict[str, str]:
    env = {"PATH": BASE_PATH, "LANG": "C.UTF-8"}
    for assignment in service.get("Environment", []):
        for word in shlex.split(assignment):
            key, _, value = word.partition("=")
            env[key] = value
    for entry in service.get("EnvironmentFile", []):
        optional = entry.startswith("-")
        path = Path(entry.lstrip("-"))
        if not path.exists():
            if optional:
                continue
            raise SystemExit(f"fake systemctl: EnvironmentFile {path} does not exist")
        env.update(read_env_file(path))
    return env


def expand_command(line: str, env: dict[str, str]) -> list[str]:
    argv: list[str] = []
    for word in shlex.split(line.lstrip("-@:+!")):
        if word.startswith("$") and not word.startswith("${"):
            argv.extend(env.get(word[1:], "").split())
            continue
        for key, value in env.items():
            word = word.replace("${" + key + "}", value)
        if "${" in word:
            raise SystemExit(f"fake systemctl: unset variable in {word!r}")
        argv.append(word)
    return argv


class Manager:
    def __init__(self) -> None:
        self.unit_dir = Path(os.environ["UNIT_DIR"])
        self.state = Path(os.environ["FAKE_SYSTEMD_STATE"])
        self.state.mkdir(parents=True, exist_ok=True)

    def _record(self, unit: str) -> Path:
        return self.state / f"{unit}.json"

    def pid(self, unit: str) -> int | None:
        try:
            pid = int(json.loads(self._record(unit).read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        # A zombie child of an earlier shim counts as stopped.
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return None
        except OSError:
            return None
        return pid

    def start(self, unit: str) -> None:
        if self.pid(unit):
            return
        path, instance = unit_file(self.unit_dir, unit)
        service = parse_unit(path, instance)
        env = service_environment(service)
        argv = expand_command(service["ExecStart"][-1], env)
        cwd = service.get("WorkingDirectory", ["/"])[-1]
        log = open(self.state / f"{unit}.log", "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self._record(unit).write_text(
            json.dumps({"pid": process.pid, "argv": argv, "env": env, "started": time.time()})
        )

    def stop(self, units: list[str]) -> None:
        """SIGTERM to every unit's process group at once, then wait: systemd runs the stop jobs of units
        without ordering dependencies between them (these have none) in parallel."""
        deadlines: dict[str, tuple[int, float]] = {}
        started = time.monotonic()
        for unit in units:
            pid = self.pid(unit)
            if pid is None:
                continue
            path, instance = unit_file(self.unit_dir, unit)
            timeout = float(parse_unit(path, instance).get("TimeoutStopSec", ["90s"])[-1].rstrip("s"))
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadlines[unit] = (pid, time.monotonic() + timeout)
        while deadlines:
            for unit, (pid, deadline) in list(deadlines.items()):
                if self.pid(unit) and time.monotonic() >= deadline:
                    os.killpg(pid, signal.SIGKILL)
                elif self.pid(unit):
                    continue
                del deadlines[unit]
                self._log(f"stopped {unit} in {time.monotonic() - started:.1f} s")
            time.sleep(0.1)

    def _log(self, line: str) -> None:
        with open(self.state / "calls.log", "a") as calls:
            calls.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def main(self, argv: list[str]) -> int:
        command, units = argv[0], argv[1:]
        self._log(" ".join(argv))
        if command in ("daemon-reload", "enable", "disable"):
            return 0
        if command == "is-active":
            return 0 if all(self.pid(u) for u in units) else 3
        if command in ("stop", "restart"):
            self.stop(units)
        if command in ("start", "restart"):
            for unit in units:
                self.start(unit)
        return 0


if __name__ == "__main__":
    sys.exit(Manager().main(sys.argv[1:]))
