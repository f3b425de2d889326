"""Peer credentials for Unix-socket connections, handed to the ASGI scope.

uvicorn builds each request's scope from its protocol object; we subclass the
protocol so every connection reads SO_PEERCRED once, and the result reaches
handlers as `scope["state"]["peer"]`.
"""

from __future__ import annotations

import socket
import struct

from kcd.api.types import PeerInfo


def read_peercred(sock: socket.socket | None) -> PeerInfo | None:
    """SO_PEERCRED (pid, uid, gid) and the supplementary groups of a Unix-socket peer."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerInfo(pid=pid, uid=uid, gid=gid)


def with_peercred(protocol_cls: type) -> type:
    """Return a subclass of a uvicorn HTTP protocol that records the peer."""

    class PeerCredProtocol(protocol_cls):  # type: ignore[misc, valid-type]
        def connection_made(self, transport):  # noqa: ANN001
            super().connection_made(transport)
            peer = read_peercred(transport.get_extra_info("socket"))
            # A per-connection copy: uvicorn copies app_state into each request's scope.
            self.app_state = {**self.app_state, "peer": peer}
            # uvicorn arms its keep-alive timer only after a response: a connection that never
            # sends a request would hold its descriptor forever. Arm it now; the first bytes
            # received disarm it (data_received), as for any keep-alive wait.
            if self.timeout_keep_alive_task is None and not transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler)

    PeerCredProtocol.__name__ = f"PeerCred{protocol_cls.__name__}"
    return PeerCredProtocol


def http_protocol_class() -> type:
    """httptools when installed (faster), else h11; both wrapped for peer creds."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return with_peercred(HttpToolsProtocol)
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return with_peercred(H11Protocol)
