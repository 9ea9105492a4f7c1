"""Mosaiq RT record benchmark: records/s generated and end to end, each next to a baseline of the same run.

    .venv/bin/python benchmarks/mosaiq_records.py [--deliveries 2100] [--vmat-points 91] [--profile] ...

1. Build a Mosaiq-shaped SQLite database (sandbox generator, cached under --root) holding at least
   --deliveries delivered fields on ONE treatment day: odd patients IMRT (5 step-and-shoot beams of
   --static-points control points), even patients VMAT (2 arcs of --vmat-points control points), one
   fraction each, all planned on the same day, so the day is a single daily partition.
2. Generated: SQL through the SQLite3 ODBC driver -> typed Delivery objects -> encoded PS3.10 records
   (mosaiq.deliveries.read_deliveries_for_date + render_deliveries), then the same plus what the
   rt_records asset adds (spool file write + content digest). Baseline: pydicom `dcmwrite` of a minimal
   RT Beams Treatment Record (one beam, two control points) to memory, the same number of times.
3. dciodvfy (dicom3tools) on every generated record, 2 at a time: records with errors after dropping its
   known VERIFIED / NOT_VERIFIED enum typo (tests/rtrecord/test_builder.py DCIODVFY_ENUM_TYPO), and every
   distinct warning with its count.
4. End to end: a Sandbox (Orthanc main + staging; its own small synthetic data is not used) and the
   MOSAIQ source pointed at the benchmark database; the `MOSAIQ_backup` job for the day through Dagster's
   execute_in_process (deliveries -> rt_records -> staged -> archived and the checks conformance,
   complete_in_archive, content_verified, volume/duration baselines). Wall time, assets-only time (sum of
   the asset steps) and per-step seconds. Baseline: dcmtk `storescu` of the same record files to the
   staging Orthanc over one association (TCP_NODELAY=1, as Orthanc runs). Then a re-run of the same day
   (must add no instance to main).

Prints a table (figure, value, baseline, ratio, goal). Exit status 0 when every step worked and the counts
are right, 1 otherwise; a rate below the goal is reported, not an error. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

import pyodbc  # noqa: E402
from pydicom import dcmwrite  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from dicom_backup_dagster.backup.records import fresh_spool, spool_record  # noqa: E402
from dicom_backup_dagster.mosaiq.deliveries import read_deliveries_for_date, render_deliveries  # noqa: E402
from dicom_backup_dagster.sandbox.mosaiq_db import create_mosaiq_db, sqlite_connection_string  # noqa: E402
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, SyntheticPatient  # noqa: E402

GOAL_GENERATED = 500.0  # records/s (issue 4)
GOAL_END_TO_END = 0.5  # x storescu of the same files to staging (issue 19)
GOAL_RERUN = 0.1  # re-run of a finished day / its first run (issue 19)
ALIAS = "MOSAIQ"
STORESCU = shutil.which("storescu") or "/usr/bin/storescu"
DCIODVFY = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
DCIODVFY_ENUM_TYPO = {
    f"Error - Unrecognized enumerated value <{value}> for value 1 of attribute "
    "<Treatment Verification Status>"
    for value in ("VERIFIED", "NOT_VERIFIED")
}
TIMEZONE = "America/New_York"  # the sandbox's settings.timezone


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------------ data
def day_patients(deliveries: int, static_points: int, vmat_points: int, seed: int) -> list[SyntheticPatient]:
    """Enough patients for `deliveries` fields on one day: odd = IMRT (5 beams), even = VMAT (2 arcs)."""
    n = 0
    total = 0
    while total < deliveries:
        n += 1
        total += 5 if n % 2 == 1 else 2
    common = dict(patients=n, fractions=1, span_days=1, ct_slices=1, cbct_slices=0, seed=seed)
    imrt = SyntheticOptions(control_points=static_points, **common)  # type: ignore[arg-type]
    vmat = SyntheticOptions(control_points=vmat_points, **common)  # type: ignore[arg-type]
    return [SyntheticPatient(imrt if k % 2 == 1 else vmat, k) for k in range(1, n + 1)]


def build_db(root: Path, args: argparse.Namespace) -> tuple[Path, Any, int]:
    people = day_patients(args.deliveries, args.static_points, args.vmat_points, args.seed)
    day = people[0].treatment_dates[0]
    assert all(p.treatment_dates == [day] for p in people), "patients must share the treatment day"
    path = (
        root
        / "cache"
        / f"mosaiq-{args.deliveries}-{args.static_points}-{args.vmat_points}-{args.seed}.sqlite"
    )
    if not path.exists():
        t = time.monotonic()
        counts = create_mosaiq_db(path, people)
        log(f"built {path.name}: {counts['Dose_Hst']} Dose_Hst rows in {time.monotonic() - t:.1f} s")
    expected = sum(len(p.beams) for p in people)
    return path, day, expected


# ------------------------------------------------------------------------------------------- generated
def minimal_record() -> Dataset:
    """The baseline's dataset: a minimal RT Beams Treatment Record (one beam, two control points)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.4"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "A^B", "X1", "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "RTRECORD", "1", "1"
    ds.TreatmentDate, ds.TreatmentTime, ds.PrimaryDosimeterUnit = "20260101", "100000", "MU"
    beam = Dataset()
    beam.BeamType, beam.RadiationType, beam.TreatmentTerminationStatus = "STATIC", "PHOTON", "NORMAL"
    points = []
    for i, mu in enumerate(("0", "100")):
        cp = Dataset()
        cp.TreatmentControlPointDate, cp.TreatmentControlPointTime = "20260101", "100000"
        cp.SpecifiedMeterset, cp.DeliveredMeterset, cp.ReferencedControlPointIndex = mu, mu, str(i)
        points.append(cp)
    beam.NumberOfControlPoints = "2"
    beam.ControlPointDeliverySequence = points
    ds.TreatmentSessionBeamSequence = [beam]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def baseline_dcmwrite(n: int) -> float:
    ds = minimal_record()
    t = time.perf_counter()
    for _ in range(n):
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
    return time.perf_counter() - t


