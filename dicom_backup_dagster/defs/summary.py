"""The night at a glance: asset `nightly_summary`, one row per source for one day.

Each daily partition's materialization holds a table with, per source: the day's counts (found, already
archived, moved, deferred, failed), whether every check of that day passed (verified), a status in plain
words, a link to the run that backed the day up, for anything not green the runbook page, and the source's
backup SLOs as of the summary's run (the exporter's figures, monitoring/slo.py: the recovery point and the
nights complete and verified by `slo_verified_by_hour` in the SLO window). It reads
only Dagster's own records (materializations and check results), never a DICOM peer or Mosaiq, so it can
run any time; the schedule `summarize_night_schedule` (RUNNING by default, read-only) runs it for the
previous day at SUMMARY_CRON, and the sandbox night runs it after the backups.

No `from __future__ import annotations`: Dagster 1.13 validates `context` annotations by identity.
"""

import math
import time
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultScheduleStatus,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

from dicom_backup_dagster.config import EnvironmentConfig
from dicom_backup_dagster.defs.common import daily_partitions
from dicom_backup_dagster.defs.keys import KIND_TAG, SourceNames, site_key
from dicom_backup_dagster.monitoring.slo import Nights, SloFigures, SloTargets

SUMMARY_KEY = AssetKey("nightly_summary")
SUMMARY_JOB = "summarize_night"
SUMMARY_CRON_HOUR = 7  # after the nightly backups (01:30) and the sweep (04:30) of the previous day
GREEN = "complete and verified"
EMPTY = "nothing that day (0 found), verified"  # a weekend: green too
COUNTS = ("found", "already_archived", "moved", "deferred", "failed")
# What each source kind calls "found" on its `archived` materialization.
FOUND_KEYS = ("instances_found", "records")
SLO_RECORDS = 5000  # per record kind and source: years of nights, a few runs each


@dataclass(frozen=True)
class SummaryPlan:
    environment: str
    checks: dict[str, tuple[AssetCheckKey, ...]]  # source -> the checks of its day-partitioned assets
    ui_url: str  # "" : links relative to the UI that shows them
    runbooks: str
    slo: SloTargets = field(default_factory=SloTargets)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.checks)


@dataclass
class SourceDay:
    """One row of the summary."""

    source: str
    counts: dict[str, int]
    checks_passed: int
    checks_failed: list[str]  # "complete_in_archive (ERROR)"
    checks_missing: list[str]
    run_id: str | None
    status: str
    runbook: str | None
    slo: SloFigures | None = None

    @property
    def green(self) -> bool:
        return self.status in (GREEN, EMPTY)


