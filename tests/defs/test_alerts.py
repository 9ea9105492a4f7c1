"""Alert sensors and the test-alert job against real runs: the sandbox's peers, loopback HTTP servers standing
in for Slack and PagerDuty, and aiosmtpd for email. Sensors are evaluated deterministically with
build_run_status_sensor_context / build_sensor_context over the runs' own instance.

The sandbox's synthetic patients are the PHI canary: their names (SANDBOX^PATIENT000n), IDs (SBX000n) and
birth dates occur nowhere but in the DICOM data, so finding one in a payload, a log line or Dagster metadata
means patient data leaked.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dicom_backup_dagster.config import EnvironmentConfig, load_config
from dicom_backup_dagster.defs.alerts import build_alert_defs
from dicom_backup_dagster.defs.checks import JUDGED, day_check_spec, log_day_results
from dicom_backup_dagster.defs.connectivity import build_connectivity_defs
from dicom_backup_dagster.defs.qr_backup import build_qr_backup_defs
from dicom_backup_dagster.defs.resources import BackupStorage, build_resources, notifier_resources
from dicom_backup_dagster.notify import EmailSettings, NotificationSettings, PagerDutySettings, SlackSettings
from dicom_backup_dagster.sandbox import synthetic
from tests.notify.servers import Answer, CaptureServer, SmtpServer

HOOK = "/services/T1/B1/hook"
ENQUEUE = "/v2/enqueue"
UI = "http://dagster.test:3000"
SENSOR_LOG = logging.getLogger("tests.alerts.sensors")


@dataclass
class Channels:
    http: CaptureServer
    smtp: SmtpServer

    def pd(self, action: str | None = None) -> list[dict[str, Any]]:
        events = [r.json for r in self.http.on(ENQUEUE)]
        return [e for e in events if action is None or e["event_action"] == action]

    def slack(self) -> list[dict[str, Any]]:
        return [r.json for r in self.http.on(HOOK)]

    def mails(self) -> list[Any]:
        return self.smtp.capture.messages

    def reset(self) -> None:
        self.http.requests.clear()
        self.smtp.capture.messages.clear()
        self.smtp.capture.raw.clear()

    def payload_text(self) -> str:
        """Every HTTP body and every mail (raw, and decoded: quoted-printable can split a string)."""
        mails = [m.decode() for m in self.smtp.capture.raw]
        mails += [f"{m['Subject']}\n{_body(m)}" for m in self.smtp.capture.messages]
        return "\n".join([r.body.decode() for r in self.http.requests] + mails)


def _body(message: Any) -> str:
    return message.get_payload(decode=True).decode()


@pytest.fixture(scope="module")
def channels() -> Iterator[Channels]:
    with CaptureServer() as http, SmtpServer() as smtp:
        http.answers[ENQUEUE] = Answer(202, b'{"status": "success"}')
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TEST_ALERTS_SLACK_URL", http.url + HOOK)
            mp.setenv("TEST_ALERTS_PD_KEY", "test-routing-key")
            yield Channels(http, smtp)


def _notifications(channels: Channels) -> NotificationSettings:
    return NotificationSettings(
        dagster_ui_url=UI,
        timeout_s=3,
        slack=SlackSettings(webhook_url_env="TEST_ALERTS_SLACK_URL"),
        pagerduty=PagerDutySettings("TEST_ALERTS_PD_KEY", channels.http.url + ENQUEUE),
        email=EmailSettings(
            "127.0.0.1", "backup@example.org", ("it@example.org",), channels.smtp.port, starttls=False
        ),
    )


def _env(sandbox: Any, monkeypatch: pytest.MonkeyPatch, channels: Channels) -> EnvironmentConfig:
    for name, value in sandbox.env_vars().items():
        monkeypatch.setenv(name, value)
    env = load_config(sandbox.config_path, "SANDBOX").environment
    settings = replace(env.settings, lookback_days=0)
    return replace(env, settings=settings, notifications=_notifications(channels))


def _defs(env: EnvironmentConfig, storage: Path) -> dg.Definitions:
    return dg.Definitions.merge(
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(storage)))),
        build_qr_backup_defs(env, retry_policy=dg.RetryPolicy(max_retries=1, delay=1)),
        build_connectivity_defs(env),
        build_alert_defs(env),
    )


def _alert_defs(env: EnvironmentConfig) -> dg.Definitions:
    """The alert definitions with the notifier resources they take (build_resources makes them)."""
    return dg.Definitions.merge(
        dg.Definitions(resources=notifier_resources(env.notifications)), build_alert_defs(env)
    )


class Sensors:
    """Evaluates the three alert sensors as the daemon would, one run or tick at a time."""

    def __init__(self, defs: dg.Definitions, env: EnvironmentConfig, instance: dg.DagsterInstance) -> None:
        self.defs, self.instance = defs, instance
        self.resources = notifier_resources(env.notifications)
        self.cursor: str | None = None

    def after(self, result: Any) -> None:
        """The run-status sensor that reacts to `result`'s final status."""
        failed = not result.success
        name = "backup_failure_alerts" if failed else "backup_recovery_alerts"
        event = result.get_run_failure_event() if failed else result.get_run_success_event()
        context = dg.build_run_status_sensor_context(
            sensor_name=name,
            dagster_event=event,
            dagster_instance=self.instance,
            dagster_run=result.dagster_run,
            resources=self.resources,
        )
        context._logger = SENSOR_LOG  # the daemon's instigation logger writes to stderr; tests read records
        sensor = self.defs.resolve_sensor_def(name)
        sensor(context.for_run_failure() if failed else context)  # type: ignore[operator]

    def check_tick(self) -> None:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.resources, definitions=self.defs
        )
        context._logger = SENSOR_LOG
        self.defs.resolve_sensor_def("asset_check_alerts")(context)  # type: ignore[operator]
        self.cursor = context.cursor