def generate(db: Path, day: Any, spool: Path, profile: bool) -> dict[str, Any]:
    profiler = cProfile.Profile() if profile else None
    cn = pyodbc.connect(sqlite_connection_string(db))
    try:
        if profiler:
            profiler.enable()
        t0 = time.perf_counter()
        batch = read_deliveries_for_date(cn, day, TIMEZONE)
        t1 = time.perf_counter()
        rendered = render_deliveries(batch.deliveries)
        t2 = time.perf_counter()
        out = fresh_spool(spool)
        entries = [spool_record(record, out) for _, record in rendered.records]
        t3 = time.perf_counter()
        if profiler:
            profiler.disable()
    finally:
        cn.close()
    if profiler:
        report(profiler, "generation (read + render + spool)")
    vmat = sum(1 for d, _ in rendered.records if d.treatment_field.type_enum == 13)
    return {
        "records": len(entries),
        "quarantined": len(batch.quarantined) + len(rendered.quarantined),
        "vmat": vmat,
        "control_points": batch.rows.get("treated_control_points", 0),
        "read_s": t1 - t0,
        "render_s": t2 - t1,
        "spool_s": t3 - t2,
        "bytes": sum(e.size or 0 for e in entries),
        "files": [out / f"{e.sop_instance_uid}.dcm" for e in entries],
    }


def report(profiler: cProfile.Profile, title: str, lines: int = 25, order: str = "cumulative") -> None:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(lines)
    print(f"\n---- cProfile: {title} (top {lines} by {order}) ----")
    print(out.getvalue())


# --------------------------------------------------------------------------------------------- dciodvfy
def run_dciodvfy(files: list[Path]) -> dict[str, Any]:
    def one(path: Path) -> tuple[list[str], list[str], int]:
        result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
        lines = [line.strip() for line in (result.stdout + result.stderr).splitlines()]
        typo = sum(1 for line in lines if line in DCIODVFY_ENUM_TYPO)
        errors = [line for line in lines if line.startswith("Error") and line not in DCIODVFY_ENUM_TYPO]
        if "RTBeamsTreatmentRecord" not in lines:
            errors.append("IOD not recognised as RTBeamsTreatmentRecord")
        return errors, [line for line in lines if line.startswith("Warning")], typo

    t = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        verdicts = list(pool.map(one, files))
    errors = Counter(e for errs, _w, _t in verdicts for e in errs)
    return {
        "records": len(files),
        "with_errors": sum(1 for errs, _w, _t in verdicts if errs),
        "errors": errors,
        "typo_filtered": sum(t for _e, _w, t in verdicts),
        "warnings": Counter(w for _e, ws, _t in verdicts for w in ws),
        "seconds": time.monotonic() - t,
    }


