"""Our own listening AE: Storage SCP (PS3.4 Annex B) and Storage Commitment report receiver (PS3.4 J.3.3).

Used as the Move Destination for C-MOVE-to-self and as the target of the N-EVENT-REPORT that a Storage
Commitment SCP sends on a new association (Orthanc 1.10 does, even while our N-ACTION association is still
open; docs/decisions/orthanc.md). Received instances are
written to a spool directory as they arrive. Binds 127.0.0.1 by default; TCP_NODELAY on accepted sockets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from dicom_backup_dagster.dicom.sop_classes import StorageCommitmentPushModel, Verification

from .network import Peer, Timeouts, make_ae
from .spool import STORAGE_TRANSFER_SYNTAXES, ReceivedInstance, all_storage_classes, write_received

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommitmentReport:
    """One Storage Commitment N-EVENT-REPORT (PS3.4 J.3.3): EventTypeID 1 = all committed, 2 = failures."""

    event_type_id: int
    event_information: Dataset
    calling_aet: str


class StorageSCP:
    """A pynetdicom Storage SCP in a background thread. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        aet: str,
        spool_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timeouts: Timeouts | None = None,
        allowed_calling_aets: Collection[str] | None = None,
    ) -> None:
        self.aet = aet
        self.spool_dir = Path(spool_dir)
        self.host = host
        self._requested_port = port
        self.timeouts = timeouts or Timeouts()
        self.allowed_calling_aets = list(allowed_calling_aets or [])
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Condition()
        self._received: list[ReceivedInstance] = []
        self._reports: dict[str, CommitmentReport] = {}
        self.write_failures = 0

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> StorageSCP:
        if self._server is not None:
            return self
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        ae = make_ae(self.aet, self.timeouts)
        ae.require_calling_aet = self.allowed_calling_aets
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for uid in all_storage_classes():
            ae.add_supported_context(uid, STORAGE_TRANSFER_SYNTAXES)
        # The N-EVENT-REPORT comes from the commitment SCP acting in the SCP role (PS3.4 J.3.3).
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        ae.maximum_pdu_size = 0
        self._server = ae.start_server(
            (self.host, self._requested_port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._on_c_store),
                (evt.EVT_N_EVENT_REPORT, self.handle_n_event_report),
            ],
        )
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("StorageSCP is not running")
        return int(self._server.server_address[1])

    @property
    def peer(self) -> Peer:
        """How others reach us (what to register on a source as move destination)."""
        return Peer(self.aet, self.host, self.port)

    # -- received data ----------------------------------------------------------------------------------
    @property
    def received(self) -> list[ReceivedInstance]:
        with self._lock:
            return list(self._received)

    def clear(self) -> None:
        with self._lock:
            self._received.clear()
            self._reports.clear()

    def wait_for_count(self, count: int, timeout: float) -> bool:
        """Block until at least `count` instances arrived; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def wait_for_commitment_report(self, transaction_uid: str, timeout: float) -> CommitmentReport | None:
        """The N-EVENT-REPORT for `transaction_uid`, or None if none arrived within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while transaction_uid not in self._reports:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)
            return self._reports[transaction_uid]

    # -- handlers (run in the association's thread) ------------------------------------------------------
    def _on_c_store(self, event: Event) -> int:
        try:
            instance = write_received(event, self.spool_dir)
        except OSError:
            log.exception("%s: could not write a received instance to %s", self.aet, self.spool_dir)
            with self._lock:
                self.write_failures += 1
            return 0xA700  # Refused: Out of resources (PS3.4 B.2.3)
        with self._lock:
            self._received.append(instance)
            self._lock.notify_all()
        return 0x0000

    def handle_n_event_report(self, event: Event) -> tuple[int, Dataset | None]:
        """EVT_N_EVENT_REPORT handler; also bound on the N-ACTION association should the report come there."""
        info = event.event_information
        transaction_uid = str(info.get("TransactionUID", ""))
        if event.event_type is None:  # Event Type ID is mandatory in an N-EVENT-REPORT (PS3.7 10.1.1.1)
            raise ValueError("N-EVENT-REPORT without an Event Type ID")
        report = CommitmentReport(
            event_type_id=int(event.event_type),
            event_information=info,
            calling_aet=str(event.assoc.requestor.ae_title).strip(),
        )
        with self._lock:
            self._reports[transaction_uid] = report
            self._lock.notify_all()
        return 0x0000, None