def _aria_day(sandbox: Any) -> str:
    day = min(r.date for r in sandbox.manifest.for_source("ARIA"))
    return dt.datetime.strptime(day, "%Y%m%d").date().isoformat()


def _backup(defs: dg.Definitions, partition: str, instance: dg.DagsterInstance, **tags: str) -> Any:
    job = defs.resolve_job_def("ARIA_backup")
    return job.execute_in_process(partition_key=partition, instance=instance, raise_on_error=False, tags=tags)


# --------------------------------------------------------------------------------------------------------
# Done when: archive stopped during a backup -> one PagerDuty trigger and one Slack message; archive back,
# re-run -> the resolve (same dedup key). Also the PHI canary over every byte of it.


@pytest.fixture(scope="module")
def outage(sandbox: Any, channels: Channels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """ARIA backup with ORTHANC_MAIN down (a run marked for retry, then its final retry), then the same
    partition once ORTHANC_MAIN is back; every sensor evaluated after every run."""
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        env = _env(sandbox, mp, channels)
        # ARIA alone fails: no hold, so its archive outage pages at once (test_alert_causes.py: the hold).
        env = replace(env, notifications=replace(env.notifications, grouping_hold_s=0))
        defs = _defs(env, tmp_path_factory.mktemp("alerts-storage"))
        sensors = Sensors(defs, env, instance)
        partition = _aria_day(sandbox)
        channels.reset()
        records: list[logging.LogRecord] = []
        handler = logging.Handler(level=logging.DEBUG)
        handler.emit = records.append  # type: ignore[method-assign]
        root = logging.getLogger()
        root.addHandler(handler)
        previous_level = root.level
        root.setLevel(logging.DEBUG)
        try:
            with sandbox.peer_stopped("ORTHANC_MAIN"):
                # The first failure is marked for an automatic run retry (dagster/will_retry), as the run
                # retry daemon does; the retry fails again and is final.
                first = _backup(defs, partition, instance, **{"dagster/will_retry": "true"})
                sensors.after(first)
                after_first = (len(channels.pd()), len(channels.slack()))
                retry = _backup(
                    defs,
                    partition,
                    instance,
                    **{"dagster/parent_run_id": first.run_id, "dagster/root_run_id": first.run_id},
                )
                sensors.after(retry)
                sensors.after(retry)  # the daemon evaluating the same run again must not page again
                sensors.check_tick()
                during = {"pd": channels.pd(), "slack": channels.slack(), "mail": list(channels.mails())}
            recovered = _backup(defs, partition, instance)
            sensors.after(recovered)
            sensors.check_tick()
            yield {
                "env": env,
                "instance": instance,
                "runs": (first, retry, recovered),
                "after_first": after_first,
                "during": during,
                "after": {"pd": channels.pd(), "slack": channels.slack(), "mail": list(channels.mails())},
                "payloads": channels.payload_text(),
                "logs": records,
            }
        finally:
            root.removeHandler(handler)
            root.setLevel(previous_level)


def test_archive_down_pages_once_then_the_next_success_resolves(outage):
    first, retry, recovered = outage["runs"]
    assert not first.success and not retry.success and recovered.success
    assert outage["after_first"] == (0, 0)  # the run that will be retried alerts nobody

    during = outage["during"]
    assert len(during["pd"]) == 1 and len(during["slack"]) == 1 and during["mail"] == []
    (trig,) = during["pd"]
    assert trig["event_action"] == "trigger"
    # The failure's structured error names the main archive: the archive's cause alert, not ARIA's own.
    assert trig["dedup_key"] == "dicom-backup/SANDBOX/ORTHANC_MAIN/cause/archive_down"
    details = trig["payload"]["custom_details"]
    assert details["run_id"] == retry.run_id and details["run_url"] == f"{UI}/runs/{retry.run_id}"
    assert details["sources"] == ["ARIA"] and details["cause"] == "ORTHANC_MAIN unreachable"
    assert details["partitions"] == [f"ARIA {retry.dagster_run.tags['dagster/partition']}"]
    main = outage["env"].main_target.peer
    assert details["peer"] == str(main)  # the archive is named as AE@host:port
    assert details["runbook_url"] == "docs/runbooks/archive_down.md"
    assert details["confidence"] == "0.70 (medium)"  # one source so far
    slack = json.dumps(during["slack"][0])
    assert "[CRITICAL] SANDBOX: main archive ORTHANC_MAIN unreachable or refusing: backups of ARIA" in slack
    assert retry.run_id in slack

    after = outage["after"]
    resolves = [e for e in after["pd"] if e["event_action"] == "resolve"]
    assert len(resolves) == 1 and len(after["pd"]) == 2
    assert resolves[0]["dedup_key"] == trig["dedup_key"]
    assert len(after["slack"]) == 2 and "[RESOLVED] SANDBOX: main archive ORTHANC_MAIN back" in json.dumps(
        after["slack"][1]
    )
    (mail,) = after["mail"]  # recoveries also go to the `low` route (email)
    assert "RESOLVED" in mail["Subject"] and "failures_in_incident=1" in _body(mail)


def _canaries(sandbox: Any) -> list[str]:
    out = []
    for patient in synthetic.patients(sandbox.manifest.options):
        out += [patient.patient_name, patient.patient_id, patient.birth_date.strftime("%Y%m%d")]
    return out


def test_phi_canary_reaches_no_payload_log_or_metadata(outage, sandbox):
    canaries = _canaries(sandbox)
    assert "SANDBOX^PATIENT0001" in canaries and "SBX0001" in canaries
    payloads = outage["payloads"]
    assert payloads  # the scenario did send messages
    uids = {r.sop_instance_uid for r in sandbox.manifest.for_source("ARIA")}
    uids |= {r.study_instance_uid for r in sandbox.manifest.for_source("ARIA")}
    # Payloads: no patient name, ID, birth date, and no UID either (those stay in the Dagster UI).
    assert not [c for c in canaries if c in payloads]
    assert not [u for u in uids if u in payloads]
    # Every log record of the scenario (sensors, notifiers, runs) ...
    lines = "\n".join(r.getMessage() for r in outage["logs"])
    assert "sent to pagerduty" in lines and "will be retried: no alert" in lines  # the sensors' own lines
    assert not [c for c in canaries if c in lines]
    # ... and every event of every run in the instance: messages, metadata, failures.
    instance: dg.DagsterInstance = outage["instance"]
    for run in outage["runs"]:
        events = instance.all_logs(run.run_id)
        text = "\n".join(repr(e) for e in events)
        assert not [c for c in canaries if c in text], run.run_id
        tags = repr(instance.get_run_by_id(run.run_id).tags)  # type: ignore[union-attr]
        assert not [c for c in canaries if c in tags]


# --------------------------------------------------------------------------------------------------------
# Checks: each failed evaluation alerts once; a later pass resolves; a blocking check failing does not also
# raise a run-failure page.


def _check_defs(env: EnvironmentConfig, state: dict[str, bool]) -> dg.Definitions:
    key = dg.AssetKey(["ARIA", "archived"])

    @dg.asset(key=key)
    def archived() -> int:
        return 1

    @dg.asset_check(asset=key, name="complete_in_archive", blocking=True)
    def complete_in_archive() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=state["complete"], metadata={"missing": 0 if state["complete"] else 2, "first": "1.2.3.4"}
        )

    @dg.asset_check(asset=key, name="volume_vs_baseline")
    def volume() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=state["volume"],
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"current": 0, "baseline": 40},
        )

    job = dg.define_asset_job(
        "ARIA_backup", selection=dg.AssetSelection.assets(key), tags={"dicom_backup/source": "ARIA"}
    )
    return dg.Definitions.merge(
        dg.Definitions(assets=[archived], asset_checks=[complete_in_archive, volume], jobs=[job]),
        _alert_defs(env),
    )