def day_metadata(instance: DagsterInstance, key: AssetKey, day: str) -> tuple[dict[str, Any], str | None]:
    """The day's latest materialization of `key`: its metadata values and run id (empty: not materialized)."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=1
    ).records
    if not records:
        return {}, None
    entry = records[0].event_log_entry
    event = entry.asset_materialization
    values = {k: v.value for k, v in event.metadata.items()} if event else {}
    return values, entry.run_id


def day_check_results(instance: DagsterInstance, check: AssetCheckKey, day: str) -> tuple[bool, str] | None:
    """(passed, severity) of the latest evaluation of `check` for `day` (checks record one per day,
    defs/checks.py), or None when the day has none: planned, skipped or its step failed."""
    for record in instance.event_log_storage.get_asset_check_execution_history(check, limit=200):
        if record.partition != day or record.event is None or record.event.dagster_event is None:
            continue
        evaluation = record.event.dagster_event.event_specific_data
        if isinstance(evaluation, AssetCheckEvaluation):
            return evaluation.passed, evaluation.severity.value
    return None


def source_day(
    instance: DagsterInstance, alias: str, checks: list[AssetCheckKey], day: str, runbooks: str
) -> SourceDay:
    names = SourceNames(alias)
    values, run_id = day_metadata(instance, names.archived, day)
    found = next((values[k] for k in FOUND_KEYS if isinstance(values.get(k), int)), 0)
    counts = {"found": found, **{k: int(values.get(k) or 0) for k in COUNTS[1:]}}
    passed, failed, missing = 0, [], []
    for check in checks:
        result = day_check_results(instance, check, day)
        if result is None:
            missing.append(check.name)
        elif result[0]:
            passed += 1
        else:
            failed.append(f"{check.name} ({result[1]})")
    status, runbook = _status(run_id is not None, counts, failed, missing)
    return SourceDay(
        alias, counts, passed, failed, missing, run_id, status, f"{runbooks}/{runbook}" if runbook else None
    )


def source_slo(
    instance: DagsterInstance, alias: str, checks: list[AssetCheckKey], now: float, targets: SloTargets
) -> SloFigures:
    """The exporter's SLO figures (monitoring/slo.py) as of `now`, folded from the source's records (its
    `archived` materializations and its day checks, at most SLO_RECORDS of each, newest first)."""
    key = SourceNames(alias).archived
    events: list[tuple[float, AssetMaterialization | AssetCheckEvaluation]] = []
    for record in instance.fetch_materializations(key, limit=SLO_RECORDS).records:
        if (materialization := record.event_log_entry.asset_materialization) is not None:
            events.append((record.event_log_entry.timestamp, materialization))
    for check in checks:
        for execution in instance.event_log_storage.get_asset_check_execution_history(check, SLO_RECORDS):
            entry = execution.event
            if entry is not None and (evaluation := entry.asset_check_evaluation) is not None:
                events.append((entry.timestamp, evaluation))
    nights = Nights()
    for timestamp, event in sorted(events, key=lambda e: e[0]):  # in time order, as the exporter folds
        if isinstance(event, AssetCheckEvaluation):
            severity = event.severity.value
            nights.check(alias, event.partition, event.check_name, event.passed, severity, timestamp)
        else:
            metadata = {k: v.value for k, v in event.metadata.items()}
            nights.archived(alias, event.partition, timestamp, metadata)
    return nights.figures([alias], targets, now)[alias]


def slo_cells(figures: SloFigures | None) -> tuple[str, str]:
    """(recovery point, nights verified in time) as the table shows them."""
    if figures is None:
        return "-", "-"
    seconds, counted, verified = (
        figures.recovery_point_seconds,
        figures.counted["slo"],
        figures.verified["slo"],
    )
    recovery = "none verified" if math.isinf(seconds) else f"{seconds / 3600:.0f} h"
    share = f"{verified} of {counted} ({verified / counted:.0%})" if counted else "-"
    return recovery, share


def _hours(figures: SloFigures | None) -> float | None:
    seconds = figures.recovery_point_seconds if figures else math.inf
    return None if math.isinf(seconds) else round(seconds / 3600, 1)


def _ratio(figures: SloFigures | None) -> float | None:
    share = figures.ratio() if figures else None
    return None if share is None else round(share, 4)


def _status(
    materialized: bool, counts: dict[str, int], failed: list[str], missing: list[str]
) -> tuple[str, str | None]:
    """The row's status in an RT IT engineer's words, and the runbook page for anything not green."""
    if not materialized:
        return "not backed up (no successful run for this day)", "backup_failed.md"
    if counts["failed"]:
        return f"{counts['failed']} failed to transfer", "archive_incomplete.md"
    errors = [f for f in failed if f.endswith("(ERROR)")]
    if errors:
        return "verification failed: " + ", ".join(errors), "check_failed.md"
    if counts["deferred"]:
        return f"{counts['deferred']} deferred to the next run (max_uids_per_run)", "archive_incomplete.md"
    if missing:
        return "backed up, not verified yet: " + ", ".join(missing), "check_failed.md"
    if failed:
        return "complete, with warnings: " + ", ".join(failed), "check_failed.md"
    return (GREEN if counts["found"] else EMPTY), None


def instances_cell(counts: dict[str, int]) -> str:
    """The found instances and, of them, the non-zero outcomes: "8 found: 5 already archived, 3 moved"."""
    outcomes = [(k, counts[k]) for k in COUNTS[1:] if counts[k]]
    detail = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in outcomes)
    return f"{counts['found']} found" + (f": {detail}" if detail else "")


def summary_table(rows: list[SourceDay], ui_url: str) -> str:
    """Markdown: one row per source, links to the run and the runbook. Five columns, so that the status
    keeps its width in the UI's metadata panel; the SLO figures have their own table (slo_table)."""
    lines = ["| source | status | instances | checks passed | run |", "|" + "---|" * 5]
    for r in rows:
        run = f"[{r.run_id[:8]}]({ui_url}/runs/{r.run_id})" if r.run_id else "-"
        status = r.status if r.green else f"**{r.status}** ([runbook]({r.runbook}))"
        checks = f"{r.checks_passed} of {r.checks_passed + len(r.checks_failed) + len(r.checks_missing)}"
        lines.append("| " + " | ".join([r.source, status, instances_cell(r.counts), checks, run]) + " |")
    return "\n".join(lines)


