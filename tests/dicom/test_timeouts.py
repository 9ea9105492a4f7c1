"""Timeouts: a peer that accepts TCP and never answers, and an SCP whose C-FIND handler sleeps."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from dicom_backup_dagster.dicom.echo import c_echo
from dicom_backup_dagster.dicom.errors import AssociationError, DimseTimeout
from dicom_backup_dagster.dicom.find import find_studies
from dicom_backup_dagster.dicom.network import Peer, Timeouts

from .conftest import CALLING_AET
from .fault_scp import FaultSCP


@pytest.fixture
def silent_peer() -> Iterator[Peer]:
    """Accepts TCP connections, reads nothing, answers nothing."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Peer("SILENT", "127.0.0.1", server.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        server.close()


def test_association_times_out_within_acse_timeout(silent_peer: Peer) -> None:
    timeouts = Timeouts(acse=1.0, dimse=5, network=5, connect=2)
    started = time.monotonic()
    with pytest.raises(AssociationError) as info:
        c_echo(silent_peer, CALLING_AET, timeouts)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0
    text = str(info.value)
    assert f"SILENT@127.0.0.1:{silent_peer.port}" in text
    assert "ACSE timeout (1 s)" in text


def test_dimse_timeout_against_a_sleeping_handler(fault_scp: FaultSCP) -> None:
    fault_scp.find_sleep = 2.0
    timeouts = Timeouts(acse=5, dimse=0.5, network=5, connect=2)
    started = time.monotonic()
    with pytest.raises(DimseTimeout) as info:
        find_studies(fault_scp.peer, CALLING_AET, timeouts=timeouts)
    assert time.monotonic() - started < 1.8
    err = info.value
    assert err.operation == "C-FIND" and err.peer == fault_scp.peer
    assert "DIMSE timeout (0.5 s)" in str(err)