def test_failed_checks_alert_once_per_evaluation_and_resolve_when_passing(sandbox, channels, monkeypatch):
    env = _env(sandbox, monkeypatch, channels)
    state = {"complete": False, "volume": False}
    defs = _check_defs(env, state)
    with dg.instance_for_test() as instance:
        channels.reset()
        sensors = Sensors(defs, env, instance)
        job = defs.resolve_job_def("ARIA_backup")
        failed = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not failed.success  # the blocking check failed the run ...
        sensors.after(failed)
        assert channels.pd() == []  # ... which the run-failure sensor leaves to the check sensor
        sensors.check_tick()
        (trig,) = channels.pd()
        assert trig["dedup_key"] == "dicom-backup/SANDBOX/ARIA/check/complete_in_archive"
        assert trig["payload"]["custom_details"]["counts"] == {"missing": 2}  # numbers only, no UIDs
        assert "1.2.3.4" not in channels.payload_text()
        slack = [json.dumps(s) for s in channels.slack()]
        assert len(slack) == 2  # critical (presence) and high (volume WARN)
        assert any("instances missing on the archive" in s for s in slack)
        assert any("volume below baseline" in s for s in slack)
        (mail,) = channels.mails()  # high goes to Slack and email
        assert "volume below baseline" in mail["Subject"]

        sensors.check_tick()  # the cursor: the same evaluations never alert twice
        assert (len(channels.pd()), len(channels.slack()), len(channels.mails())) == (1, 2, 1)

        job.execute_in_process(instance=instance, raise_on_error=False)  # a second failing evaluation
        sensors.check_tick()
        assert (len(channels.pd()), len(channels.slack()), len(channels.mails())) == (2, 4, 2)

        state.update(complete=True, volume=True)
        passed = job.execute_in_process(instance=instance, raise_on_error=False)
        assert passed.success
        sensors.check_tick()
        resolves = channels.pd("resolve")
        assert [r["dedup_key"] for r in resolves] == ["dicom-backup/SANDBOX/ARIA/check/complete_in_archive"]
        assert sum("RESOLVED" in json.dumps(s) for s in channels.slack()) == 2


