"""ARIA simulator: DCMTK's dcmqrscp as a strict, hierarchical Query/Retrieve SCP.

What makes it a good stand-in for a real Varian ARIA DICOM service:
- Study Root / Patient Root C-FIND (PS3.4 C.6), strictly hierarchical: an IMAGE-level query without
  SeriesInstanceUID matches nothing, and optional return keys (NumberOf*RelatedInstances,
  ModalitiesInStudy, even SOPClassUID) are silently omitted.
- C-MOVE only to AEs in its HostTable (others get 0xA801 Move Destination Unknown); C-GET works too.
- Default fork mode (one child per association); `--single-process` exits after one association.

Limits worth knowing for large data sets (measured here): dcmqridx is quadratic (it rescans the whole
index for every file: 2,500 files took 15 s, index.dat grows ~8 KB per file and every query reads it), and
a storage area holds at most 500 studies (DCMTK's DB_UpperMaxStudies: indexing a 600-study set crashed
dcmqridx with "double free or corruption"). Sandbox therefore switches ARIA_SIM to the pynetdicom simulator
(with dcmqrscp-like minimal responses) for bigger data sets. dcmqridx stores paths exactly as given, so we
always index ABSOLUTE paths.

The process runs with TCP_NODELAY=1 in its environment (DCMTK reads it; docs/decisions/dicom-peers.md)
and its log level stays at "warn" because dcmqrscp's verbose modes dump query identifiers (patient data).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from dicom_backup_dagster.dicom.network import Peer, make_ae
from dicom_backup_dagster.sandbox.processes import ManagedProcess, ManagedServer, SandboxError

DCMQRSCP = shutil.which("dcmqrscp") or "/usr/bin/dcmqrscp"
DCMQRIDX = shutil.which("dcmqridx") or "/usr/bin/dcmqridx"
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
MAX_STUDIES = 500  # DCMTK DB_UpperMaxStudies


def echo_ok(peer: Peer, calling_aet: str = "SANDBOX_PROBE", timeout: float = 2.0) -> bool:
    """One C-ECHO (PS3.4 A.4); True on status 0x0000. Used as a readiness probe."""
    ae = make_ae(calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def _symbol(name: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9_]", "_", name.lower()) or "dest"
    if not base[0].isalpha():
        base = "d_" + base
    sym, n = base, 1
    while sym in used:
        n += 1
        sym = f"{base}_{n}"
    used.add(sym)
    return sym


class AriaSimulator(ManagedServer):
    """dcmqrscp under `workdir` (db/ holds the files, dcmqrscp.cfg, dcmqrscp.log).

    move_destinations: name -> Peer for every AE it may C-MOVE to (its HostTable).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        aet: str,
        port: int,
        move_destinations: dict[str, Peer] | None = None,
        max_pdu: int = 65536,
        max_associations: int = 16,
        log_level: str = "warn",
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.aet = aet
        self.port = port
        self.move_destinations = dict(move_destinations or {})
        self.max_pdu = max_pdu
        self.max_associations = max_associations
        self.log_level = log_level
        self.process: ManagedProcess | None = None
        self.startup_seconds: float | None = None

    @property
    def db_dir(self) -> Path:
        return self.workdir / "db"

    @property
    def config_path(self) -> Path:
        return self.workdir / "dcmqrscp.cfg"

    @property
    def log_path(self) -> Path:
        return self.workdir / "dcmqrscp.log"

    @property
    def peer(self) -> Peer:
        return Peer(self.aet, "127.0.0.1", self.port)

    def reset(self) -> None:
        """Empty the storage area and its index."""
        shutil.rmtree(self.db_dir, ignore_errors=True)
        self.db_dir.mkdir(parents=True, exist_ok=True)

    def config_text(self) -> str:
        used: set[str] = set()
        hosts = [
            f"{_symbol(name, used)} = ({p.aet}, {p.host}, {p.port})"
            for name, p in self.move_destinations.items()
        ]
        return "\n".join(
            [
                "# written by dicom_backup_dagster.sandbox.aria",
                f"NetworkTCPPort  = {self.port}",
                f"MaxPDUSize      = {self.max_pdu}",
                f"MaxAssociations = {self.max_associations}",
                "",
                "HostTable BEGIN",
                *hosts,
                "HostTable END",
                "",
                "VendorTable BEGIN",
                "VendorTable END",
                "",
                "AETable BEGIN",
                f"{self.aet} {self.db_dir} RW ({MAX_STUDIES}, 1024mb) ANY",
                "AETable END",
                "",
            ]
        )

    def add_files(
        self,
        paths: Iterable[str | os.PathLike[str]],
        copy: bool = True,
        batch: int = 500,
        index_cache: str | os.PathLike[str] | None = None,
    ) -> int:
        """Hard-link (or copy) files into the storage area, or use them in place (copy=False); index them.

        dcmqridx is quadratic (it scans the whole index for every file: ~15 s for 2,500 files), so with
        `index_cache` the resulting index.dat is saved there and reused next time the same files are added
        under the same storage path. Can be called while dcmqrscp runs (each association rereads the
        index). Returns the number of files.
        """
        self.db_dir.mkdir(parents=True, exist_ok=True)
        indexed: list[str] = []
        key = hashlib.sha256(str(self.db_dir).encode())
        for count, src in enumerate(paths):
            src = Path(src).resolve()
            if copy:
                dst = self.db_dir / f"{count:07d}_{src.name}"
                if dst.exists():
                    dst.unlink()
                try:
                    # Same file system: no data copied. A link also protects the original: dcmqrscp deletes
                    # files of the oldest study when its quota is exceeded.
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
            else:
                dst = src
            indexed.append(str(dst))
            key.update(f"{dst}|{dst.stat().st_size}\n".encode())
        cache = Path(index_cache) if index_cache else None
        digest = key.hexdigest()
        index_dat = self.db_dir / "index.dat"
        key_file = cache.with_suffix(".key") if cache is not None else None
        fresh = not index_dat.exists()  # a cached index only stands for these files alone
        cached_key = key_file.read_text() if key_file is not None and key_file.exists() else None
        if cache is not None and fresh and cached_key == digest and cache.exists():
            shutil.copyfile(cache, index_dat)
            return len(indexed)
        for i in range(0, len(indexed), batch):
            self._index(indexed[i : i + batch])
        if cache is not None and index_dat.exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(index_dat, cache)
            key_file.write_text(digest)  # type: ignore[union-attr]
        return len(indexed)

    def _index(self, abs_paths: list[str]) -> None:
        r = subprocess.run(
            [DCMQRIDX, str(self.db_dir), *abs_paths], capture_output=True, text=True, check=False
        )
        if r.returncode != 0:
            raise SandboxError(f"dcmqridx failed (rc {r.returncode}): {r.stderr.strip()[-2000:]}")

    def start(self, timeout: float = 20.0) -> AriaSimulator:
        if self.alive:
            raise SandboxError(f"{self.aet} already running (pid {self.pid})")
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self._launch(
            ManagedProcess(
                f"dcmqrscp {self.aet}",
                [DCMQRSCP, "-c", str(self.config_path), "-ll", self.log_level],
                self.log_path,
                env={"TCP_NODELAY": "1"},
                cwd=self.workdir,
            ),
            [(lambda: echo_ok(self.peer), f"C-ECHO answer from {self.peer}")],
            timeout,
            started=t0,
            interval=0.05,
        )
        return self
