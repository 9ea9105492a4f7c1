"""Failure, check and recovery notifications (issue 5): notifier resources, three sensors and a test job.

- `backup_failure_alerts` (run-failure sensor over every job of this code location): a failed backup run
  of a source pages once per outage (critical: PagerDuty + Slack by default); runs about to be retried
  (`dagster/will_retry=true`) are skipped, so retries never page twice. A failed `connectivity_check`
  raises one `peer_unreachable` alert per peer that went down, once per outage (the check runs every 15
  minutes), and resolves the peers that came back.
- `backup_recovery_alerts` (SUCCESS run-status sensor): the next successful run of a source (or of the
  connectivity check) resolves the open incident with the same dedup key and tells the channels that
  heard about it, plus the `low` route.
- `asset_check_alerts` (polling sensor with a cursor over ASSET_CHECK_EVALUATION events; open-source
  Dagster has no check alerts): every failed evaluation alerts once; a later passing evaluation of the
  same check resolves it.
- `send_test_alert` job: one test message on every configured channel, from the UI.

Messages are `notify.Alert`s: names, counts, DICOM status meanings, run links. Never exception text,
check descriptions or UIDs (they can carry identifiers): only the keys `backup_failure` puts in Failure
metadata (source, peer, operation, dicom_status, status_meaning), numeric metadata, step keys and
exception class names.

No `from __future__ import annotations`: Dagster validates resource annotations of sensors and ops.
"""

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Self

from dagster import (
    AssetCheckSeverity,
    AssetKey,
    ConfigurableResource,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
    Definitions,
    Failure,
    OpExecutionContext,
    RunFailureSensorContext,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SkipReason,
    job,
    op,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)
from dagster import DagsterRunStatus as RunStatus
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from pydantic import Field

from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.defs.connectivity import peer_asset_key
from dicom_backup_dagster.defs.staging_cleanup import JOB_NAME as STAGING_CLEANUP_JOB
from dicom_backup_dagster.defs.sweep import NOTHING_MISSED, SWEEP_COVERAGE
from dicom_backup_dagster.notify import (
    Alert,
    AlertKind,
    Dispatcher,
    EmailNotifier,
    EmailSettings,
    IncidentBook,
    NotificationSettings,
    Notifier,
    PagerDutyNotifier,
    PagerDutySettings,
    SlackNotifier,
    SlackSettings,
    resolve,
    trigger,
)
from dicom_backup_dagster.notify.settings import DEFAULT_TIMEOUT_S, Channel

CONNECTIVITY_JOB = "connectivity_check"
TEST_ALERT_JOB = "send_test_alert"
SOURCE_TAG = "dicom_backup/source"
WILL_RETRY_TAG = "dagster/will_retry"
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
CHECK_CURSOR_MAX_AGE_S = 24 * 3600  # a sensor switched on for the first time alerts on the last day only
CHECK_BATCH = 200
PEER_PREFIX = peer_asset_key("x").path[0]  # connectivity_check observes peers/<alias>

# Failure metadata keys written by defs/common.backup_failure: names and standard wording only.
_FAILURE_TEXT_KEYS = ("peer", "operation", "dicom_status", "status_meaning")
_CHECK_KINDS = {
    "complete_in_archive": AlertKind.ARCHIVE_INCOMPLETE,
    "content_verified": AlertKind.CONTENT_NOT_VERIFIED,
    "volume_vs_baseline": AlertKind.VOLUME_ANOMALY,
    "duration_vs_baseline": AlertKind.DURATION_ANOMALY,
    NOTHING_MISSED: AlertKind.MISSED_DATA,
    SWEEP_COVERAGE: AlertKind.SWEEP_BEHIND,
}


# ------------------------------------------------------------------------------------------------------
# Resources: one per channel, disabled unless configured. Secrets stay in environment variables whose
# NAMES these hold; the notifier reads them at send time.


