"""Clinic hours in Dagster runs: which runs pause for bulk_hours, what they log and tag, how they resume,
force and terminate; one ARIA backfill against the sandbox paused, resumed and complete.

Time is moved by a fake clock (defs/hours.py's module-level `now` and `sleep`): nothing waits for real.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation of assets by identity.

import datetime as dt
import logging
from dataclasses import replace
from typing import Any

import dagster as dg
import pytest

from dicom_backup_dagster.backup.hours import parse_work_window
from dicom_backup_dagster.backup.manifest import PENDING, InstanceEntry
from dicom_backup_dagster.backup.transfer import transfer
from dicom_backup_dagster.config import QRSource
from dicom_backup_dagster.defs import hours
from dicom_backup_dagster.defs.keys import BACKFILL_ID_TAG
from dicom_backup_dagster.dicom.network import Timeouts
from tests.defs.test_qr_backup import _defs, _env, _metadata, _sandbox_uids

NY = "America/New_York"
WINDOW = parse_work_window(["Mon-Fri 19:00-07:00", "Sat-Sun 00:00-24:00"], NY)
WEDNESDAY_1348 = dt.datetime(2026, 12, 2, 18, 48, tzinfo=dt.UTC)  # Wednesday 13:48 EST
OPENING = dt.datetime(2026, 12, 3, 0, 0, tzinfo=dt.UTC)  # Wednesday 19:00 EST


class FakeClock:
    """now() and sleep() for defs/hours.py; `on_sleep` runs after each sleep (to terminate a run)."""

    def __init__(self, start: dt.datetime) -> None:
        self.time = start
        self.slept: list[float] = []
        self.on_sleep: Any = None

    def now(self) -> dt.datetime:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.time += dt.timedelta(seconds=seconds)
        if self.on_sleep is not None:
            self.on_sleep()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(WEDNESDAY_1348)
    monkeypatch.setattr(hours, "now", fake.now)
    monkeypatch.setattr(hours, "sleep", fake.sleep)
    monkeypatch.setattr(hours, "POLL_SECONDS", 300.0)  # fewer run-status reads over a fake 5 h pause
    return fake


def _job(seen: dict[str, Any]) -> dg.JobDefinition:
    @dg.asset(key=["ARIA", "inventory"])
    def inventory(context: dg.AssetExecutionContext) -> None:
        hours.wait_for_window(context, "ARIA", WINDOW)
        seen["ran_at"] = hours.now()

    defs = dg.Definitions(
        assets=[inventory],
        jobs=[dg.define_asset_job("ARIA_backup", executor_def=dg.in_process_executor)],
    )
    return defs.resolve_job_def("ARIA_backup")


def _logs(instance: dg.DagsterInstance, run_id: str, level: int) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id) if e.dagster_event is None and e.level == level]


def test_manual_run_outside_the_window_pauses_logs_and_resumes_at_the_opening(clock: FakeClock) -> None:
    seen: dict[str, Any] = {}
    tags_while_paused: list[dict[str, str]] = []
    with dg.instance_for_test() as instance:
        clock.on_sleep = lambda: tags_while_paused.append(dict(instance.get_runs()[0].tags))
        result = _job(seen).execute_in_process(instance=instance)
        assert result.success
        assert seen["ran_at"] == OPENING  # went on exactly when the window opened
        assert sum(clock.slept) == pytest.approx((OPENING - WEDNESDAY_1348).total_seconds())
        assert max(clock.slept) <= hours.POLL_SECONDS  # short sleeps: termination is noticed promptly
        warnings = _logs(instance, result.run_id, logging.WARNING)
        assert warnings[0] == (
            "Paused: manual runs may load ARIA only weekdays 19:00-07:00 next day and all weekend, "
            "America/New_York (sources.ARIA.bulk_hours); this run carries on where it stopped when the "
            "window opens at 2026-12-02 19:00 EST (in 5 h 12 min). To back up now instead, terminate this "
            "run and launch it again (Launchpad: Add tags) with the tag dicom_backup/ignore_bulk_hours=true."
        )
        # Repeated every 30 minutes while paused: 5 h 12 min -> the first line and 10 more.
        assert len(warnings) == 11 and all(
            w.startswith("Still paused: manual runs may load ARIA") for w in warnings[1:]
        )
        assert "opens at 2026-12-02 19:00 EST (in 12 min)" in warnings[-1]
        assert any(
            "Resumed: ARIA's bulk_hours window is open (2026-12-02 19:00 EST" in m
            for m in _logs(instance, result.run_id, logging.INFO)
        )
        assert tags_while_paused[0][hours.PAUSED_TAG] == "paused until 2026-12-02 19:00 EST"
        final = instance.get_run_by_id(result.run_id)
        assert final is not None and final.tags[hours.PAUSED_TAG] == "resumed 2026-12-02 19:00 EST"


def test_backfill_run_names_itself_in_the_pause(clock: FakeClock) -> None:
    with dg.instance_for_test() as instance:
        result = _job({}).execute_in_process(instance=instance, tags={BACKFILL_ID_TAG: "bf1"})
        assert result.success and clock.slept
        warning = _logs(instance, result.run_id, logging.WARNING)[0]
        assert warning.startswith("Paused: backfill runs may load ARIA only weekdays")
        assert "cancel the backfill (Overview -> Backfills) and launch it again with the tag" in warning


@pytest.mark.parametrize(
    "tags",
    [
        {hours.IGNORE_BULK_HOURS_TAG: "true"},
        {hours.IGNORE_BULK_HOURS_TAG: "True", BACKFILL_ID_TAG: "bf2"},  # a forced backfill
        {hours.SCHEDULE_NAME_TAG: "ARIA_backup_schedule"},  # the nightly tick
    ],
)
def test_forced_and_nightly_runs_do_not_pause(clock: FakeClock, tags: dict[str, str]) -> None:
    seen: dict[str, Any] = {}
    with dg.instance_for_test() as instance:
        result = _job(seen).execute_in_process(instance=instance, tags=tags)
        assert result.success
        assert clock.slept == [] and seen["ran_at"] == WEDNESDAY_1348
        assert _logs(instance, result.run_id, logging.WARNING) == []
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and hours.PAUSED_TAG not in run.tags


def test_other_schedules_and_sensors_pause() -> None:
    kind = hours.paused_kind
    # The sweep's own schedule follows the same <job>_schedule pattern but is not the nightly backup.
    sweep = {hours.SCHEDULE_NAME_TAG: "ARIA_reconciliation_sweep_schedule"}
    assert kind(sweep, "ARIA", "ARIA_reconciliation_sweep") == "scheduled ARIA_reconciliation_sweep runs"
    assert kind({hours.SCHEDULE_NAME_TAG: "MIM_backup_schedule"}, "ARIA", "ARIA_backup") is not None
    assert kind({hours.SCHEDULE_NAME_TAG: "ARIA_backup_schedule"}, "ARIA", "ARIA_backup") is None
    assert kind({hours.SENSOR_NAME_TAG: "s"}, "ARIA", "ARIA_backup") == "ARIA_backup runs of the sensor s"
    assert kind({hours.IGNORE_BULK_HOURS_TAG: "false"}, "ARIA", "ARIA_backup") == "manual runs"
    # A backfill launched from a schedule is still a backfill.
    both = {hours.SCHEDULE_NAME_TAG: "ARIA_backup_schedule", BACKFILL_ID_TAG: "x"}
    assert kind(both, "ARIA", "ARIA_backup") == "backfill runs"


def test_inside_the_window_nothing_waits(clock: FakeClock) -> None:
    clock.time = OPENING + dt.timedelta(hours=3)
    with dg.instance_for_test() as instance:
        result = _job({}).execute_in_process(instance=instance, tags={BACKFILL_ID_TAG: "bf3"})
        assert result.success and clock.slept == []


def test_terminated_paused_run_stops_at_the_next_poll(clock: FakeClock) -> None:
    seen: dict[str, Any] = {}
    with dg.instance_for_test() as instance:

        def terminate() -> None:
            run = instance.get_runs()[0]
            if run.status == dg.DagsterRunStatus.STARTED:
                instance.report_run_canceling(run)  # what Terminate in the UI does first

        clock.on_sleep = terminate
        result = _job(seen).execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        assert len(clock.slept) == 1 and "ran_at" not in seen
        failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
        assert "ARIA: terminated while paused for its bulk_hours; nothing was lost" in str(
            failure.step_failure_data.error
        )


def test_between_requests_hook_releases_then_waits_only_outside(clock: FakeClock) -> None:
    released: list[bool] = []
    with dg.instance_for_test() as instance:

        @dg.asset
        def probe(context: dg.AssetExecutionContext) -> None:
            hook = hours.between_requests(context, "ARIA", WINDOW)
            assert hook is not None
            clock.time = OPENING  # inside: no release, no wait
            hook(lambda: released.append(True))
            assert released == [] and clock.slept == []
            clock.time = OPENING + dt.timedelta(hours=12)  # Thursday 07:00 EST: the window just closed
            hook(lambda: released.append(True))
            assert released == [True] and clock.time == OPENING + dt.timedelta(days=1)

        assert dg.materialize([probe], instance=instance).success

        @dg.asset
        def forced(context: dg.AssetExecutionContext) -> None:
            assert hours.between_requests(context, "ARIA", WINDOW) is None  # no cost per request

        assert dg.materialize([forced], instance=instance, tags={hours.IGNORE_BULK_HOURS_TAG: "true"}).success


# ------------------------------------------------------------------------------------------ with peers


def test_aria_backfill_outside_bulk_hours_pauses_then_archives_everything(
    sandbox, monkeypatch, tmp_path, clock: FakeClock
):
    env = _env(sandbox, monkeypatch, timezone=NY, lookback_days=0)
    aria = env.sources["ARIA"]
    assert isinstance(aria, QRSource)
    env = replace(env, sources={**env.sources, "ARIA": replace(aria, bulk_hours=("Mon-Fri 19:00-07:00",))})
    day = next(d for d in sandbox.dates if _sandbox_uids(sandbox, "ARIA", [d]))
    uids = _sandbox_uids(sandbox, "ARIA", [day])
    for uid in uids:  # missing on main, so the resumed run has to move them
        sandbox.main.delete_instance(uid)
    job = _defs(env, tmp_path).resolve_job_def("ARIA_backup")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key=day.isoformat(),
            tags={BACKFILL_ID_TAG: "hoursbackfill"},
            raise_on_error=False,
        )
        assert result.success
        paused = [w for w in _logs(instance, result.run_id, logging.WARNING) if w.startswith("Paused")]
        assert len(paused) == 1 and "opens at 2026-12-02 19:00 EST" in paused[0]  # the first step only
        meta = _metadata(result, "ARIA")
        assert meta["moved"] == len(uids) and meta["failed"] == 0 and meta["instances_found"] == len(uids)
        assert all(sandbox.main.has_instance(uid) for uid in uids)
        assert all(c.passed for c in result.get_asset_check_evaluations())


def test_transfer_releases_the_association_between_requests_and_carries_on(sandbox, monkeypatch):
    """The mid-transfer pause point of backup/transfer.py: release() closes the association to ARIA, the
    next request opens a new one, and every instance still arrives."""
    env = _env(sandbox, monkeypatch)
    records = [r for r in sandbox.manifest.for_source("ARIA")]
    by_day: dict[str, set[str]] = {}
    for r in records:
        by_day.setdefault(r.date, set()).add(r.study_instance_uid)
    date = max(by_day, key=lambda d: len(by_day[d]))
    chosen = [r for r in records if r.date == date]
    assert len(by_day[date]) >= 2  # one request per fully pending study: at least one pause point
    for r in chosen:
        sandbox.main.delete_instance(r.sop_instance_uid)
    plan = [
        InstanceEntry(r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid, state=PENDING)
        for r in sorted(chosen, key=lambda r: (r.study_instance_uid, r.series_instance_uid))
    ]
    calls: list[int] = []

    def pause(release: Any) -> None:
        calls.append(1)
        release()

    outcome = transfer(
        plan,
        source=env.sources["ARIA"].peer,
        archive=env.main_target.peer,
        calling_aet=env.script_ae.aet,
        timeouts=Timeouts(),
        mode="c-move",
        between_requests=pause,
    )
    assert outcome.errors == []
    assert len(calls) == outcome.requests - 1 >= 1  # before every request but the first
    assert outcome.associations == outcome.requests  # each release made the next request reconnect
    assert all(sandbox.main.has_instance(r.sop_instance_uid) for r in chosen)
