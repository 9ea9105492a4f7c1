"""Checks every backup source kind shares: presence on the archive and the volume/duration baselines.

Presence (`complete_in_archive`) asks the archive by IMAGE-level C-FIND; the baselines compare a
materialization's metadata with the trailing median of earlier partitions: a volume far below it suggests a
source that answers queries but lost or hides data, a duration far above it a slow network or a struggling
PACS (backup/baseline.py holds the rules and thresholds).

No `from __future__ import annotations`: Dagster 1.13 validates `context` annotations by identity.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DailyPartitionsDefinition,
    MetadataValue,
    asset_check,
)

from dicom_backup_dagster.backup import baseline
from dicom_backup_dagster.backup.inventory import ArchiveLookup
from dicom_backup_dagster.backup.manifest import DEFERRED, read_manifest
from dicom_backup_dagster.backup.verify import check_presence
from dicom_backup_dagster.defs.common import check_partitions, find_session, uids_metadata
from dicom_backup_dagster.defs.resources import DicomNetwork
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.network import Peer


def peer_unreachable_result(what: str, error: DicomError, partition: str, compared: str) -> AssetCheckResult:
    """A failed (ERROR) evaluation for a check that could not talk to its DICOM peer: "could not <what>"."""
    return AssetCheckResult(
        passed=False,
        severity=AssetCheckSeverity.ERROR,
        description=f"could not {what}: {error}",
        metadata={"partition": partition, "compared": compared},
    )


def presence_check_result(
    source_alias: str,
    partition: str,
    manifest_path: Path,
    archive: Peer,
    dicom: DicomNetwork,
    noun: str = "instances",
    deferred_advice: str = "",
) -> AssetCheckResult:
    """complete_in_archive for any source: every non-deferred entry of the manifest is on the archive
    (IMAGE-level C-FINDs by SOP Instance UID lists, ArchiveLookup). Deferred entries alone make a WARN
    that says what to run next."""
    compared = f"{source_alias} {noun} of {partition} vs IMAGE-level C-FIND on {archive}"
    try:
        with find_session(archive, dicom) as main:
            lookup = ArchiveLookup(main, (e for e in read_manifest(manifest_path) if e.state != DEFERRED))
            result = check_presence(read_manifest(manifest_path), lookup, recheck=lookup.refresh)
    except DicomError as error:
        return peer_unreachable_result("query the archive", error, partition, compared)
    metadata: dict[str, Any] = {
        "partition": partition,
        "compared": compared,
        "expected": result.expected,
        "present": result.present,
        "missing": result.missing,
        "deferred": result.deferred,
        "missing_uids": uids_metadata(result.missing_uids),
    }
    if result.missing:
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            description=(
                f"{result.missing} of {result.expected} {noun} of {source_alias} {partition} are "
                f"not on {archive}: {', '.join(result.missing_uids[:5])}"
                + (" ..." if result.missing > 5 else "")
            ),
            metadata=metadata,
        )
    if result.deferred:
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.WARN,
            description=(
                f"{result.present} {noun} on the archive; {result.deferred} deferred{deferred_advice}"
            ),
            metadata=metadata,
        )
    return AssetCheckResult(
        passed=True, description=f"all {result.expected} {noun} on {archive}", metadata=metadata
    )


def _history(
    instance: DagsterInstance,
    key: AssetKey,
    partitions_def: DailyPartitionsDefinition,
    partition: str,
    metadata_key: str,
    window_size: int = baseline.DEFAULT_WINDOW,
) -> list[float]:
    """`metadata_key` of the latest materialization of each of the `window_size` partitions before
    `partition` that has one (missing days are skipped, not counted as zero)."""
    keys = partitions_def.get_partition_keys()
    if partition not in keys:
        return []
    index = keys.index(partition)
    previous = keys[max(0, index - window_size) : index]
    if not previous:
        return []
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=previous), limit=window_size * 20
    ).records
    latest: dict[str, float] = {}
    for record in records:  # newest first
        event = record.event_log_entry.asset_materialization
        if event is None or event.partition in latest or event.partition is None:
            continue
        value = event.metadata.get(metadata_key)
        if value is not None and isinstance(value.value, (int, float)):
            latest[event.partition] = float(value.value)
    return [latest[p] for p in previous if p in latest]


def latest_metadata_value(instance: DagsterInstance, key: AssetKey, partition: str, metadata_key: str) -> Any:
    """`metadata_key` of the partition's latest materialization, or None."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    materialization = records[0].event_log_entry.asset_materialization if records else None
    entry = materialization.metadata.get(metadata_key) if materialization else None
    return entry.value if entry is not None else None


