"""Failure, check and recovery notifications: three sensors and a test job (the notifier resources are in
defs/resources.py).

- `backup_failure_alerts` (run-failure sensor over every job of this code location): a failed backup run
  of a source pages once per outage (critical: PagerDuty + Slack by default); runs about to be retried
  (`dagster/will_retry=true`) are skipped, so retries never page twice. A failed `connectivity_check`
  raises one `peer_unreachable` alert per peer that went down, once per outage (the check runs every 15
  minutes), and resolves the peers that came back.
- `backup_recovery_alerts` (SUCCESS run-status sensor): the next successful run of a source (or of the
  connectivity check) resolves the open incident with the same dedup key and tells the channels that
  heard about it, plus the `low` route.
- `asset_check_alerts` (polling sensor with a cursor over ASSET_CHECK_EVALUATION events; open-source
  Dagster has no check alerts): every failed evaluation alerts once, naming its day; the check's incident
  is resolved only by a passing evaluation of a day it alerted for, once no alerted day of that check is
  still failing. A pass that was not judged (a baseline without history, an empty day) and a result
  restated for a check that did not run (defs/checks.py) resolve nothing and alert nothing.
- `send_test_alert` job: one test message on every configured channel, from the UI.

Messages are `notify.Alert`s: names, counts, DICOM status meanings, run links. Never exception text,
check descriptions or UIDs (they can carry identifiers): only the keys `backup_failure` puts in Failure
metadata (source, peer, operation, dicom_status, status_meaning, and the cause in its own words when
there is no status), numeric metadata, step keys and
exception class names.

No `from __future__ import annotations`: Dagster validates resource annotations of sensors and ops.
"""

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    Config,
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

from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.defs.alert_lifecycle import Lifecycle, history_spec, topology_of
from dicom_backup_dagster.defs.checks import JUDGED, RESTATED_FROM_RUN
from dicom_backup_dagster.defs.drill import DRILL_ASSET, DRILL_CHECK, DRILL_JOB
from dicom_backup_dagster.defs.keys import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    CONNECTIVITY_JOB,
    KIND_TAG,
    NOTHING_MISSED,
    PARTITION_NAME_TAG,
    SOURCE_TAG,
    SWEEP_COVERAGE,
    TEST_ALERT_JOB,
    WILL_RETRY_TAG,
    SourceNames,
    archived_source,
    peer_alias,
    source_of_step,
)
from dicom_backup_dagster.defs.resources import (
    EmailNotifierResource,
    PagerDutyNotifierResource,
    SlackNotifierResource,
)
from dicom_backup_dagster.defs.staging_cleanup import JOB_NAME as STAGING_CLEANUP_JOB
from dicom_backup_dagster.notify import (
    Alert,
    AlertKind,
    Dispatcher,
    IncidentBook,
    NotificationSettings,
    Notifier,
    resolve,
    trigger,
)
from dicom_backup_dagster.notify.causes import (
    STORAGE_ERROR_CLASSES,
    CauseIncident,
    Grouping,
    Signal,
    Topology,
    confidence_label,
    findings,
)
from dicom_backup_dagster.notify.settings import Channel

RESOLVE_JOB = "resolve_alert"

CHECK_CURSOR_MAX_AGE_S = 24 * 3600  # a sensor switched on for the first time alerts on the last day only
CHECK_BATCH = 200
# AssetCheckExecutionRecordStatus.PLANNED: an evaluation planned but not (yet) made. Dagster 1.13 does not
# export the enum publicly, so the records' status is compared by its value.
PLANNED = "PLANNED"

# Failure metadata keys written by defs/common.backup_failure: names and standard wording only.
_FAILURE_TEXT_KEYS = ("peer", "operation", "dicom_status", "status_meaning")
_CHECK_KINDS = {
    "complete_in_archive": AlertKind.ARCHIVE_INCOMPLETE,
    "content_verified": AlertKind.CONTENT_NOT_VERIFIED,
    "volume_vs_baseline": AlertKind.VOLUME_ANOMALY,
    "duration_vs_baseline": AlertKind.DURATION_ANOMALY,
    NOTHING_MISSED: AlertKind.MISSED_DATA,
    SWEEP_COVERAGE: AlertKind.SWEEP_BEHIND,
    DRILL_CHECK: AlertKind.RESTORE_DRILL,  # high: Slack and email; a drill is not a failed backup
}


# ------------------------------------------------------------------------------------------------------
# What every sensor needs: the environment's name, its notification settings and its sources


