"""Checks every backup source kind shares: presence on the archive and the volume/duration baselines, all
evaluated per day partition.

Presence (`complete_in_archive`) asks the archive by IMAGE-level C-FIND; the baselines compare a
materialization's metadata with the trailing median of earlier partitions: a volume far below it suggests a
source that answers queries but lost or hides data, a duration far above it a slow network or a struggling
PACS (backup/baseline.py holds the rules and thresholds).

One evaluation per day: every check is a partitioned check (`AssetCheckSpec(partitions_def=...)`) in a
`multi_asset_check` that returns one `AssetCheckEvaluation(partition=day)` per day of its run. Measured
in Dagster 1.13.27: that records a SUCCEEDED/FAILED execution per day, for ranged (backfill) runs and
single-day runs alike, whereas a plain `@asset_check` returning one result records partition None in a
ranged run and leaves the days' executions PLANNED ("Skipped" in the UI). Each
evaluation names the materialization it judged (`target_materialization_data`); without it the UI's
per-partition status treats the result as stale and shows the day as never checked.

A check that did not run because an asset of its run failed: Dagster planned it per day when the run was
launched, and a planned execution of a failed run reads "Execution failed" in the UI. `not_run_hook`
(a failure hook on the assets) restates, for such days, the result the check had before (the archive
still holds what it verified), saying in its description that the check did not run in this run. A day
that was never checked keeps Dagster's "Execution failed" (nothing earlier to restate).

No `from __future__ import annotations`: Dagster 1.13 validates `context` annotations by identity.
"""

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DailyPartitionsDefinition,
    HookContext,
    HookDefinition,
    MetadataValue,
    PartitionKeyRange,
    failure_hook,
    multi_asset_check,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.event_api import PartitionKeyFilter

from dicom_backup_dagster.backup import baseline
from dicom_backup_dagster.backup.inventory import ArchiveLookup
from dicom_backup_dagster.backup.manifest import DEFERRED, InstanceEntry
from dicom_backup_dagster.backup.partitions import RunDays
from dicom_backup_dagster.backup.verify import check_presence
from dicom_backup_dagster.defs.common import check_partitions, failure_fields, find_session, uids_metadata
from dicom_backup_dagster.defs.keys import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)
from dicom_backup_dagster.defs.resources import DicomNetwork
from dicom_backup_dagster.dicom.errors import DicomError
from dicom_backup_dagster.dicom.find import FindSession
from dicom_backup_dagster.dicom.network import Peer

# Metadata keys the alert sensor (defs/alerts.py) reads: a restated result is no news, and a baseline
# pass that was not judged resolves nothing.
RESTATED_FROM_RUN = "restated_from_run"
JUDGED = "judged"
_HISTORY_LIMIT = 50
Results = dict[str, AssetCheckResult]  # day -> that day's result


# ------------------------------------------------------------------------------------------------------
# One evaluation per day


def day_check_spec(
    asset_key: AssetKey,
    name: str,
    partitions_def: DailyPartitionsDefinition,
    description: str,
    *,
    blocking: bool = False,
) -> AssetCheckSpec:
    return AssetCheckSpec(
        name, asset=asset_key, partitions_def=partitions_def, description=description, blocking=blocking
    )


def check_op_name(asset_key: AssetKey, name: str) -> str:
    return f"{asset_key.to_python_identifier()}_{name}"


def latest_materialization_target(
    instance: DagsterInstance, key: AssetKey, day: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=1
    ).records
    if not records:
        return None
    record = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
    )


def nothing_to_verify(day: str, noun: str = "instances") -> AssetCheckResult:
    return AssetCheckResult(
        passed=True,
        description=f"no {noun} dated {day}: nothing to verify",
        metadata={"partition": day, "expected": 0},
    )


def label_days(label: str, partitions_def: DailyPartitionsDefinition) -> RunDays:
    """The days of a run's manifest folder name: one day, or `first..last` (RunDays.label)."""
    first, _, last = label.partition("..")
    if not last:
        return RunDays((first,))
    return RunDays(tuple(partitions_def.get_partition_keys_in_range(PartitionKeyRange(first, last))))


def entries_by_day(
    entries: Iterator[InstanceEntry] | list[InstanceEntry], days: RunDays
) -> dict[str, list[InstanceEntry]]:
    """A run's manifest split by the day that counts each instance (RunDays.attribute, as the
    materializations' per-day counts): the days add up to the run."""
    out: dict[str, list[InstanceEntry]] = {day: [] for day in days.partitions}
    for entry in entries:
        out[days.attribute(entry.study_date)].append(entry)
    return out


