"""Presence on main: how fast "which of tonight's instances does the archive hold?" can be answered.

    .venv/bin/python benchmarks/presence_lookup.py [--patients N] [--repeats N] [--root DIR]

The nightly re-run asks it twice (the plan's lookup and complete_in_archive), and on a finished night
those two passes are most of the run's own work (benchmarks/README.md, nightly.py). This harness measures
the lookup alone, against the same Orthanc, in the same run:

1. A Sandbox whose ARIA holds one 5,000-instance day (nightly.py's data: 100 planning studies); its files
   are stored to ORTHANC_MAIN with dcmtk `storescu` (also timed: the physical limit of main's ingest).
2. Baseline: what the product does today, `FindSession.instances_by_uid` (IMAGE-level C-FINDs with lists
   of up to 200 SOP Instance UIDs, PS3.4 C.2.2.2.2) over one association.
3. Alternative: Orthanc's REST API, one `POST /tools/find` per study (Level Instance, Expand), the SOP
   Instance UIDs read from each answer's MainDicomTags, over one keep-alive HTTP session.

Both must find every instance; the table gives seconds per repeat and the ratio (C-FIND / REST). Exit
status 1 when a method misses an instance. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # runnable as a plain script from a checkout
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from qr_backfill import load, log, storescu_to_main  # noqa: E402

from dicom_backup_dagster.dicom.find import FindSession  # noqa: E402
from dicom_backup_dagster.orthanc import OrthancClient  # noqa: E402
from dicom_backup_dagster.sandbox.sandbox import ORTHANC_PASSWORD_ENV, Sandbox, SandboxOptions  # noqa: E402
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions  # noqa: E402


def by_c_find(sandbox: Sandbox, uids: list[str]) -> set[str]:
    assert sandbox.main is not None
    with FindSession(sandbox.main.peer, sandbox.options.script_aet) as session:
        return {r.sop_instance_uid for r in session.instances_by_uid(uids)}


def by_rest(client: OrthancClient, studies: list[str]) -> set[str]:
    found: set[str] = set()
    for study in studies:
        body = {"Level": "Instance", "Query": {"StudyInstanceUID": study}, "Expand": True}
        found.update(
            i["MainDicomTags"]["SOPInstanceUID"]
            for i in client.request("POST", "/tools/find", json=body).json()
        )
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("/tmp/dicom-backup-bench-presence"))
    parser.add_argument("--patients", type=int, default=100, help="planning studies of 50 instances each")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = SyntheticOptions(
        patients=args.patients, ct_slices=47, fractions=0, cbct_slices=0, span_days=1,
        start_date=dt.date(2026, 1, 12), mim_every=10_000,
    )  # fmt: skip
    sandbox = Sandbox(args.root.resolve(), SandboxOptions(data=data))
    problems: list[str] = []
    try:
        sandbox.start()
        assert sandbox.manifest is not None and sandbox.main is not None
        records = list(sandbox.manifest.for_source("ARIA"))
        uids = [r.sop_instance_uid for r in records]
        studies = sorted(Counter(r.study_instance_uid for r in records))
        sandbox.main.clear()
        limit = storescu_to_main(sandbox, [Path(r.path) for r in records], sandbox.run_dir / "storescu")
        log(
            f"{len(uids)} instances in {len(studies)} studies on main (storescu {limit:.1f} s, load {load()})"
        )
        password = sandbox.env_vars()[ORTHANC_PASSWORD_ENV]
        times: dict[str, list[float]] = {"C-FIND": [], "REST": []}
        with OrthancClient(sandbox.main.rest_url, sandbox.options.orthanc_username, password) as client:
            for repeat in range(args.repeats):
                for name, lookup in (
                    ("C-FIND", lambda: by_c_find(sandbox, uids)),
                    ("REST", lambda: by_rest(client, studies)),
                ):
                    started = time.perf_counter()
                    found = lookup()
                    times[name].append(time.perf_counter() - started)
                    if found != set(uids):
                        problems.append(
                            f"{name}, repeat {repeat + 1}: {len(set(uids) - found)} instances not found"
                        )
                last = {name: f"{seconds[-1]:.2f} s" for name, seconds in times.items()}
                log(f"repeat {repeat + 1}: C-FIND {last['C-FIND']}, REST {last['REST']} (load {load()})")
    finally:
        sandbox.stop()
    cfind, rest = statistics.median(times["C-FIND"]), statistics.median(times["REST"])
    print(f"instances {len(uids)}, studies {len(studies)}, repeats {args.repeats} (medians)")
    print(f"  C-FIND instances_by_uid (baseline)  {cfind:6.2f} s  {len(uids) / cfind:7.0f} instances/s")
    print(f"  REST /tools/find per study          {rest:6.2f} s  {len(uids) / rest:7.0f} instances/s")
    print(f"  ratio C-FIND / REST                 {cfind / rest:6.2f}")
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