@dataclass(frozen=True)
class AlertPlan:
    environment: str
    settings: NotificationSettings
    sources: frozenset[str]
    topology: Topology | None = None  # None: no cause grouping (every failure pages per source)
    site: str = ""  # several sites in one instance: this site's own alert ledger, state and history asset

    @classmethod
    def of(cls, env: EnvironmentConfig, *, multi_site: bool = False) -> "AlertPlan":
        site = env.name if multi_site else ""
        return cls(env.name, env.notifications, frozenset(env.sources), topology_of(env), site)

    @property
    def grouping(self) -> Grouping:
        return Grouping(self.settings.grouping_window_s, self.settings.grouping_hold_s)

    def lifecycle(self, instance: DagsterInstance, d: Dispatcher) -> Lifecycle:
        topology = self.topology or Topology("", "", {}, {}, {}, self.sources)
        return Lifecycle.of(instance, d, topology, self.grouping, self.site)

    def cause_alert(self, incident: CauseIncident, run_id: str | None = None) -> Alert:
        """The one alert of a shared cause: its component, the affected sources and partitions, and how
        sure we are."""
        kind = AlertKind(incident.cause.value)
        value = incident.confidence(self.grouping.window_s, time.time())
        return Alert(
            kind=kind,
            severity="critical",
            environment=self.environment,
            subject=incident.component,
            peer=incident.address,
            run_id=run_id,
            run_url=self.run_url(run_id) if run_id else None,
            cause=f"{incident.component} {incident.mode}",
            confidence=f"{value:.2f} ({confidence_label(value)})",
            sources=tuple(incident.affected),
            partitions=tuple(incident.partitions),
            counts={"failures": incident.failures, "sources_affected": len(incident.sources)},
            runbook_url=self.runbook(kind),
        )

    def dispatcher(self, log: Any, *resources: Any) -> Dispatcher:
        notifiers: dict[Channel, Notifier] = {}
        for resource in resources:
            notifier = resource.notifier()
            if notifier is not None:
                notifiers[notifier.name] = notifier
        return Dispatcher(notifiers, self.settings.routes, timeout_s=self.settings.timeout_s, log=log)

    def run_url(self, run_id: str) -> str | None:
        return f"{self.settings.dagster_ui_url}/runs/{run_id}" if self.settings.dagster_ui_url else None

    def runbook(self, kind: AlertKind) -> str:
        return f"{self.settings.runbook_base_url}/{kind.value}.md"

    def run_alert(
        self, kind: AlertKind, subject: str, run: DagsterRun, severity: str = "critical", **fields: Any
    ) -> Alert:
        return Alert(
            kind=kind,
            severity=severity,  # type: ignore[arg-type]
            environment=self.environment,
            subject=subject,
            partition=_partition(run),
            job=run.job_name,
            run_id=run.run_id,
            run_url=self.run_url(run.run_id),
            runbook_url=self.runbook(kind),
            **fields,
        )


@dataclass(frozen=True)
class Channels:
    """The three notifier resources a sensor or op takes, made into one Dispatcher."""

    slack: SlackNotifierResource
    pagerduty: PagerDutyNotifierResource
    email: EmailNotifierResource

    def dispatcher(self, plan: AlertPlan, log: Any) -> Dispatcher:
        return plan.dispatcher(log, self.slack, self.pagerduty, self.email)


# ------------------------------------------------------------------------------------------------------
# Reading runs: only names, numbers and the standard's wording


def _partition(run: DagsterRun) -> str | None:
    tags = run.tags
    if PARTITION_NAME_TAG in tags:
        return tags[PARTITION_NAME_TAG]
    if ASSET_PARTITION_RANGE_START_TAG in tags and ASSET_PARTITION_RANGE_END_TAG in tags:
        start, end = tags[ASSET_PARTITION_RANGE_START_TAG], tags[ASSET_PARTITION_RANGE_END_TAG]
        return start if start == end else f"{start}..{end}"
    return None


def _numbers(metadata: Mapping[str, Any]) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for key, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            out[key] = raw
    return out


def _texts(metadata: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in (*_FAILURE_TEXT_KEYS, "cause"):
        raw = getattr(metadata.get(key), "value", metadata.get(key))
        if isinstance(raw, str) and raw and raw != "none":
            out[key] = raw
    # No DIMSE status (connection refused, timeout, rejected association): the cause backup_failure
    # words itself (no data set content) stands in for the status meaning, so the alert still says why.
    cause = out.pop("cause", None)
    if cause is not None and "status_meaning" not in out:
        out["status_meaning"] = cause
    return out


def _run_sources(instance: DagsterInstance, run: DagsterRun, sources: set[str]) -> set[str]:
    """The sources a run backs up: its job's source tag, else the sources of its selected assets."""
    if run.tags.get(SOURCE_TAG) in sources:
        return {run.tags[SOURCE_TAG]}
    found = {key.path[0] for key in (run.asset_selection or ()) if key.path and key.path[0] in sources}
    if found:
        return found
    steps = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_START).records
    return {s for r in steps if (s := source_of_step(r.event_log_entry.step_key, sources))}