class _NotifierResource(ConfigurableResource):
    """One channel: its notify/settings.py model as Dagster config (``settings``, empty: not configured)."""

    settings: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def of(cls, channel: Any, timeout_s: float) -> Self:
        # Dagster config maps hold no nulls: unset optional keys are left out and take their defaults.
        fields = {k: v for k, v in dataclasses.asdict(channel).items() if v is not None} if channel else {}
        return cls(settings=fields, timeout_s=timeout_s)


class SlackNotifierResource(_NotifierResource):
    """Slack: an incoming webhook or chat.postMessage with a bot token (notify.SlackSettings)."""

    def notifier(self) -> SlackNotifier | None:
        return SlackNotifier(SlackSettings(**self.settings), self.timeout_s) if self.settings else None


class PagerDutyNotifierResource(_NotifierResource):
    """PagerDuty Events API v2 (notify.PagerDutySettings)."""

    def notifier(self) -> PagerDutyNotifier | None:
        return (
            PagerDutyNotifier(PagerDutySettings(**self.settings), self.timeout_s) if self.settings else None
        )


class EmailNotifierResource(_NotifierResource):
    """SMTP email (notify.EmailSettings)."""

    def notifier(self) -> EmailNotifier | None:
        return EmailNotifier(EmailSettings(**self.settings), self.timeout_s) if self.settings else None


def notifier_resources(settings: NotificationSettings) -> dict[str, ConfigurableResource]:
    """The three notifier resources for `settings` (disabled where a channel is not configured)."""
    t = settings.timeout_s
    return {
        "slack_notifier": SlackNotifierResource.of(settings.slack, t),
        "pagerduty_notifier": PagerDutyNotifierResource.of(settings.pagerduty, t),
        "email_notifier": EmailNotifierResource.of(settings.email, t),
    }


# ------------------------------------------------------------------------------------------------------
# Reading runs: only names, numbers and the standard's wording


def _partition(run: DagsterRun) -> str | None:
    tags = run.tags
    if PARTITION_TAG in tags:
        return tags[PARTITION_TAG]
    if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
        start, end = tags[RANGE_START_TAG], tags[RANGE_END_TAG]
        return start if start == end else f"{start}..{end}"
    return None


def _source_of_step(step_key: str | None, sources: Iterable[str]) -> str | None:
    # Asset steps are named after the asset key joined by "__" (ARIA/archived -> ARIA__archived), and
    # check steps after the asset (ARIA__archived_complete_in_archive).
    if not step_key:
        return None
    head = step_key.split("__", 1)[0]
    return head if head in sources else None


def _numbers(metadata: Mapping[str, Any]) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for key, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            out[key] = raw
    return out


def _texts(metadata: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in _FAILURE_TEXT_KEYS:
        raw = getattr(metadata.get(key), "value", metadata.get(key))
        if isinstance(raw, str) and raw and raw != "none":
            out[key] = raw
    return out


def _run_sources(instance: DagsterInstance, run: DagsterRun, sources: set[str]) -> set[str]:
    """The sources a run backs up: its job's source tag, else the sources of its selected assets."""
    if run.tags.get(SOURCE_TAG) in sources:
        return {run.tags[SOURCE_TAG]}
    found = {key.path[0] for key in (run.asset_selection or ()) if key.path and key.path[0] in sources}
    if found:
        return found
    steps = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_START).records
    return {s for r in steps if (s := _source_of_step(r.event_log_entry.step_key, sources))}


