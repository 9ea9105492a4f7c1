"""An Orthanc 1.10 server (Debian's /usr/sbin/Orthanc) as a sandbox peer: main archive or staging.

Config (docs/decisions/orthanc.md): REST authentication on, HTTP answers loopback clients only, DICOM
access only for the AEs listed in DicomModalities (each listed AE may echo/find/get/move/store; everything
else is refused), StorageCompression off so stored bytes are the received ones. Orthanc 1.10 has no bind
address: its DICOM port listens on every interface, guarded only by AET (and host) checks.

Start-up waits until GET /system answers with our credentials *and* the PID we started is still alive,
because an old Orthanc still shutting down can answer HTTP while the new one died on a locked index
("SQLite: database is locked"; docs/decisions/orthanc.md). Stop waits for the PID to exit.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import requests

from dicom_backup_dagster.dicom.network import Peer
from dicom_backup_dagster.orthanc import OrthancClient
from dicom_backup_dagster.sandbox.processes import ManagedProcess, ManagedServer, SandboxError, port_open

ORTHANC_BINARY = os.environ.get("ORTHANC_BINARY", "/usr/sbin/Orthanc")


class OrthancServer(ManagedServer):
    """One Orthanc process with a fresh storage dir under `workdir`.

    modalities: Orthanc's DicomModalities, symbolic name -> Peer. Every AE that stores into, queries or
    retrieves from this Orthanc, and every C-MOVE destination, must be listed (or added at runtime with
    add_modality()).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        aet: str,
        dicom_port: int,
        http_port: int,
        username: str,
        password: str,
        modalities: dict[str, Peer] | None = None,
        overwrite_instances: bool = False,
        check_modality_host: bool = True,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.aet = aet
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.username = username
        self.password = password
        self.modalities = dict(modalities or {})
        self.overwrite_instances = overwrite_instances
        self.check_modality_host = check_modality_host
        self.extra_config = dict(extra_config or {})
        self.process: ManagedProcess | None = None
        self.client = self._new_client()
        self.startup_seconds: float | None = None

    # --- addresses ---------------------------------------------------------------------------------
    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def peer(self) -> Peer:
        return Peer(self.aet, "127.0.0.1", self.dicom_port)

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    # --- config ------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "Name": self.aet,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "DicomServerEnabled": True,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            # Echo is harmless and lets connectivity checks tell "down" from "not configured".
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomCheckModalityHost": self.check_modality_host,
            "DicomModalities": {name: self._modality_json(p) for name, p in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "UnknownSopClassAccepted": False,
            "OverwriteInstances": self.overwrite_instances,
            "StoreMD5ForAttachments": True,
            "StorageCompression": False,
            "SaveJobs": False,
            "JobsHistorySize": 100,
            "SynchronousCMove": True,
            "DicomScuTimeout": 30,
            "DicomScpTimeout": 60,
            "StorageAccessOnFind": "Always",
            "ExecuteLuaEnabled": False,
            "HttpsVerifyPeers": False,
            "HttpsCACertificates": "",
            "ConcurrentJobs": 2,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "KeepAlive": True,
            "TcpNoDelay": True,
            "MaximumStorageSize": 0,
            "MaximumPatientCount": 0,
        }
        cfg.update(self.extra_config)
        return cfg

    @staticmethod
    def _modality_json(peer: Peer) -> dict[str, Any]:
        return {"AET": peer.aet, "Host": peer.host, "Port": peer.port}

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0, fresh: bool = True) -> OrthancServer:
        """Write the config, start Orthanc with TCP_NODELAY=1, wait until it answers.

        fresh: start from empty storage (else restart on the data of the previous run, as after an outage).
        """
        if self.alive:
            raise SandboxError(f"Orthanc {self.aet} already running (pid {self.pid})")
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("storage", "index") if fresh else ():
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        os.chmod(self.config_path, 0o600)  # it holds the REST password
        self.log_path.write_bytes(b"")
        # Orthanc 1.10 links the system DCMTK, which reads TCP_NODELAY from the environment: without it every
        # C-STORE waits ~40 ms for a delayed ACK (docs/decisions/dicom-peers.md).
        self._launch(
            ManagedProcess(
                f"Orthanc {self.aet}",
                [ORTHANC_BINARY, str(self.config_path)],
                self.log_path,
                env={"TCP_NODELAY": "1"},
                cwd=self.workdir,
            ),
            [
                (self._answers, f"Orthanc {self.aet} REST API on {self.rest_url}/system"),
                (lambda: port_open(self.dicom_port), f"Orthanc {self.aet} DICOM port {self.dicom_port}"),
            ],
            timeout,
            started=t0,
        )
        return self

    def _new_client(self) -> OrthancClient:
        return OrthancClient(
            self.rest_url, self.username, self.password, label=f"sandbox Orthanc {self.aet}", timeout_s=60
        )

    def _answers(self) -> bool:
        info = self.client.request("GET", "/system", timeout=2).json()
        # The PID we started must be the one answering (an old instance could still hold the port).
        return bool(
            info.get("DicomAet") == self.aet and info.get("DicomPort") == self.dicom_port and self.alive
        )

    def stop(self, timeout: float = 15.0) -> None:
        # Close our keep-alive connections first: Orthanc's HTTP server waits for open ones when stopping.
        self.client.close()
        self.client = self._new_client()
        super().stop(timeout=timeout)

    # --- REST helpers (dicom_backup_dagster.orthanc) -----------------------------------------------
    def rest(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An authenticated REST call; raises OrthancRestError on HTTP errors."""
        return self.client.request(method, path, **kwargs)

    def system(self) -> dict[str, Any]:
        return self.client.system()

    def add_modality(self, name: str, peer: Peer) -> None:
        """Register a DICOM peer at runtime (in memory only: also kept here for the next start)."""
        self.modalities[name] = peer
        self.client.put_modality(name, peer.aet, peer.host, peer.port)

    def count_instances(self) -> int:
        return self.client.statistics().instances

    def instance_ids(self) -> list[str]:
        return self.client.instance_ids()

    def lookup_instance(self, sop_instance_uid: str) -> str | None:
        """Orthanc ID of the instance with this SOP Instance UID, or None."""
        return self.client.lookup_instance(sop_instance_uid)

    def has_instance(self, sop_instance_uid: str) -> bool:
        return self.lookup_instance(sop_instance_uid) is not None

    def delete_instance(self, sop_instance_uid: str) -> bool:
        """Delete one instance by SOP Instance UID; False if it was not there."""
        oid = self.lookup_instance(sop_instance_uid)
        return oid is not None and self.client.delete_instance(oid)

    def upload(self, path: str | os.PathLike[str]) -> str:
        """POST a DICOM file over REST (bypasses DICOM AE checks); returns the Orthanc instance ID."""
        return self.client.upload(Path(path).read_bytes())

    def download(self, sop_instance_uid: str) -> bytes | None:
        oid = self.lookup_instance(sop_instance_uid)
        return None if oid is None else self.client.instance_file(oid)

    def clear(self) -> None:
        """Delete every patient (and so every instance)."""
        self.client.delete_all()