def _archived_sources(instance: DagsterInstance, run_id: str, sources: set[str]) -> set[str]:
    """The sources whose `<source>/archived` this run materialized: a backup of them succeeded."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    out = set()
    for record in records:
        event = record.event_log_entry.dagster_event
        if (source := archived_source(event.asset_key if event else None, sources)) is not None:
            out.add(source)
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
        alias = peer_alias(observation.asset_key) if observation else None
        if observation is None or alias is None:
            continue
        meta = observation.metadata
        up = getattr(meta.get("up"), "value", None)
        address = getattr(meta.get("address"), "value", None)
        check = getattr(meta.get("check"), "value", None)
        out[alias] = (up == 1, f"{check} {address}" if check and address else None)
    return out


# ------------------------------------------------------------------------------------------------------
# backup_failure_alerts and backup_recovery_alerts


def connectivity_changes(plan: AlertPlan, life: Lifecycle, run: DagsterRun) -> list[str]:
    """Page the peers a connectivity_check run found down (once per outage), resolve those back up. A
    peer whose outage a cause alert already explains (the archive's, the backup host's network) folds
    into it; a check that found every peer down raises the network alert instead of one page per peer."""
    done = []
    states = _peer_states(life.instance, run.run_id)
    to_page, resolved = life.causes.on_peer_states({a: up for a, (up, _) in states.items()}, time.time())
    for incident in to_page:
        page_cause(plan, life, incident, run.run_id)
        done.append(f"paged {incident.key}")
    for incident in resolved:
        done += resolve_cause(plan, life, incident)
    for alias, (up, address) in sorted(states.items()):
        alert = plan.run_alert(
            AlertKind.PEER_UNREACHABLE, alias, run, peer=address, failed_step="check_connectivity"
        )
        if up:
            if resolve(life.d, life.book, alert) is not None:
                done.append(f"resolved {alias}")
        elif (covering := life.causes.covering_peer(alias)) is not None:
            done.append(f"{alias} down: part of {covering.key}")
        elif trigger(life.d, life.book, alert, once_per_outage=True) is not None:
            done.append(f"paged {alias} unreachable")
    return done


# ------------------------------------------------------------------------------------------------------
# Cause grouping (notify/causes.py)


def page_cause(plan: AlertPlan, life: Lifecycle, incident: CauseIncident, run_id: str | None) -> None:
    trigger(life.d, life.book, plan.cause_alert(incident, run_id), once_per_outage=True)
    life.causes.mark_paged(incident)


def resolve_cause(plan: AlertPlan, life: Lifecycle, incident: CauseIncident) -> list[str]:
    """Close a cause incident whose cause cleared and whose every source succeeded again."""
    if incident.state != "open":
        return [f"{incident.key} cleared before it paged"]
    resolve(life.d, life.book, plan.cause_alert(incident))
    return [f"resolved {incident.key}"]


def group_failure(plan: AlertPlan, life: Lifecycle, signal: Signal, alert: Alert, log: Any) -> str:
    """Page `alert` per source, or fold it into the cause its structured error points at."""
    outcome = life.causes.on_failure(signal) if plan.topology is not None else None
    if outcome is None or outcome.action == "none" or outcome.incident is None:
        trigger(life.d, life.book, alert, once_per_outage=True)
        return "per source"
    incident = outcome.incident
    if outcome.action == "page":
        page_cause(plan, life, incident, signal.run_id)
    elif outcome.action == "fold":  # counted and recorded as a repeat of the open cause alert
        trigger(life.d, life.book, plan.cause_alert(incident, signal.run_id), once_per_outage=True)
    log.info(
        f"{signal.source}: failure {outcome.action} into {incident.key} ({len(incident.sources)} sources)"
    )
    return outcome.action


def flush_held(plan: AlertPlan, life: Lifecycle) -> int:
    """Page the held cause incidents whose hold has passed."""
    due = life.causes.due()
    for incident in due:
        page_cause(plan, life, incident, incident.run_ids[-1] if incident.run_ids else None)
    return len(due)


def _unwrap(metadata: Mapping[str, Any]) -> dict[str, object]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def _run_error_classes(context: RunFailureSensorContext) -> list[str]:
    """Class names of the run failure's error and its causes (a run that failed before any step)."""
    event = getattr(context, "failure_event", None)
    error = getattr(getattr(event, "event_specific_data", None), "error", None)
    out = []
    while error is not None:
        out.append(error.cls_name)
        error = error.cause
    return [c for c in out if c]