def _day_check_defs(env: EnvironmentConfig, verdicts: dict[str, tuple[bool, bool]]) -> dg.Definitions:
    """A daily ARIA/archived with a per-day volume check (defs/checks.log_day_results) whose verdict per
    day is `verdicts[day]` = (passed, judged)."""
    key = dg.AssetKey(["ARIA", "archived"])
    days = dg.DailyPartitionsDefinition(start_date="2026-01-01")

    @dg.asset(key=key, partitions_def=days)
    def archived() -> None:
        return None

    spec = day_check_spec(key, "volume_vs_baseline", days, "test volume")

    @dg.multi_asset_check(specs=[spec], can_subset=True)
    def volume(context):  # type: ignore[no-untyped-def]
        results = {}
        for day in context.op_execution_context.partition_keys:
            passed, judged = verdicts[day]
            results[day] = dg.AssetCheckResult(
                passed=passed,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"{day}: test",
                metadata={"current": 0 if not passed else 40, JUDGED: judged},
            )
        yield from log_day_results(context, spec, results)

    job = dg.define_asset_job(
        "ARIA_backup",
        selection=dg.AssetSelection.assets(key) | dg.AssetSelection.checks_for_assets(key),
        partitions_def=days,
        tags={"dicom_backup/source": "ARIA"},
    )
    return dg.Definitions.merge(
        dg.Definitions(assets=[archived], asset_checks=[volume], jobs=[job]), _alert_defs(env)
    )