def log_day_results(
    context: AssetCheckExecutionContext, spec: AssetCheckSpec, results: Mapping[str, AssetCheckResult]
) -> Iterator[AssetCheckEvaluation]:
    """One evaluation per day of `results`, for the check function to yield. Dagster records each one
    as that day's execution and, for a blocking check with a day failed at ERROR, fails the step after
    all of them (DagsterAssetCheckFailedError), so that nothing downstream runs. (Yielded, not `log_event`-ed:
    Dagster counts blocking failures among yielded evaluations only.)"""
    return iter(
        [
            AssetCheckEvaluation(
                asset_key=spec.asset_key,
                check_name=spec.name,
                passed=result.passed,
                severity=result.severity,
                description=result.description,
                metadata=dict(result.metadata or {}),
                target_materialization_data=latest_materialization_target(
                    context.instance, spec.asset_key, day
                ),
                partition=day,
                blocking=spec.blocking,
            )
            for day, result in results.items()
        ]
    )


def peer_unreachable_result(what: str, error: DicomError, partition: str, compared: str) -> AssetCheckResult:
    """A failed (ERROR) evaluation for a check that could not talk to its DICOM peer: "could not <what>"."""
    return AssetCheckResult(
        passed=False,
        severity=AssetCheckSeverity.ERROR,
        description=f"could not {what}: {error}",
        metadata={
            "partition": partition,
            "compared": compared,
            "peer": str(error.peer),
            "operation": error.operation,
            **failure_fields(error),
        },
    )


# ------------------------------------------------------------------------------------------------------
# complete_in_archive


def presence_results(
    source_alias: str,
    days: Mapping[str, list[InstanceEntry]],
    archive: Peer,
    dicom: DicomNetwork,
    noun: str = "instances",
    deferred_advice: Callable[[str], str] = lambda day: "",
) -> Results:
    """complete_in_archive for any source, per day: every non-deferred entry of the day is on the archive
    (IMAGE-level C-FINDs by SOP Instance UID lists, ArchiveLookup), over one association. Deferred entries
    alone make a WARN that says what to run next; a day without entries has nothing to verify."""
    results: Results = {day: nothing_to_verify(day, noun) for day, entries in days.items() if not entries}
    if len(results) == len(days):
        return results
    try:
        with find_session(archive, dicom) as main:
            for day, entries in days.items():
                if entries:
                    results[day] = presence_day(source_alias, day, entries, main, archive, noun)
                    results[day] = with_advice(results[day], deferred_advice(day))
    except DicomError as error:
        for day in days:
            if day not in results:
                compared = f"{source_alias} {noun} of {day} vs IMAGE-level C-FIND on {archive}"
                results[day] = peer_unreachable_result("query the archive", error, day, compared)
    return {day: results[day] for day in days}


def with_advice(result: AssetCheckResult, advice: str) -> AssetCheckResult:
    if result.passed or result.severity != AssetCheckSeverity.WARN or not advice:
        return result
    return AssetCheckResult(
        passed=False,
        severity=AssetCheckSeverity.WARN,
        description=f"{result.description}{advice}",
        metadata=result.metadata,
    )


def presence_day(
    source_alias: str, day: str, entries: list[InstanceEntry], main: FindSession, archive: Peer, noun: str
) -> AssetCheckResult:
    compared = f"{source_alias} {noun} of {day} vs IMAGE-level C-FIND on {archive}"
    lookup = ArchiveLookup(main, (e for e in entries if e.state != DEFERRED))
    result = check_presence(entries, lookup, recheck=lookup.refresh)
    metadata: dict[str, Any] = {
        "partition": day,
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
                f"{result.missing} of {result.expected} {noun} of {source_alias} {day} are "
                f"not on {archive}: {', '.join(result.missing_uids[:5])}"
                + (" ..." if result.missing > 5 else "")
            ),
            metadata=metadata,
        )
    if result.deferred:
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.WARN,
            description=f"{day}: {result.present} {noun} on the archive; {result.deferred} deferred",
            metadata=metadata,
        )
    return AssetCheckResult(
        passed=True, description=f"{day}: all {result.expected} {noun} on {archive}", metadata=metadata
    )


# ------------------------------------------------------------------------------------------------------
# volume_vs_baseline and duration_vs_baseline