def on_run_failure(context: RunFailureSensorContext, plan: AlertPlan, channels: Channels) -> None:
    """backup_failure_alerts: what a failed run of this code location means, sent once per outage."""
    run = context.dagster_run
    if run.tags.get(WILL_RETRY_TAG) == "true":
        context.log.info(f"run {run.run_id} of {run.job_name} will be retried: no alert")
        return
    if run.job_name == TEST_ALERT_JOB:
        return
    if run.job_name in {SourceNames(s).studies_job for s in plan.sources}:
        # An on-demand backup: whoever launched it watches the run, which names the problem (often a
        # mistyped UID). Paging would wake the on-call, and an open incident would swallow the nightly
        # backup's own failure alert (once per outage).
        context.log.info(f"run {run.run_id} of {run.job_name} (on-demand) failed: the run page says why")
        return
    life = plan.lifecycle(context.instance, channels.dispatcher(plan, context.log))
    if run.job_name == STAGING_CLEANUP_JOB:
        trigger(life.d, life.book, cleanup_failure_alert(plan, context.instance, run), once_per_outage=True)
    elif run.job_name == DRILL_JOB:
        failed = _failed_steps(context.instance, run.run_id)
        if failed and all(s.blocking_check_only for s in failed):
            context.log.info("restore drill: its check failed; asset_check_alerts reports it")
        else:
            alert = drill_failure_alert(plan, context.instance, run)
            trigger(life.d, life.book, alert, once_per_outage=False)
    elif run.job_name == CONNECTIVITY_JOB:
        changes = connectivity_changes(plan, life, run)
        context.log.info(f"{run.run_id}: {', '.join(changes) or 'no change'}")
    else:
        storage = next((c for c in _run_error_classes(context) if c in STORAGE_ERROR_CLASSES), None)
        for alert, fields in backup_failures_of(context, plan, run):
            if storage and "error_class" not in fields:
                fields = {**fields, "error_class": storage}
            signal = Signal.of(
                alert.subject, fields, at=time.time(), partition=alert.partition, run_id=run.run_id
            )
            group_failure(plan, life, signal, alert, context.log)
    flush_held(plan, life)
    life.finish()


def cleanup_failure_alert(plan: AlertPlan, instance: DagsterInstance, run: DagsterRun) -> Alert:
    failed = _failed_steps(instance, run.run_id)
    first = failed[0] if failed else None
    main_peer = getattr(first.metadata.get("main_peer"), "value", None) if first else None
    return plan.run_alert(
        AlertKind.STAGING_CLEANUP_FAILED,
        "staging",
        run,
        severity="low",  # nothing is lost: records stay on staging until a cleanup succeeds
        failed_step=first.step_key if first else None,
        error_type=first.error_type if first else None,
        peer=main_peer if isinstance(main_peer, str) else None,
        counts={"failed_steps": len(failed)},
    )


def drill_failure_alert(plan: AlertPlan, instance: DagsterInstance, run: DagsterRun) -> Alert:
    """A drill run that failed before its check could say anything: the drill's own kind, never a page."""
    failed = _failed_steps(instance, run.run_id)
    first = failed[0] if failed else None
    return plan.run_alert(
        AlertKind.RESTORE_DRILL,
        DRILL_ASSET.path[0],
        run,
        severity="high",
        failed_step=first.step_key if first else None,
        error_type=(first.error_type or "Failure") if first else "run failed before any step",
        check=DRILL_CHECK,
        counts={"failed_steps": len(failed)},
    )


def _drill_passed(instance: DagsterInstance, run_id: str) -> bool:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.event_specific_data if event else None
        if isinstance(data, AssetCheckEvaluation) and data.check_name == DRILL_CHECK:
            return data.passed
    return False


def failed_steps_by_source(
    instance: DagsterInstance, run: DagsterRun, sources: frozenset[str]
) -> dict[str, list["_FailedStep"]]:
    """The failed steps of a run per source (by the Failure's `source`, else the step key); a run that
    failed before any step ran (resource init, worker crash) counts for every source it backs up."""
    steps = _failed_steps(instance, run.run_id)
    by_source: dict[str, list[_FailedStep]] = {}
    for step in steps:
        text_source = getattr(step.metadata.get("source"), "value", None)
        source = text_source if text_source in sources else source_of_step(step.step_key, sources)
        if source is not None:
            by_source.setdefault(source, []).append(step)
    if not steps:
        for source in _run_sources(instance, run, set(sources)):
            by_source[source] = []
    return by_source


