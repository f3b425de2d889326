"""Fixtures that start real `kcd` processes on temporary sockets."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
CANARY_KEYS = {
    "OPENAI_API_KEY": "sk-canary-openai-0000000000000000",
    "OPENROUTER_API_KEY": "sk-or-canary-0000000000000000",
}


def base_env(home: Path) -> dict[str, str]:
    """A clean environment: no real provider keys, a private HOME."""
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and not k.startswith(("KYLECODE_", "RAY_", "RAYCODE_", "XDG_", "OPENAI_",
                                                              "OPENROUTER_"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", **CANARY_KEYS)
    return env


class Kcd:
    """A running daemon and helpers to talk to it."""

    def __init__(self, root: Path, env: dict[str, str], args: list[str]):
        self.root = root
        self.socket = root / "kcd.sock"
        self.runs_root = root / "runs"
        self.state_dir = root / "state"
        self.log_path = root / "kcd.log"
        self.env = env
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Kcd:
        cmd = [sys.executable, "-m", "kcd", "serve", "--socket", str(self.socket),
               "--state-dir", str(self.state_dir), "--runs-root", str(self.runs_root), *self.args]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kcd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with self.http() as client:
                    if client.get("/version").status_code == 200:
                        return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"kcd did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def http(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://kcd",
                            timeout=timeout)

    def kcctl(self, *args: str, timeout: float = 120.0, env: dict | None = None,
              check: bool = False) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "kcctl.cli", "--socket", str(self.socket), "--no-autostart", *args]
        proc = subprocess.run(cmd, env=env or self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"kcctl {args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise


@pytest.fixture
def kcd_root() -> Iterator[Path]:
    # Short paths: AF_UNIX socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="kcd-", dir="/tmp"))
    (root / "home").mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.kcd_call_failed = report.failed
    return report


@pytest.fixture
def make_kcd(kcd_root: Path, request):
    started: list[Kcd] = []

    def factory(*args: str, env_extra: dict[str, str] | None = None, start: bool = True,
                root: Path | None = None) -> Kcd:
        env = base_env(kcd_root / "home")
        env.update(env_extra or {})
        daemon = Kcd(root or kcd_root, env, list(args))
        started.append(daemon)
        return daemon.start() if start else daemon

    yield factory
    for daemon in started:
        if getattr(request.node, "kcd_call_failed", False):
            # The daemon's own account of a failure: it is removed with kcd_root right after.
            state = "running" if daemon.proc and daemon.proc.poll() is None else f"exited {daemon.proc.returncode}"
            print(f"--- kcd at {daemon.socket} ({state}); log tail ---\n{daemon.log()[-6000:]}")
        try:
            daemon.stop(timeout=30)
        except Exception:
            pass


@pytest.fixture
def kcd(make_kcd) -> Kcd:
    """A daemon with the in-process executor (the fast path)."""
    return make_kcd("--executor", "in-process")


@pytest.fixture
def ray_kcd(make_kcd, ray_cluster: str) -> Kcd:
    """A daemon whose turns run as Ray tasks on the session's Ray instance."""
    return make_kcd("--executor", "ray", "--ray-address", ray_cluster)


@pytest.fixture(scope="module")
def sim():
    """A standalone simulator process standing in for OpenRouter and OpenAI."""
    from .resilience_support import Simulator

    simulator = Simulator()
    yield simulator
    simulator.close()


@contextlib.contextmanager
def health_watch(daemon: Kcd, every: float = 0.05) -> Iterator[list[float]]:
    """Poll `/v1/health` in a thread while the block runs; yields the latencies (seconds)."""
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with daemon.http(timeout=5) as client:
            while not stop.is_set():
                started = time.monotonic()
                assert client.get("/v1/health").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(every)

    poller = threading.Thread(target=poll, daemon=True, name="health-watch")
    poller.start()
    deadline = time.monotonic() + 10
    while not latencies and poller.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)  # at least one answer before the block: a fast block still has a sample
    try:
        yield latencies
    finally:
        stop.set()
        poller.join(10)


def request_as(uid: int, sock_path: str | Path, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP request over the socket with `uid` as the effective uid at connect time, which is
    what SO_PEERCRED reports to the daemon (the test runs as root)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.seteuid(uid)
    try:
        s.connect(str(sock_path))
    finally:
        os.seteuid(0)
    with s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: kcd\r\nContent-Type: application/json\r\n"
                  f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        payload = _unchunk(payload)
    return int(head.split()[1]), payload


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out
