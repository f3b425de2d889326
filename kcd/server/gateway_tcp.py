"""The gateway's optional TCP listener: bound by the daemon before it reports READY.

For tools that cannot speak HTTP over a Unix socket. Loopback unless the
operator set `gateway.tcp.allow_remote` (checked in `kcd.config.daemon`); every
request needs a bearer token (`openai_api.TCPGatewayApp`). Served by a second
uvicorn server (`listener.make_server`) on the daemon's event loop.
"""

from __future__ import annotations

import errno
import os
import socket

from kcd.server.listener import SocketInUse

__all__ = ["bind_tcp_socket"]


def bind_tcp_socket(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket; SocketInUse if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on accepted sockets that say so,
    # and without it small responses wait ~40 ms for delayed ACKs (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
        sock.setblocking(False)
        os.set_inheritable(sock.fileno(), False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SocketInUse(f"gateway TCP address {host}:{port} is in use") from exc
        raise
    return sock
