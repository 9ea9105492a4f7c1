"""Background processes for the sandbox: free ports, start/stop by PID, and waiting with useful errors.

Every process is started in its own session (and therefore its own process group), so that stopping it also
stops whatever it forked (dcmqrscp forks one child per association). Stopping sends SIGTERM to the group,
waits, then SIGKILLs the group and waits again: some processes here ignore SIGTERM, and a process that is
still shutting down can keep a port or an SQLite index locked (Orthanc 1.10 took 1.1-3.3 s to stop after
SIGTERM; docs/decisions/orthanc.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

_handed_out: set[int] = set()
_port_lock = threading.Lock()


class SandboxError(RuntimeError):
    """A sandbox process failed to start, stop or become ready."""


def free_port() -> int:
    """A TCP port that is free on every interface right now and not handed out before by this process.

    Orthanc and dcmqrscp bind 0.0.0.0, so the probe binds there too. The port can still be taken by someone
    else between this call and the bind; the sandbox starts its peers right after choosing ports.
    """
    with _port_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("", 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise SandboxError("could not find a free TCP port after 200 attempts")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: str | os.PathLike[str] | None, lines: int = 30) -> str:
    """The last lines of a log file ('' if there is none), for error messages."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def pid_cmdline(pid: int) -> list[str]:
    """argv of a running process (empty list if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def stop_pid(pid: int, timeout: float = 10.0, group: bool = True) -> bool:
    """Stop a process we did not necessarily start (e.g. from `sandbox down`): SIGTERM, wait, SIGKILL, wait.

    With group=True the whole process group led by pid is signalled (ManagedProcess starts every process as
    a group leader). Returns True if the process is gone.
    """

    def _signal(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    if not pid_alive(pid):
        _signal(signal.SIGKILL)  # leftover children of a dead leader
        return True
    _signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            _signal(signal.SIGKILL)
            return True
        time.sleep(0.02)
    _signal(signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    log_path: str | os.PathLike[str] | None = None,
    process: ManagedProcess | None = None,
) -> None:
    """Poll predicate() until it is truthy; raise SandboxError naming `what` and showing the log tail.

    If `process` is given and it exits while waiting, fail at once instead of waiting for the timeout.
    Exceptions raised by the predicate count as "not yet", except SandboxError, which the predicate raises
    to give up at once (e.g. "the code location failed to load").
    """
    if process is not None and log_path is None:
        log_path = process.log_path
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if predicate():
                return
            last_error = None
        except SandboxError:
            raise
        except Exception as exc:
            last_error = exc
        if process is not None and not process.alive:
            raise SandboxError(
                f"{process.name} (pid {process.pid}) exited with code {process.returncode} while waiting "
                f"for: {what}\n--- last lines of {log_path} ---\n{tail(log_path)}"
            )
        if time.monotonic() >= deadline:
            extra = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise SandboxError(
                f"timed out after {timeout:.1f} s waiting for: {what}{extra}"
                + (f"\n--- last lines of {log_path} ---\n{tail(log_path)}" if log_path else "")
            )
        time.sleep(interval)


class ManagedProcess:
    """One background process: argv, environment overrides, working dir, log file; stopped by PID.

    `env` entries are added to (and override) the current environment. stdout and stderr both go to
    `log_path` (appended). The process leads its own process group.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.cwd = Path(cwd) if cwd is not None else None
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        if self._popen is not None and self.alive:
            raise SandboxError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            try:
                self._popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise SandboxError(f"could not start {self.name} ({self.argv[0]}): {exc}") from exc
        return self

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, wait `timeout`, then SIGKILL and wait for exit. Returns the exit code."""
        p = self._popen
        if p is None:
            return None
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired as exc:
                    raise SandboxError(f"{self.name} (pid {p.pid}) survived SIGKILL") from exc
        # Children (e.g. dcmqrscp association workers) may outlive the leader; the group id stays valid
        # while any member lives.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        return p.returncode

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}" if self._popen else "not started"
        return f"ManagedProcess({self.name!r}, pid={self.pid}, {state})"


class ManagedServer:
    """The lifecycle the sandbox servers (ARIA, MIM and Orthanc simulators) share around one ManagedProcess.

    A subclass sets `process` and `startup_seconds` to None in __init__ and writes start(), which prepares
    its files and calls _launch(); stop() and the context manager protocol come from here.
    """

    process: ManagedProcess | None
    startup_seconds: float | None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    def _launch(
        self,
        process: ManagedProcess,
        ready: Sequence[tuple[Callable[[], object], str]],
        timeout: float,
        started: float,
        interval: float = 0.02,
    ) -> None:
        """Start `process` and wait for each (predicate, what) of `ready` in turn, each within `timeout`.

        On failure (or interruption) the server is stopped and the error re-raised; on success
        `startup_seconds` is the time since `started` (a time.monotonic() value).
        """
        self.process = process.start()
        try:
            for predicate, what in ready:
                wait_until(predicate, timeout, what, interval=interval, process=self.process)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is not None:
            self.process.stop(timeout=timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
