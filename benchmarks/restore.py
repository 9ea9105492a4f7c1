"""Restore benchmark: `backup.restore` (move + verification) vs dcmtk `movescu`, same studies, same run.

    .venv/bin/python benchmarks/restore.py [--ct-slices N] [--fractions N] [--cbct-slices N] [--root DIR]

1. Generate one large synthetic patient (default: 600 CT slices + RTSTRUCT/RTPLAN/RTDOSE + 25 CBCTs x 16
   slices + a registration = 1,004 instances in 27 studies; cached under ROOT/cache) and C-STORE it into
   a fresh Orthanc main (Debian's /usr/sbin/Orthanc, TCP_NODELAY=1).
2. Baseline: for every study, one `movescu -S` process (one association, one STUDY-level C-MOVE) from main
   to a destination SCP, TCP_NODELAY=1 in its environment. Wall time; instances counted at the
   destination. No verification (movescu has none).
3. Restore: a fresh destination on the same port, then `resolve` (C-FIND on main) and `restore` of every
   study with verification: presence of every instance at the destination by C-FIND and the content
   digest of every instance, fetched by C-GET from the destination and from main. Wall time from the
   first C-FIND to the last digest; per-phase seconds from `RestoreResult.seconds`.
4. Print a table (figure, value, baseline, ratio) and stop everything it started by PID.

The destination is the sandbox's pynetdicom Query/Retrieve + Storage SCP (`MimSimulator`, relational, in
its own process), so that it answers the restore's C-FIND and C-GET; both phases write every received
instance to disk. Exit status: 0 when both phases put every instance at the destination and the restore
passed its verification; 1 otherwise. A ratio below the goal is reported, not an error. Not part of the
test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from dicom_backup_dagster.backup.restore import Selection, resolve, restore  # noqa: E402
from dicom_backup_dagster.dicom.find import FindSession  # noqa: E402
from dicom_backup_dagster.dicom.network import Peer, Timeouts  # noqa: E402
from dicom_backup_dagster.dicom.store import c_store_files  # noqa: E402
from dicom_backup_dagster.sandbox.mim import MimSimulator  # noqa: E402
from dicom_backup_dagster.sandbox.orthanc import OrthancServer  # noqa: E402
from dicom_backup_dagster.sandbox.processes import free_port  # noqa: E402
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, generate  # noqa: E402

CALLING_AET = "BENCH_SCU"
MAIN_AET = "BENCH_MAIN"
DEST_AET = "BENCH_DEST"
GOAL = 0.8
TIMEOUTS = Timeouts(acse=30, dimse=120, network=120, connect=5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ct-slices", type=int, default=600)
    ap.add_argument("--fractions", type=int, default=25)
    ap.add_argument("--cbct-slices", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument(
        "--root", type=Path, default=Path(tempfile.gettempdir()) / f"dicom-backup-restore-{os.getuid()}"
    )
    return ap.parse_args(argv)


def destination(root: Path, name: str, port: int) -> MimSimulator:
    """A fresh, empty destination SCP in its own process (its own data and incoming directories)."""
    for sub in (f"dest-{name}", f"dest-{name}-data", f"dest-{name}-in"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)
    server = MimSimulator(root / f"dest-{name}", DEST_AET, port, root / f"dest-{name}-data", relational=True,
                          incoming_dir=root / f"dest-{name}-in")  # fmt: skip
    server.start()
    return server


def received(root: Path, name: str) -> int:
    return sum(1 for p in (root / f"dest-{name}-in").rglob("*.dcm") if p.is_file())


def run_movescu(main: Peer, studies: list[str]) -> float:
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.monotonic()
    for uid in studies:
        subprocess.run(
            ["movescu", "-S", "-aet", CALLING_AET, "-aec", main.aet, "-aem", DEST_AET,
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}", main.host, str(main.port)],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    return time.monotonic() - started


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.root
    root.mkdir(parents=True, exist_ok=True)
    options = SyntheticOptions(
        patients=1, ct_slices=args.ct_slices, fractions=args.fractions, cbct_slices=args.cbct_slices,
        image_size=args.image_size, mim_every=9999, span_days=1,
    )  # fmt: skip
    t0 = time.monotonic()
    manifest = generate(root / "cache" / options.key(), options)
    records = list(manifest)
    studies = sorted({r.study_instance_uid for r in records})
    print(f"data: {len(records)} instances in {len(studies)} studies (one patient), "
          f"generated/cached in {time.monotonic() - t0:.1f} s")  # fmt: skip

    dest_port = free_port()
    dest_peer = Peer(DEST_AET, "127.0.0.1", dest_port)
    ours = Peer(CALLING_AET, "127.0.0.1", free_port())
    orthanc = OrthancServer(root / "main", MAIN_AET, free_port(), free_port(), "bench", "bench-pw",
                            modalities={"scu": ours, "dest": dest_peer})  # fmt: skip
    problems: list[str] = []
    servers: list[MimSimulator] = []
    try:
        orthanc.start()
        t0 = time.monotonic()
        c_store_files(orthanc.peer, CALLING_AET, [r.path for r in records], timeouts=TIMEOUTS)
        print(f"main: {orthanc.count_instances()} instances stored in {time.monotonic() - t0:.1f} s "
              f"(load {load_average()})")  # fmt: skip

        base_dest = destination(root, "movescu", dest_port)
        servers.append(base_dest)
        base_seconds = run_movescu(orthanc.peer, studies)
        base_count = received(root, "movescu")
        base_dest.stop()
        servers.remove(base_dest)
        print(f"movescu: {base_count} instances in {base_seconds:.2f} s (load {load_average()})")

        dest = destination(root, "restore", dest_port)
        servers.append(dest)
        started = time.monotonic()
        with FindSession(orthanc.peer, CALLING_AET, TIMEOUTS) as session:
            entries = resolve(session, Selection(study_instance_uids=tuple(studies)))
        seconds_resolve = time.monotonic() - started
        result = restore(entries, main=orthanc.peer, destination=dest_peer, calling_aet=CALLING_AET,
                         timeouts=TIMEOUTS, spool_dir=root / "spool")  # fmt: skip
        restore_seconds = time.monotonic() - started
        print(f"restore: {result.present} present, "
              f"{result.content.matched if result.content else 0} digests equal in {restore_seconds:.2f} s "
              f"(load {load_average()})")  # fmt: skip
        if base_count != len(records):
            problems.append(f"movescu: {base_count} of {len(records)} instances at the destination")
        if not result.passed or result.present != len(records):
            problems.append(
                f"restore: {result.present} of {len(records)} present; errors {result.errors[:3]}"
            )
    finally:
        for server in servers:
            server.stop()
        orthanc.stop()
        shutil.rmtree(root / "spool", ignore_errors=True)

    n = len(records)
    base_rate, rate = n / base_seconds, n / restore_seconds
    move = result.seconds.get("move", 0.0)
    print()
    rows = [("instances/s, restore with verification", rate)]
    if move:
        rows.append(("instances/s, C-MOVE phase only", n / move))
    print(f"{'figure':<44}{'value':>12}{'baseline':>12}{'ratio':>8}")
    for label, value in rows:
        print(f"{label:<44}{value:>12.1f}{base_rate:>12.1f}{value / base_rate:>8.2f}")
    print(f"{'seconds':<44}{restore_seconds:>12.2f}{base_seconds:>12.2f}")
    phases = {"resolve": round(seconds_resolve, 3), **result.seconds}
    print("restore phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    print(
        f"goal: ratio >= {GOAL} (verification included): {'met' if rate / base_rate >= GOAL else 'not met'}"
    )
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