def test_check_alerts_name_the_day_and_resolve_only_what_they_raised(sandbox, channels, monkeypatch):
    env = _env(sandbox, monkeypatch, channels)
    verdicts = {
        "2026-01-05": (False, True),  # low volume: alerted
        "2026-01-10": (True, False),  # a quiet Saturday, not judged
        "2026-01-12": (True, True),  # a normal day never alerted for
    }
    defs = _day_check_defs(env, verdicts)
    job = defs.resolve_job_def("ARIA_backup")
    with dg.instance_for_test() as instance:
        channels.reset()
        sensors = Sensors(defs, env, instance)

        def run(day: str) -> None:
            assert job.execute_in_process(partition_key=day, instance=instance).success
            sensors.check_tick()

        run("2026-01-05")
        (alert,) = channels.slack()
        assert "volume below baseline" in json.dumps(alert) and "2026-01-05" in json.dumps(alert)
        run("2026-01-10")  # passes, not judged: resolves nothing
        run("2026-01-12")  # passes judged, but was never alerted: resolves nothing
        assert len(channels.slack()) == 1 and not any(
            "RESOLVED" in str(m["Subject"]) for m in channels.mails()
        )
        verdicts["2026-01-05"] = (True, True)
        run("2026-01-05")  # the alerted day passes: its incident is resolved, naming that day
        assert len(channels.slack()) == 2
        resolved = json.dumps(channels.slack()[-1])
        assert (
            "RESOLVED" in resolved and "volume back within baseline" in resolved and "2026-01-05" in resolved
        )


