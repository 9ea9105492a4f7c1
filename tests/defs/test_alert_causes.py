"""One page per cause, the alert history and the manual resolve, against the sandbox's real peers (Orthanc
main and staging, the ARIA and MIM simulators, the Mosaiq database), a real Dagster instance and loopback
PagerDuty, Slack and SMTP servers (the fixtures and helpers of test_alerts.py).

- Main archive stopped while ARIA, MIM and Mosaiq runs fail: one PagerDuty trigger and one Slack message
  naming the archive and the three sources, no per-source page; archive back, the three re-run: one resolve
  with the same dedup key; alerts/history shows the alert open, then resolved, with times.
- MIM alone down: its own page, as before; the resolve_alert job closes it at PagerDuty.
- No synthetic patient's name, ID or birth date in any payload or history entry.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.defs.alert_lifecycle import HISTORY_ASSET, topology_of
from dicom_backup_dagster.defs.alerts import build_alert_defs
from dicom_backup_dagster.defs.mosaiq_backup import build_mosaiq_backup_defs
from dicom_backup_dagster.defs.qr_backup import build_qr_backup_defs
from dicom_backup_dagster.defs.resources import BackupStorage, build_resources, notifier_resources
from dicom_backup_dagster.monitoring.exporter import DagsterStateCollector
from dicom_backup_dagster.notify.causes import CauseBook, Grouping, Signal
from dicom_backup_dagster.notify.history import History
from dicom_backup_dagster.sandbox.synthetic import patients
from tests.conftest import SANDBOX_TEST_DATA
from tests.defs.test_alerts import (  # noqa: F401
    Channels,
    Sensors,
    _alert_defs,
    _canaries,
    _env,
    channels,
)

NO_RETRY = dg.RetryPolicy(max_retries=0)
ARCHIVE_KEY = "dicom-backup/SANDBOX/ORTHANC_MAIN/cause/archive_down"
MIM_KEY = "dicom-backup/SANDBOX/MIM/backup-failed"


def _defs(env: EnvironmentConfig, storage: Path) -> dg.Definitions:
    return dg.Definitions.merge(
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(storage)))),
        build_qr_backup_defs(env, retry_policy=NO_RETRY),
        build_mosaiq_backup_defs(env, retry_policy=NO_RETRY),
        build_alert_defs(env),
    )


def _days(sandbox: Any) -> dict[str, str]:
    def first(source: str) -> str:
        day = min(r.date for r in sandbox.manifest.for_source(source))
        return dt.datetime.strptime(day, "%Y%m%d").date().isoformat()

    mosaiq = next(iter(patients(SANDBOX_TEST_DATA))).treatment_dates[0].isoformat()
    return {"ARIA": first("ARIA"), "MIM": first("MIM"), "MOSAIQ": mosaiq}


def _run(defs: dg.Definitions, source: str, day: str, instance: dg.DagsterInstance, *only: str) -> Any:
    job = defs.resolve_job_def(f"{source}_backup")
    selection = [dg.AssetKey([source, name]) for name in only] or None
    return job.execute_in_process(
        partition_key=day, instance=instance, raise_on_error=False, asset_selection=selection
    )


def _history_observations(instance: dg.DagsterInstance) -> list[dict[str, Any]]:
    records = instance.fetch_observations(HISTORY_ASSET, limit=100).records
    out = []
    for record in sorted(records, key=lambda r: r.storage_id):
        observation = record.asset_observation
        assert observation is not None
        out.append({k: v.value for k, v in observation.metadata.items()})
    return out


def _rows(table: Any) -> list[dict[str, Any]]:
    return [dict(r.data) for r in table.records]


@pytest.fixture(scope="module")
def night(sandbox: Any, channels: Channels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # noqa: F811
    """Archive down for a night of ARIA, MIM and Mosaiq, then back and the three re-run; then MIM down alone
    and resolved by hand with the resolve_alert job. Sensors evaluated after every run."""
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        env = _env(sandbox, mp, channels)
        defs = _defs(env, tmp_path_factory.mktemp("causes-storage"))
        sensors = Sensors(defs, env, instance)
        days = _days(sandbox)
        channels.reset()
        with sandbox.peer_stopped("ORTHANC_MAIN"):
            failed = {s: _run(defs, s, days[s], instance) for s in ("ARIA", "MIM", "MOSAIQ")}
            held = []
            for result in failed.values():
                sensors.after(result)
                held.append(len(channels.pd()))
        during = {"pd": channels.pd(), "slack": channels.slack(), "mail": list(channels.mails())}
        open_gauge = _open_alerts(instance)
        # Mosaiq staged its records during the outage: moving them to the archive is its re-run.
        recovered = {s: _run(defs, s, days[s], instance) for s in ("ARIA", "MIM")}
        recovered["MOSAIQ"] = _run(defs, "MOSAIQ", days["MOSAIQ"], instance, "archived")
        for result in recovered.values():
            sensors.after(result)
        after = {"pd": channels.pd(), "slack": channels.slack(), "mail": list(channels.mails())}
        archive_payloads = channels.payload_text()

        channels.reset()
        with sandbox.peer_stopped("MIM"):
            mim = _run(defs, "MIM", days["MIM"], instance)
            sensors.after(mim)
        mim_alone = {"pd": channels.pd(), "slack": channels.slack()}
        wrong = defs.resolve_job_def("resolve_alert").execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={"ops": {"resolve_alert_by_hand": {"config": {"alert": "no/such/key"}}}},
        )
        manual = defs.resolve_job_def("resolve_alert").execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={"ops": {"resolve_alert_by_hand": {"config": {"alert": MIM_KEY}}}},
        )
        yield {
            "env": env,
            "instance": instance,
            "failed": failed,
            "recovered": recovered,
            "held": held,
            "during": during,
            "after": after,
            "open_gauge": open_gauge,
            "mim": mim,
            "mim_alone": mim_alone,
            "manual": manual,
            "wrong": wrong,
            "after_manual": {"pd": channels.pd(), "slack": channels.slack()},
            "payloads": archive_payloads + channels.payload_text(),
            "history": _history_observations(instance),
            "open_after": _open_alerts(instance),
        }


def _open_alerts(instance: dg.DagsterInstance) -> dict[str, float]:
    """dicom_backup_open_alerts{severity} as the exporter serves it."""
    collector = DagsterStateCollector(lambda: instance, cache_seconds=0)
    assert collector.refresh()
    (family,) = [f for f in collector.families() if f.name == "dicom_backup_open_alerts"]
    return {s.labels["severity"]: s.value for s in family.samples}


def test_archive_down_pages_once_naming_the_archive_and_the_three_sources(night):
    assert not any(r.success for r in night["failed"].values())
    assert night["held"] == [0, 0, 1]  # held until the third source that depends on the archive failed
    during = night["during"]
    (trig,) = during["pd"]  # exactly one page: no per-source BACKUP_FAILED pages
    assert trig["event_action"] == "trigger" and trig["dedup_key"] == ARCHIVE_KEY
    details = trig["payload"]["custom_details"]
    assert details["kind"] == "archive_down" and details["subject"] == "ORTHANC_MAIN"
    assert details["peer"] == str(night["env"].main_target.peer)
    assert details["sources"] == ["ARIA", "MIM", "MOSAIQ"]
    assert len(details["partitions"]) == 3 and all(
        p.split()[0] in details["sources"] for p in details["partitions"]
    )
    assert (
        details["confidence"] == "0.97 (high)" and details["runbook_url"] == "docs/runbooks/archive_down.md"
    )
    summary = trig["payload"]["summary"]
    assert "ORTHANC_MAIN" in summary and "ARIA, MIM, MOSAIQ" in summary
    (slack,) = during["slack"]
    assert (
        "main archive ORTHANC_MAIN unreachable or refusing: backups of ARIA, MIM, MOSAIQ failed"
        in json.dumps(slack)
    )
    assert during["mail"] == []  # critical: PagerDuty and Slack
    assert night["open_gauge"] == {"critical": 1.0, "high": 0.0, "low": 0.0}


def test_archive_back_and_the_runs_re_run_resolve_it_once_with_the_same_key(night):
    assert all(r.success for r in night["recovered"].values())
    after = night["after"]
    assert [e["event_action"] for e in after["pd"]] == ["trigger", "resolve"]
    assert after["pd"][1]["dedup_key"] == ARCHIVE_KEY
    assert len(after["slack"]) == 2 and "[RESOLVED]" in json.dumps(after["slack"][1])
    (mail,) = after["mail"]  # the resolve also goes to the low route
    assert "main archive ORTHANC_MAIN back" in mail["Subject"]


def test_history_shows_the_archive_alert_open_then_resolved_with_times(night):
    history = night["history"]
    events = [row for obs in history for row in _rows(obs["events"])]
    archive = [e for e in events if e["alert"] == ARCHIVE_KEY]
    assert [e["event"] for e in archive] == ["trigger", "resolve"]
    assert (
        archive[0]["channels"] == "pagerduty, slack"
        and archive[0]["runbook"] == "docs/runbooks/archive_down.md"
    )
    assert archive[0]["sources"] == "ARIA, MIM, MOSAIQ"
    latest = {r["alert"]: r for r in _rows(history[-1]["alerts"])}
    row = latest[ARCHIVE_KEY]
    assert row["state"] == "resolved" and row["cause"] == "ORTHANC_MAIN unreachable"
    opened = dt.datetime.fromisoformat(row["opened"])
    resolved = dt.datetime.fromisoformat(row["resolved"])
    assert opened <= resolved and row["severity"] == "critical"
    assert row["channels"] == "email, pagerduty, slack"
    # Every entry and every event carries its runbook.
    assert all(r["runbook"] for r in latest.values()) and all(e["runbook"] for e in events)


def test_mim_alone_down_pages_per_source_and_the_manual_resolve_closes_it(night):
    assert not night["mim"].success
    (trig,) = night["mim_alone"]["pd"]
    assert trig["dedup_key"] == MIM_KEY and trig["payload"]["custom_details"]["peer"] == str(
        night["env"].sources["MIM"].peer
    )
    assert len(night["mim_alone"]["slack"]) == 1
    assert not night["wrong"].success  # an unknown key fails, naming the open ones
    failure = night["wrong"].get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "no open alert with key 'no/such/key'" in failure.description and MIM_KEY in failure.description

    assert night["manual"].success
    pd = night["after_manual"]["pd"]
    assert [(e["event_action"], e["dedup_key"]) for e in pd] == [("trigger", MIM_KEY), ("resolve", MIM_KEY)]
    assert "[RESOLVED] SANDBOX: MIM backup succeeded again" in json.dumps(night["after_manual"]["slack"][-1])
    latest = {r["alert"]: r for r in _rows(night["history"][-1]["alerts"])}
    assert latest[MIM_KEY]["state"] == "resolved"
    ledger = {e.key: e for e in History(night["instance"].run_storage).entries()}
    assert ledger[MIM_KEY].resolved_by == "manual"
    assert night["open_after"] == {"critical": 0.0, "high": 0.0, "low": 0.0}


def test_no_canary_in_any_payload_or_history_entry(night, sandbox):
    canaries = _canaries(sandbox)
    assert night["payloads"] and night["history"]
    assert not [c for c in canaries if c in night["payloads"]]
    history = repr(night["history"]) + repr(History(night["instance"].run_storage).entries())
    assert not [c for c in canaries if c in history]


def test_alert_causes_pages_a_held_cause_once_its_hold_has_passed(sandbox, channels, monkeypatch):  # noqa: F811
    """ARIA alone failed because of the archive, two minutes ago: the alert_causes sensor pages it."""
    env = _env(sandbox, monkeypatch, channels)
    defs = _alert_defs(env)
    with dg.instance_for_test() as instance:
        channels.reset()
        book = CauseBook(instance.run_storage, topology_of(env), Grouping(900, 120))
        fields = {
            "peer": str(env.main_target.peer),
            "error_class": "AssociationError",
            "association_stage": "connect",
        }
        signal = Signal.of("ARIA", fields, at=time.time() - 121, partition="2026-01-05", run_id="r1")
        assert book.on_failure(signal).action == "hold"
        book.save()
        resources = notifier_resources(env.notifications)
        context = dg.build_sensor_context(instance=instance, resources=resources, definitions=defs)
        defs.resolve_sensor_def("alert_causes")(context)  # type: ignore[operator]
        (trig,) = channels.pd()
        assert trig["dedup_key"] == ARCHIVE_KEY and trig["payload"]["custom_details"]["sources"] == ["ARIA"]
        assert trig["payload"]["custom_details"]["confidence"] == "0.70 (medium)"
        assert len(channels.slack()) == 1
        assert (
            CauseBook(instance.run_storage, topology_of(env)).incidents["archive_down/ORTHANC_MAIN"].state
            == "open"
        )
