"""Restore drill with real peers: its own Orthanc main (so the sample is drawn from known studies) and a
pynetdicom Q/R + Storage SCP as the scratch AE (C-FIND, C-GET), loopback Slack and PagerDuty capture
servers for the alert. The drill asset runs in a Dagster instance; asset_check_alerts is evaluated as the
daemon would."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dicom_backup_dagster.config import EnvironmentConfig, load_config
from dicom_backup_dagster.defs.alerts import build_alert_defs
from dicom_backup_dagster.defs.drill import DRILL_ASSET, DRILL_CHECK, DRILL_JOB, build_drill_defs
from dicom_backup_dagster.defs.resources import BackupStorage, build_resources, notifier_resources
from dicom_backup_dagster.dicom.network import Peer, Timeouts
from dicom_backup_dagster.dicom.store import c_store_files
from dicom_backup_dagster.notify import NotificationSettings, PagerDutySettings, SlackSettings
from dicom_backup_dagster.sandbox.mim import Index, MimServer
from dicom_backup_dagster.sandbox.orthanc import OrthancServer
from dicom_backup_dagster.sandbox.processes import free_port
from tests.dicom.synthetic import make_patient
from tests.notify.servers import Answer, CaptureServer

FAST = Timeouts(acse=5, dimse=20, network=20, connect=2)
CANARY = "DRILL-CANARY-4K9"
HOOK, ENQUEUE = "/services/T1/B1/hook", "/v2/enqueue"
SENSOR_LOG = logging.getLogger("tests.drill.sensors")


class FaultyScratch(MimServer):
    """With `faulty` set: refuses the first C-STORE it receives (0xA700) and stores the second altered (an
    element added: a copy whose content differs from main's)."""

    faulty = False
    stores = 0

    def _on_store(self, event: Any) -> int:
        if not self.faulty:
            return super()._on_store(event)
        self.stores += 1
        if self.stores == 1:
            return 0xA700
        if self.stores == 2:
            event.dataset.ImageComments = "bit rot"
        return super()._on_store(event)


def _toml(main: OrthancServer, script: Peer, scratch: Peer) -> str:
    return f"""
[DRILL]
default_source = "ARIA"
default_backup = "ORTHANC_MAIN"
[DRILL.script_ae]
aet = "{script.aet}"
port = {script.port}
[DRILL.sources.ARIA]
type = "aria"
aet = "ARIA_UNUSED"
ip = "127.0.0.1"
port = {free_port()}
[DRILL.backup_targets.ORTHANC_MAIN]
type = "orthanc"
aet = "{main.aet}"
ip = "127.0.0.1"
port = {main.dicom_port}
rest_url = "{main.rest_url}"
rest_username = "backup"
rest_password_env = "DRILL_ORTHANC_PASSWORD"
[DRILL.restore_targets.SCRATCH]
aet = "{scratch.aet}"
ip = "127.0.0.1"
port = {scratch.port}
[DRILL.settings]
restore_drill_target = "SCRATCH"
restore_drill_studies = 2
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("drill")
    script = Peer("DRILL_SCRIPT", "127.0.0.1", free_port())
    scratch = Peer("DRILL_SCRATCH", "127.0.0.1", free_port())
    main = OrthancServer(root / "main", "DRILL_MAIN", free_port(), free_port(), "backup", "drill-pw",
                         {"script": script, "scratch": scratch})  # fmt: skip
    server = FaultyScratch(root / "scratch", scratch.aet, scratch.port, relational=True,
                           incoming_dir=root / "scratch-in")  # fmt: skip
    server.load()
    server.start()
    main.start()
    try:
        files = []
        for n in range(3):
            files += [i.path for i in make_patient(root / f"p{n}", patient_id=f"{CANARY}-{n}", ct_slices=2)]
        c_store_files(main.peer, script.aet, files, timeouts=FAST)
        config = root / "environments.toml"
        config.write_text(_toml(main, script, scratch))
        with CaptureServer() as http, pytest.MonkeyPatch.context() as mp:
            http.answers[ENQUEUE] = Answer(202, b'{"status": "success"}')
            mp.setenv("DRILL_ORTHANC_PASSWORD", "drill-pw")
            mp.setenv("DRILL_SLACK_URL", http.url + HOOK)
            mp.setenv("DRILL_PD_KEY", "drill-routing-key")
            env = load_config(config, "DRILL").environment
            notifications = NotificationSettings(
                dagster_ui_url="http://dagster.test:3000",
                timeout_s=3,
                slack=SlackSettings(webhook_url_env="DRILL_SLACK_URL"),
                pagerduty=PagerDutySettings("DRILL_PD_KEY", http.url + ENQUEUE),
            )
            env = replace(env, notifications=notifications)
            yield {"env": env, "server": server, "http": http, "root": root, "instances": len(files)}
    finally:
        server.shutdown()
        main.stop()


def _defs(env: EnvironmentConfig, storage: Path) -> dg.Definitions:
    return dg.Definitions.merge(
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(storage)))),
        build_drill_defs(env),
        build_alert_defs(env),
    )


def _check_tick(defs: dg.Definitions, env: EnvironmentConfig, instance: Any, cursor: str | None) -> str:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=notifier_resources(env.notifications), definitions=defs
    )
    context._logger = SENSOR_LOG
    defs.resolve_sensor_def("asset_check_alerts")(context)  # type: ignore[operator]
    return str(context.cursor)


def _evaluation(result: Any) -> Any:
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_key == DRILL_ASSET and evaluation.check_name == DRILL_CHECK
    return evaluation


def _meta(evaluation: Any) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def test_drill_passes_with_every_digest_equal_then_a_faulty_scratch_fails_with_its_own_alert(
    site, tmp_path, caplog
):
    env, http = site["env"], site["http"]
    defs = _defs(env, tmp_path)
    job = defs.resolve_job_def(DRILL_JOB)
    assert defs.resolve_schedule_def("restore_drill_schedule").cron_schedule == "0 6 * * 0"
    with dg.instance_for_test() as instance, caplog.at_level(logging.DEBUG, logger="dicom_backup_dagster"):
        good = job.execute_in_process(instance=instance)
        assert good.success
        evaluation = _evaluation(good)
        meta = _meta(evaluation)
        assert evaluation.passed, evaluation.description
        # 2 of the 3 studies (5 instances each), every one found and identical at the scratch AE.
        assert meta["studies_on_main"] == 3 and meta["studies"] == 2 and meta["instances"] == 10
        assert meta["present"] == meta["digests_matched"] == 10 and meta["missing"] == 0
        seed = meta["seed"]
        assert seed > 0
        cursor = _check_tick(defs, env, instance, None)
        assert http.on(HOOK) == []  # a passing drill alerts nobody

        # The same seed draws the same sample; this time the scratch refuses one instance, alters another.
        site["server"].faulty, site["server"].stores = True, 0
        site["server"].index = Index()  # an emptied scratch: what it holds now came from this drill
        try:
            bad = job.execute_in_process(
                instance=instance,
                run_config={"ops": {"restore_drill": {"config": {"seed": seed}}}},
                raise_on_error=False,
            )
        finally:
            site["server"].faulty = False
        assert not bad.success  # the check is blocking: the run page is red too
        evaluation = _evaluation(bad)
        meta = _meta(evaluation)
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
        assert meta["seed"] == seed and meta["instances"] == 10
        # Orthanc 1.10 stops a study's C-MOVE at the first refused C-STORE (0xC000): that study is missing.
        assert meta["missing"] == 5 and meta["digests_differ"] == 1 and meta["digests_matched"] == 4, meta
        text = evaluation.description
        assert "5 of 10 instances not found at DRILL_SCRATCH@127.0.0.1" in text, text
        assert "1 of 5 restored instances differ from main by content digest" in text, text
        assert "0xC000" in text and "5 instances arrived): the scratch AE refused a C-STORE" in text, text
        assert "run the drill again with the same seed" in text and "check main's storage" in text

        cursor = _check_tick(defs, env, instance, cursor)
        _run_failure_sensor(defs, env, instance, bad)  # leaves the failed check to the check sensor
        (slack,) = [r.json for r in http.on(HOOK)]
        assert "restore drill failed" in slack["text"] and "[HIGH] DRILL" in slack["text"], slack
        body = str(slack)
        assert "restore_drill.md" in body and "digests_differ=1" in body and "missing=5" in body
        assert http.on(ENQUEUE) == []  # its own kind: Slack and email, not a backup-failure page

        # Fixed: the next drill passes and resolves the drill's incident.
        fixed = job.execute_in_process(
            instance=instance, run_config={"ops": {"restore_drill": {"config": {"seed": seed}}}}
        )
        assert _evaluation(fixed).passed
        _check_tick(defs, env, instance, cursor)
        resolved = [r.json for r in http.on(HOOK)][1:]
        assert len(resolved) == 1 and "[RESOLVED]" in resolved[0]["text"], resolved

        # PHI canary: the patients' IDs are nowhere in events, tags, logs or what Slack received.
        for result in (good, bad, fixed):
            events = " ".join(repr(e) for e in instance.all_logs(result.run_id))
            run = instance.get_run_by_id(result.run_id)
            assert CANARY not in events and run is not None and CANARY not in repr(run.tags)
        assert CANARY not in caplog.text
        assert CANARY not in " ".join(r.body.decode() for r in http.requests)


def _run_failure_sensor(defs: dg.Definitions, env: EnvironmentConfig, instance: Any, result: Any) -> None:
    context = dg.build_run_status_sensor_context(
        sensor_name="backup_failure_alerts",
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources=notifier_resources(env.notifications),
    )
    context._logger = SENSOR_LOG
    defs.resolve_sensor_def("backup_failure_alerts")(context.for_run_failure())  # type: ignore[operator]


def test_a_drill_run_that_fails_outright_alerts_its_own_kind(site, tmp_path):
    env, http = site["env"], site["http"]
    http.requests.clear()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    defs = _defs(env, blocker)  # the spool directory cannot be created under a file
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(DRILL_JOB).execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        _run_failure_sensor(defs, env, instance, result)
    (slack,) = [r.json for r in http.on(HOOK)]
    assert "restore drill failed" in slack["text"] and "backup failed" not in slack["text"]
    assert http.on(ENQUEUE) == []


def test_a_scratch_ae_that_is_down_fails_the_drill_saying_so(site, tmp_path):
    defs = _defs(site["env"], tmp_path)
    site["server"].shutdown()
    try:
        with dg.instance_for_test() as instance:
            job = defs.resolve_job_def(DRILL_JOB)
            result = job.execute_in_process(instance=instance, raise_on_error=False)
    finally:
        site["server"].start()
    evaluation = _evaluation(result)
    text = evaluation.description
    assert not evaluation.passed and _meta(evaluation)["present"] == 0
    assert "DRILL_SCRATCH@127.0.0.1" in text and "does not answer a C-ECHO: start it" in text, text
    assert "DicomModalities" not in text and "C-GET" not in text, text


def test_drill_target_must_be_a_restore_target(site, monkeypatch, tmp_path):
    from dicom_backup_dagster.config import ConfigError

    monkeypatch.setenv("DRILL_ORTHANC_PASSWORD", "x")
    text = (site["root"] / "environments.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('restore_drill_target = "SCRATCH"', 'restore_drill_target = "SCRACH"'))
    with pytest.raises(ConfigError) as error:
        load_config(bad, "DRILL")
    message = str(error.value)
    assert "settings.restore_drill_target" in message and "did you mean 'SCRATCH'" in message, message
    off = tmp_path / "off.toml"
    off.write_text(text.replace('restore_drill_target = "SCRATCH"', ""))
    env = load_config(off, "DRILL").environment
    assert env.settings.restore_drill_target == "" and not list(build_drill_defs(env).assets or [])


def test_several_sites_each_have_their_own_drill_asset(site, tmp_path):
    """Two sites in one instance: `restore_drill/<site>`, the check on it, the job selecting it."""
    resources = build_resources(site["env"], storage=BackupStorage(base_dir=str(tmp_path)))
    defs = dg.Definitions.merge(
        dg.Definitions(resources=resources), build_drill_defs(site["env"], multi_site=True)
    )
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey(["restore_drill", site["env"].name])
    assert set(graph.get_all_asset_keys()) == {key}
    assert {c.asset_key for c in graph.asset_check_keys} == {key}
    assert defs.resolve_job_def(DRILL_JOB).asset_layer.executable_asset_keys == {key}
    single = dg.Definitions.merge(dg.Definitions(resources=resources), build_drill_defs(site["env"]))
    assert set(single.resolve_asset_graph().get_all_asset_keys()) == {DRILL_ASSET}