# ------------------------------------------------------------------------------------------ end to end
def storescu(server: Any, files: list[Path]) -> tuple[float, bool]:
    """dcmtk storescu of `files` to `server` over one association (TCP_NODELAY=1): seconds, success."""
    with tempfile.TemporaryDirectory() as listing:
        batch = Path(listing) / "files"
        batch.mkdir()
        for i, path in enumerate(files):  # one folder of links: storescu +sd reads it in one pass
            (batch / f"{i:06d}.dcm").symlink_to(path)
        cmd = [STORESCU, "-aet", "DICOM_BACKUP", "-aec", server.aet, "+sd", "+r", "127.0.0.1",
               str(server.dicom_port), str(batch)]  # fmt: skip
        t = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"})
        seconds = time.monotonic() - t
    if done.returncode:
        log(f"storescu failed ({done.returncode}): {done.stderr[-500:]}")
    return seconds, done.returncode == 0


def end_to_end(
    root: Path, db: Path, day: Any, expected: int, profile: bool, files: list[Path]
) -> dict[str, Any]:
    import dagster as dg

    from dicom_backup_dagster.config import load_config
    from dicom_backup_dagster.defs.mosaiq_backup import build_mosaiq_backup_defs
    from dicom_backup_dagster.defs.resources import BackupStorage, build_resources
    from dicom_backup_dagster.sandbox.sandbox import Sandbox, SandboxOptions

    tiny = SyntheticOptions(patients=1, ct_slices=1, fractions=1, cbct_slices=0, seed=5)
    out: dict[str, Any] = {}
    with Sandbox(root / "sandbox", SandboxOptions(data=tiny, cache_dir=root / "cache")) as sandbox:
        os.environ.update(sandbox.env_vars())
        env = load_config(sandbox.config_path, "SANDBOX").environment
        source = env.mosaiq_sources[ALIAS]
        env = replace(env, sources={**env.sources, ALIAS: replace(source, db_database=str(db))})
        assert env.settings.timezone == TIMEZONE
        storage = root / "storage"
        shutil.rmtree(storage, ignore_errors=True)
        defs = dg.Definitions.merge(
            dg.Definitions(resources=build_resources(env, storage=BackupStorage(base_dir=str(storage)))),
            build_mosaiq_backup_defs(env, retry_policy=None),
        )
        job = defs.resolve_job_def(f"{ALIAS}_backup")
        # Baselines first, on empty servers, then both cleared: storescu of the same record files to
        # staging (one Orthanc pass, what the pipeline's C-STORE does) and to main (the ingest ceiling).
        for name, server in (("staging", sandbox.stage), ("main", sandbox.main)):
            log(f"baseline: storescu of {len(files)} record files to {name}, load {load()}")
            out[f"storescu_{name}_s"], out[f"storescu_{name}_ok"] = storescu(server, files)
            server.clear()
        out["storescu_s"], out["storescu_ok"] = out["storescu_staging_s"], out["storescu_staging_ok"]
        before = sandbox.main.count_instances()
        home = root / "dagster_home"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            profiler = cProfile.Profile() if profile else None
            log(f"end to end: {ALIAS}_backup for {day} ({expected} deliveries), load {load()}")
            t = time.monotonic()
            if profiler:
                profiler.enable()
            result = job.execute_in_process(
                partition_key=day.isoformat(), instance=instance, raise_on_error=False
            )
            if profiler:
                profiler.disable()
            out["wall_s"] = time.monotonic() - t
            if profiler:
                report(profiler, "end to end (main thread of execute_in_process)", 40)
            out["success"] = result.success
            out["steps"] = step_seconds(instance, result.run_id)
            out["checks"] = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
            meta = {
                m.asset_key.path[-1]: {k: v.value for k, v in m.materialization.metadata.items()}
                for m in result.get_asset_materialization_events()
            }
            out["moved"] = meta.get("archived", {}).get("moved")
            out["seconds_total"] = meta.get("archived", {}).get("seconds_total")
            out["on_main"] = sandbox.main.count_instances() - before
            log(f"re-run of {day}, load {load()}")
            count = sandbox.main.count_instances()
            t = time.monotonic()
            again = job.execute_in_process(
                partition_key=day.isoformat(), instance=instance, raise_on_error=False
            )
            out["rerun_s"] = time.monotonic() - t
            out["rerun_success"] = again.success
            out["rerun_new_on_main"] = sandbox.main.count_instances() - count
            out["rerun_steps"] = step_seconds(instance, again.run_id)
            out["rerun_checks"] = {e.check_name: e.passed for e in again.get_asset_check_evaluations()}
            rerun_meta = {
                m.asset_key.path[-1]: {k: v.value for k, v in m.materialization.metadata.items()}
                for m in again.get_asset_materialization_events()
            }
            out["rerun_moved"] = rerun_meta.get("archived", {}).get("moved")
            out["rerun_stored"] = rerun_meta.get("staged", {}).get("stored")
            out["rerun_reused"] = rerun_meta.get("archived", {}).get("already_archived")
    return out


