"""Application Entity setup shared by every DICOM operation (PS3.8 upper layer).

Two things matter for throughput and safety on every association we open or accept:
- TCP_NODELAY: pynetdicom 3.0 leaves Nagle's algorithm on, so each small PDU waits for a ~40 ms delayed
  ACK; with it off, C-STORE to Orthanc goes from ~19 to ~130 instances/s (docs/decisions/dicom-peers.md).
- pynetdicom's identifier logging is off, so C-FIND/C-MOVE identifiers (patient data) never reach logs.
- A file given to send_c_store() by path is sent as its encoded bytes (STORE_SEND_CHUNKED_DATASET), not
  decoded and re-encoded by pydicom: store.py asks for the file's exact SOP Class + Transfer Syntax
  context, so no conversion is ever needed, and the bytes archived are the bytes we digested.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pynetdicom import AE, _config, transport

# Identifiers carry patient names and IDs: never log them.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# Without it pynetdicom dcmread()s every file and encodes it again: ~40% of a C-STORE's time (2,100 RT
# records to Orthanc: 143/s vs storescu 209/s). Needs the exact presentation context, which store.py asks for.
_config.STORE_SEND_CHUNKED_DATASET = True


@dataclass(frozen=True)
class Peer:
    """A remote DICOM Application Entity: AE title and TCP address."""

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def ae_title_problem(aet: str) -> str | None:
    """Why ``aet`` is not a valid AE title, or None. PS3.5 6.2 (VR AE): at most 16 characters of the
    default character repertoire, no backslash or control characters, not all spaces; leading and
    trailing spaces are not significant (so they are stripped before the length check)."""
    value = aet.strip(" ")
    if not value:
        return "an AE title may not be empty or all spaces"
    bad = sorted({c for c in value if not (0x20 <= ord(c) <= 0x7E) or c == "\\"})
    if bad:
        listed = ", ".join(repr(c) for c in bad)
        return f"AE title {value!r} contains characters not allowed in an AE title ({listed})"
    if len(value) > 16:
        return f"AE title {value!r} is {len(value)} characters long; the maximum is 16"
    return None


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait, per PS3.8 layer. `dimse` bounds each DIMSE reply (a long C-MOVE needs more).

    `network` is pynetdicom's idle timeout, which also runs while we wait for a DIMSE reply; make_ae() uses
    max(network, dimse) for it so that a reply is always given the full `dimse` seconds.
    """

    acse: float = 30.0
    dimse: float = 120.0
    network: float = 60.0
    connect: float = 10.0


def set_tcp_nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_patched = False


def enable_tcp_nodelay() -> None:
    """Set TCP_NODELAY on every socket pynetdicom opens (SCU) or accepts (SCP). Idempotent.

    pynetdicom 3.0 has no option for it, so this wraps two private methods; pynetdicom is pinned to
    3.0.x and tests/dicom/test_nodelay.py asserts the option on real sockets.
    """
    global _patched
    if _patched:
        return
    original_create = transport.AssociationSocket._create_socket
    original_get_request = transport.AssociationServer.get_request

    def _create_socket(
        self: transport.AssociationSocket, address: transport.AddressInformation
    ) -> socket.socket:
        sock = original_create(self, address)
        set_tcp_nodelay(sock)
        return sock

    def _get_request(self: transport.AssociationServer) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = original_get_request(self)
        set_tcp_nodelay(sock)
        return sock, address

    transport.AssociationSocket._create_socket = _create_socket  # type: ignore[method-assign]
    transport.AssociationServer.get_request = _get_request  # type: ignore[method-assign]
    _patched = True


def make_ae(calling_aet: str, timeouts: Timeouts | None = None) -> AE:
    """A pynetdicom AE with our timeouts and TCP_NODELAY; callers add the presentation contexts."""
    enable_tcp_nodelay()
    timeouts = timeouts or Timeouts()
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = max(timeouts.network, timeouts.dimse)
    ae.connection_timeout = timeouts.connect
    return ae