def backup_failure_alerts_of(
    context: RunFailureSensorContext, plan: AlertPlan, run: DagsterRun
) -> list[Alert]:
    """One BACKUP_FAILED alert per source whose backup failed (a failed blocking check alone: none, the
    check sensor reports it)."""
    return [alert for alert, _ in backup_failures_of(context, plan, run)]


def backup_failures_of(
    context: RunFailureSensorContext, plan: AlertPlan, run: DagsterRun
) -> list[tuple[Alert, dict[str, object]]]:
    """(alert, the first failed step's metadata) per source whose backup failed."""
    alerts = []
    for source, failed in sorted(failed_steps_by_source(context.instance, run, plan.sources).items()):
        if failed and all(s.blocking_check_only for s in failed):
            context.log.info(f"{source}: only a blocking check failed; asset_check_alerts reports it")
            continue
        first = next((s for s in failed if not s.blocking_check_only), None)
        counts = _numbers(first.metadata) if first else {}
        counts["failed_steps"] = len(failed)
        alert = plan.run_alert(
            AlertKind.BACKUP_FAILED,
            source,
            run,
            failed_step=first.step_key if first else None,
            error_type=first.error_type if first else "run failed before any step",
            counts=counts,
            **(_texts(first.metadata) if first else {}),
        )
        fields = _unwrap(first.metadata) if first else {}
        if first is not None and first.error_type and "error_class" not in fields:
            fields["error_class"] = first.error_type
        alerts.append((alert, fields))
    return alerts


def on_run_success(context: RunStatusSensorContext, plan: AlertPlan, channels: Channels) -> None:
    """backup_recovery_alerts: resolve what a successful run shows to be fixed."""
    run = context.dagster_run
    if run.job_name == TEST_ALERT_JOB:
        return
    life = plan.lifecycle(context.instance, channels.dispatcher(plan, context.log))
    d, book = life.d, life.book
    if run.job_name == CONNECTIVITY_JOB:
        connectivity_changes(plan, life, run)
    elif run.job_name == STAGING_CLEANUP_JOB:
        resolve(d, book, plan.run_alert(AlertKind.STAGING_CLEANUP_FAILED, "staging", run, severity="low"))
        counts = _output_counts(context.instance, run.run_id)
        d.send(
            plan.run_alert(AlertKind.STAGING_CLEANUP_SUMMARY, "staging", run, severity="low", counts=counts)
        )
    elif run.job_name == DRILL_JOB:
        # asset_check_alerts resolves what it alerted; this resolves an incident a failed drill run opened.
        if _drill_passed(context.instance, run.run_id):
            resolve(d, book, drill_failure_alert(plan, context.instance, run))
    else:
        for source in sorted(_archived_sources(context.instance, run.run_id, set(plan.sources))):
            alert = plan.run_alert(AlertKind.BACKUP_FAILED, source, run)
            if resolve(d, book, alert) is not None:
                context.log.info(f"{source}: recovered; incident {alert.dedup_key} resolved")
            addresses = plan.topology.addresses_of(source) if plan.topology else []
            for incident in life.causes.on_success(source, addresses, time.time()):
                context.log.info(f"{source}: {', '.join(resolve_cause(plan, life, incident))}")
    flush_held(plan, life)
    life.finish()


# ------------------------------------------------------------------------------------------------------
# asset_check_alerts


def check_alert(
    plan: AlertPlan,
    instance: DagsterInstance,
    evaluation: AssetCheckEvaluation,
    run_id: str,
    step_key: str | None,
) -> Alert:
    kind = _CHECK_KINDS.get(evaluation.check_name, AlertKind.CHECK_FAILED)
    # A blocking ERROR (instances missing on the archive) pages; a WARN of the same check (instances
    # deferred to the next run), content and baseline findings go to Slack and email.
    if (
        evaluation.severity == AssetCheckSeverity.ERROR
        and (evaluation.blocking or kind == AlertKind.ARCHIVE_INCOMPLETE)
        and kind != AlertKind.RESTORE_DRILL  # blocking only to fail its run: a drill never pages
    ):
        kind, severity = AlertKind.ARCHIVE_INCOMPLETE, "critical"
    else:
        severity = "high"
    run = instance.get_run_by_id(run_id)
    return Alert(
        kind=kind,
        severity=severity,  # type: ignore[arg-type]
        environment=plan.environment,
        subject=evaluation.asset_key.path[0],
        partition=evaluation.partition or (_partition(run) if run else None),
        job=run.job_name if run else None,
        run_id=run_id,
        run_url=plan.run_url(run_id),
        failed_step=step_key,
        check=evaluation.check_name,
        counts=_numbers(evaluation.metadata),
        runbook_url=plan.runbook(kind),
    )