def test_a_blocking_per_day_check_pages_once_through_the_check_sensor(sandbox, channels, monkeypatch):
    """complete_in_archive failing at ERROR for a day fails its step after recording the day's evaluation
    (Dagster's blocking-check failure): the run-failure sensor leaves it to asset_check_alerts, which pages
    once, naming the day."""
    env = _env(sandbox, monkeypatch, channels)
    key = dg.AssetKey(["ARIA", "archived"])
    days = dg.DailyPartitionsDefinition(start_date="2026-01-01")

    @dg.asset(key=key, partitions_def=days)
    def archived() -> None:
        return None

    spec = day_check_spec(key, "complete_in_archive", days, "test presence", blocking=True)

    @dg.multi_asset_check(specs=[spec], can_subset=True)
    def presence(context):  # type: ignore[no-untyped-def]
        results = {
            day: dg.AssetCheckResult(passed=False, description=f"{day}: 2 missing", metadata={"missing": 2})
            for day in context.op_execution_context.partition_keys
        }
        yield from log_day_results(context, spec, results)

    job = dg.define_asset_job(
        "ARIA_backup",
        selection=dg.AssetSelection.assets(key) | dg.AssetSelection.checks_for_assets(key),
        partitions_def=days,
        tags={"dicom_backup/source": "ARIA"},
    )
    defs = dg.Definitions.merge(
        dg.Definitions(assets=[archived], asset_checks=[presence], jobs=[job]), _alert_defs(env)
    )
    with dg.instance_for_test() as instance:
        channels.reset()
        sensors = Sensors(defs, env, instance)
        failed = defs.resolve_job_def("ARIA_backup").execute_in_process(
            partition_key="2026-01-05", instance=instance, raise_on_error=False
        )
        assert not failed.success
        (evaluation,) = failed.get_asset_check_evaluations()
        assert evaluation.partition == "2026-01-05" and not evaluation.passed
        sensors.after(failed)
        assert channels.pd() == []
        sensors.check_tick()
        (trig,) = channels.pd()
        assert trig["dedup_key"] == "dicom-backup/SANDBOX/ARIA/check/complete_in_archive"
        assert trig["payload"]["custom_details"]["partition"] == "2026-01-05"


# --------------------------------------------------------------------------------------------------------
# Connectivity: a peer down for several checks pages once; its return resolves.


def test_peer_down_alerts_once_per_outage_not_every_check(sandbox, channels, monkeypatch, tmp_path):
    env = _env(sandbox, monkeypatch, channels)
    defs = _defs(env, tmp_path)
    schedule = defs.resolve_schedule_def("connectivity_check_schedule")
    assert schedule.cron_schedule == "*/15 * * * *"
    job = defs.resolve_job_def("connectivity_check")
    with dg.instance_for_test() as instance:
        channels.reset()
        sensors = Sensors(defs, env, instance)
        with sandbox.peer_stopped("MIM"):
            for _ in range(3):  # three 15-minute checks during one outage
                result = job.execute_in_process(instance=instance, raise_on_error=False)
                assert not result.success
                sensors.after(result)
        assert [e["dedup_key"] for e in channels.pd()] == ["dicom-backup/SANDBOX/MIM/unreachable"]
        (slack,) = channels.slack()
        assert "MIM is unreachable" in json.dumps(slack) and env.sources["MIM"].aet in json.dumps(slack)
        back = job.execute_in_process(instance=instance, raise_on_error=False)
        assert back.success
        sensors.after(back)
        assert [e["event_action"] for e in channels.pd()] == ["trigger", "resolve"]
        assert "MIM is reachable again" in json.dumps(channels.slack()[-1])


# --------------------------------------------------------------------------------------------------------
# send_test_alert: one message per configured channel; a failing channel fails the job, not the others.


