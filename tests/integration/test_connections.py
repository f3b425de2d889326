"""Idle connections cannot exhaust the daemon: they time out, they are capped, health answers."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx


def _open_idle(path: Path, n: int) -> list[socket.socket]:
    conns = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        conns.append(s)
    return conns


def _closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(0.01)
    try:
        return s.recv(1) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def _daemon(make_kcd, kcd_root: Path, config_text: str):
    config = kcd_root / "kcd.yaml"
    config.write_text(config_text)
    return make_kcd("--config", str(config), "--executor", "in-process")


def test_two_thousand_idle_connections_do_not_stop_health_and_then_time_out(make_kcd, kcd_root: Path) -> None:
    daemon = _daemon(make_kcd, kcd_root, "idle_timeout_s: 3\nmax_connections: 2500\n")
    conns = _open_idle(daemon.socket, 2000)
    try:
        latencies = []
        with daemon.http(timeout=5) as c:
            for _ in range(10):
                started = time.monotonic()
                assert c.get("/v1/health").status_code == 200
                latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0, latencies
        # Nothing was ever sent on them: each is closed after the idle timeout all the same.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(_closed_by_peer(s) for s in conns[:50]):
            time.sleep(0.5)
        assert all(_closed_by_peer(s) for s in conns[:50])
    finally:
        for s in conns:
            s.close()
    with daemon.http() as c:
        assert c.get("/v1/health").status_code == 200


def test_past_the_connection_cap_requests_are_refused_clearly(make_kcd, kcd_root: Path) -> None:
    daemon = _daemon(make_kcd, kcd_root, "max_connections: 50\nidle_timeout_s: 30\n")
    conns = _open_idle(daemon.socket, 60)
    try:
        transport = httpx.HTTPTransport(uds=str(daemon.socket))
        with httpx.Client(transport=transport, base_url="http://kcd", timeout=5) as c:
            r = c.get("/v1/health")
        assert r.status_code == 503
    finally:
        for s in conns:
            s.close()
    time.sleep(0.5)
    with daemon.http() as c:
        assert c.get("/v1/health").status_code == 200
