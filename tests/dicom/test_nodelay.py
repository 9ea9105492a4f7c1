"""TCP_NODELAY on real sockets: one we open (SCU) and one we accept (SCP). research dicom.md section 3."""

from __future__ import annotations

import socket

from pynetdicom.sop_class import Verification

from dicom_backup_dagster.dicom.association import association
from dicom_backup_dagster.dicom.network import make_ae
from dicom_backup_dagster.dicom.scp import StorageSCP

from .conftest import CALLING_AET, FAST


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_nodelay_on_outgoing_and_accepted_sockets(listener: StorageSCP) -> None:
    ae = make_ae("NODELAY_TEST", FAST)
    ae.add_requested_context(Verification)
    with association(ae, listener.peer, timeouts=FAST) as assoc:
        outgoing = assoc.dul.socket.socket
        assert outgoing is not None and _nodelay(outgoing) != 0
        server = listener._server
        assert server is not None
        accepted = [a.dul.socket.socket for a in server.active_associations]
        assert accepted and all(s is not None and _nodelay(s) != 0 for s in accepted)
        assert assoc.send_c_echo().Status == 0


def test_plain_socket_has_nagle_on_by_default() -> None:
    """Guards the assertion above: loopback sockets do not have TCP_NODELAY unless someone sets it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert _nodelay(sock) == 0


def test_listener_binds_loopback_by_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with StorageSCP(CALLING_AET, tmp_path) as scp:
        assert scp._server is not None
        assert scp._server.server_address[0] == "127.0.0.1"
