"""The code location loads: `dagster definitions validate`, exactly as an operator would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _validate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env={**os.environ, "DAGSTER_HOME": "", **env},
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_definitions_validate_against_the_sandbox_config(sandbox_env):
    result = _validate(sandbox_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_dg_check_and_list_defs_load_the_same_definitions(sandbox_env):
    """`dg check defs` / `dg list defs` ([tool.dg] in pyproject.toml) see the project's jobs and checks."""
    dg = str(Path(sys.executable).with_name("dg"))
    env = {**os.environ, "DAGSTER_HOME": "", **sandbox_env}
    check = subprocess.run(
        [dg, "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert check.returncode == 0, check.stdout + check.stderr
    listed = subprocess.run(
        [dg, "list", "defs", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout
    for name in ("ARIA_backup", "MIM_backup", "MOSAIQ_backup", "ARIA/archived", "content_verified"):
        assert name in text, name


def test_definitions_without_a_config_explain_what_to_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_BACKUP_")}
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode != 0
    assert "DICOM_BACKUP_CONFIG" in result.stdout + result.stderr
