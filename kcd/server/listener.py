"""Binding the control socket, and serving an ASGI app on it with uvicorn."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from kcd.server.peercred import http_protocol_class


class SocketInUse(RuntimeError):
    pass


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def bind_unix_socket(path: Path, mode: int = 0o660) -> socket.socket:
    """Bind a listening AF_UNIX socket with `mode` and no chmod window.

    An existing socket file is replaced only when nothing answers on it
    (a stale file from a crashed daemon); a live daemon is never displaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if _answers(path):
            raise SocketInUse(f"another daemon is already listening on {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SocketInUse(f"{path} is in use") from exc
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)  # umask cannot grant bits; make the mode exact
    sock.listen(512)
    sock.setblocking(False)
    os.set_inheritable(sock.fileno(), False)
    return sock


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_server(app, *, log_level: str = "warning", graceful_timeout: float = 5.0) -> QuietServer:
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level=log_level,
        access_log=False,
        http=http_protocol_class(),
        timeout_graceful_shutdown=graceful_timeout,
        timeout_keep_alive=30,
    )
    return QuietServer(config)
