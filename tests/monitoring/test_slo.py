"""Backup SLOs: the exporter's recovery point and nights-verified figures over a real Dagster instance.

The days' materializations and check results are recorded in the test (runless asset events, as a run
writes them: partition, metadata, severity); the exporter's clock is set 12 days ahead, so nights recorded
before their deadline count as verified in time and the earlier ones as late.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo

import dagster as dg
import pytest
from prometheus_client import generate_latest

from dicom_backup_dagster.monitoring import metrics as m
from dicom_backup_dagster.monitoring.exporter import DagsterStateCollector, build_registry, site_slo
from dicom_backup_dagster.monitoring.slo import SloTargets
from tests.monitoring.conftest import Night
from tests.monitoring.test_exporter import samples, value

TZ = "America/Los_Angeles"
ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN


def _archived(instance: dg.DagsterInstance, source: str, day: dt.date, **counts: int) -> None:
    metadata = {"instances_found": 10, "moved": 10, "failed": 0, "deferred": 0, **counts}
    instance.report_runless_asset_event(
        dg.AssetMaterialization([source, "archived"], partition=day.isoformat(), metadata=metadata)
    )


def _check(
    instance: dg.DagsterInstance,
    source: str,
    day: dt.date,
    name: str,
    passed: bool = True,
    severity: dg.AssetCheckSeverity = ERROR,
) -> None:
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey([source, "archived"]),
            check_name=name,
            passed=passed,
            severity=severity,
            partition=day.isoformat(),
        )
    )


def _verified_day(instance: dg.DagsterInstance, source: str, day: dt.date) -> None:
    _archived(instance, source, day)
    _check(instance, source, day, "complete_in_archive")
    _check(instance, source, day, "content_verified")


@pytest.fixture(scope="module")
def slo_exposition() -> tuple[str, dict[str, float], dt.date, float]:
    tz = zoneinfo.ZoneInfo(TZ)
    today = dt.datetime.now(tz).date()
    day = {i: today + dt.timedelta(days=i) for i in range(-6, 13)}
    with dg.instance_for_test() as instance:
        for i in (-5, -4, -3, -2):  # verified now, after their deadline (the next day 07:00)
            _verified_day(instance, "ARIA", day[i])
        for i in (1, 2, 5, 7, 8):  # verified before their deadline
            _verified_day(instance, "ARIA", day[i])
        _archived(instance, "ARIA", day[3])
        _check(instance, "ARIA", day[3], "complete_in_archive")  # content_verified never ran
        _verified_day(instance, "ARIA", day[4])
        _check(instance, "ARIA", day[4], "conformance", passed=False)  # another ERROR check failed
        _archived(instance, "ARIA", day[6], deferred=3)
        _check(instance, "ARIA", day[6], "complete_in_archive")
        _check(instance, "ARIA", day[6], "content_verified")
        _check(instance, "ARIA", day[7], "volume_vs_baseline", passed=False, severity=WARN)  # warns only
        now = dt.datetime.combine(day[12], dt.time(12), tz).timestamp()
        targets = SloTargets(timezone=TZ, recovery_point_hours=40, verified_by_hour=7, window_nights=30)
        collector = DagsterStateCollector(
            lambda: instance, clock=lambda: now, slo=targets, slo_sources=("ARIA", "MIM")
        )
        assert collector.refresh(), collector.last_error
        text = generate_latest(build_registry(collector)).decode()
    end = dt.datetime.combine(day[9], dt.time(), tz).timestamp()  # the end of the newest verified day
    return text, samples(text), today, now - end


def test_recovery_point_is_the_age_of_the_newest_complete_and_verified_day(slo_exposition: tuple) -> None:
    _, served, _, seconds = slo_exposition
    assert value(served, m.RECOVERY_POINT, source="ARIA") == pytest.approx(seconds)
    assert 83 * 3600 <= seconds <= 85 * 3600  # 3 days and 12 hours (one DST change at most)
    assert value(served, m.RECOVERY_POINT_TARGET, source="ARIA") == 40 * 3600
    # A configured source that never ran: no verified day at all.
    assert math.isinf(value(served, m.RECOVERY_POINT, source="MIM"))


def test_nights_verified_by_the_hour_over_each_window(slo_exposition: tuple) -> None:
    _, served, _, _ = slo_exposition
    # The last night with its deadline passed is day 11; counting starts at the first recorded day (-5).
    # In time: days 1, 2, 5, 7 (a WARN check failing does not count) and 8. Late: -5..-2. Not verified:
    # 3 (content_verified missing), 4 (conformance failed), 6 (deferred), 9..11 (no run).
    expected = {"slo": (17, 5), "week": (7, 3), "night": (1, 0)}
    for window, (counted, verified) in expected.items():
        assert value(served, m.NIGHTS_COUNTED, source="ARIA", window=window) == counted, window
        assert value(served, m.NIGHTS_VERIFIED, source="ARIA", window=window) == verified, window
    assert value(served, m.NIGHTS_VERIFIED_RATIO, source="ARIA") == pytest.approx(5 / 17)
    assert value(served, m.NIGHTS_TARGET, source="ARIA") == 0.95
    assert value(served, m.SLO_WINDOW, source="ARIA") == 30
    assert value(served, m.NIGHTS_COUNTED, source="MIM", window="slo") == 0
    assert (m.NIGHTS_VERIFIED_RATIO, frozenset({("source", "MIM")})) not in served


def test_slo_figures_of_the_sandbox_night(monitored_night: Night, exposition: str) -> None:
    """The real backups of the monitored night: each source's day is complete and verified (ARIA's later
    failed run restates the earlier results), so the recovery point is the age of that day (UTC)."""
    served = samples(exposition)
    for source, day in monitored_night.days.items():
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()
        seconds = value(served, m.RECOVERY_POINT, source=source)
        assert seconds == pytest.approx(dt.datetime.now(dt.UTC).timestamp() - end, abs=1800), source


def test_exporter_reads_the_targets_and_sources_from_the_site_configuration(
    sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name, given in sandbox_env.items():
        monkeypatch.setenv(name, given)
    targets, sources = site_slo()
    assert sources == ("ARIA", "MIM", "MOSAIQ")
    assert (targets.timezone, targets.recovery_point_hours, targets.window_nights) == (
        "America/New_York",
        36,
        30,
    )
    # No configuration: the defaults, the sources seen in Dagster, and an error naming the problem.
    monkeypatch.delenv("DICOM_BACKUP_CONFIG")
    assert site_slo() == (SloTargets(), ())
    assert "DICOM_BACKUP_CONFIG" in caplog.text