@dataclass
class CheckPass:
    """One evaluation of asset_check_alerts: where alerts go, the oldest history it replays, its counts."""

    d: Dispatcher
    book: IncidentBook
    oldest: float  # a check seen for the first time: evaluations before this time are skipped
    life: Lifecycle | None = None
    sent: int = 0
    resolved: int = 0


def evaluate_check_alerts(
    context: SensorEvaluationContext, plan: AlertPlan, channels: Channels
) -> SkipReason:
    """asset_check_alerts: alert on every failed evaluation after the cursor, resolve on a passing one.

    Per check: the execution history (works on every event log storage, including the default
    run-sharded SQLite one, where a global event cursor does not). The cursor keeps, per check, the
    record id up to which everything is handled plus the ids handled above it (a check still running
    in one run while it finished in a later one)."""
    repo = context.repository_def
    keys = sorted(repo.asset_graph.asset_check_keys, key=lambda k: k.to_user_string()) if repo else []
    try:
        state: dict[str, dict[str, Any]] = json.loads(context.cursor) if context.cursor else {}
    except ValueError:  # a cursor from another version: start over (old history is skipped)
        state = {}
    life = plan.lifecycle(context.instance, channels.dispatcher(plan, context.log))
    tally = CheckPass(life.d, life.book, time.time() - CHECK_CURSOR_MAX_AGE_S, life)
    for check_key in keys:
        name = check_key.to_user_string()
        state[name] = read_check_history(context.instance, plan, check_key, state.get(name), tally)
    context.update_cursor(json.dumps(state, sort_keys=True))
    life.finish()
    return SkipReason(f"{len(keys)} checks read: {tally.sent} alerts, {tally.resolved} resolved")


def read_check_history(
    instance: DagsterInstance,
    plan: AlertPlan,
    check_key: AssetCheckKey,
    known: dict[str, Any] | None,
    tally: CheckPass,
) -> dict[str, Any]:
    """Handle one check's evaluations after its cursor entry `known`; its new cursor entry. The entry also
    keeps the days (partitions; "" for an unpartitioned evaluation) this sensor alerted for and that have
    not passed since: only those can resolve the check's incident."""
    after, seen = (known["after"], set(known["seen"])) if known else (0, set())
    alerted = CheckDays(
        set(known.get("open", ())) if known else set(), legacy=known is not None and "open" not in known
    )
    history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=CHECK_BATCH)
    pending: list[int] = []
    for record in sorted(history, key=lambda r: r.id):
        if record.id <= after or record.id in seen:
            continue
        if record.status.value == PLANNED:
            run = instance.get_run_by_id(record.run_id)
            if run is None or run.is_finished:
                seen.add(record.id)  # never evaluated (its run stopped before the check ran)
            else:
                pending.append(record.id)
            continue
        seen.add(record.id)
        entry = record.event
        evaluation = entry.dagster_event.event_specific_data if entry and entry.dagster_event else None
        if entry is None or not isinstance(evaluation, AssetCheckEvaluation):
            continue
        if known is None and record.create_timestamp < tally.oldest:
            continue  # first look at this check: do not replay old history
        handle_evaluation(instance, plan, evaluation, entry.run_id, entry.step_key, alerted, tally)
    if pending:
        after = max([after, *(i for i in seen if i < min(pending))])
    elif seen:
        after = max(after, *seen)
    return {"after": after, "seen": sorted(i for i in seen if i > after), "open": sorted(alerted.days)}


@dataclass
class CheckDays:
    """The days of one check with an alert sent and no pass since. `legacy`: a cursor entry written
    before days were kept, whose first judged pass resolves as it used to."""

    days: set[str]
    legacy: bool = False


def _meta(evaluation: AssetCheckEvaluation, key: str) -> Any:
    entry = evaluation.metadata.get(key)
    return getattr(entry, "value", entry)


