"""ToolHost: the daemon-side client of one tool host helper (see `helper`).

Thread-safe: each call gets its own control socket and output pipes, and the
calling thread reads them itself (no reader threads, so no reader can outlive
its call or read a recycled descriptor). A dead helper is restarted on the
next call.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from kcd.sandbox.protocol import FrameReader, send_frame

__all__ = ["HostUnavailable", "SandboxOutcome", "SandboxRequest", "ToolHost", "helper_environment"]

_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from kcd.sandbox.helper import main; main(int(sys.argv[2]))"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_ENV_ALLOW = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")
_DRAIN_GRACE_S = 1.0  # after the command exits, how long background writers may keep its pipes
_READ_CHUNK = 64 * 1024
_POLL_S = 0.05  # how often a waiting call looks at its cancel flag
_STALL_S = 60.0  # past the deadline, how long a silent supervisor is waited for


class HostUnavailable(RuntimeError):
    """The tool host could not be started or died mid-call; the command's effects are unknown."""


class SandboxRequest(msgspec.Struct, kw_only=True):
    """One command for the tool host: argv, cwd, environment, timeout, isolation."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    timeout: float
    mode: str  # "bwrap" | "namespaces" | "process"
    network: bool = False
    scope: str = ""  # the run: its calls share the run's caps
    limits: dict[str, int] = {}  # pids, run_pids, memory, run_memory, cpu_s, fsize, as


class Captured(msgspec.Struct):
    cap: int
    kept: bytearray = msgspec.field(default_factory=bytearray)
    dropped: int = 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))


class SandboxOutcome(msgspec.Struct, kw_only=True):
    """How a contained command ended: output, exit or signal, timeout, processes killed."""

    stdout: Captured
    stderr: Captured
    exit: int | None = None  # None: killed at the deadline or cancelled
    signal: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    killed: int = 0  # processes still running at the end of the call, all killed
    pids_limit_hit: bool = False
    oom: bool = False
    enforced: dict[str, Any] = {}
    error: str | None = None  # the sandbox could not start the command


_OUTCOME_FIELDS = ("exit", "signal", "timed_out", "cancelled", "killed", "pids_limit_hit", "oom", "enforced", "error")


def helper_environment() -> dict[str, str]:
    """The helper's whole environment: an allow-list, so no key is ever in it."""
    env = {k: os.environ[k] for k in _ENV_ALLOW if k in os.environ}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


class ToolHost:
    """The daemon-side client of the tool-host helper process."""

    def __init__(self, python: str = sys.executable) -> None:
        self._python = python
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._closed = False

    def __enter__(self) -> ToolHost:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helper lifetime

    def _start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [self._python, "-I", "-S", "-B", "-c", _BOOT, _PACKAGE_ROOT, str(theirs.fileno())],
                env=helper_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), close_fds=True, start_new_session=True, cwd="/")
        except OSError as exc:
            mine.close()
            raise HostUnavailable(f"could not start the tool host: {exc}") from None
        finally:
            theirs.close()
        self._channel = mine

    def _send(self, message: bytes, fds: list[int]) -> None:
        with self._lock:
            if self._closed:
                raise HostUnavailable("the tool host is closed")
            for attempt in (1, 2):
                if self._channel is None or (self._proc is not None and self._proc.poll() is not None):
                    self._discard()
                    self._start()
                assert self._channel is not None
                try:
                    socket.send_fds(self._channel, [message], fds)
                    return
                except OSError as exc:
                    self._discard()
                    if attempt == 2:
                        raise HostUnavailable(f"the tool host is not answering: {exc}") from None

    def _discard(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()  # EOF: the helper removes its cgroups and exits
                self._channel = None
            if self._proc is not None:
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None

    @property
    def helper_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def info(self) -> dict[str, Any]:
        """What the helper can use on this host: its cgroup tree, bwrap, its uid."""
        ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ctl:
            try:
                self._send(b"info", [theirs.fileno()])
            finally:
                theirs.close()
            ctl.settimeout(10)
            reader = FrameReader()
            while not reader.closed:
                frames = reader.feed(ctl)
                if frames:
                    return frames[0]
        raise HostUnavailable("the tool host did not answer")

    # ------------------------------------------------------------------ one call

    def run(self, request: SandboxRequest, *, output_cap: int, cancel: threading.Event | None = None,
            drain_grace: float = _DRAIN_GRACE_S) -> SandboxOutcome:
        ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self._send(b"run", [theirs.fileno(), out_w, err_w])
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            ctl.close()
            raise
        finally:
            theirs.close()
            os.close(out_w)
            os.close(err_w)
        captures = {out_r: Captured(output_cap), err_r: Captured(output_cap)}
        try:
            send_frame(ctl, msgspec.structs.asdict(request))
            done = _Exchange(ctl, captures, cancel, drain_grace, request.timeout).run()
        finally:
            ctl.close()
            for fd in captures:
                try:
                    os.close(fd)
                except OSError:
                    pass
        fields = {k: done[k] for k in _OUTCOME_FIELDS if done.get(k) is not None}
        return SandboxOutcome(stdout=captures[out_r], stderr=captures[err_r], **fields)


class _Exchange:
    """The calling thread's side of one call: output, control frames, cancel."""

    def __init__(self, ctl: socket.socket, captures: dict[int, Captured], cancel: threading.Event | None,
                 drain_grace: float, timeout: float) -> None:
        self.ctl = ctl
        self.captures = captures
        self.cancel = cancel
        self.grace = drain_grace
        self.hard_deadline = time.monotonic() + timeout + _STALL_S

    def run(self) -> dict[str, Any]:
        selector = selectors.DefaultSelector()
        open_pipes = set(self.captures)
        for fd in open_pipes:
            selector.register(fd, selectors.EVENT_READ)
        selector.register(self.ctl, selectors.EVENT_READ)
        reader = FrameReader()
        exited_at: float | None = None
        done: dict[str, Any] | None = None
        done_at = 0.0
        sent: set[str] = set()
        try:
            while True:
                now = time.monotonic()
                if done is not None and (not open_pipes or now - done_at > 2.0):
                    return done
                if done is None:
                    if self.cancel is not None and self.cancel.is_set() and "kill" not in sent:
                        self._op("kill", sent)
                    if exited_at is not None and "finish" not in sent and (
                            not open_pipes or now - exited_at >= self.grace):
                        self._op("finish", sent)
                    if now > self.hard_deadline:
                        raise HostUnavailable("the tool host's supervisor stopped answering")
                for key, _ in selector.select(_POLL_S):
                    if key.fileobj is self.ctl:
                        for frame in reader.feed(self.ctl):
                            if frame.get("event") == "exited":
                                exited_at = time.monotonic()
                            elif frame.get("event") == "done":
                                done, done_at = frame, time.monotonic()
                        if reader.closed:
                            selector.unregister(self.ctl)
                            if done is None:
                                raise HostUnavailable("the tool host's supervisor died during the call")
                        continue
                    fd = key.fd
                    chunk = os.read(fd, _READ_CHUNK)
                    if chunk:
                        self.captures[fd].add(chunk)
                    else:
                        selector.unregister(fd)
                        open_pipes.discard(fd)
        finally:
            selector.close()

    def _op(self, op: str, sent: set[str]) -> None:
        sent.add(op)
        try:
            send_frame(self.ctl, {"op": op})
        except OSError:
            pass
