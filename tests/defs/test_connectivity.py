"""connectivity_check against the sandbox's real peers (Orthanc, dcmqrscp, pynetdicom SCP, SQLite ODBC)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from dicom_backup_dagster.config import load_config
from dicom_backup_dagster.defs import build_definitions
from dicom_backup_dagster.defs.connectivity import peer_asset_key


def _run_connectivity(config_path: Path, monkeypatch: pytest.MonkeyPatch, env_vars: dict[str, str]):
    for name, value in env_vars.items():
        monkeypatch.setenv(name, value)
    site = load_config(config_path, "SANDBOX")
    defs = build_definitions(site)
    job = defs.resolve_job_def("connectivity_check")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        # From the instance: a failed step's observations are stored but not in result.all_events.
        observations = [
            e.dagster_event.event_specific_data.asset_observation
            for e in instance.all_logs(result.run_id)
            if e.dagster_event and e.dagster_event.event_type_value == "ASSET_OBSERVATION"
        ]
        messages = [
            e.message
            for e in instance.all_logs(result.run_id)
            if e.user_message and e.user_message.startswith(("UP ", "DOWN "))
        ]
    return site, result, observations, messages


def test_every_sandbox_peer_answers(sandbox, monkeypatch):
    site, result, observations, messages = _run_connectivity(
        sandbox.config_path, monkeypatch, sandbox.env_vars()
    )
    assert result.success
    aliases = {*site.environment.peers(), "MOSAIQ"}
    assert len(aliases) == 5  # ARIA, MIM, MOSAIQ, ORTHANC_MAIN, ORTHANC_STAGE
    metadata = result.output_for_node("check_connectivity")
    assert metadata == {alias: True for alias in aliases}
    step_output = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
    out_meta = step_output.event_specific_data.metadata
    assert out_meta["peers checked"].value == 5
    assert out_meta["peers down"].value == 0
    for alias in aliases:
        assert out_meta[f"{alias} up"].value == 1
        assert 0 < out_meta[f"{alias} latency ms"].value < 5000
    assert {o.asset_key for o in observations} == {peer_asset_key(a) for a in aliases}
    assert len(messages) == 5 and all("UP " in m for m in messages)
    aria = site.environment.sources["ARIA"]
    assert any(f"ARIA: C-ECHO {aria.aet}@127.0.0.1:{aria.port}" in m for m in messages)


def test_stopped_peer_fails_the_run_naming_it(sandbox, monkeypatch):
    with sandbox.peer_stopped("MIM"):
        site, result, observations, messages = _run_connectivity(
            sandbox.config_path, monkeypatch, sandbox.env_vars()
        )
    assert not result.success
    mim = site.environment.sources["MIM"]
    failure = result.failure_data_for_node("check_connectivity")
    description = failure.user_failure_data.description
    assert description.startswith("1 of 5 peers unreachable")
    assert f"{mim.aet}@127.0.0.1:{mim.port}" in description
    assert "MIM: C-ECHO" in description
    assert failure.user_failure_data.metadata["MIM up"].value == 0
    assert failure.user_failure_data.metadata["ARIA up"].value == 1
    down = [o for o in observations if o.asset_key == peer_asset_key("MIM")]
    assert down and down[0].metadata["up"].value == 0
    assert any(m.startswith("DOWN  MIM") for m in messages)


def test_unopenable_mosaiq_database_is_reported_without_the_password(sandbox, monkeypatch, tmp_path):
    text = sandbox.config_path.read_text()
    mosaiq_db = sandbox.mosaiq_path
    broken = tmp_path / "environments.toml"
    broken.write_text(text.replace(str(mosaiq_db), str(tmp_path / "no-such-dir" / "mosaiq.sqlite")))
    env_vars = sandbox.env_vars()
    site, result, _, messages = _run_connectivity(broken, monkeypatch, env_vars)
    assert not result.success
    description = result.failure_data_for_node("check_connectivity").user_failure_data.description
    assert "MOSAIQ: ODBC connect" in description
    password = env_vars[site.environment.sources["MOSAIQ"].db_password_env]
    assert password not in description
    assert all(password not in m for m in messages)


@pytest.mark.parametrize("alias", ["ORTHANC_MAIN", "ARIA"])
def test_each_dicom_peer_has_its_own_asset(sandbox, monkeypatch, alias):
    for name, value in sandbox.env_vars().items():
        monkeypatch.setenv(name, value)
    defs = build_definitions(load_config(sandbox.config_path, "SANDBOX"))
    spec = defs.resolve_assets_def(peer_asset_key(alias))
    assert spec.group_names_by_key[peer_asset_key(alias)] == "connectivity"
