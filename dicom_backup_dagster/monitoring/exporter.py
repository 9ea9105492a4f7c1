"""`dicom-backup-exporter`: Prometheus metrics read from the Dagster instance's storage and from Orthanc.

A long-lived process beside dagster-webserver and dagster-daemon (docs/decisions/monitoring.md): run
processes push nothing; this process reads what they stored, so killed or never-started runs are seen
too, and counters survive restarts (they are rebuilt from the stored history).

What one refresh reads (at most every `cache_seconds`, default 30; scrapes in between are served from
memory):
- run storage, only if a run changed since the last read (one COUNT with `updated_after`): per source
  (the run tag `dicom_backup/source` every backup job sets) counts of finished runs by status
  (`get_runs_count`) and a few latest run records (running runs, last run, last 7 successes for the
  duration baseline). Run counts are SQL COUNTs: no run is loaded to count it.
- event log: materializations, observations and asset check evaluations *after the stored cursor*
  (`get_logs_for_all_runs_by_log_id`, ordered by storage id, paged), folded into metrics.Totals: instance
  counts of `<source>/archived`, verification counts of `content_verified`, latest check results, DIMSE
  statistics from every `dimse` metadata value (dicom/stats.py), latest `peers/<alias>` observations of
  connectivity_check.
- daemon heartbeats (`get_daemon_heartbeats`), and Orthanc `/statistics` if DICOM_BACKUP_ORTHANC_URL is set.

When Dagster's storage is unreachable the refresh fails, the last figures keep being served and
`dicom_backup_exporter_dagster_up` is 0 (`..._refresh_errors_total` counts the failures); the next
refresh resumes from the cursors. A refresh runs on a worker thread and a scrape waits for it at most
`scrape_wait_seconds`, so a hung database never hangs Prometheus.

Usage: DAGSTER_HOME=... dicom-backup-exporter --port 9108 [--address 127.0.0.1] [--cache-seconds 30]
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dicom_backup_dagster.dicom import stats
from dicom_backup_dagster.logs import SOURCE_TAG
from dicom_backup_dagster.monitoring import metrics as m
from dicom_backup_dagster.monitoring.orthanc import OrthancTarget, statistics
from dicom_backup_dagster.monitoring.slo import SloTargets
from dicom_backup_dagster.notify.history import History
from dicom_backup_dagster.orthanc import OrthancStatistics

log = logging.getLogger(__name__)

OPEN_ALERTS = "dicom_backup_open_alerts"  # alert history (notify/history.py), by severity

EVENT_TYPES = (
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.ASSET_OBSERVATION,
    DagsterEventType.ASSET_CHECK_EVALUATION,
)
RUNNING = [DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
FINISHED = {
    "success": DagsterRunStatus.SUCCESS,
    "failure": DagsterRunStatus.FAILURE,
    "canceled": DagsterRunStatus.CANCELED,
}
BASELINE_RUNS = 7  # the duration baseline is the median of the last 7 successful runs
# Run figures are re-read only when a run changed since the last read (minus this margin for clock skew
# between run workers and the exporter): one COUNT instead of ~6 queries per source.
CHANGE_MARGIN_SECONDS = 120.0


def _values(metadata: Any) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in (metadata or {}).items()}


class DagsterStateCollector(Collector):
    """A prometheus_client custom collector over a DagsterInstance (and optionally one Orthanc)."""

    def __init__(
        self,
        instance_factory: Callable[[], DagsterInstance] = DagsterInstance.get,
        *,
        cache_seconds: float = 30.0,
        scrape_wait_seconds: float = 10.0,
        page_size: int = 5000,
        orthanc: OrthancTarget | None = None,
        clock: Callable[[], float] = time.time,
        slo: SloTargets | None = None,
        slo_sources: Iterable[str] = (),
        alert_sites: Iterable[str] = ("",),
    ) -> None:
        self._instance_factory = instance_factory
        self._instance: DagsterInstance | None = None
        self.cache_seconds = cache_seconds
        self.scrape_wait_seconds = scrape_wait_seconds
        self.page_size = page_size
        self.orthanc = orthanc
        self._clock = clock
        self.slo = slo or SloTargets()
        self.slo_sources = tuple(slo_sources)  # the configured sources: served before their first run
        self.alert_sites = tuple(alert_sites)  # whose alert ledgers: "" for one site, else every site
        self._lock = threading.Lock()  # one refresh at a time
        self._refreshing: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._cursors: dict[DagsterEventType, int] = dict.fromkeys(EVENT_TYPES, -1)
        self.totals = m.Totals()
        self.runs: dict[str, m.RunStats] = {}
        self._runs_read_at: float | None = None
        self.heartbeats: dict[str, float] = {}
        self.open_alerts: dict[str, int] = {}  # severity -> open alerts (notify/history.py)
        self.archive: OrthancStatistics | None = None
        self.archive_up: float | None = None
        self.dagster_up = 0.0
        self.refresh_errors = 0
        self.last_refresh_attempt = 0.0
        self.last_refresh_ok = 0.0
        self.refresh_seconds = 0.0
        self.last_error: str | None = None

    # -- reading -------------------------------------------------------------------------------------

    def instance(self) -> DagsterInstance:
        if self._instance is None:
            self._instance = self._instance_factory()
        return self._instance

    def refresh(self) -> bool:
        """Read what changed since the last refresh. False (and dagster_up 0) if the storage failed."""
        with self._lock:
            started = time.perf_counter()
            self.last_refresh_attempt = self._clock()
            ok = True
            try:
                instance = self.instance()
                self._read_events(instance)
                self._read_runs_if_changed(instance)
                self.heartbeats = {
                    str(t): float(h.timestamp) for t, h in instance.get_daemon_heartbeats().items()
                }
                self.open_alerts = open_alerts(instance, self.alert_sites)
                self.dagster_up = 1.0
                self.last_refresh_ok = self._clock()
                self.last_error = None
            except Exception as error:  # any storage error: keep serving the last figures
                ok = False
                self.dagster_up = 0.0
                self.refresh_errors += 1
                # The class name only: database errors can quote SQL parameters.
                self.last_error = type(error).__name__
                log.warning(
                    "dicom-backup-exporter: reading the Dagster instance failed (%s); serving the figures "
                    "of %s, will retry",
                    self.last_error,
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_refresh_ok))
                    if self.last_refresh_ok
                    else "no earlier refresh",
                )
            self._read_orthanc()
            self.refresh_seconds = time.perf_counter() - started
            return ok

    def _read_events(self, instance: DagsterInstance) -> None:
        storage = instance.event_log_storage
        for event_type in EVENT_TYPES:
            while True:
                page = storage.get_logs_for_all_runs_by_log_id(
                    after_cursor=self._cursors[event_type],
                    dagster_event_type=event_type,
                    limit=self.page_size,
                )
                for entry in page.values():
                    self._fold(event_type, entry)
                if page:
                    self._cursors[event_type] = max(page)
                if len(page) < self.page_size:
                    break

    def _fold(self, event_type: DagsterEventType, entry: Any) -> None:
        if event_type == DagsterEventType.ASSET_MATERIALIZATION:
            event = entry.asset_materialization
            if event is not None:
                self.totals.add_materialization(
                    entry.run_id,
                    event.asset_key.path,
                    entry.timestamp,
                    _values(event.metadata),
                    event.partition,
                )
        elif event_type == DagsterEventType.ASSET_OBSERVATION:
            event = entry.asset_observation
            if event is not None:
                self.totals.add_observation(
                    entry.run_id, event.asset_key.path, entry.timestamp, _values(event.metadata)
                )
        else:
            event = entry.asset_check_evaluation
            if event is not None:
                self.totals.add_check_evaluation(
                    entry.run_id,
                    event.asset_key.path,
                    event.check_name,
                    bool(event.passed),
                    entry.timestamp,
                    _values(event.metadata),
                    event.partition,
                    event.severity.value,
                )

    def _sources(self, instance: DagsterInstance) -> set[str]:
        sources = set(self.totals.sources)
        for key, values in instance.get_run_tags(tag_keys=[SOURCE_TAG]):
            if key == SOURCE_TAG:
                sources.update(values)
        return sources

    def _read_runs_if_changed(self, instance: DagsterInstance) -> None:
        now = self._clock()
        if self._runs_read_at is not None and set(self.runs) >= self.totals.sources:
            since = datetime.fromtimestamp(self._runs_read_at - CHANGE_MARGIN_SECONDS, UTC)
            if instance.get_runs_count(RunsFilter(updated_after=since)) == 0:
                return
        self.runs = self._read_runs(instance)
        self._runs_read_at = now

    def _read_runs(self, instance: DagsterInstance) -> dict[str, m.RunStats]:
        out: dict[str, m.RunStats] = {}
        for source in sorted(self._sources(instance)):
            tags = {SOURCE_TAG: source}
            finished = {
                name: instance.get_runs_count(RunsFilter(tags=tags, statuses=[status]))
                for name, status in FINISHED.items()
            }
            running = instance.get_run_records(RunsFilter(tags=tags, statuses=RUNNING), limit=1000)
            starts = [r.start_time for r in running if r.start_time]
            last = instance.get_run_records(RunsFilter(tags=tags, statuses=list(FINISHED.values())), limit=1)
            successes = instance.get_run_records(
                RunsFilter(tags=tags, statuses=[DagsterRunStatus.SUCCESS]), limit=BASELINE_RUNS
            )
            durations = [r.end_time - r.start_time for r in successes if r.start_time and r.end_time]
            last_record = last[0] if last else None
            out[source] = m.RunStats(
                # Started = finished + running (STARTED, CANCELING): one COUNT fewer, same monotonic sum.
                started=sum(finished.values()) + len(running),
                finished=finished,
                in_progress=len(running),
                in_progress_since=min(starts) if starts else None,
                last_run_success=(1.0 if last_record.dagster_run.status == DagsterRunStatus.SUCCESS else 0.0)
                if last_record
                else None,
                last_run_timestamp=(last_record.end_time or last_record.create_timestamp.timestamp())
                if last_record
                else None,
                last_run_duration=(last_record.end_time - last_record.start_time)
                if last_record and last_record.end_time and last_record.start_time
                else None,
                duration_baseline=m.median(durations),
                last_success_timestamp=max((r.end_time for r in successes if r.end_time), default=None),
            )
        return out

    def _read_orthanc(self) -> None:
        if self.orthanc is None:
            return
        try:
            self.archive = statistics(self.orthanc)
            self.archive_up = 1.0
        except Exception as error:
            log.warning("dicom-backup-exporter: %s", error)
            self.archive_up = 0.0

    # -- serving -------------------------------------------------------------------------------------

    def start_refresh(self) -> threading.Thread:
        """Start a refresh on a worker thread unless one is running; the running one is returned."""
        with self._start_lock:
            thread = self._refreshing
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self.refresh, name="exporter-refresh", daemon=True)
                self._refreshing = thread
                self.last_refresh_attempt = self._clock()  # one refresh per cache period
                thread.start()
            return thread

    def _refresh_if_stale(self) -> None:
        thread = self._refreshing
        if self._clock() - self.last_refresh_attempt >= self.cache_seconds:
            thread = self.start_refresh()
        if thread is not None and thread.is_alive():
            thread.join(self.scrape_wait_seconds)

    def collect(self) -> Iterator[Metric]:
        self._refresh_if_stale()
        yield from self.families()

    def families(self) -> Iterable[Metric]:
        """The metric families of the current figures (no I/O)."""
        yield from self._run_families()
        yield from self._instance_families()
        yield from self._check_families()
        yield from self._slo_families()
        yield from self._dimse_families()
        yield from self._peer_families()
        yield from self._daemon_families()
        yield from self._archive_families()
        yield from self._self_families()
        yield from self._alert_families()

    def _alert_families(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            OPEN_ALERTS, "Alerts open now (triggered, not resolved), per severity", labels=["severity"]
        )
        for severity, count in sorted(self.open_alerts.items()):
            family.add_metric([severity], float(count))
        yield family

    def _run_families(self) -> Iterable[Metric]:
        started = CounterMetricFamily(
            m.RUNS_STARTED.removesuffix("_total"), "Backup runs that started, per source", labels=["source"]
        )
        runs = CounterMetricFamily(
            m.RUNS.removesuffix("_total"),
            "Finished backup runs per source and final status (success, failure, canceled)",
            labels=["source", "status"],
        )
        in_progress = GaugeMetricFamily(m.RUNS_IN_PROGRESS, "Backup runs running now", labels=["source"])
        in_progress_s = GaugeMetricFamily(
            m.RUN_IN_PROGRESS_SECONDS, "Age of the oldest running backup run (0 when idle)", labels=["source"]
        )
        gauges = {
            "last_run_success": GaugeMetricFamily(
                m.LAST_RUN_SUCCESS, "1 if the latest finished backup run succeeded, else 0", labels=["source"]
            ),
            "last_run_timestamp": GaugeMetricFamily(
                m.LAST_RUN_TIMESTAMP, "End time of the latest finished backup run", labels=["source"]
            ),
            "last_run_duration": GaugeMetricFamily(
                m.LAST_RUN_DURATION, "Duration of the latest finished backup run", labels=["source"]
            ),
            "duration_baseline": GaugeMetricFamily(
                m.DURATION_BASELINE,
                f"Median duration of the last {BASELINE_RUNS} successful backup runs",
                labels=["source"],
            ),
            "last_success_timestamp": GaugeMetricFamily(
                m.LAST_SUCCESS_TIMESTAMP, "End time of the latest successful backup run", labels=["source"]
            ),
        }
        for source, run in sorted(self.runs.items()):
            started.add_metric([source], run.started)
            for status, count in run.finished.items():
                runs.add_metric([source, status], count)
            in_progress.add_metric([source], run.in_progress)
            since = run.in_progress_since
            in_progress_s.add_metric([source], max(0.0, self._clock() - since) if since else 0.0)
            for attr, family in gauges.items():
                value = getattr(run, attr)
                if value is not None:
                    family.add_metric([source], value)
        yield from (started, runs, in_progress, in_progress_s, *gauges.values())

    def _instance_families(self) -> Iterable[Metric]:
        t = self.totals
        sources = sorted(t.sources | set(self.runs))
        for key, name in m.INSTANCE_COUNTERS.items():
            family = CounterMetricFamily(
                name.removesuffix("_total"),
                f"Sum of `{key}` over every {m.ARCHIVED_ASSET} materialization (and failed attempt)",
                labels=["source"],
            )
            for source in sources:
                family.add_metric([source], t.instances.get((source, key), 0.0))
            yield family
        size = CounterMetricFamily(m.BYTES.removesuffix("_total"), "Bytes archived", labels=["source"])
        for source in sorted(t.bytes):
            size.add_metric([source], t.bytes[source])
        yield size
        last_found = GaugeMetricFamily(
            m.LAST_INSTANCES_FOUND,
            "instances_found of the latest archived materialization",
            labels=["source"],
        )
        last_moved = GaugeMetricFamily(
            m.LAST_INSTANCES_MOVED, "moved of the latest archived materialization", labels=["source"]
        )
        for source, (_, values) in sorted(t.last_archived.items()):
            if "instances_found" in values:
                last_found.add_metric([source], values["instances_found"])
            if "moved" in values:
                last_moved.add_metric([source], values["moved"])
        yield last_found
        yield last_moved
        verified = CounterMetricFamily(
            m.VERIFIED.removesuffix("_total"),
            "Sampled instances whose content digest matched on source and archive",
            labels=["source"],
        )
        failed = CounterMetricFamily(
            m.VERIFICATION_FAILED.removesuffix("_total"),
            "Sampled instances that differed or were missing on either side",
            labels=["source"],
        )
        for source in sorted(set(t.verified) | set(t.verification_failed)):
            verified.add_metric([source], t.verified.get(source, 0.0))
            failed.add_metric([source], t.verification_failed.get(source, 0.0))
        yield verified
        yield failed

    def _check_families(self) -> Iterable[Metric]:
        passed = GaugeMetricFamily(
            m.CHECK_PASSED, "1 if the latest evaluation of the asset check passed", labels=["source", "check"]
        )
        when = GaugeMetricFamily(
            m.CHECK_TIMESTAMP, "Time of the latest evaluation of the asset check", labels=["source", "check"]
        )
        for (source, check), (timestamp, ok) in sorted(self.totals.check_latest.items()):
            passed.add_metric([source, check], 1.0 if ok else 0.0)
            when.add_metric([source, check], timestamp)
        evaluations = CounterMetricFamily(
            m.CHECK_EVALUATIONS.removesuffix("_total"),
            "Asset check evaluations by result (pass, fail)",
            labels=["source", "check", "result"],
        )
        for (source, check, result), count in sorted(self.totals.check_evaluations.items()):
            evaluations.add_metric([source, check, result], count)
        yield from (passed, when, evaluations)

    def _slo_families(self) -> Iterable[Metric]:
        t, sources = self.slo, {*self.slo_sources, *self.totals.nights.sources()}
        figures = self.totals.nights.figures(sources, t, self._clock())
        window_text = f"the last night, 7 nights or the SLO window ({t.window_nights})"
        recovery = GaugeMetricFamily(
            m.RECOVERY_POINT,
            "Seconds since the end of the newest complete and verified day (+Inf: none yet)",
            labels=["source"],
        )
        counted = GaugeMetricFamily(
            m.NIGHTS_COUNTED, f"Nights counted in {window_text}", labels=["source", "window"]
        )
        verified = GaugeMetricFamily(
            m.NIGHTS_VERIFIED,
            f"Nights complete and verified by {t.verified_by_hour:02d}:00 ({t.timezone}) in {window_text}",
            labels=["source", "window"],
        )
        ratio = GaugeMetricFamily(
            m.NIGHTS_VERIFIED_RATIO, "Share of the SLO window's nights verified in time", labels=["source"]
        )
        targets = [
            (
                GaugeMetricFamily(
                    m.RECOVERY_POINT_TARGET, "settings.slo_recovery_point_hours in seconds", labels=["source"]
                ),
                t.recovery_point_hours * 3600,
            ),
            (
                GaugeMetricFamily(m.NIGHTS_TARGET, "settings.slo_target_ratio", labels=["source"]),
                t.target_ratio,
            ),
            (
                GaugeMetricFamily(m.SLO_WINDOW, "settings.slo_window_nights", labels=["source"]),
                t.window_nights,
            ),
        ]
        for source, f in sorted(figures.items()):
            recovery.add_metric([source], f.recovery_point_seconds)
            for window in t.windows:
                counted.add_metric([source, window], f.counted[window])
                verified.add_metric([source, window], f.verified[window])
            share = f.ratio()
            if share is not None:
                ratio.add_metric([source], share)
            for family, target in targets:
                family.add_metric([source], target)
        yield from (recovery, counted, verified, ratio, *(family for family, _ in targets))

    def _dimse_families(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            m.DIMSE_REQUESTS.removesuffix("_total"),
            "DIMSE requests by peer AE title, operation and status class (from run metadata)",
            labels=["peer_ae", "operation", "status_class"],
        )
        duration = HistogramMetricFamily(
            m.DIMSE_DURATION,
            "DIMSE request latency (request to final response) by peer AE title and operation",
            labels=["peer_ae", "operation"],
        )
        for peer, ops in sorted(self.totals.dimse.items()):
            for operation, values in sorted(ops.items()):
                for cls in stats.STATUS_CLASSES:
                    requests.add_metric([peer, operation, cls], values.get(cls, 0))
                total = sum(int(values.get(c, 0)) for c in stats.STATUS_CLASSES)
                buckets, running = [], 0
                for le in stats.BUCKET_LABELS:
                    # Cumulative and monotonic even if a run wrote fewer buckets (older format).
                    running = max(running, int(values["buckets"].get(le, 0)))
                    buckets.append((le, running if le != "+Inf" else max(running, total)))
                duration.add_metric([peer, operation], buckets, float(values.get("seconds_sum", 0.0)))
        yield requests
        yield duration

    def _peer_families(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            m.PEER_UP, "1 if the latest connectivity_check reached the peer", labels=["peer", "check"]
        )
        latency = GaugeMetricFamily(
            m.PEER_LATENCY, "Latency of the latest connectivity check of the peer", labels=["peer"]
        )
        when = GaugeMetricFamily(m.PEER_TIMESTAMP, "Time of the latest connectivity check", labels=["peer"])
        for peer, p in sorted(self.totals.peers.items()):
            up.add_metric([peer, p["check"]], p["up"])
            when.add_metric([peer], p["timestamp"])
            if p["latency_seconds"] is not None:
                latency.add_metric([peer], p["latency_seconds"])
        yield from (up, latency, when)

    def _daemon_families(self) -> Iterable[Metric]:
        beat = GaugeMetricFamily(
            m.DAEMON_HEARTBEAT, "Latest heartbeat of each Dagster daemon", labels=["daemon_type"]
        )
        age = GaugeMetricFamily(
            m.DAEMON_HEARTBEAT_AGE, "Seconds since the daemon's latest heartbeat", labels=["daemon_type"]
        )
        now = self._clock()
        for daemon, timestamp in sorted(self.heartbeats.items()):
            beat.add_metric([daemon], timestamp)
            age.add_metric([daemon], max(0.0, now - timestamp))
        yield from (beat, age)

    def _archive_families(self) -> Iterable[Metric]:
        if self.orthanc is None:
            return
        name = [self.orthanc.name]
        up = GaugeMetricFamily(m.ARCHIVE_UP, "1 if Orthanc /statistics answered", labels=["archive"])
        up.add_metric(name, self.archive_up or 0.0)
        yield up
        if self.archive is not None:
            for metric, text, value in (
                (m.ARCHIVE_INSTANCES, "Instances stored in the archive", self.archive.instances),
                (m.ARCHIVE_STUDIES, "Studies stored in the archive", self.archive.studies),
                (m.ARCHIVE_DISK, "Disk used by the archive's storage", self.archive.disk_size_bytes),
            ):
                family = GaugeMetricFamily(metric, text, labels=["archive"])
                family.add_metric(name, value)
                yield family

    def refresh_overdue(self) -> bool:
        """A refresh has been running for longer than a scrape waits: the storage is (too) slow."""
        thread = self._refreshing
        return (
            thread is not None
            and thread.is_alive()
            and self._clock() - self.last_refresh_attempt > self.scrape_wait_seconds
        )

    def _self_families(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            m.EXPORTER_DAGSTER_UP,
            "1 if the latest read of the Dagster storage succeeded (0 while one hangs past the scrape wait)",
        )
        # dagster-postgres retries a refused connection with backoff for ~12 s: say "down" meanwhile.
        up.add_metric([], 0.0 if self.refresh_overdue() else self.dagster_up)
        errors = CounterMetricFamily(
            m.EXPORTER_ERRORS.removesuffix("_total"), "Refreshes that failed to read the Dagster storage"
        )
        errors.add_metric([], self.refresh_errors)
        seconds = GaugeMetricFamily(m.EXPORTER_REFRESH_SECONDS, "Duration of the latest refresh")
        seconds.add_metric([], self.refresh_seconds)
        last = GaugeMetricFamily(m.EXPORTER_LAST_REFRESH, "Time of the latest successful refresh")
        last.add_metric([], self.last_refresh_ok)
        events = CounterMetricFamily(
            m.EXPORTER_EVENTS.removesuffix("_total"), "Asset events folded into the figures"
        )
        events.add_metric([], self.totals.events)
        yield from (up, errors, seconds, last, events)


def build_registry(collector: DagsterStateCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def open_alerts(instance: DagsterInstance, sites: Iterable[str]) -> dict[str, int]:
    """Open alerts by severity, summed over the sites' ledgers (one per site when several share it)."""
    counts: dict[str, int] = {}
    for site in sites:
        for severity, n in History(instance.run_storage, site=site).open_by_severity().items():
            counts[severity] = counts.get(severity, 0) + n
    return counts