def step_seconds(instance: Any, run_id: str) -> dict[str, float]:
    """Seconds per step from the run's STEP_START / STEP_SUCCESS|STEP_FAILURE event timestamps."""
    start: dict[str, float] = {}
    out: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            start[entry.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and entry.step_key in start:
            out[entry.step_key] = entry.timestamp - start[entry.step_key]
    return out


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=2100, help="at least this many on one day")
    parser.add_argument("--static-points", type=int, default=10, help="control points per IMRT beam")
    parser.add_argument("--vmat-points", type=int, default=91, help="control points per VMAT arc")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument(
        "--root", type=Path, default=Path(tempfile.gettempdir()) / f"mosaiq-bench-{os.getuid()}"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile generation and the end-to-end run")
    parser.add_argument("--no-dciodvfy", action="store_true")
    parser.add_argument("--no-end-to-end", action="store_true")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    began = time.monotonic()
    log(f"root {root}, load {load()}")

    db, day, expected = build_db(root, args)
    log(f"generating records of {day}, load {load()}")
    gen = generate(db, day, root / "generated", args.profile)
    n = gen["records"]
    if n != expected or gen["quarantined"]:
        problems.append(f"generated {n} records of {expected} deliveries ({gen['quarantined']} quarantined)")
    base_s = baseline_dcmwrite(n)
    rendered_s = gen["read_s"] + gen["render_s"]
    with_spool_s = rendered_s + gen["spool_s"]

    dv: dict[str, Any] | None = None
    if not args.no_dciodvfy:
        log(f"dciodvfy on {n} records, load {load()}")
        dv = run_dciodvfy(gen["files"])
        if dv["with_errors"]:
            problems.append(f"dciodvfy: {dv['with_errors']} records with errors")

    e2e: dict[str, Any] | None = None
    if not args.no_end_to_end:
        e2e = end_to_end(root, db, day, expected, args.profile, gen["files"])
        if not e2e["success"]:
            problems.append("the backup run failed")
        if e2e["on_main"] != expected:
            problems.append(f"{e2e['on_main']} new instances on main, expected {expected}")
        if not all(e2e["checks"].values()):
            problems.append(f"checks failed: {[k for k, v in e2e['checks'].items() if not v]}")
        if not e2e["rerun_success"] or e2e["rerun_new_on_main"]:
            problems.append(f"re-run: success {e2e['rerun_success']}, {e2e['rerun_new_on_main']} new on main")
        if e2e["rerun_moved"] or e2e["rerun_stored"] or not all(e2e["rerun_checks"].values()):
            problems.append(
                f"re-run: stored {e2e['rerun_stored']}, moved {e2e['rerun_moved']}, "
                f"checks {e2e['rerun_checks']}"
            )
        if not e2e["storescu_ok"]:
            problems.append("storescu baseline failed")

    rows: list[tuple[str, str, str, str, str]] = []

    def rate(count: int, seconds: float) -> float:
        return count / seconds if seconds > 0 else float("inf")

    base_rate = rate(n, base_s)
    gen_rate = rate(n, rendered_s)
    rows.append(
        (
            "generated: SQL -> Delivery -> encoded (records/s)",
            f"{gen_rate:,.0f}",
            f"{base_rate:,.0f}",
            f"{gen_rate / base_rate:.2f}",
            f">= {GOAL_GENERATED:.0f}",
        )
    )
    spool_rate = rate(n, with_spool_s)
    rows.append(
        (
            "generated + spool write + digest (records/s)",
            f"{spool_rate:,.0f}",
            f"{base_rate:,.0f}",
            f"{spool_rate / base_rate:.2f}",
            "",
        )
    )
    if e2e:
        steps = e2e["steps"]
        assets_s = sum(
            s
            for k, s in steps.items()
            if k.startswith(f"{ALIAS}__")
            and k.split("__")[-1] in ("deliveries", "rt_records", "staged", "archived")
        )
        store_rate = rate(n, e2e["storescu_s"])
        e2e_rate = rate(n, e2e["wall_s"])
        rows.append(
            (
                "end to end incl. checks (records/s)",
                f"{e2e_rate:,.0f}",
                f"{store_rate:,.0f}",
                f"{e2e_rate / store_rate:.2f}",
                f"ratio >= {GOAL_END_TO_END}",
            )
        )
        assets_rate = rate(n, assets_s)
        rows.append(
            (
                "end to end, asset steps only (records/s)",
                f"{assets_rate:,.0f}",
                f"{store_rate:,.0f}",
                f"{assets_rate / store_rate:.2f}",
                "",
            )
        )
        main_rate = rate(n, e2e["storescu_main_s"])
        rows.append(
            (
                "physical limit: storescu -> main (records/s)",
                f"{main_rate:,.0f}",
                f"{store_rate:,.0f}",
                f"{main_rate / store_rate:.2f}",
                "",
            )
        )
        rows.append(
            (
                "end to end vs the physical limit (records/s)",
                f"{e2e_rate:,.0f}",
                f"{main_rate:,.0f}",
                f"{e2e_rate / main_rate:.2f}",
                "",
            )
        )
        rows.append(
            (
                "re-run of the finished day, s (vs first run)",
                f"{e2e['rerun_s']:.2f}",
                f"{e2e['wall_s']:.2f}",
                f"{e2e['rerun_s'] / e2e['wall_s']:.2f}",
                f"<= {GOAL_RERUN:.1f}",
            )
        )

    print()
    print(
        f"Mosaiq RT records, {n} deliveries on {day} ({gen['vmat']} VMAT arcs of {args.vmat_points} "
        f"control points, {n - gen['vmat']} step-and-shoot beams of {args.static_points}; "
        f"{gen['control_points']} control-point rows, {gen['bytes'] / 1e6:.1f} MB encoded)"
    )
    widths = [
        max(len(r[i]) for r in [*rows, ("figure", "value", "baseline", "ratio", "goal")]) for i in range(5)
    ]
    for r in [("figure", "value", "baseline", "ratio", "goal"), *rows]:
        print(
            "  "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    print()
    print(
        f"  generated phases: SQL + Delivery {gen['read_s']:.2f} s, encode {gen['render_s']:.2f} s, "
        f"spool write + digest {gen['spool_s']:.2f} s"
    )
    print(
        f"  baselines: pydicom dcmwrite of a minimal RT record x {n}: {base_s:.2f} s"
        + (
            f"; storescu of the {n} files to staging: {e2e['storescu_s']:.2f} s, to main (the physical "
            f"limit): {e2e['storescu_main_s']:.2f} s"
            if e2e
            else ""
        )
    )
    if dv:
        print(
            f"  dciodvfy: {dv['records']} records in {dv['seconds']:.1f} s, {dv['with_errors']} with errors, "
            f"{dv['typo_filtered']} VERIFIED/NOT_VERIFIED typo lines filtered"
        )
        for message, count in dv["errors"].most_common():
            print(f"    error x{count}: {message}")
        for message, count in dv["warnings"].most_common():
            print(f"    warning x{count}: {message}")
    if e2e:
        print(
            f"  end to end: wall {e2e['wall_s']:.2f} s (archived seconds_total {e2e['seconds_total']}), "
            f"moved {e2e['moved']}, "
            f"new on main {e2e['on_main']}, checks {e2e['checks']}"
        )
        for key, seconds in sorted(e2e["steps"].items(), key=lambda kv: -kv[1]):
            print(f"    {key:<45} {seconds:7.2f} s")
        print(
            f"  re-run of the same day: {e2e['rerun_s']:.2f} s, stored {e2e['rerun_stored']}, moved "
            f"{e2e['rerun_moved']}, reused {e2e['rerun_reused']}, new instances on main "
            f"{e2e['rerun_new_on_main']}, checks {e2e['rerun_checks']}"
        )
        for key, seconds in sorted(e2e["rerun_steps"].items(), key=lambda kv: -kv[1]):
            print(f"    {key:<45} {seconds:7.2f} s")
    print(f"  load average now {load()}; harness wall {time.monotonic() - began:.1f} s")
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
