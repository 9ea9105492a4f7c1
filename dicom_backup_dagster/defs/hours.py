"""Clinic hours in Dagster: a backfill, sweep or manual run waits for its source's bulk_hours window.

Which runs wait: every run that calls wait_for_window for a source except those the source's nightly
backup schedule (`<source>_backup_schedule`, tag ``dagster/schedule_name``) launched, which back up one
day and are meant to run at night whatever the window says. So backfills (tag ``dagster/backfill``), runs
launched from the Launchpad or the asset page, and the ticks of any other schedule or sensor (the
reconciliation sweep's) wait. ``dicom_backup/ignore_bulk_hours=true`` on the run
(Launchpad or the backfill dialog: "Add tags") makes it run at once.

How a paused run looks: the step stays "running", a warning in its log says why, until when and how to run
now (repeated every LOG_EVERY seconds), and the run tag ``dicom_backup/bulk_hours`` reads ``paused until
2026-12-02 19:00 EST`` in the run list, then ``resumed ...``. Runs pause at step starts and between
transfer requests, where the backup loses nothing (a later request or run plans only what the archive
lacks), and release their association to the source while they wait. A paused run keeps its slot in the
source's pool and one of max_concurrent_runs (dagster.yaml: pools count runs). Terminating a paused run
stops it at once (the run worker is interrupted) or at the latest at the next status poll (POLL_SECONDS).

Why sleep in the step rather than `RetryRequested(seconds_to_wait=...)`: a retry is reported as a failed
step ('Execution of step ... failed and has requested a retry'), counts against the retry policy's attempts
meant for network faults, says nothing about the window, and frees no slot either (the run holds it).
"""

import datetime as dt
import time
from collections.abc import Callable, Mapping

from dagster import AssetExecutionContext, DagsterRunStatus, Failure

from dicom_backup_dagster.backup.hours import WorkWindow
from dicom_backup_dagster.defs.keys import (
    BACKFILL_ID_TAG,
    IGNORE_BULK_HOURS_TAG,
    PAUSED_TAG,
    SCHEDULE_NAME_TAG,
    SENSOR_NAME_TAG,
    SourceNames,
)

POLL_SECONDS = 10.0  # how soon a terminated paused run notices
LOG_EVERY = 30 * 60.0  # seconds between "still paused" log lines

_TRUE = {"true", "yes", "1"}
_STOPPING = {DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED}


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# Module-level hooks: tests replace them to move time without waiting.
now: Callable[[], dt.datetime] = _utc_now
sleep: Callable[[float], None] = time.sleep


def paused_kind(tags: Mapping[str, str], source_alias: str, job_name: str) -> str | None:
    """What kind of run this is in the pause message ('backfill runs', 'manual runs', ...), or None when it
    never waits for the window: a tick of the source's nightly backup schedule, or forced by the tag. Any
    other schedule's ticks (the reconciliation sweep's, say) wait."""
    if tags.get(IGNORE_BULK_HOURS_TAG, "").strip().lower() in _TRUE:
        return None
    if BACKFILL_ID_TAG in tags:
        return "backfill runs"
    schedule = tags.get(SCHEDULE_NAME_TAG)
    if schedule == SourceNames(source_alias).schedule:
        return None
    if schedule:
        return f"scheduled {job_name} runs"
    if SENSOR_NAME_TAG in tags:
        return f"{job_name} runs of the sensor {tags[SENSOR_NAME_TAG]}"
    return "manual runs"


def _in(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    parts += [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if minutes and not days else []
    return " ".join(parts)


def _run_now(kind: str) -> str:
    again = (
        "cancel the backfill (Overview -> Backfills) and launch it again with"
        if kind == "backfill runs"
        else "terminate this run and launch it again (Launchpad: Add tags) with"
    )
    return f"To back up now instead, {again} the tag {IGNORE_BULK_HOURS_TAG}=true."


def _at(when: dt.datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} {when.tzname()}"


def wait_for_window(
    context: AssetExecutionContext,
    source_alias: str,
    window: WorkWindow,
    *,
    before_pause: Callable[[], None] | None = None,
) -> None:
    """Return at once when the run may load `source_alias` now; otherwise log, tag the run and sleep until
    `window` opens. `before_pause` runs once before the first sleep (release an association). Raises
    Failure if the run is terminated while it waits."""
    if window.always:
        return
    kind = paused_kind(context.run.tags, source_alias, context.run.job_name)
    if kind is None:
        return
    current = now()
    opening = window.next_opening(current)
    if opening is None:
        return
    if before_pause is not None:
        before_pause()
    started, last_log = current, None
    while opening is not None:
        left = (opening - current).total_seconds()
        if last_log is None or (current - last_log).total_seconds() >= LOG_EVERY:
            context.log.warning(
                f"{'Paused' if last_log is None else 'Still paused'}: {kind} may load {source_alias} only "
                f"{window.describe()} (sources.{source_alias}.bulk_hours); this run carries on where it "
                f"stopped when the window opens at {_at(opening)} (in {_in(left)}). {_run_now(kind)}"
            )
            if last_log is None:
                context.instance.add_run_tags(
                    context.run.run_id, {PAUSED_TAG: f"paused until {_at(opening)}"}
                )
            last_log = current
        sleep(max(0.0, min(POLL_SECONDS, left)))
        run = context.instance.get_run_by_id(context.run.run_id)
        if run is not None and run.status in _STOPPING:
            raise Failure(
                description=(
                    f"{source_alias}: terminated while paused for its bulk_hours; nothing was lost, the "
                    "next run backs up what the archive still lacks"
                ),
                allow_retries=False,
            )
        current = now()
        opening = window.next_opening(current)
    resumed = current.astimezone(window.tzinfo)
    context.instance.add_run_tags(context.run.run_id, {PAUSED_TAG: f"resumed {_at(resumed)}"})
    context.log.info(
        f"Resumed: {source_alias}'s bulk_hours window is open ({_at(resumed)}, after "
        f"{_in((current - started).total_seconds())} paused)"
    )


def between_requests(
    context: AssetExecutionContext, source_alias: str, window: WorkWindow
) -> Callable[[Callable[[], None]], None] | None:
    """A transfer's between_requests hook pausing when the window closes mid-run (None when it never
    would: no cost per request)."""
    if window.always or paused_kind(context.run.tags, source_alias, context.run.job_name) is None:
        return None

    def hook(release: Callable[[], None]) -> None:
        if not window.allows(now()):
            wait_for_window(context, source_alias, window, before_pause=release)

    return hook