def slo_table(rows: list[SourceDay]) -> str:
    """Markdown: each source's recovery point and nights verified in time (settings.slo_*)."""
    lines = ["| source | recovery point | nights verified in time |", "|" + "---|" * 3]
    lines += ["| " + " | ".join([r.source, *slo_cells(r.slo)]) + " |" for r in rows]
    return "\n".join(lines)


def materialize_summary(context: AssetExecutionContext, plan: SummaryPlan) -> MaterializeResult:
    day = context.partition_key
    rows = [
        source_day(context.instance, alias, list(checks), day, plan.runbooks)
        for alias, checks in plan.checks.items()
    ]
    now = time.time()
    for row in rows:
        row.slo = source_slo(context.instance, row.source, list(plan.checks[row.source]), now, plan.slo)
    green = sum(r.green for r in rows)
    sentence = f"{plan.environment} {day}: {green} of {len(rows)} sources complete and verified"
    not_green = [f"{r.source}: {r.status}" for r in rows if not r.green]
    context.log.info(sentence + ("; " + "; ".join(not_green) if not_green else ""))
    return MaterializeResult(
        metadata={
            "summary": sentence,
            "sources": MetadataValue.md(summary_table(rows, plan.ui_url)),
            "slo": MetadataValue.md(slo_table(rows)),
            "sources_green": green,
            "sources_not_green": len(rows) - green,
            **{f"{r.source}_status": r.status for r in rows},
            **{f"{r.source}_recovery_point_hours": _hours(r.slo) for r in rows},
            **{f"{r.source}_nights_verified_ratio": _ratio(r.slo) for r in rows},
        }
    )


def summary_key(site: str, *, multi_site: bool = False) -> AssetKey:
    """`nightly_summary`, or `nightly_summary/<site>` when several sites share the instance."""
    return site_key(SUMMARY_KEY, site, multi_site=multi_site)


def build_summary_defs(
    env: EnvironmentConfig, backups: Definitions, *, multi_site: bool = False
) -> Definitions:
    """Asset `nightly_summary` (daily partitions, like the backups), its job and its schedule; `backups`
    holds the sources' assets and checks it summarizes."""
    sources = tuple(sorted([*env.qr_sources, *env.mosaiq_sources]))
    if not sources:
        return Definitions()
    notifications = env.notifications
    graph = backups.resolve_asset_graph()
    # The day's checks of each source's day-partitioned assets: not the sweep's `reconciled`, the on-demand
    # backup or the on-treatment report, which have no day partitions and so no result per night.
    check_keys = [k for k in graph.asset_check_keys if graph.get(k.asset_key).partitions_def is not None]
    plan = SummaryPlan(
        environment=env.name,
        checks={
            alias: tuple(
                sorted(
                    (k for k in check_keys if k.asset_key.path[:1] == [alias]),
                    key=lambda k: (k.asset_key.to_user_string(), k.name),
                )
            )
            for alias in sources
        },
        ui_url=(notifications.dagster_ui_url or "").rstrip("/"),
        runbooks=notifications.runbook_base_url,
        slo=SloTargets.from_settings(env.settings),
    )
    partitions = daily_partitions(env)
    key = summary_key(env.name, multi_site=multi_site)

    @asset(
        key=key,
        partitions_def=partitions,
        group_name="summary",
        deps=[SourceNames(alias).archived for alias in sources],
        kinds={"dagster"},
        description=(
            f"Was the night complete and verified? One row per source of {env.name} for the day: instances "
            "(or Mosaiq records) found, already archived, moved, deferred and failed, how many of the day's "
            "checks passed, a link to the run, for anything not green the runbook, and the recovery point "
            "and nights verified in time of the SLO window (settings.slo_*). Reads Dagster's own "
            "records only; runs every morning for the previous day."
        ),
    )
    def nightly_summary(context: AssetExecutionContext) -> MaterializeResult:
        return materialize_summary(context, plan)

    job = define_asset_job(
        SUMMARY_JOB,
        selection=[key],
        tags={KIND_TAG: "summary"},
        description="Builds nightly_summary for a day (read-only: Dagster's records of the backups).",
    )
    schedule = build_schedule_from_partitioned_job(
        job,
        hour_of_day=SUMMARY_CRON_HOUR,
        minute_of_hour=0,
        default_status=DefaultScheduleStatus.RUNNING,
        name=f"{SUMMARY_JOB}_schedule",
        description=f"Summarizes the previous day at {SUMMARY_CRON_HOUR:02d}:00 ({env.settings.timezone}).",
    )
    return Definitions(assets=[nightly_summary], jobs=[job], schedules=[schedule])
