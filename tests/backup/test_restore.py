"""Restore main Orthanc -> a pynetdicom Q/R + Storage SCP (sandbox MimServer), real peers throughout."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from dicom_backup_dagster.backup.manifest import PENDING
from dicom_backup_dagster.backup.restore import Selection, resolve, restore, sizes_on_main
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.network import Peer, Timeouts
from dicom_backup_dagster.dicom.store import c_store_files
from dicom_backup_dagster.orthanc import OrthancClient
from dicom_backup_dagster.sandbox.mim import MimServer
from dicom_backup_dagster.sandbox.processes import free_port
from dicom_backup_dagster.sandbox.sandbox import ORTHANC_PASSWORD_ENV
from tests.dicom.synthetic import make_patient

FAST = Timeouts(acse=5, dimse=20, network=20, connect=2)
DEST_AET = "RESTORE_DEST"


class RefusingServer(MimServer):
    """Refuses (0xA700, out of resources) the C-STOREs of the SOP Instance UIDs in `refuse`."""

    refuse: set[str] = set()

    def _on_store(self, event: Any) -> int:
        if str(event.dataset.SOPInstanceUID) in self.refuse:
            return 0xA700
        return super()._on_store(event)


@pytest.fixture(scope="module")
def restore_env(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("restore")
    instances = make_patient(root / "patient", patient_id="RESTORE-CANARY-7Q3", ct_slices=4)
    main = sandbox.peers()["ORTHANC_MAIN"]
    calling = sandbox.options.script_aet
    c_store_files(main, calling, [i.path for i in instances], timeouts=FAST)
    port = free_port()
    server = RefusingServer(root / "dest", DEST_AET, port, relational=True, incoming_dir=root / "dest-in")
    server.load()
    server.start()
    rest = OrthancClient(sandbox.main.rest_url, sandbox.options.orthanc_username,
                         sandbox.env_vars()[ORTHANC_PASSWORD_ENV])  # fmt: skip
    rest.put_modality(DEST_AET, DEST_AET, "127.0.0.1", port)
    try:
        yield {"main": main, "calling": calling, "dest": Peer(DEST_AET, "127.0.0.1", port),
               "server": server, "instances": instances, "root": root}  # fmt: skip
    finally:
        server.shutdown()
        rest.close()


def _entries(env: dict[str, Any], selection: Selection) -> list[Any]:
    with FindSession(env["main"], env["calling"], FAST) as main:
        return resolve(main, selection)


def test_restore_by_patient_id_is_present_and_identical_at_destination(restore_env):
    env = restore_env
    entries = _entries(env, Selection(patient_id="RESTORE-CANARY-7Q3"))
    assert {e.sop_instance_uid for e in entries} == {i.sop_instance_uid for i in env["instances"]}
    result = restore(entries, main=env["main"], destination=env["dest"], calling_aet=env["calling"],
                     timeouts=FAST, spool_dir=env["root"] / "spool")  # fmt: skip
    assert result.passed, (result.errors, result.missing_uids, result.content)
    assert result.present == len(entries) == 7
    assert result.content is not None and result.content.matched == 7
    assert "RESTORE-CANARY-7Q3" not in repr(result)


def test_modalities_filter_and_dry_run_moves_nothing(restore_env):
    env = restore_env
    entries = _entries(env, Selection(patient_id="RESTORE-CANARY-7Q3", modalities=("rtplan",)))
    assert [e.sop_instance_uid for e in entries if e.state == PENDING] == [
        i.sop_instance_uid for i in env["instances"] if i.modality == "RTPLAN"
    ]
    assert len(entries) == 7  # the other series stay in the entries, not selected: no STUDY-level move
    before = len(env["server"].index)
    result = restore(entries, main=env["main"], destination=env["dest"], calling_aet=env["calling"],
                     timeouts=FAST, dry_run=True)  # fmt: skip
    assert result.dry_run and result.outcome is None and result.selected == 1
    assert result.summary().startswith("dry run: 1 instance in 1 study would be restored to ")
    assert len(env["server"].index) == before


def test_partial_restore_names_the_refused_uids(restore_env, tmp_path):
    env = restore_env
    fresh = make_patient(tmp_path / "p", patient_id="RESTORE-PARTIAL", ct_slices=3)
    c_store_files(env["main"], env["calling"], [i.path for i in fresh], timeouts=FAST)
    refused = {fresh[0].sop_instance_uid, fresh[1].sop_instance_uid}
    env["server"].refuse = refused
    try:
        entries = _entries(env, Selection(study_instance_uids=(fresh[0].study_instance_uid,)))
        result = restore(entries, main=env["main"], destination=env["dest"], calling_aet=env["calling"],
                         timeouts=FAST, verify_digests=False)  # fmt: skip
    finally:
        env["server"].refuse = set()
    assert not result.passed
    assert set(result.missing_uids) == refused
    assert result.summary() == (
        f"INCOMPLETE: {len(fresh) - 2} of {len(fresh)} instances present at {env['dest']}, "
        "content digests not compared (see notes)"
    )
    assert result.present == len(fresh) - 2
    text = " ".join(result.errors)  # Orthanc 1.10: 0xC000 with 0 counts, as for an unknown destination
    assert "refused a C-STORE" in text and "DicomModalities" not in text, text


def test_destination_unknown_to_orthanc_names_the_ae_and_the_fix(restore_env):
    env = restore_env
    entries = _entries(env, Selection(study_instance_uids=(env["instances"][0].study_instance_uid,)))
    port = free_port()
    other = MimServer(env["root"] / "other", "NOT_REGISTERED", port, incoming_dir=env["root"] / "other-in")
    other.load()
    other.start()
    try:
        unknown = Peer("NOT_REGISTERED", "127.0.0.1", port)
        result = restore(entries, main=env["main"], destination=unknown, calling_aet=env["calling"],
                         timeouts=FAST, verify_digests=False)  # fmt: skip
    finally:
        other.shutdown()
    assert not result.passed and len(other.index) == 0
    text = " ".join(result.errors)
    assert "NOT_REGISTERED" in text and "DicomModalities" in text, text


def test_destination_down_names_ae_host_port(restore_env):
    env = restore_env
    entries = _entries(env, Selection(study_instance_uids=(env["instances"][0].study_instance_uid,)))
    down = Peer(DEST_AET, "127.0.0.1", env["dest"].port)
    env["server"].shutdown()
    try:
        result = restore(entries, main=env["main"], destination=down, calling_aet=env["calling"],
                         timeouts=FAST, verify_digests=False)  # fmt: skip
    finally:
        env["server"].start()
    text = " ".join(result.errors)
    assert not result.passed and f"{DEST_AET}@127.0.0.1:{env['dest'].port}" in text and "C-ECHO" in text, text


def test_restore_targets_table_is_validated(sandbox, monkeypatch, tmp_path):
    from dicom_backup_dagster.config import ConfigError, load_config

    for name, value in sandbox.env_vars().items():
        monkeypatch.setenv(name, value)
    base = sandbox.config_path.read_text()
    good = tmp_path / "good.toml"
    good.write_text(
        base + '\n[SANDBOX.restore_targets.STANDBY]\naet = "STANDBY_TPS"\nip = "127.0.0.1"\nport = 104\n'
    )
    env = load_config(good, "SANDBOX").environment
    assert env.restore_destinations()["STANDBY"] == Peer("STANDBY_TPS", "127.0.0.1", 104)
    assert "ORTHANC_MAIN" not in env.restore_destinations() and "ARIA" in env.restore_destinations()
    bad = tmp_path / "bad.toml"
    bad.write_text(
        base
        + '\n[SANDBOX.restore_targets.STANDBY]\naet = "STANDBY_TPS_TOO_LONG_TITLE"\n'
        + 'ip = "127.0.0.1"\nport = "104"\n'
    )
    with pytest.raises(ConfigError) as error:
        load_config(bad, "SANDBOX")
    assert "restore_targets.STANDBY.aet" in str(error.value) and "restore_targets.STANDBY.port" in str(
        error.value
    )


def test_restore_job_by_patient_id_verifies_and_leaves_no_patient_id(
    restore_env, sandbox, monkeypatch, tmp_path
):
    """The Launchpad job: restore by PatientID to a configured restore target; the ID (a canary) appears
    in no event, metadata value or tag of the run."""
    import dagster as dg

    from dicom_backup_dagster.config.models import RestoreTarget
    from dicom_backup_dagster.defs.resources import BackupStorage, build_resources
    from dicom_backup_dagster.defs.restore import RESTORE_JOB, build_restore_defs
    from tests.defs.test_qr_backup import _env

    env = _env(sandbox, monkeypatch)
    dest = restore_env["dest"]
    target = RestoreTarget(alias="STANDBY", aet=dest.aet, ip=dest.host, port=dest.port)
    env = replace(env, restore_targets={"STANDBY": target})
    defs = dg.Definitions.merge(
        dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(tmp_path)))),
        build_restore_defs(env),
    )
    job = defs.resolve_job_def(RESTORE_JOB)
    config = {"destination": "STANDBY", "patient_id": "RESTORE-CANARY-7Q3"}
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config={"ops": {"restore_studies": {"config": config}}}, instance=instance
        )
        assert result.success
        events = instance.all_logs(result.run_id)
        text = " ".join(repr(e) for e in events)
        assert "RESTORE-CANARY-7Q3" not in text
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and "RESTORE-CANARY-7Q3" not in repr(run.tags)
        outputs = [e for e in events if e.dagster_event and e.dagster_event.is_successful_output]
        metadata = outputs[0].dagster_event.event_specific_data.metadata  # type: ignore[union-attr]
        assert metadata["present_at_destination"].value == 7 and metadata["digests_matched"].value == 7
        summary = metadata["result"].value
        assert summary.startswith(f"restored and verified: 7 of 7 instances present at {restore_env['dest']}")
        assert "7 of 7 content digests equal to main's" in summary

        bad = {"destination": "STANDBYY", "study_uids": ["1.2.3"]}
        failed = job.execute_in_process(
            run_config={"ops": {"restore_studies": {"config": bad}}}, instance=instance, raise_on_error=False
        )
        message = failed.get_step_failure_events()[0].event_specific_data.error.message  # type: ignore[union-attr]
        assert "unknown restore destination 'STANDBYY'" in message and "did you mean 'STANDBY'" in message


def test_dry_run_sizes_come_from_main_statistics(restore_env, sandbox):
    """Whole study (one /studies statistics call), whole series of a partly selected study, and a partly
    selected series (instance by instance): bytes equal the sizes of the files main serves (stored
    uncompressed)."""
    env = restore_env
    rest = OrthancClient(sandbox.main.rest_url, sandbox.options.orthanc_username,
                         sandbox.env_vars()[ORTHANC_PASSWORD_ENV])  # fmt: skip
    with rest:
        ids = {i.sop_instance_uid: rest.lookup_instance(i.sop_instance_uid) or "" for i in env["instances"]}
        size = {uid: len(rest.instance_file(oid) or b"") for uid, oid in ids.items()}
        whole = _entries(env, Selection(patient_id="RESTORE-CANARY-7Q3"))
        assert sizes_on_main(rest, whole).bytes == sum(size.values())
        plans = _entries(env, Selection(patient_id="RESTORE-CANARY-7Q3", modalities=("RTPLAN",)))
        plan_uids = [e.sop_instance_uid for e in plans if e.state == PENDING]
        assert sizes_on_main(rest, plans).bytes == sum(size[u] for u in plan_uids) > 0
        ct = [e for e in whole if e.sop_instance_uid in {i.sop_instance_uid for i in env["instances"]
                                                         if i.modality == "CT"}]  # fmt: skip
        partial = [replace(e, state="already_archived") if e in ct[:2] else e for e in whole]
        chosen = [e.sop_instance_uid for e in partial if e.state == PENDING]
        assert sizes_on_main(rest, partial).bytes == sum(size[u] for u in chosen)


# --- the Launchpad job: selection by source, the destination's pool, a second Orthanc with commitment ---


def _job_defs(env: Any, tmp_path: Any, **network: Any) -> Any:
    import dagster as dg

    from dicom_backup_dagster.defs.resources import BackupStorage, build_resources, dicom_network
    from dicom_backup_dagster.defs.restore import build_restore_defs

    resources = build_resources(env, storage=BackupStorage(base_dir=str(tmp_path)))
    if network:
        base = dicom_network(env)
        fields = ("calling_aet", "listen_port", "acse_timeout_s", "dimse_timeout_s", "network_timeout_s")
        resources["dicom"] = type(base)(**{f: getattr(base, f) for f in fields}, **network)
    return dg.Definitions.merge(dg.Definitions(resources=resources), build_restore_defs(env))


def _launch(defs: Any, instance: Any, config: dict[str, Any]) -> Any:
    from dicom_backup_dagster.defs.restore import RESTORE_JOB, RESTORE_OP

    return defs.resolve_job_def(RESTORE_JOB).execute_in_process(
        run_config={"ops": {RESTORE_OP: {"config": config}}}, instance=instance, raise_on_error=False
    )


def _output_metadata(instance: Any, result: Any) -> dict[str, Any]:
    events = instance.all_logs(result.run_id)
    outputs = [e for e in events if e.dagster_event and e.dagster_event.is_successful_output]
    metadata = outputs[0].dagster_event.event_specific_data.metadata
    return {k: v.value for k, v in metadata.items()}


def _failure_message(result: Any) -> str:
    return result.get_step_failure_events()[0].event_specific_data.error.message  # type: ignore[no-any-return]


def test_restore_by_source_and_dates_takes_what_the_backup_recorded(
    restore_env, sandbox, monkeypatch, tmp_path
):
    """ARIA's backup of one day (lookback 0) recorded its instances; a restore of "what ARIA sent" on that
    day and the next (never backed up: a warning) moves exactly them; the dry run gives their bytes."""
    import dagster as dg

    from dicom_backup_dagster.config.models import RestoreTarget
    from dicom_backup_dagster.defs.restore import RestoreConfig, RestorePlan, selection_of
    from tests.defs.test_qr_backup import _defs as backup_defs
    from tests.defs.test_qr_backup import _env, _sandbox_uids
    from tests.defs.test_qr_backup import _run as run_backup

    env = _env(sandbox, monkeypatch, lookback_days=0)
    dest = restore_env["dest"]
    env = replace(env, restore_targets={"STANDBY": RestoreTarget(alias="STANDBY", aet=dest.aet, ip=dest.host,
                                                                  port=dest.port)})  # fmt: skip
    day = dt.date(2026, 1, 12)
    expected = set(_sandbox_uids(sandbox, "ARIA", [day]))
    assert expected
    with dg.instance_for_test() as instance:
        assert run_backup(backup_defs(env, tmp_path), "ARIA", day.isoformat(), instance).success
        defs = _job_defs(env, tmp_path)
        config = {
            "destination": "STANDBY",
            "source": "ARIA",
            "start_date": "2026-01-12",
            "end_date": "2026-01-13",
        }
        dry = _launch(defs, instance, {**config, "dry_run": True})
        assert dry.success
        dry_meta = _output_metadata(instance, dry)
        assert dry_meta["instances"] == len(expected) and dry_meta["moved"] == 0 and dry_meta["bytes"] > 0
        assert "patient" not in " ".join(dry_meta).lower()
        result = _launch(defs, instance, config)
        assert result.success, _failure_message(result)
        meta = _output_metadata(instance, result)
        assert meta["instances"] == meta["present_at_destination"] == len(expected)
        assert expected <= set(restore_env["server"].index.by_sop)
        logs = " ".join(e.message for e in instance.all_logs(result.run_id) if e.message)
        assert "no backup recorded for 1 of the days (2026-01-13): run ARIA_backup" in logs

    plan = RestorePlan.of(env)
    for bad, message in [
        ({**config, "patient_id": "X"}, "exactly one of study_uids, patient_id or source in the run config "
                                        "(given: patient_id, source)"),
        ({"destination": "STANDBY", "source": "ARIA"}, "a restore by source needs start_date"),
        ({"destination": "STANDBY", "source": "ARIAA", "start_date": "2026-01-12"}, "did you mean 'ARIA'"),
        ({**config, "modalities": ["CT"]}, "modalities go with patient_id or study_uids, not with source"),
        ({**config, "end_date": "2026-01-11"}, "end_date 2026-01-11 is before start_date 2026-01-12"),
    ]:  # fmt: skip
        with pytest.raises(dg.Failure) as failure:
            selection_of(plan, RestoreConfig(**bad))
        assert message in str(failure.value.description), (bad, failure.value.description)
    assert selection_of(plan, RestoreConfig(**config))[1].end == dt.date(2026, 1, 13)


def test_restore_waits_for_a_slot_in_the_destination_pool(restore_env, sandbox, monkeypatch, tmp_path):
    """Pool dicom_<destination AET> with limit 1 held by another step's slot, then by a running backup
    run of that pool: the restore waits, runs once both are gone, and frees its own slot at the end."""
    import threading

    import dagster as dg
    from dagster._core.test_utils import create_run_for_test

    from dicom_backup_dagster.config.models import RestoreTarget
    from dicom_backup_dagster.defs import restore as restore_defs
    from tests.defs.test_qr_backup import _env

    monkeypatch.setattr(restore_defs, "POOL_POLL_SECONDS", 0.2)
    env = _env(sandbox, monkeypatch)
    dest = restore_env["dest"]
    env = replace(env, restore_targets={"STANDBY": RestoreTarget(alias="STANDBY", aet=dest.aet, ip=dest.host,
                                                                  port=dest.port)})  # fmt: skip
    pool = f"dicom_{dest.aet}"
    study = restore_env["instances"][0].study_instance_uid
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(pool, 1)
        assert storage.claim_concurrency_slot(pool, "other-run", "other-step").is_claimed
        box: dict[str, Any] = {}
        defs = _job_defs(env, tmp_path)
        config = {"destination": "STANDBY", "study_uids": [study]}
        worker = threading.Thread(target=lambda: box.update(result=_launch(defs, instance, config)))
        worker.start()
        deadline = time.monotonic() + 20
        waiting = False
        while time.monotonic() < deadline and not waiting:  # our step queued for a slot of the pool
            time.sleep(0.2)
            waiting = any(
                step.step_key == "restore_studies"
                for step in storage.get_concurrency_info(pool).pending_steps
            )
        assert waiting and worker.is_alive()
        # A running backup of the same AE (granularity run: its run carries the pool tag, no slot) still
        # fills the pool once the other step's slot is free.
        backup = create_run_for_test(instance, job_name="ARIA_backup", status=dg.DagsterRunStatus.STARTED,
                                     tags={f"dagster/pool/{pool}": "true"})  # fmt: skip
        storage.free_concurrency_slot_for_step("other-run", "other-step")
        time.sleep(1.0)
        assert worker.is_alive()
        instance.report_run_failed(backup)
        worker.join(180)  # generous: under a loaded CI host the restore alone has taken > 30 s
        assert not worker.is_alive(), "the restore did not finish within 180 s of its pool freeing"
        result = box["result"]
        assert result.success, _failure_message(result)
        logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
        assert any(m.startswith(f"pool {pool}: slot after") for m in logs)
        assert storage.get_concurrency_info(pool).active_slot_count == 0


def test_restore_to_a_second_orthanc_registered_by_rest_with_storage_commitment(
    restore_env, sandbox, monkeypatch, tmp_path
):
    """The staging-Orthanc role: a second real Orthanc main does not know yet. With
    restore_registers_destinations the job registers it (PUT /modalities), moves, finds every instance
    there, compares every digest (C-GET) and gets every instance committed (N-ACTION / N-EVENT-REPORT)."""
    import dagster as dg

    from dicom_backup_dagster.config.models import RestoreTarget
    from dicom_backup_dagster.sandbox.orthanc import OrthancServer
    from tests.defs.test_qr_backup import _env

    env = _env(sandbox, monkeypatch, restore_registers_destinations=True)
    assert env.script_ae.port
    main = restore_env["main"]
    ours = Peer(env.script_ae.aet, "127.0.0.1", env.script_ae.port)
    second = OrthancServer(tmp_path / "second", "STAGE2_ORTHANC", free_port(), free_port(), "backup", "pw-2",
                           modalities={"main": main, "script": ours})  # fmt: skip
    second.start()
    try:
        target = RestoreTarget(alias="STAGE2", aet=second.aet, ip="127.0.0.1", port=second.dicom_port,
                               storage_commitment=True)  # fmt: skip
        env = replace(env, restore_targets={"STAGE2": target})
        defs = _job_defs(env, tmp_path, listen_host="127.0.0.1")
        study = restore_env["instances"][0].study_instance_uid
        with dg.instance_for_test() as instance:
            result = _launch(defs, instance, {"destination": "STAGE2", "study_uids": [study]})
            assert result.success, _failure_message(result)
            meta = _output_metadata(instance, result)
        n = len(restore_env["instances"])
        assert meta["instances"] == meta["present_at_destination"] == meta["digests_matched"] == n
        assert meta["committed"] == n and meta["commitment_failed"] == 0
        assert f"{n} of {n} committed (Storage Commitment)" in meta["result"]
        assert second.count_instances() == n
        rest = OrthancClient(sandbox.main.rest_url, sandbox.options.orthanc_username,
                             sandbox.env_vars()[ORTHANC_PASSWORD_ENV])  # fmt: skip
        with rest:
            modalities = rest.get_json("/modalities?expand")
            assert modalities[second.aet]["AET"] == second.aet
            rest.request("DELETE", f"/modalities/{second.aet}")
    finally:
        second.stop()


def test_storage_commitment_at_a_destination_without_it_fails_naming_the_destination(restore_env, tmp_path):
    """The pynetdicom destination has no Storage Commitment SCP: the restore is present and identical
    there, but the requested commitment fails, saying where and why."""
    from dicom_backup_dagster.dicom.scp import StorageSCP

    env = restore_env
    entries = _entries(env, Selection(patient_id="RESTORE-CANARY-7Q3", modalities=("RTPLAN",)))
    with StorageSCP(env["calling"], tmp_path / "reports", port=free_port(), timeouts=FAST) as listener:
        result = restore(entries, main=env["main"], destination=env["dest"], calling_aet=env["calling"],
                         timeouts=FAST, verify_digests=False, commitment_listener=listener,
                         commitment_timeout=5)  # fmt: skip
    assert result.present == result.selected == 1 and result.commitment is None and not result.passed
    text = " ".join(result.errors)
    assert (
        f"storage commitment at the destination {env['dest']}" in text and "1.2.840.10008.1.20.1" in text
    ), text