def baseline_check(
    asset_key: AssetKey,
    partitions_def: DailyPartitionsDefinition,
    name: str,
    metadata_key: str,
    rule: Callable[[float, list[float]], baseline.Verdict],
    compared: str,
    window: int,
) -> AssetChecksDefinition:
    """A WARN check on `asset_key`: `rule` applied to `metadata_key` of each partition's latest
    materialization (every partition of a ranged backfill run) against the same key of the previous
    `window` partitions. A partition without the key (e.g. seconds_total, which ranged runs only record
    for the whole run) is not judged."""

    @asset_check(
        asset=asset_key,
        name=name,
        description=f"WARN when {compared} (trailing median of the previous {window} "
        "partitions with a materialization).",
    )
    def _check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        partitions = check_partitions(context, asset_key)
        judged: dict[str, baseline.Verdict] = {}
        current: dict[str, float] = {}
        for partition in partitions:
            value = latest_metadata_value(context.instance, asset_key, partition, metadata_key)
            if not isinstance(value, (int, float)):
                continue
            history = _history(context.instance, asset_key, partitions_def, partition, metadata_key, window)
            current[partition] = float(value)
            judged[partition] = rule(float(value), history)
        if not judged:
            shown = partitions[0] if len(partitions) == 1 else f"{len(partitions)} partitions"
            return AssetCheckResult(
                passed=True,
                severity=AssetCheckSeverity.WARN,
                description=f"no {metadata_key} recorded for {shown or 'any partition'} (not judged)",
                metadata={"partition": ", ".join(partitions) or "none"},
            )
        failed = {p: v for p, v in judged.items() if not v.passed}
        first = next(iter(failed), next(iter(judged)))
        verdict = judged[first]
        if len(judged) == 1:
            description = verdict.reason
        elif failed:
            description = f"{len(failed)} of {len(judged)} days: {first}: {verdict.reason}"
        else:
            description = f"{len(judged)} days within the baseline"
        metadata: dict[str, Any] = {
            "partition": first,
            "compared": f"{metadata_key} of {first} vs the median of earlier partitions",
            "current": current[first],
            "baseline_median": verdict.baseline if verdict.baseline is not None else MetadataValue.null(),
            "threshold": verdict.threshold if verdict.threshold is not None else MetadataValue.null(),
            "history": MetadataValue.json(list(verdict.history)),
        }
        if len(judged) > 1:
            metadata["partitions_judged"] = len(judged)
            metadata["partitions_failed"] = MetadataValue.json(sorted(failed))
        return AssetCheckResult(
            passed=not failed, severity=AssetCheckSeverity.WARN, description=description, metadata=metadata
        )

    return _check


def baseline_checks(
    asset_key: AssetKey,
    partitions_def: DailyPartitionsDefinition,
    rules: baseline.BaselineRules,
    *,
    volume_key: str,
    volume_noun: str,
    duration_key: str = "seconds_total",
) -> list[AssetChecksDefinition]:
    """volume_vs_baseline on `volume_key` and duration_vs_baseline on `duration_key`."""
    return [
        baseline_check(
            asset_key,
            partitions_def,
            "volume_vs_baseline",
            volume_key,
            rules.volume,
            f"{volume_noun} found is below {rules.min_volume_ratio:g} x the baseline",
            rules.window,
        ),
        baseline_check(
            asset_key,
            partitions_def,
            "duration_vs_baseline",
            duration_key,
            rules.duration,
            f"the backup took more than {rules.max_duration_ratio:g} x the baseline "
            f"(and more than {rules.duration_floor_seconds:g} s)",
            rules.window,
        ),
    ]