def _archived_sources(instance: DagsterInstance, run_id: str, sources: set[str]) -> set[str]:
    """The sources whose `<source>/archived` this run materialized: a backup of them succeeded."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    out = set()
    for record in records:
        key = record.event_log_entry.dagster_event.asset_key if record.event_log_entry.dagster_event else None
        if key is not None and len(key.path) == 2 and key.path[1] == "archived" and key.path[0] in sources:
            out.add(key.path[0])
    return out


class _FailedStep:
    def __init__(self, step_key: str | None, error_type: str | None, metadata: Mapping[str, Any]) -> None:
        self.step_key = step_key
        self.error_type = error_type
        self.metadata = metadata

    @property
    def blocking_check_only(self) -> bool:
        # A blocking check failing with ERROR fails its step with this class; the check sensor reports it.
        return self.error_type == "DagsterAssetCheckFailedError"


def _failed_steps(instance: DagsterInstance, run_id: str) -> list[_FailedStep]:
    out = []
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        data = event.step_failure_data
        error = data.error if data else None
        cls_name = None
        if error is not None:
            cls_name = error.cause.cls_name if error.cause is not None else error.cls_name
        user = data.user_failure_data if data else None
        metadata = dict(user.metadata) if user is not None and user.metadata else {}
        out.append(_FailedStep(event.step_key, None if user is not None else cls_name, metadata))
    return out


def _output_counts(instance: DagsterInstance, run_id: str) -> dict[str, int | float]:
    """Numeric output metadata of every step of a run, summed (staging_cleanup: one op per target)."""
    out: dict[str, int | float] = {}
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_OUTPUT).records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        for key, value in _numbers(event.step_output_data.metadata).items():
            out[key] = round(out.get(key, 0) + value, 3)
    return out


def _peer_states(instance: DagsterInstance, run_id: str) -> dict[str, tuple[bool, str | None]]:
    """peer alias -> (up, address) from the `peers/<alias>` observations of a connectivity_check run."""
    out: dict[str, tuple[bool, str | None]] = {}
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_OBSERVATION).records:
        event = record.event_log_entry.dagster_event
        observation = event.asset_observation_data.asset_observation if event else None
        key: AssetKey | None = observation.asset_key if observation else None
        if observation is None or key is None or len(key.path) != 2 or key.path[0] != PEER_PREFIX:
            continue
        meta = observation.metadata
        up = getattr(meta.get("up"), "value", None)
        address = getattr(meta.get("address"), "value", None)
        check = getattr(meta.get("check"), "value", None)
        out[key.path[1]] = (up == 1, f"{check} {address}" if check and address else None)
    return out


# ------------------------------------------------------------------------------------------------------
# The definitions


def build_alert_defs(env: EnvironmentConfig) -> Definitions:
    """Notifier resources, the three alert sensors and the send_test_alert job for `env`."""
    settings = env.notifications
    sources = set(env.sources)
    status = DefaultSensorStatus.RUNNING if settings.enabled else DefaultSensorStatus.STOPPED

    def dispatcher(log: Any, *resources: Any) -> Dispatcher:
        notifiers: dict[Channel, Notifier] = {}
        for resource in resources:
            notifier = resource.notifier()
            if notifier is not None:
                notifiers[notifier.name] = notifier
        return Dispatcher(notifiers, settings.routes, timeout_s=settings.timeout_s, log=log)

    def run_url(run_id: str) -> str | None:
        return f"{settings.dagster_ui_url}/runs/{run_id}" if settings.dagster_ui_url else None

    def runbook(kind: AlertKind) -> str:
        return f"{settings.runbook_base_url}/{kind.value}.md"

    def run_alert(
        kind: AlertKind, subject: str, run: DagsterRun, severity: str = "critical", **fields: Any
    ) -> Alert:
        return Alert(
            kind=kind,
            severity=severity,  # type: ignore[arg-type]
            environment=env.name,
            subject=subject,
            partition=_partition(run),
            job=run.job_name,
            run_id=run.run_id,
            run_url=run_url(run.run_id),
            runbook_url=runbook(kind),
            **fields,
        )

    def connectivity(
        d: Dispatcher, book: IncidentBook, instance: DagsterInstance, run: DagsterRun
    ) -> list[str]:
        done = []
        for alias, (up, address) in sorted(_peer_states(instance, run.run_id).items()):
            alert = run_alert(
                AlertKind.PEER_UNREACHABLE, alias, run, peer=address, failed_step="check_connectivity"
            )
            if up:
                if resolve(d, book, alert) is not None:
                    done.append(f"resolved {alias}")
            elif trigger(d, book, alert, once_per_outage=True) is not None:
                done.append(f"paged {alias} unreachable")
        return done

    @run_failure_sensor(
        name="backup_failure_alerts",
        description=(
            "Alerts (critical) when a backup run of a source fails, once per outage, skipping runs that "
            "will be retried; and when connectivity_check finds a peer down, once per outage."
        ),
        minimum_interval_seconds=30,
        default_status=status,
    )
    def backup_failure_alerts(
        context: RunFailureSensorContext,
        slack_notifier: SlackNotifierResource,
        pagerduty_notifier: PagerDutyNotifierResource,
        email_notifier: EmailNotifierResource,
    ) -> None:
        run = context.dagster_run
        if run.tags.get(WILL_RETRY_TAG) == "true":
            context.log.info(f"run {run.run_id} of {run.job_name} will be retried: no alert")
            return
        if run.job_name == TEST_ALERT_JOB:
            return
        d = dispatcher(context.log, slack_notifier, pagerduty_notifier, email_notifier)
        book = IncidentBook(context.instance.run_storage)
        if run.job_name == STAGING_CLEANUP_JOB:
            failed = _failed_steps(context.instance, run.run_id)
            first = failed[0] if failed else None
            main_peer = getattr(first.metadata.get("main_peer"), "value", None) if first else None
            alert = run_alert(
                AlertKind.STAGING_CLEANUP_FAILED,
                "staging",
                run,
                severity="low",  # nothing is lost: records stay on staging until a cleanup succeeds
                failed_step=first.step_key if first else None,
                error_type=first.error_type if first else None,
                peer=main_peer if isinstance(main_peer, str) else None,
                counts={"failed_steps": len(failed)},
            )
            trigger(d, book, alert, once_per_outage=True)
            return
        if run.job_name == CONNECTIVITY_JOB:
            context.log.info(
                f"{run.run_id}: {', '.join(connectivity(d, book, context.instance, run)) or 'no change'}"
            )
            return
        steps = _failed_steps(context.instance, run.run_id)
        by_source: dict[str, list[_FailedStep]] = {}
        for step in steps:
            text_source = getattr(step.metadata.get("source"), "value", None)
            source = text_source if text_source in sources else _source_of_step(step.step_key, sources)
            if source is not None:
                by_source.setdefault(source, []).append(step)
        if not steps:  # failed before any step ran (resource init, worker crash)
            for source in _run_sources(context.instance, run, sources):
                by_source[source] = []
        for source, failed in sorted(by_source.items()):
            if failed and all(s.blocking_check_only for s in failed):
                context.log.info(f"{source}: only a blocking check failed; asset_check_alerts reports it")
                continue
            first = next((s for s in failed if not s.blocking_check_only), None)
            counts = _numbers(first.metadata) if first else {}
            counts["failed_steps"] = len(failed)
            alert = run_alert(
                AlertKind.BACKUP_FAILED,
                source,
                run,
                failed_step=first.step_key if first else None,
                error_type=first.error_type if first else "run failed before any step",
                counts=counts,
                **(_texts(first.metadata) if first else {}),
            )
            trigger(d, book, alert, once_per_outage=True)

    @run_status_sensor(
        run_status=RunStatus.SUCCESS,
        name="backup_recovery_alerts",
        description=(
            "When a source's backup (or connectivity_check) succeeds after failures: resolves the "
            "PagerDuty incident (same dedup key) and tells Slack/email."
        ),
        minimum_interval_seconds=30,
        default_status=status,
    )
    def backup_recovery_alerts(
        context: RunStatusSensorContext,
        slack_notifier: SlackNotifierResource,
        pagerduty_notifier: PagerDutyNotifierResource,
        email_notifier: EmailNotifierResource,
    ) -> None:
        run = context.dagster_run
        if run.job_name == TEST_ALERT_JOB:
            return
        d = dispatcher(context.log, slack_notifier, pagerduty_notifier, email_notifier)
        book = IncidentBook(context.instance.run_storage)
        if run.job_name == CONNECTIVITY_JOB:
            connectivity(d, book, context.instance, run)
            return
        if run.job_name == STAGING_CLEANUP_JOB:
            resolve(d, book, run_alert(AlertKind.STAGING_CLEANUP_FAILED, "staging", run, severity="low"))
            counts = _output_counts(context.instance, run.run_id)
            d.send(
                run_alert(AlertKind.STAGING_CLEANUP_SUMMARY, "staging", run, severity="low", counts=counts)
            )
            return
        for source in sorted(_archived_sources(context.instance, run.run_id, sources)):
            alert = run_alert(AlertKind.BACKUP_FAILED, source, run)
            if resolve(d, book, alert) is not None:
                context.log.info(f"{source}: recovered; incident {alert.dedup_key} resolved")

    def check_alert(
        instance: DagsterInstance, evaluation: AssetCheckEvaluation, run_id: str, step_key: str | None
    ) -> Alert:
        kind = _CHECK_KINDS.get(evaluation.check_name, AlertKind.CHECK_FAILED)
        # A blocking ERROR (instances missing on the archive) pages; a WARN of the same check (instances
        # deferred to the next run), content and baseline findings go to Slack and email.
        if evaluation.severity == AssetCheckSeverity.ERROR and (
            evaluation.blocking or kind == AlertKind.ARCHIVE_INCOMPLETE
        ):
            kind, severity = AlertKind.ARCHIVE_INCOMPLETE, "critical"
        else:
            severity = "high"
        run = instance.get_run_by_id(run_id)
        return Alert(
            kind=kind,
            severity=severity,  # type: ignore[arg-type]
            environment=env.name,
            subject=evaluation.asset_key.path[0],
            partition=evaluation.partition or (_partition(run) if run else None),
            job=run.job_name if run else None,
            run_id=run_id,
            run_url=run_url(run_id),
            failed_step=step_key,
            check=evaluation.check_name,
            counts=_numbers(evaluation.metadata),
            runbook_url=runbook(kind),
        )

    @sensor(
        name="asset_check_alerts",
        description=(
            "Alerts on every failed asset check evaluation (complete_in_archive and other blocking ERROR "
            "checks: critical; content_verified, baselines and other checks: high) and resolves when the "
            "same check passes again. Reads check evaluations after its cursor."
        ),
        minimum_interval_seconds=30,
        default_status=status,
    )
    def asset_check_alerts(
        context: SensorEvaluationContext,
        slack_notifier: SlackNotifierResource,
        pagerduty_notifier: PagerDutyNotifierResource,
        email_notifier: EmailNotifierResource,
    ) -> SkipReason:
        # Per check: the execution history (works on every event log storage, including the default
        # run-sharded SQLite one, where a global event cursor does not). The cursor keeps, per check, the
        # record id up to which everything is handled plus the ids handled above it (a check still running
        # in one run while it finished in a later one).
        instance = context.instance
        repo = context.repository_def
        keys = sorted(repo.asset_graph.asset_check_keys, key=lambda k: k.to_user_string()) if repo else []
        try:
            state: dict[str, dict[str, Any]] = json.loads(context.cursor) if context.cursor else {}
        except ValueError:  # a cursor from another version: start over (old history is skipped)
            state = {}
        d = dispatcher(context.log, slack_notifier, pagerduty_notifier, email_notifier)
        book = IncidentBook(instance.run_storage)
        oldest = time.time() - CHECK_CURSOR_MAX_AGE_S
        sent = resolved = 0
        for check_key in keys:
            name = check_key.to_user_string()
            known = state.get(name)
            after, seen = (known["after"], set(known["seen"])) if known else (0, set())
            history = instance.event_log_storage.get_asset_check_execution_history(
                check_key, limit=CHECK_BATCH
            )
            pending: list[int] = []
            for record in sorted(history, key=lambda r: r.id):
                if record.id <= after or record.id in seen:
                    continue
                if record.status == AssetCheckExecutionRecordStatus.PLANNED:
                    run = instance.get_run_by_id(record.run_id)
                    if run is None or run.is_finished:
                        seen.add(record.id)  # never evaluated (its run stopped before the check ran)
                    else:
                        pending.append(record.id)
                    continue
                seen.add(record.id)
                entry = record.event
                evaluation = (
                    entry.dagster_event.event_specific_data if entry and entry.dagster_event else None
                )
                if entry is None or not isinstance(evaluation, AssetCheckEvaluation):
                    continue
                if known is None and record.create_timestamp < oldest:
                    continue  # first look at this check: do not replay old history
                alert = check_alert(instance, evaluation, entry.run_id, entry.step_key)
                if evaluation.passed:
                    resolved += resolve(d, book, alert) is not None
                else:
                    trigger(d, book, alert, once_per_outage=False)
                    sent += 1
            if pending:
                after = max([after, *(i for i in seen if i < min(pending))])
            elif seen:
                after = max(after, *seen)
            state[name] = {"after": after, "seen": sorted(i for i in seen if i > after)}
        context.update_cursor(json.dumps(state, sort_keys=True))
        return SkipReason(f"{len(keys)} checks read: {sent} alerts, {resolved} resolved")

    @op(
        name="send_test_alert_to_every_channel",
        description="Sends one test message on every configured channel (Slack, PagerDuty, email).",
    )
    def send_test_alert_op(
        context: OpExecutionContext,
        slack_notifier: SlackNotifierResource,
        pagerduty_notifier: PagerDutyNotifierResource,
        email_notifier: EmailNotifierResource,
    ) -> None:
        d = dispatcher(context.log, slack_notifier, pagerduty_notifier, email_notifier)
        channels = list(d.notifiers)
        if not channels:
            raise Failure(
                description=f"no notification channel is configured: add [{env.name}.notifications.slack], "
                "[...pagerduty] or [...email] to the site configuration (docs/configuration.md)",
                allow_retries=False,
            )
        alert = Alert(
            kind=AlertKind.TEST_ALERT,
            severity="low",
            environment=env.name,
            subject="test",
            job=TEST_ALERT_JOB,
            run_id=context.run_id,
            run_url=run_url(context.run_id),
            runbook_url=runbook(AlertKind.TEST_ALERT),
        )
        deliveries = d.send(alert, channels)
        if "pagerduty" in channels:  # close the test incident at once: nobody should be paged twice
            d.send(replace(alert, action="resolve"), ["pagerduty"])
        failed = [x for x in deliveries if not x.ok]
        context.add_output_metadata({f"{x.channel}": "sent" if x.ok else "FAILED" for x in deliveries})
        if failed:
            raise Failure(
                description="test alert not delivered: " + "; ".join(str(x.error) for x in failed),
                metadata={x.channel: str(x.error) for x in failed},
                allow_retries=False,
            )

    @job(
        name=TEST_ALERT_JOB,
        description="Sends one test message on each configured notification channel (check Slack, "
        "PagerDuty and email from the UI).",
        tags={"dicom_backup/kind": "notifications"},
    )
    def send_test_alert() -> None:
        send_test_alert_op()

    return Definitions(
        resources=notifier_resources(settings),
        sensors=[backup_failure_alerts, backup_recovery_alerts, asset_check_alerts],
        jobs=[send_test_alert],
    )
