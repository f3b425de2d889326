"""Binding the control socket, and serving an ASGI app on it with uvicorn."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

import uvicorn

from kcd.server.http import SocketInUse
from kcd.server.peercred import http_protocol_class


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


def loop_options(environ: Mapping[str, str] = os.environ) -> dict[str, bool]:
    """anyio backend options: uvloop when installed (a cheaper event loop per request),
    unless `KC_EVENT_LOOP=asyncio` asks for the standard library's loop."""
    if environ.get("KC_EVENT_LOOP", "").strip().lower() == "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def raise_descriptor_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (the default 1,024 is a few idle clients away from
    refusing everyone); returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def make_server(app, *, log_level: str = "warning", graceful_timeout: float = 5.0, idle_timeout: float = 30.0,
                max_connections: int | None = None) -> QuietServer:
    """`idle_timeout`: a connection with no request in flight is closed after this long (from its
    accept too, not only after a response); `max_connections`: past it, uvicorn answers 503."""
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level=log_level,
        access_log=False,
        http=http_protocol_class(),
        timeout_graceful_shutdown=graceful_timeout,
        timeout_keep_alive=idle_timeout,
        limit_concurrency=max_connections,
        # kcd is the edge: nothing in front of it sets X-Forwarded-*, so skip the middleware
        # that parses them on every request (and trusts them from 127.0.0.1 by default).
        proxy_headers=False,
        server_header=False,
    )
    return QuietServer(config)