def _history(
    instance: DagsterInstance,
    key: AssetKey,
    partitions_def: DailyPartitionsDefinition,
    partition: str,
    metadata_key: str,
    window_size: int = baseline.DEFAULT_WINDOW,
) -> list[tuple[str, float]]:
    """(partition, `metadata_key`) of the latest materialization of each of the `window_size` partitions
    before `partition` that has one (missing days are skipped, not counted as zero)."""
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
    latest: dict[str, float | None] = {}
    for record in records:  # newest first
        event = record.event_log_entry.asset_materialization
        if event is None or event.partition in latest or event.partition is None:
            continue
        value = event.metadata.get(metadata_key)
        ok = value is not None and isinstance(value.value, (int, float)) and not isinstance(value.value, bool)
        latest[event.partition] = float(value.value) if ok and value is not None else None  # type: ignore[arg-type]
    return [(p, v) for p in previous if (v := latest.get(p)) is not None]


def latest_metadata_value(instance: DagsterInstance, key: AssetKey, partition: str, metadata_key: str) -> Any:
    """`metadata_key` of the partition's latest materialization, or None."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    materialization = records[0].event_log_entry.asset_materialization if records else None
    entry = materialization.metadata.get(metadata_key) if materialization else None
    return entry.value if entry is not None else None


@dataclass(frozen=True)
class BaselineCheck:
    """One WARN baseline check: `rule` applied to `metadata_key` of each day's latest materialization
    against the same key of the previous `window` partitions."""

    asset_key: AssetKey
    partitions_def: DailyPartitionsDefinition
    name: str
    metadata_key: str
    rule: Callable[..., baseline.Verdict]
    compared: str
    window: int
    noun: str = "instances"

    def spec(self) -> AssetCheckSpec:
        return day_check_spec(
            self.asset_key,
            self.name,
            self.partitions_def,
            f"WARN when {self.compared} (trailing median of the previous {self.window} partitions with a "
            "materialization). Days without enough history, empty days on which the baseline is 0 and "
            "quiet weekends pass, marked not judged.",
        )

    def day_result(self, instance: DagsterInstance, day: str) -> AssetCheckResult:
        value = latest_metadata_value(instance, self.asset_key, day, self.metadata_key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            # e.g. seconds_total, which a ranged run records for the whole run only
            return AssetCheckResult(
                passed=True,
                severity=AssetCheckSeverity.WARN,
                description=f"{day}: not judged: no {self.metadata_key} recorded for the day",
                metadata={"partition": day, JUDGED: False},
            )
        history = _history(instance, self.asset_key, self.partitions_def, day, self.metadata_key, self.window)
        verdict = self.rule(
            float(value),
            [v for _, v in history],
            day=dt.date.fromisoformat(day),
            history_days=[dt.date.fromisoformat(p) for p, _ in history],
            noun=self.noun,
        )
        return AssetCheckResult(
            passed=verdict.passed,
            severity=AssetCheckSeverity.WARN,
            description=f"{day}: {verdict.reason}"
            if verdict.judged
            else f"{day}: not judged: {verdict.reason}",
            metadata={
                "partition": day,
                "compared": f"{self.metadata_key} of {day} vs the median of earlier partitions",
                "current": float(value),
                JUDGED: verdict.judged,
                "baseline_median": verdict.baseline if verdict.baseline is not None else MetadataValue.null(),
                "threshold": verdict.threshold if verdict.threshold is not None else MetadataValue.null(),
                "history": MetadataValue.json([v for _, v in history]),
                "history_days": MetadataValue.json([p for p, _ in history]),
            },
        )

    def definition(self) -> AssetChecksDefinition:
        spec = self.spec()

        @multi_asset_check(specs=[spec], can_subset=True, name=check_op_name(self.asset_key, self.name))
        def _check(context: AssetCheckExecutionContext) -> Iterator[AssetCheckEvaluation]:
            days = check_partitions(context, self.asset_key)
            yield from log_day_results(context, spec, {d: self.day_result(context.instance, d) for d in days})

        return _check


def baseline_checks(
    asset_key: AssetKey,
    partitions_def: DailyPartitionsDefinition,
    rules: baseline.BaselineRules,
    *,
    volume_key: str,
    volume_noun: str,
    duration_key: str = "seconds_total",
    noun: str = "instances",
) -> list[AssetChecksDefinition]:
    """volume_vs_baseline on `volume_key` and duration_vs_baseline on `duration_key`, per day."""
    volume = BaselineCheck(
        asset_key,
        partitions_def,
        "volume_vs_baseline",
        volume_key,
        rules.volume,
        f"{volume_noun} found is below {rules.min_volume_ratio:g} x the baseline",
        rules.window,
        noun,
    )
    duration = BaselineCheck(
        asset_key,
        partitions_def,
        "duration_vs_baseline",
        duration_key,
        rules.duration,
        f"the backup took more than {rules.max_duration_ratio:g} x the baseline "
        f"(and more than {rules.duration_floor_seconds:g} s)",
        rules.window,
    )
    return [volume.definition(), duration.definition()]


# ------------------------------------------------------------------------------------------------------
# Checks that did not run because an asset of their run failed


def run_days(tags: Mapping[str, str], partitions_def: DailyPartitionsDefinition) -> list[str]:
    """The day partitions a run covers, from its tags (one partition or a backfill's range)."""
    if PARTITION_NAME_TAG in tags:
        return [tags[PARTITION_NAME_TAG]]
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start is None or end is None:
        return []
    return list(partitions_def.get_partition_keys_in_range(PartitionKeyRange(start, end)))


def restate_unrun_checks(
    instance: DagsterInstance,
    run_id: str,
    job_name: str,
    check_keys: Sequence[AssetCheckKey],
    partitions_def: DailyPartitionsDefinition,
) -> list[str]:
    """For every check of `check_keys` planned in run `run_id` for a day whose asset the run did not
    materialize: the day's previous result again (passed or failed as it was), described as not run.
    Returns "<check> <day>" of what it restated."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return []
    done = []
    for key in check_keys:
        for day in run_days(run.tags, partitions_def):
            evaluation = restated_evaluation(instance, run_id, key, day)
            if evaluation is None:
                continue
            event = DagsterEvent(
                event_type_value=DagsterEventType.ASSET_CHECK_EVALUATION.value,
                job_name=job_name,
                event_specific_data=evaluation,
                message=f"{key.name} on {key.asset_key.to_user_string()} {day}: not run; earlier result kept",
            )
            instance.report_dagster_event(event, run_id=run_id)
            done.append(f"{key.name} {day}")
    return done


def restated_evaluation(
    instance: DagsterInstance, run_id: str, key: AssetCheckKey, day: str
) -> AssetCheckEvaluation | None:
    """The evaluation that keeps the day's earlier result, or None: the check ran (or runs) in this run,
    its asset materialized the day in this run, or the day was never checked before."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        key, limit=_HISTORY_LIMIT, partition_filter=PartitionKeyFilter(key=day)
    )
    mine = [r for r in history if r.run_id == run_id]
    if not mine or any(r.status.value != "PLANNED" for r in mine):
        return None
    target = latest_materialization_target(instance, key.asset_key, day)
    if target is not None and target.run_id == run_id:
        return None
    earlier = next((r for r in history if r.run_id != run_id and r.evaluation is not None), None)
    if earlier is None or earlier.evaluation is None:
        return None
    before = earlier.evaluation
    return AssetCheckEvaluation(
        asset_key=key.asset_key,
        check_name=key.name,
        passed=before.passed,
        severity=before.severity,
        description=(
            f"not run in this run ({key.asset_key.to_user_string()} {day} was not materialized: an "
            f"earlier step failed); the result of run {earlier.run_id[:8]} stands: {before.description}"
        ),
        # Not the earlier DIMSE figures: the exporter would count that traffic again for this run.
        metadata={
            **{k: v for k, v in before.metadata.items() if k != "dimse"},
            RESTATED_FROM_RUN: earlier.run_id,
        },
        target_materialization_data=before.target_materialization_data,
        partition=day,
        blocking=before.blocking,
    )


def not_run_hook(
    name: str, check_keys: Sequence[AssetCheckKey], partitions_def: DailyPartitionsDefinition
) -> HookDefinition:
    """A failure hook for a source's assets: `restate_unrun_checks` once a step failed for good (Dagster
    calls failure hooks on STEP_FAILURE, not on a step up for retry)."""
    keys = tuple(check_keys)

    @failure_hook(name=name)
    def _hook(context: HookContext) -> None:
        done = restate_unrun_checks(context.instance, context.run_id, context.job_name, keys, partitions_def)
        if done:
            context.log.info(f"checks not run, their earlier results kept: {', '.join(done)}")

    return _hook
