"""ManagedProcess / wait_until / free_port against real child processes."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from dicom_backup_dagster.sandbox.processes import (
    ManagedProcess,
    SandboxError,
    free_port,
    pid_alive,
    stop_pid,
    wait_until,
)


def test_free_port_is_bindable_and_not_repeated() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))


def test_start_logs_env_cwd_and_stop(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    code = (
        "import os,sys,time; print(os.environ['SBX_X'], os.getcwd(), flush=True); "
        "print('err', file=sys.stderr, flush=True); time.sleep(60)"
    )
    p = ManagedProcess(
        "sleeper", [sys.executable, "-c", code], log, env={"SBX_X": "hello"}, cwd=tmp_path
    ).start()
    try:
        assert p.alive and p.pid
        wait_until(lambda: "err" in log.read_text(), 10, "child output", process=p)
        out = log.read_text()
        assert f"hello {tmp_path}" in out
    finally:
        p.stop(timeout=5)
    assert not p.alive
    assert not pid_alive(p.pid)  # type: ignore[arg-type]


def test_sigterm_ignoring_child_and_its_children_are_killed(tmp_path: Path) -> None:
    # The leader ignores SIGTERM and forks a grandchild that does too: both must be gone after stop().
    code = (
        "import os,signal,time,sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(120); sys.exit(0)\n"
        "print('child', pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    log = tmp_path / "stubborn.log"
    p = ManagedProcess("stubborn", [sys.executable, "-c", code], log).start()
    wait_until(lambda: "child" in log.read_text(), 10, "grandchild pid", process=p)
    grandchild = int(log.read_text().split()[1])
    assert pid_alive(grandchild)
    t0 = time.monotonic()
    rc = p.stop(timeout=0.5)
    assert rc == -9  # SIGKILL, because SIGTERM was ignored
    assert time.monotonic() - t0 < 5
    wait_until(lambda: not pid_alive(grandchild), 5, "grandchild killed with its group")


def test_stop_pid_for_foreign_process(tmp_path: Path) -> None:
    p = ManagedProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log"
    ).start()
    assert p.pid is not None
    assert stop_pid(p.pid, timeout=2)
    p.stop()
    assert not p.alive


def test_wait_until_reports_log_tail_and_early_exit(tmp_path: Path) -> None:
    log = tmp_path / "dies.log"
    code = "import sys; print('fatal: config is broken', flush=True); sys.exit(3)"
    p = ManagedProcess("dies", [sys.executable, "-c", code], log).start()
    with pytest.raises(SandboxError) as exc:
        wait_until(lambda: False, 10, "something that never happens", process=p)
    msg = str(exc.value)
    assert "exited with code 3" in msg and "fatal: config is broken" in msg
    with pytest.raises(SandboxError, match=r"timed out after 0\.1 s waiting for: nothing.*boom"):
        wait_until(_raise_boom, 0.1, "nothing")


def _raise_boom() -> bool:
    raise ValueError("boom")


def test_wait_until_gives_up_at_once_on_sandbox_error() -> None:
    calls = []

    def fatal() -> bool:
        calls.append(1)
        raise SandboxError("configuration is broken")

    t0 = time.monotonic()
    with pytest.raises(SandboxError, match="configuration is broken"):
        wait_until(fatal, 30, "never")
    assert len(calls) == 1 and time.monotonic() - t0 < 1