def alert_sites() -> tuple[str, ...]:
    """The alert ledgers to read: `("",)` for a one-site file, else every site's (defs/alert_lifecycle)."""
    from dicom_backup_dagster.config import ConfigError, load_config

    try:
        names = load_config().environment_names
    except ConfigError:
        return ("",)  # site_slo() logs the configuration problem
    return names if len(names) > 1 else ("",)


def site_slo() -> tuple[SloTargets, tuple[str, ...]]:
    """The SLO targets and sources of the site configuration ($DICOM_BACKUP_CONFIG), or the defaults."""
    from dicom_backup_dagster.config import ConfigError, load_config

    try:
        env = load_config().environment
    except ConfigError as error:
        log.error(
            "dicom-backup-exporter: cannot read the site configuration, serving the SLOs with the default "
            "targets (UTC) for the sources seen in Dagster: %s",
            error,
        )
        return SloTargets(), ()
    return SloTargets.from_settings(env.settings), (*env.qr_sources, *env.mosaiq_sources)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dicom-backup-exporter",
        description="Serve Prometheus metrics of the DICOM backup from the Dagster instance ($DAGSTER_HOME) "
        "and Orthanc (DICOM_BACKUP_ORTHANC_URL, _USERNAME, _PASSWORD, _NAME).",
    )
    parser.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9108, help="listen port (default 9108)")
    parser.add_argument("--cache-seconds", type=float, default=30.0, help="refresh at most this often")
    parser.add_argument(
        "--scrape-wait-seconds", type=float, default=10.0, help="how long a scrape waits for a refresh"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    slo, sources = site_slo()
    collector = DagsterStateCollector(
        cache_seconds=args.cache_seconds,
        scrape_wait_seconds=args.scrape_wait_seconds,
        orthanc=OrthancTarget.from_env(),
        slo=slo,
        slo_sources=sources,
        alert_sites=alert_sites(),
    )
    registry = build_registry(collector)
    server, thread = start_http_server(args.port, addr=args.address, registry=registry)
    log.info("dicom-backup-exporter: serving http://%s:%d/metrics", args.address, args.port)
    # Warm up: rebuild the totals from the stored history; scrapes meanwhile wait for it (scrape wait).
    collector.start_refresh().join()
    log.info("dicom-backup-exporter: first refresh in %.2f s", collector.refresh_seconds)
    try:
        while thread.is_alive():
            thread.join(3600)
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
