"""TelemetrySink: the one writer of telemetry JSONL in the daemon.

Producers call `emit()` on the event loop: it stamps, encodes, redacts and caps
the line and queues it, and never blocks or raises, so a slow or full disk
can never stall a run (a full queue drops the event and counts it; the gap
in `seq` shows where). One writer task (`run()`) drains the queue with one
`os.write` per line on `O_APPEND` fds (a few lines on the event loop, a backlog,
file opens and fsyncs in a worker thread), which keeps every line
whole and lines from concurrent runs serialised (O_APPEND alone does not
promise that for regular files). The central file follows log rotation by
SIGHUP (`reopen()`) and by an inode check, both applied between lines, so a
rotation never loses or tears one.

Every event goes to the central file (if configured) and, when `run_dir` is
given, also to `<run_dir>/meta/telemetry.jsonl`.

Wiring: `tg.start(sink.run)` early in the daemon; `reopen()` on SIGHUP;
`close_run(run_dir)` when a run finishes; `await sink.aclose()` at shutdown;
`stats()` feeds `DaemonMetrics.telemetry_stats`.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec

from kcd.observe.telemetry_events import (  # noqa: F401  (re-exported: one import for producers)
    SCHEMA_VERSION,
    BreakerSkip,
    CircuitClose,
    CircuitEvent,
    CircuitHalfOpen,
    CircuitOpen,
    Envelope,
    Fallback,
    LlmAttempt,
    Probe,
    ProviderMetrics,
    RunEnd,
    RunStart,
    TelemetryEvent,
    Truncated,
    attempt_event,
    circuit_event,
    config_digest,
    decoder,
    event_name,
    genai_provider_name,
    provider_metrics_event,
    utc_ts,
)

log = logging.getLogger("kcd.telemetry")

SYSTEM_TELEMETRY_PATH = Path("/var/log/kylecode/telemetry.jsonl")
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_FILE_MODE = 0o600  # every run of every user is in it: readable through kcd, not the group
_INLINE_LINES = 16  # at most this many lines are written on the event loop per wake-up
_BATCH_LINES = 4096  # lines per thread hop: amortises the hop, bounds the time between rotation checks


def default_central_path(env: Mapping[str, str], mode: str, state_dir: Path) -> Path:
    """`RAYCODE_TELEMETRY_PATH` if set (the original's variable), else
    `/var/log/kylecode/telemetry.jsonl` in system mode (systemd `LogsDirectory=`),
    else `<state_dir>/telemetry.jsonl`."""
    explicit = env.get("RAYCODE_TELEMETRY_PATH", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    return SYSTEM_TELEMETRY_PATH if mode == "system" else state_dir / "telemetry.jsonl"


class _CloseRun:
    """Queue marker: close a run's fd after every line queued before it is written."""

    __slots__ = ("run_dir",)

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir


class TelemetrySink:
    """Call `emit`, `close_run` and `reopen` on the event loop thread (from another
    thread: `anyio.from_thread.run_sync(sink.emit, event)`)."""

    def __init__(self, central_path: Path | None, *, max_line_bytes: int = 1 << 20,
                 queue_size: int = 65536, redact: Callable[[bytes], bytes] | None = None,
                 check_interval_s: float = 2.0, max_run_fds: int = 256):
        self.central_path = central_path
        self.max_line_bytes = max_line_bytes
        self.queue_size = queue_size
        self._redact = redact
        self._check_interval_s = check_interval_s
        self._max_run_fds = max_run_fds
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._encoder = msgspec.json.Encoder()
        self._buf = bytearray()
        self._seq = 0
        self._ts_second = -1  # utc_ts() costs ~2 µs; the formatted second is reused
        self._ts_prefix = ""
        # deque: append (loop) and popleft (writer thread) are atomic, so the
        # thread can take lines itself and a cancelled hop never loses a batch.
        self._queue: collections.deque[tuple[bytes, Path | None] | _CloseRun] = collections.deque()
        self._wake: anyio.Event | None = None  # created in run(): needs a running loop
        self._stopped: anyio.Event | None = None
        self._running = False
        self._closing = False
        self._closed = False
        self._reopen_requested = False
        # Writer-thread state: touched only by the one thread hop in flight.
        self._central_fd: int | None = None
        self._central_ino: tuple[int, int] | None = None
        self._next_check = 0.0
        self._run_fds: collections.OrderedDict[Path, int] = collections.OrderedDict()
        self._emitted = 0
        self._written = 0
        self._dropped = 0
        self._truncated = 0
        self._write_errors = 0
        self._emit_errors = 0

    # ---- producer side (event loop) ----------------------------------------------

    def emit(self, event: msgspec.Struct, run_dir: Path | None = None) -> None:
        """Queue one event. Synchronous, non-blocking, never raises."""
        try:
            if self._closed:
                self._dropped += 1
                return
            if len(self._queue) >= self.queue_size:
                self._dropped += 1  # counted before encoding: a full queue costs nothing
                self._seq += 1  # the gap in seq tells readers an event is missing
                return
            line = self._encode(event)
            self._queue.append((line, run_dir))
            self._emitted += 1
            if len(self._queue) == 1 and self._wake is not None:
                self._wake.set()  # the writer only sleeps on an empty queue
        except Exception:  # a telemetry fault must never break the caller
            self._emit_errors += 1

    def _encode(self, event: msgspec.Struct) -> bytes:
        self._seq += 1
        ts = self._now()
        if isinstance(event, Envelope):
            event.seq, event.ts, event.host, event.pid = self._seq, ts, self._host, self._pid
        elif isinstance(event, ProviderMetrics):
            event.ts = ts
        buf = self._buf
        self._encoder.encode_into(event, buf)
        if self._redact is not None:
            body = self._redact(bytes(buf))
            if b"\n" in body:  # a redactor must not split the record; a space is valid JSON
                body = body.replace(b"\n", b" ")
            line = body + b"\n"
        else:
            buf.extend(b"\n")
            line = bytes(buf)
        if len(buf) > 1 << 16:
            self._buf = bytearray()  # don't keep a huge buffer alive after one big event
        if len(line) > self.max_line_bytes:
            self._truncated += 1
            line = self._encoder.encode(Truncated(
                seq=self._seq, ts=ts, host=self._host, pid=self._pid,
                run_id=getattr(event, "run_id", None), route=getattr(event, "route", None),
                turn=getattr(event, "turn", None), original_event=event_name(event),
                size=len(line), limit=self.max_line_bytes)) + b"\n"
        return line

    def _now(self) -> str:
        second, ms = divmod(int(time.time() * 1000), 1000)
        if second != self._ts_second:
            self._ts_second = second
            self._ts_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._ts_prefix}.{ms:03d}Z"

    def close_run(self, run_dir: Path) -> None:
        """Close the run's file once everything queued for it is written (fsynced first).
        Queued past the size limit: a marker is tiny and a lost one would leak an fd."""
        if not self._closed:
            self._queue.append(_CloseRun(run_dir))
            if self._wake is not None:
                self._wake.set()

    def reopen(self) -> None:
        """SIGHUP: reopen the central file at its path, between two lines."""
        if self.central_path is None:
            return
        self._reopen_requested = True
        if self._wake is not None:
            self._wake.set()

    def stats(self) -> dict[str, int]:
        return {"emitted": self._emitted, "written": self._written, "dropped": self._dropped,
                "truncated": self._truncated, "write_errors": self._write_errors,
                "emit_errors": self._emit_errors, "queued": len(self._queue)}

    # ---- the writer ----------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The single writer task; returns after `aclose()` has been requested and the queue is empty."""
        if self._running:
            raise RuntimeError("TelemetrySink.run() is already running")
        self._running = True
        self._stopped = anyio.Event()
        self._wake = anyio.Event()
        task_status.started()
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wake = anyio.Event()  # no await before wait(): no missed wake-up
                    # Timed: also runs the rotation check while quiet-ish, and
                    # bounds the delay should a wake-up ever be missed.
                    with anyio.move_on_after(self._check_interval_s):
                        await self._wake.wait()
                    if not self._queue and not self._reopen_requested:
                        continue
                try:
                    if self._can_drain_inline():
                        self._drain(_INLINE_LINES)
                    else:
                        await anyio.to_thread.run_sync(self._drain, _BATCH_LINES)
                except Exception:  # a bug here must cost lines, never the daemon (this task is its child)
                    self._write_errors += 1
                    log.exception("telemetry writer: a batch failed; continuing")
        finally:
            self._running = False
            self._stopped.set()

    def _can_drain_inline(self) -> bool:
        """A few lines and nothing slow pending: append them on the event loop.

        At request rates below the disk's, each wake-up finds one or two lines; handing those
        to a worker thread cost more CPU than kcd's own work per call (docs/benchmarks.md §5),
        while an O_APPEND write of a few hundred bytes to the page cache takes microseconds
        (the run's event log does the same). Opening or reopening the central file, the
        rotation check and the fsync behind a run's close stay in the thread."""
        queue = self._queue
        if len(queue) > _INLINE_LINES or self._reopen_requested:
            return False
        if self.central_path is not None and (self._central_fd is None or time.monotonic() >= self._next_check):
            return False
        return not any(isinstance(item, _CloseRun) for item in queue)

    async def aclose(self) -> None:
        """Write everything queued, fsync and close every file. Later emits are dropped."""
        if self._closed:
            return
        self._closing = True
        with anyio.CancelScope(shield=True):
            if self._running and self._stopped is not None:
                if self._wake is not None:
                    self._wake.set()
                await self._stopped.wait()
            self._closed = True
            await anyio.to_thread.run_sync(self._finish)

    # ---- writer thread ---------------------------------------------------------------

    def _drain(self, limit: int) -> None:
        self._maybe_reopen()
        queue = self._queue
        for _ in range(limit):
            try:
                item = queue.popleft()
            except IndexError:
                return
            if isinstance(item, _CloseRun):
                self._close_run_fd(item.run_dir)
                continue
            line, run_dir = item
            ok = True
            if self.central_path is not None:
                fd = self._central_fd
                ok = fd is not None and self._write(fd, line)
                if fd is None:
                    self._write_errors += 1
            if run_dir is not None:
                fd = self._run_fd(run_dir)
                ok = (fd is not None and self._write(fd, line)) and ok
                if fd is None:
                    self._write_errors += 1
            self._written += ok

    def _finish(self) -> None:
        while self._queue:
            self._drain(_BATCH_LINES)
        if self._central_fd is not None:
            try:
                os.fsync(self._central_fd)
            except OSError:
                self._write_errors += 1
            self._close_central()
        for run_dir in list(self._run_fds):
            self._close_run_fd(run_dir)

    def _write(self, fd: int, line: bytes) -> bool:
        """One write per line; loop on short writes (ENOSPC, RLIMIT_FSIZE, signals)."""
        view = memoryview(line)
        written = 0
        try:
            while written < len(line):
                written += os.write(fd, view[written:])
            return True
        except OSError:
            self._write_errors += 1
            if written:  # end the fragment so the next record starts on its own line
                try:
                    os.write(fd, b"\n")
                except OSError:
                    pass
            return False

    def _maybe_reopen(self) -> None:
        if self.central_path is None:
            return
        now = time.monotonic()
        if self._reopen_requested:
            self._reopen_requested = False
            self._open_central(now)
        elif now >= self._next_check:
            # WatchedFileHandler technique: a rotator that sends no signal
            # (or a deleted file) shows up as a different inode at the path.
            if self._central_fd is None or self._path_ino() != self._central_ino:
                self._open_central(now)
            self._next_check = now + self._check_interval_s

    def _path_ino(self) -> tuple[int, int] | None:
        assert self.central_path is not None
        try:
            st = os.stat(self.central_path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _open_central(self, now: float) -> None:
        assert self.central_path is not None
        self._close_central()
        self._next_check = now + self._check_interval_s  # retry a failed open no sooner
        try:
            fd = _open_append(self.central_path)
        except OSError:
            return  # counted per line that could not be written; retried after the interval
        st = os.fstat(fd)
        self._central_fd, self._central_ino = fd, (st.st_dev, st.st_ino)

    def _close_central(self) -> None:
        fd, self._central_fd, self._central_ino = self._central_fd, None, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _run_fd(self, run_dir: Path) -> int | None:
        fd = self._run_fds.get(run_dir)
        if fd is not None:
            self._run_fds.move_to_end(run_dir)
            return fd
        try:
            fd = _open_append(run_dir / "meta" / "telemetry.jsonl")
        except OSError:
            return None
        self._run_fds[run_dir] = fd
        if len(self._run_fds) > self._max_run_fds:  # LRU: a later line for it simply reopens
            _, old = self._run_fds.popitem(last=False)
            os.close(old)
        return fd

    def _close_run_fd(self, run_dir: Path) -> None:
        fd = self._run_fds.pop(run_dir, None)
        if fd is None:
            return
        try:
            os.fsync(fd)  # a run's record is final once the run ends
        except OSError:
            self._write_errors += 1
        os.close(fd)


def _open_append(path: Path) -> int:
    try:
        return os.open(path, _OPEN_FLAGS, _FILE_MODE)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, _OPEN_FLAGS, _FILE_MODE)


def event_to_builtins(event: msgspec.Struct) -> dict[str, Any]:
    """The record as a dict (tag included), e.g. to also push it onto a run's event stream."""
    return msgspec.to_builtins(event)
