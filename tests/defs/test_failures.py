"""Every failure says why, to the end: the step's final failure after its retries, the alert built from it and
the JSON log lines name the peer (AE@host:port), the operation and the cause, against the real sandbox peers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest
import yaml

from dicom_backup_dagster.config import EnvironmentConfig, load_config
from dicom_backup_dagster.defs.alerts import AlertPlan, backup_failure_alerts_of
from dicom_backup_dagster.defs.common import explain_failures
from dicom_backup_dagster.defs.qr_backup import build_qr_backup_defs
from dicom_backup_dagster.defs.resources import BackupStorage, build_resources
from dicom_backup_dagster.logs import LOG_FILE_ENV_VAR

REPO = Path(__file__).resolve().parents[2]
RETRIES = 2  # small settings, so that a test sees every attempt in seconds


def _env(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> EnvironmentConfig:
    for name, value in sandbox.env_vars().items():
        monkeypatch.setenv(name, value)
    env = load_config(sandbox.config_path, "SANDBOX").environment
    settings = replace(env.settings, lookback_days=0, max_retries=RETRIES, retry_delay_s=0.05)
    return replace(env, settings=settings)


def _defs(env: EnvironmentConfig, storage: Path) -> dg.Definitions:
    return dg.Definitions.merge(  # the retry policy from the settings (the builders' default)
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(storage)))),
        build_qr_backup_defs(env),
    )


def _aria_day(sandbox: Any) -> str:
    day = min(r.date for r in sandbox.manifest.for_source("ARIA"))
    return dt.datetime.strptime(day, "%Y%m%d").date().isoformat()


@pytest.fixture(scope="module")
def aria_down(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An ARIA backup with ARIA stopped, with the repository's JSON logs: every attempt fails, the last
    one for good."""
    home = tmp_path_factory.mktemp("failures")
    log_file = home / "dicom_backup.jsonl"
    python_logs = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())["python_logs"]
    with (
        pytest.MonkeyPatch.context() as mp,
        dg.instance_for_test(temp_dir=str(home), overrides={"python_logs": python_logs}) as instance,
    ):
        mp.setenv(LOG_FILE_ENV_VAR, str(log_file))
        env = _env(sandbox, mp)
        defs = _defs(env, home / "storage")
        with sandbox.peer_stopped("ARIA"):
            job = defs.resolve_job_def("ARIA_backup")
            result = job.execute_in_process(
                partition_key=_aria_day(sandbox), instance=instance, raise_on_error=False
            )
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        yield SimpleNamespace(env=env, defs=defs, instance=instance, result=result, lines=lines)


def test_retry_policy_comes_from_the_settings(aria_down):
    policy = aria_down.defs.resolve_assets_def(dg.AssetKey(["ARIA", "inventory"])).op.retry_policy
    assert policy is not None and policy.max_retries == RETRIES and policy.delay == 0.05
    assert policy.backoff == dg.Backoff.EXPONENTIAL


def test_final_failure_after_retries_names_the_peer_and_the_cause(aria_down):
    result, env = aria_down.result, aria_down.env
    aria = str(env.sources["ARIA"].peer)
    assert not result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == RETRIES
    for n, event in enumerate(retries, 1):  # every earlier attempt says the same
        said = _said(event.event_specific_data.error)
        assert aria in said and "connection refused" in said
        assert f"attempt {n} of {RETRIES + 1}: will be retried" in said
    (final,) = result.get_step_failure_events()
    data = final.step_failure_data
    assert data.error is not None and "Exceeded max_retries" not in data.error.message
    text = data.error.message
    assert f"ARIA backup, inventory (C-FIND) of partition {_aria_day_of(result)}" in text
    assert aria in text and "C-FIND" in text and "connection refused" in text
    assert "check that the peer is running" in text  # the advice
    assert f"attempt {RETRIES + 1} of {RETRIES + 1}: failed after every retry" in text
    assert data.user_failure_data is not None
    metadata = {k: v.value for k, v in data.user_failure_data.metadata.items()}
    assert metadata["peer"] == aria and metadata["operation"] == "C-FIND"
    assert metadata["cause"].startswith("connection refused")


def _said(error: Any) -> str:
    """An error's message and its causes' (Dagster wraps a retried Failure in RetryRequestedFromPolicy)."""
    out = []
    while error is not None:
        out.append(error.message)
        error = error.cause
    return "\n".join(out)


def _aria_day_of(result: Any) -> str:
    return result.dagster_run.tags["dagster/partition"]


def test_run_failure_alert_names_the_peer_and_the_cause(aria_down):
    run = aria_down.instance.get_run_by_id(aria_down.result.run_id)
    context = SimpleNamespace(instance=aria_down.instance, log=logging.getLogger("tests.failures"))
    (alert,) = backup_failure_alerts_of(context, AlertPlan.of(aria_down.env), run)  # type: ignore[arg-type]
    text = alert.text()
    assert f"Peer: {aria_down.env.sources['ARIA'].peer}" in text
    assert "Operation: C-FIND" in text and "connection refused" in text
    assert "Failed step: ARIA__inventory" in text


def test_error_log_lines_carry_the_reason(aria_down):
    aria = str(aria_down.env.sources["ARIA"].peer)
    errors = [line for line in aria_down.lines if line["level"] == "ERROR"]
    assert errors, "no ERROR line for the failed step"
    assert any(aria in line["message"] and "connection refused" in line["message"] for line in errors)
    for line in errors:
        assert "SANDBOX^" not in line["message"]


def test_dimse_failures_are_logged_at_warning(aria_down):
    failed = [line for line in aria_down.lines if line.get("operation") == "C-FIND" and line.get("peer_ae")]
    assert failed and all(line["status"] == "failure" for line in failed)
    assert {line["level"] for line in failed} == {"WARNING"}


def test_an_unexpected_exception_also_ends_with_its_reason_not_exceeded_max_retries():
    policy = dg.RetryPolicy(max_retries=1)

    @dg.asset(retry_policy=policy)
    @explain_failures(policy)
    def full_disk(context) -> None:  # type: ignore[no-untyped-def]  # string annotations fail here
        raise OSError(28, "No space left on device")

    result = dg.materialize([full_disk], raise_on_error=False)
    (final,) = result.get_step_failure_events()
    text = final.step_failure_data.error.message
    assert "full_disk failed: OSError: [Errno 28] No space left on device" in text
    assert "attempt 2 of 2: failed after every retry" in text and "Exceeded max_retries" not in text
    assert len([e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]) == 1
