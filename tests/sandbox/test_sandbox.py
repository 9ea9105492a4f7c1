"""The whole sandbox: config it writes loads and points at live peers that can talk to each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyodbc
import pytest
import requests
from pydicom.dataset import Dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

from dicom_backup_dagster.config import load_config
from dicom_backup_dagster.dicom.network import Peer, make_ae
from dicom_backup_dagster.sandbox.aria import echo_ok
from dicom_backup_dagster.sandbox.processes import pid_alive
from dicom_backup_dagster.sandbox.sandbox import Sandbox, SandboxOptions, read_state
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions

REPO = Path(__file__).resolve().parents[2]


def test_toml_loads_and_every_port_answers(
    sandbox: Sandbox, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in sandbox_env.items():
        monkeypatch.setenv(k, v)
    env = load_config().environment
    assert env.name == "SANDBOX" and env.default_source == "ARIA" and env.default_backup == "ORTHANC_MAIN"
    assert set(env.sources) == {"ARIA", "MIM", "MOSAIQ"}
    assert env.script_ae.aet == "DICOM_BACKUP" and env.script_ae.port == sandbox.script_peer.port
    for alias in ("ARIA", "MIM"):
        assert echo_ok(env.sources[alias].peer, calling_aet="DICOM_BACKUP"), alias
    for target in env.backup_targets.values():
        assert echo_ok(target.peer, calling_aet="DICOM_BACKUP"), target.alias
        r = requests.get(
            f"{target.rest_url}/system", auth=(target.rest_username, target.rest_password), timeout=5
        )
        assert r.status_code == 200 and r.json()["DicomAet"] == target.aet
        assert requests.get(f"{target.rest_url}/system", timeout=5).status_code == 401
    mosaiq = env.sources["MOSAIQ"]
    assert mosaiq.password == sandbox.env_vars()["SANDBOX_MOSAIQ_DB_PASSWORD"]
    cn = pyodbc.connect(f"DRIVER={{{mosaiq.odbc_driver}}};Database={mosaiq.db_database}")
    assert cn.execute("SELECT COUNT(*) FROM Dose_Hst").fetchone()[0] == sandbox.mosaiq_counts["Dose_Hst"]
    cn.close()
    assert "PASSWORD" not in sandbox.config_path.read_text().replace('_PASSWORD"', "")
    assert oct(sandbox.env_file.stat().st_mode & 0o777) == "0o600"


def _move(source: Peer, study_uid: str, destination: str) -> tuple[int, int]:
    ae = make_ae("DICOM_BACKUP")
    ae.add_requested_context(MOVE)
    assoc = ae.associate(source.host, source.port, ae_title=source.aet)
    assert assoc.is_established
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study_uid
    final = list(assoc.send_c_move(q, destination, MOVE))[-1][0]
    assoc.release()
    return int(final.Status), int(final.get("NumberOfCompletedSuboperations", 0))


@pytest.mark.parametrize("alias", ["ARIA", "MIM"])
def test_sources_move_into_main(sandbox: Sandbox, alias: str) -> None:
    assert sandbox.manifest is not None and sandbox.main is not None
    rec = next(r for r in sandbox.manifest.for_source(alias) if r.modality == "RTPLAN")
    expected = [
        r for r in sandbox.manifest.for_source(alias) if r.study_instance_uid == rec.study_instance_uid
    ]
    status, completed = _move(sandbox.peers()[alias], rec.study_instance_uid, "ORTHANC_MAIN")
    assert (status, completed) == (0, len(expected))
    assert all(sandbox.main.has_instance(r.sop_instance_uid) for r in expected)


def test_staging_moves_into_main(sandbox: Sandbox) -> None:
    assert sandbox.manifest is not None and sandbox.main is not None and sandbox.stage is not None
    rec = next(r for r in sandbox.manifest.for_source("ARIA") if r.modality == "RTDOSE")
    sandbox.stage.upload(rec.path)
    sandbox.main.delete_instance(rec.sop_instance_uid)
    # Other tests also stage records in this study (Mosaiq RT records join the plan's study): count >= 1.
    status, completed = _move(sandbox.peers()["ORTHANC_STAGE"], rec.study_instance_uid, "ORTHANC_MAIN")
    assert status == 0x0000 and completed >= 1
    assert sandbox.main.has_instance(rec.sop_instance_uid)


def test_peer_logs_hold_no_patient_identifiers(sandbox: Sandbox) -> None:
    # Runs after the moves above, so the logs have seen C-FIND/C-MOVE/C-STORE traffic.
    logs = list(sandbox.run_dir.rglob("*.log"))
    assert len(logs) >= 4
    for log in logs:
        text = log.read_text(errors="replace")
        assert "SBX0" not in text and "SANDBOX^" not in text and "PATIENT0" not in text, log


def test_dates_and_state(sandbox: Sandbox) -> None:
    assert sandbox.manifest is not None
    assert [d.strftime("%Y%m%d") for d in sandbox.dates] == sorted({r.date for r in sandbox.manifest})
    state = read_state(sandbox.root)
    assert state is not None and state["running"] is True
    assert {int(p["pid"]) for p in state["processes"].values()} == {
        s.pid
        for s in (sandbox.main, sandbox.stage, sandbox.aria, sandbox.mim, sandbox.standby)  # type: ignore[union-attr]
    }
    assert "SANDBOX^" not in json.dumps(state) and sandbox.env_vars()[
        "SANDBOX_ORTHANC_PASSWORD"
    ] not in json.dumps(state)


def test_start_stop_leaves_nothing_running(tmp_path: Path) -> None:
    # Also covers the pynetdicom ARIA backend that big (benchmark) data sets get.
    opts = SandboxOptions(
        aria_backend="pynetdicom",
        data=SyntheticOptions(patients=1, ct_slices=2, fractions=1, cbct_slices=1),
        cache_dir=tmp_path / "cache",
    )
    sb = Sandbox(tmp_path / "sb", opts)
    with sb:
        pids = [s.pid for s in (sb.main, sb.stage, sb.aria, sb.mim)]  # type: ignore[union-attr]
        assert echo_ok(sb.peers()["ARIA"]) and read_state(sb.root)["aria_backend"] == "pynetdicom"  # type: ignore[index]
        assert all(pid is not None and pid_alive(pid) for pid in pids)
        with pytest.raises(Exception, match="already running"):
            Sandbox(tmp_path / "sb", opts).start()
    assert not any(pid_alive(pid) for pid in pids)  # type: ignore[arg-type]
    assert read_state(sb.root)["running"] is False  # type: ignore[index]


def test_cli_up_detach_status_down(tmp_path: Path) -> None:
    root = tmp_path / "cli"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_BACKUP_")}
    cli = [sys.executable, "-m", "dicom_backup_dagster.sandbox"]
    up = subprocess.run(
        [
            *cli,
            "up",
            "--root",
            str(root),
            "--detach",
            "--patients",
            "1",
            "--ct-slices",
            "2",
            "--fractions",
            "1",
            "--cbct-slices",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    state = read_state(root)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "started in" in up.stdout and "SANDBOX^" not in up.stdout + up.stderr
        status = subprocess.run(
            [*cli, "status", "--root", str(root)], capture_output=True, text=True, cwd=REPO
        )
        assert status.returncode == 0, status.stdout
    finally:
        down = subprocess.run(
            [*cli, "down", "--root", str(root)], capture_output=True, text=True, cwd=REPO, timeout=120
        )
    assert down.returncode == 0 and "ORTHANC_MAIN" in down.stdout
    assert state is not None
    assert not any(pid_alive(int(p["pid"])) for p in state["processes"].values())
    assert read_state(root)["running"] is False  # type: ignore[index]


def test_start_retries_with_new_ports_when_one_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    import dicom_backup_dagster.sandbox.sandbox as sandbox_module

    busy = socket.socket()
    busy.bind(("", 0))
    busy.listen()
    real_allocate = sandbox_module._Ports.allocate
    allocated: list[sandbox_module._Ports] = []

    def allocate() -> sandbox_module._Ports:
        ports = real_allocate()
        if not allocated:
            ports.main_dicom = busy.getsockname()[1]  # someone else grabbed it after free_port()
        allocated.append(ports)
        return ports

    monkeypatch.setattr(sandbox_module._Ports, "allocate", staticmethod(allocate))
    opts = SandboxOptions(
        data=SyntheticOptions(patients=1, ct_slices=1, fractions=0, cbct_slices=0),
        cache_dir=tmp_path / "cache",
    )
    try:
        with Sandbox(tmp_path / "sb", opts) as sb:
            assert len(allocated) == 2
            assert sb.main is not None and sb.main.dicom_port != busy.getsockname()[1]
            assert echo_ok(sb.main.peer, calling_aet="DICOM_BACKUP")
    finally:
        busy.close()