def handle_evaluation(
    instance: DagsterInstance,
    plan: AlertPlan,
    evaluation: AssetCheckEvaluation,
    run_id: str,
    step_key: str | None,
    alerted: CheckDays,
    tally: CheckPass,
) -> None:
    """Alert on a failed evaluation; resolve on a judged pass of an alerted day once none is left."""
    if _meta(evaluation, RESTATED_FROM_RUN) is not None:
        return  # the check did not run: its earlier result, already handled, was restated
    day = evaluation.partition or ""
    alert = check_alert(plan, instance, evaluation, run_id, step_key)
    if not evaluation.passed:
        if folded_check(plan, tally, evaluation, alert):
            return
        trigger(tally.d, tally.book, alert, once_per_outage=False)
        alerted.days.add(day)
        tally.sent += 1
        return
    if _meta(evaluation, JUDGED) is False or not (day in alerted.days or alerted.legacy):
        return  # not judged, or a day this sensor never alerted for: nothing of ours to resolve
    alerted.days.discard(day)
    alerted.legacy = False
    if not alerted.days:
        tally.resolved += resolve(tally.d, tally.book, alert) is not None


def folded_check(plan: AlertPlan, tally: CheckPass, evaluation: AssetCheckEvaluation, alert: Alert) -> bool:
    """A failed check whose metadata names a shared cause (a check that could not reach the archive):
    grouped like a run failure (defs/checks.peer_unreachable_result writes the structured fields)."""
    if tally.life is None or plan.topology is None:
        return False
    fields = _unwrap(evaluation.metadata)
    signal = Signal.of(alert.subject, fields, at=time.time(), partition=alert.partition, run_id=alert.run_id)
    if not findings(signal, plan.topology):
        return False
    return group_failure(plan, tally.life, signal, alert, tally.d.log) != "per source"


# ------------------------------------------------------------------------------------------------------
# alert_causes (the hold of cause alerts) and resolve_alert (by hand, from the Launchpad)


def evaluate_held_causes(context: SensorEvaluationContext, plan: AlertPlan, channels: Channels) -> SkipReason:
    life = plan.lifecycle(context.instance, channels.dispatcher(plan, context.log))
    paged = flush_held(plan, life)
    open_ = [i.key for i in life.causes.incidents.values()]
    life.finish()
    return SkipReason(f"{paged} held cause alerts paged; cause incidents: {', '.join(open_) or 'none'}")


class ResolveAlertConfig(Config):
    """Run config of resolve_alert: the alert's key as the alerts/history table shows it."""

    alert: str
    action: str = "resolve"  # or "acknowledge"


def resolve_alert_by_hand(
    context: OpExecutionContext, config: ResolveAlertConfig, plan: AlertPlan, channels: Channels
) -> None:
    """Send the resolve (or acknowledge) of an open alert to PagerDuty (same dedup key) and the other
    channels, close it in the incident and cause books, and record it in the history."""
    if config.action not in ("resolve", "acknowledge"):
        raise Failure(
            f'action must be "resolve" or "acknowledge", got {config.action!r}', allow_retries=False
        )
    life = plan.lifecycle(context.instance, channels.dispatcher(plan, context.log))
    life.resolved_by = "manual"
    entry = life.history.current(config.alert)
    if entry is None:
        open_keys = sorted({e.key for e in life.history.entries() if e.state != "resolved"})
        raise Failure(
            f"no open alert with key {config.alert!r} in alerts/history; open alerts: "
            f"{', '.join(open_keys) or 'none'}. Copy the key from the alerts/history asset's table.",
            allow_retries=False,
        )
    alert = Alert(
        kind=AlertKind(entry.kind),
        severity=entry.severity,
        environment=plan.environment,
        subject=entry.subject,
        check=entry.check,
        cause=entry.cause,
        confidence=entry.confidence,
        sources=tuple(entry.sources),
        partitions=tuple(entry.partitions),
        job=RESOLVE_JOB,
        runbook_url=entry.runbook,
    )
    if config.action == "acknowledge":
        acknowledged = replace(alert, action="acknowledge")
        deliveries = life.d.send(acknowledged, entry.channels or None)  # type: ignore[arg-type]
        life.d.record("acknowledge", acknowledged, deliveries)
    elif resolve(life.d, life.book, alert) is None:  # not in the incident book: resolve anyway
        deliveries = life.d.send(replace(alert, action="resolve"))
        life.d.record("resolve", replace(alert, action="resolve"), deliveries)
    for key, incident in list(life.causes.incidents.items()):
        if plan.cause_alert(incident).dedup_key == config.alert:
            life.causes.close(key)
    life.finish()
    context.add_output_metadata({"alert": config.alert, "action": config.action})


# ------------------------------------------------------------------------------------------------------
# send_test_alert


