"""A configurable pynetdicom Q/R + Storage + Storage Commitment SCP that misbehaves on purpose.

Set attributes between calls:
- find_rows (per level) / find_final_status / find_sleep: C-FIND answers (duplicates, missing keys,
  failure, slowness)
- move_plan / get_plan: what C-MOVE / C-GET do (see RetrievePlan)
- store_status: C-STORE status per SOP Instance UID (default 0x0000)
- commitment_failed_uids / commitment_report: Storage Commitment behaviour
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_backup_dagster.dicom.network import Peer, enable_tcp_nodelay


@dataclass
class RetrievePlan:
    """C-MOVE/C-GET behaviour.

    unknown_destination: C-MOVE answers 0xA801.
    announce: number of sub-operations announced (default: len(datasets)).
    datasets: sent as sub-operations, in order.
    stop_after: send only this many, then answer final_status with failed_uids in the identifier.
    final_status: None = let pynetdicom compute it from the sub-operation results.
    """

    datasets: list[Dataset] = field(default_factory=list)
    announce: int | None = None
    stop_after: int | None = None
    final_status: int | None = None
    failed_uids: list[str] = field(default_factory=list)
    unknown_destination: bool = False
    sleep: float = 0.0
    before_send: Callable[[int], None] | None = None  # called with the index before each sub-operation


class FaultSCP:
    def __init__(
        self,
        aet: str = "FAULT_SCP",
        *,
        require_called_aet: bool = True,
        allowed_calling_aets: list[str] | None = None,
    ) -> None:
        self.aet = aet
        self.reset()
        enable_tcp_nodelay()
        ae = AE(aet)
        ae.require_called_aet = require_called_aet
        ae.require_calling_aet = allowed_calling_aets or []
        ae.dimse_timeout = 10
        ae.acse_timeout = 10
        ae.network_timeout = 10
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_supported_context(StorageCommitmentPushModel)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, scu_role=False, scp_role=True)
            ae.add_requested_context(cx.abstract_syntax)
        self._ae = ae
        self._server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[
                (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_C_FIND, self._on_find),
                (evt.EVT_C_MOVE, self._on_move),
                (evt.EVT_C_GET, self._on_get),
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_N_ACTION, self._on_n_action),
            ],
        )

    def reset(self) -> None:
        """Back to well-behaved defaults (the server keeps running)."""
        self.find_rows: dict[str, list[Dataset]] = {}  # QueryRetrieveLevel -> rows
        self.associations = 0
        self.find_final_status = 0x0000
        self.find_sleep = 0.0
        self.find_requests: list[Dataset] = []
        self.move_plan = RetrievePlan()
        self.get_plan = RetrievePlan()
        self.move_destinations: dict[str, tuple[str, int]] = {}
        self.store_status: dict[str, int] = {}
        self.stored: list[str] = []
        self.commitment_failed_uids: set[str] = set()
        self.commitment_report = True
        self.commitment_destination: tuple[str, str, int] | None = None  # (aet, host, port)

    @property
    def peer(self) -> Peer:
        return Peer(self.aet, "127.0.0.1", int(self._server.server_address[1]))

    @property
    def accepted_sockets(self) -> list[object]:
        return [a.dul.socket.socket for a in self._server.active_associations if a.dul.socket]

    def stop(self) -> None:
        self._server.shutdown()

    # -- handlers ------------------------------------------------------------------------------------------
    def _on_accepted(self, event: Event) -> None:
        self.associations += 1

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        self.find_requests.append(event.identifier)
        if self.find_sleep:
            time.sleep(self.find_sleep)
        for row in self.find_rows.get(str(event.identifier.QueryRetrieveLevel), []):
            yield 0xFF00, row
        yield self.find_final_status, None

    def _retrieve(self, plan: RetrievePlan) -> Iterator[object]:
        count = plan.announce if plan.announce is not None else len(plan.datasets)
        yield count
        if plan.sleep:
            time.sleep(plan.sleep)
        to_send = plan.datasets if plan.stop_after is None else plan.datasets[: plan.stop_after]
        for index, ds in enumerate(to_send):
            if plan.before_send is not None:
                plan.before_send(index)
            yield 0xFF00, ds
        if plan.final_status is not None:
            identifier = Dataset()
            identifier.FailedSOPInstanceUIDList = plan.failed_uids
            yield plan.final_status, identifier

    def _on_move(self, event: Event) -> Iterator[object]:
        plan = self.move_plan
        if plan.unknown_destination:
            yield None, None
            return
        host, port = self.move_destinations.get(event.move_destination.strip(), (None, None))
        yield host, port
        yield from self._retrieve(plan)

    def _on_get(self, event: Event) -> Iterator[object]:
        yield from self._retrieve(self.get_plan)

    def _on_store(self, event: Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.stored.append(uid)
        return self.store_status.get(uid, 0x0000)

    def _on_n_action(self, event: Event) -> tuple[int, Dataset | None]:
        request = event.action_information
        if self.commitment_report and self.commitment_destination is not None:
            threading.Thread(target=self._send_report, args=(request,), daemon=True).start()
        return 0x0000, None

    def _send_report(self, request: Dataset) -> None:
        """N-EVENT-REPORT on a new association, as Orthanc does (PS3.4 J.3.3)."""
        time.sleep(0.05)
        assert self.commitment_destination is not None
        aet, host, port = self.commitment_destination
        info = Dataset()
        info.TransactionUID = request.TransactionUID
        ok, failed = [], []
        for ref in request.ReferencedSOPSequence:
            item = Dataset()
            item.ReferencedSOPClassUID = ref.ReferencedSOPClassUID
            item.ReferencedSOPInstanceUID = ref.ReferencedSOPInstanceUID
            if ref.ReferencedSOPInstanceUID in self.commitment_failed_uids:
                item.FailureReason = 0x0112
                failed.append(item)
            else:
                ok.append(item)
        if ok:
            info.ReferencedSOPSequence = ok
        if failed:
            info.FailedSOPSequence = failed
        ae = AE(self.aet)
        ae.add_requested_context(StorageCommitmentPushModel)
        from pynetdicom import build_role

        assoc = ae.associate(
            host, port, ae_title=aet, ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)]
        )
        if assoc.is_established:
            assoc.send_n_event_report(
                info, 2 if failed else 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
            )
            assoc.release()