def test_send_test_alert_reaches_every_channel_and_reports_a_broken_one(sandbox, channels, monkeypatch):
    env = _env(sandbox, monkeypatch, channels)
    defs = _alert_defs(env)
    job = defs.resolve_job_def("send_test_alert")
    with dg.instance_for_test() as instance:
        channels.reset()
        ok = job.execute_in_process(instance=instance, raise_on_error=False)
        assert ok.success
        assert len(channels.slack()) == 1 and len(channels.mails()) == 1
        assert [e["event_action"] for e in channels.pd()] == ["trigger", "resolve"]
        assert "Test alert" in json.dumps(channels.slack()[0])

        channels.reset()
        channels.http.answers[HOOK] = Answer(500, b"boom")
        try:
            broken = job.execute_in_process(instance=instance, raise_on_error=False)
        finally:
            del channels.http.answers[HOOK]
        assert not broken.success
        assert len(channels.mails()) == 1 and channels.pd("trigger")  # the others still got theirs
        failure = broken.get_step_failure_events()[0].step_failure_data.user_failure_data
        assert "slack" in failure.description and "HTTP 500" in failure.description
        assert "services/T1" not in failure.description  # the webhook URL is a credential


def test_exception_text_with_identifiers_never_reaches_a_message(sandbox, channels, monkeypatch):
    env = _env(sandbox, monkeypatch, channels)
    canary = "PatientName=SANDBOX^PATIENT0001 PatientID=SBX0001 StudyInstanceUID=1.2.826.0.1.3680043.99"

    @dg.asset(key=["MIM", "archived"])
    def archived() -> int:
        raise ValueError(canary)  # e.g. a pydicom error echoing a dataset

    job = dg.define_asset_job("MIM_backup", selection=[archived], tags={"dicom_backup/source": "MIM"})
    defs = dg.Definitions.merge(dg.Definitions(assets=[archived], jobs=[job]), _alert_defs(env))
    with dg.instance_for_test() as instance:
        channels.reset()
        result = defs.resolve_job_def("MIM_backup").execute_in_process(
            instance=instance, raise_on_error=False
        )
        assert not result.success
        Sensors(defs, env, instance).after(result)
        (trig,) = channels.pd()
        assert trig["payload"]["custom_details"]["error_type"] == "ValueError"  # the class, not the text
        assert trig["payload"]["custom_details"]["failed_step"] == "MIM__archived"
        text = channels.payload_text()
        assert len(channels.slack()) == 1
        for fragment in ("SANDBOX^PATIENT0001", "SBX0001", "1.2.826.0.1.3680043.99", "PatientName"):
            assert fragment not in text


def test_staging_cleanup_failure_and_summary_go_to_email(sandbox, channels, monkeypatch):
    env = _env(sandbox, monkeypatch, channels)
    state = {"fail": True}

    @dg.op(name="clean_stage")
    def clean(context) -> None:  # unannotated: under __future__ annotations Dagster rejects the string
        if state["fail"]:
            raise dg.Failure(
                description="main down", metadata={"staging": "ORTHANC_STAGE", "main_peer": "M@h:1"}
            )
        context.add_output_metadata({"examined": 5, "deleted": 3, "kept_too_young": 2, "seconds": 0.5})

    @dg.job(name="staging_cleanup")
    def staging_cleanup() -> None:
        clean()

    defs = dg.Definitions.merge(dg.Definitions(jobs=[staging_cleanup]), _alert_defs(env))
    with dg.instance_for_test() as instance:
        channels.reset()
        sensors = Sensors(defs, env, instance)
        job = defs.resolve_job_def("staging_cleanup")
        for _ in range(2):  # two failed nights: one mail
            failed = job.execute_in_process(instance=instance, raise_on_error=False)
            sensors.after(failed)
        state["fail"] = False
        sensors.after(job.execute_in_process(instance=instance, raise_on_error=False))
        assert channels.pd() == [] and channels.slack() == []  # low: email only
        subjects = [m["Subject"] for m in channels.mails()]
        assert subjects == [
            "[dicom-backup] [LOW] SANDBOX: staging cleanup failed",
            "[dicom-backup] [RESOLVED] SANDBOX: staging cleanup succeeded again",
            "[dicom-backup] [LOW] SANDBOX: staging cleanup summary",
        ]
        summary = _body(channels.mails()[2])
        assert "deleted=3" in summary and "examined=5" in summary and "M@h:1" in _body(channels.mails()[0])