def send_test_alert_everywhere(context: OpExecutionContext, plan: AlertPlan, channels: Channels) -> None:
    d = channels.dispatcher(plan, context.log)
    names = list(d.notifiers)
    if not names:
        raise Failure(
            description="no notification channel is configured: add "
            f"[{plan.environment}.notifications.slack], [...pagerduty] or [...email] to the site "
            "configuration (docs/configuration.md)",
            allow_retries=False,
        )
    alert = Alert(
        kind=AlertKind.TEST_ALERT,
        severity="low",
        environment=plan.environment,
        subject="test",
        job=TEST_ALERT_JOB,
        run_id=context.run_id,
        run_url=plan.run_url(context.run_id),
        runbook_url=plan.runbook(AlertKind.TEST_ALERT),
    )
    deliveries = d.send(alert, names)
    if "pagerduty" in names:  # close the test incident at once: nobody should be paged twice
        d.send(replace(alert, action="resolve"), ["pagerduty"])
    failed = [x for x in deliveries if not x.ok]
    context.add_output_metadata({f"{x.channel}": "sent" if x.ok else "FAILED" for x in deliveries})
    if failed:
        raise Failure(
            description="test alert not delivered: " + "; ".join(str(x.error) for x in failed),
            metadata={x.channel: str(x.error) for x in failed},
            allow_retries=False,
        )


# ------------------------------------------------------------------------------------------------------
# The wiring


def build_alert_defs(env: EnvironmentConfig, *, multi_site: bool = False) -> Definitions:
    """The three alert sensors and the send_test_alert job for `env` (the notifier resources they take
    come from defs/resources.build_resources)."""
    plan = AlertPlan.of(env, multi_site=multi_site)
    status = DefaultSensorStatus.RUNNING if plan.settings.enabled else DefaultSensorStatus.STOPPED

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
        on_run_failure(context, plan, Channels(slack_notifier, pagerduty_notifier, email_notifier))

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
        on_run_success(context, plan, Channels(slack_notifier, pagerduty_notifier, email_notifier))

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
        return evaluate_check_alerts(
            context, plan, Channels(slack_notifier, pagerduty_notifier, email_notifier)
        )

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
        send_test_alert_everywhere(
            context, plan, Channels(slack_notifier, pagerduty_notifier, email_notifier)
        )

    @job(
        name=TEST_ALERT_JOB,
        description="Sends one test message on each configured notification channel (check Slack, "
        "PagerDuty and email from the UI).",
        tags={KIND_TAG: "notifications"},
    )
    def send_test_alert() -> None:
        send_test_alert_op()

    return Definitions.merge(
        Definitions(
            sensors=[backup_failure_alerts, backup_recovery_alerts, asset_check_alerts],
            jobs=[send_test_alert],
        ),
        lifecycle_defs(plan, status),
    )


def lifecycle_defs(plan: AlertPlan, status: DefaultSensorStatus) -> Definitions:
    """The alerts/history asset, the alert_causes sensor (held cause alerts) and the resolve_alert job."""

    @sensor(
        name="alert_causes",
        description=(
            "Pages a cause alert (main archive, staging, the backup host's network, Dagster storage, spool "
            "full) once its hold has passed, when not every source that depends on it has failed yet."
        ),
        minimum_interval_seconds=30,
        default_status=status,
    )
    def alert_causes(
        context: SensorEvaluationContext,
        slack_notifier: SlackNotifierResource,
        pagerduty_notifier: PagerDutyNotifierResource,
        email_notifier: EmailNotifierResource,
    ) -> SkipReason:
        return evaluate_held_causes(
            context, plan, Channels(slack_notifier, pagerduty_notifier, email_notifier)
        )

    @op(
        name="resolve_alert_by_hand",
        description="Resolves (or acknowledges) one open alert: PagerDuty (same dedup key), Slack, email, "
        "and the alerts/history asset.",
    )
    def resolve_alert_op(
        context: OpExecutionContext,
        config: ResolveAlertConfig,
        slack_notifier: SlackNotifierResource,
        pagerduty_notifier: PagerDutyNotifierResource,
        email_notifier: EmailNotifierResource,
    ) -> None:
        resolve_alert_by_hand(
            context, config, plan, Channels(slack_notifier, pagerduty_notifier, email_notifier)
        )

    @job(
        name=RESOLVE_JOB,
        description="Resolve or acknowledge an alert by hand: run config ops.resolve_alert_by_hand.config."
        "alert = its key (the alerts/history table's `alert` column), action = resolve | acknowledge.",
        tags={KIND_TAG: "notifications"},
    )
    def resolve_alert() -> None:
        resolve_alert_op()

    return Definitions(assets=[history_spec(plan.site)], sensors=[alert_causes], jobs=[resolve_alert])
