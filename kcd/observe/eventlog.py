"""A run's event log: one ordered record, in memory, on disk and on the wire.

Every event gets the next `seq`, is kept in memory for followers, and is
appended to `meta/events.jsonl`. Followers replay from any `seq` and then wait
for new events, so a client that reconnects with `since=N` loses nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import msgspec

from kcd.api.types import Event

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)
log = logging.getLogger("kcd.events")


def utc_now() -> str:
    """The current UTC time as ISO-8601 with milliseconds and a `Z`."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventLog:
    """A run's ordered events: kept in memory, appended to disk, followed by clients."""

    def __init__(self, run_id: str, path: Path | None, scrub: Callable[[bytes], bytes] | None = None):
        self.run_id = run_id
        self._scrub = scrub
        self.path = path
        self._lines: list[bytes] = []
        self._changed = anyio.Event()
        self._closed = False
        self._fd: int | None = None
        self._torn = False  # the last write failed part-way
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_seq(self) -> int:
        return len(self._lines)

    def emit(self, type_: str, **data: Any) -> Event:
        """Record an event. Synchronous on purpose: seq order is emit order.

        The line reaches the file before followers see it; if the disk refuses it (ENOSPC,
        EIO) this raises OSError and the event is not recorded at all, so the seq is reused."""
        if self._closed:
            raise RuntimeError(f"event log of run {self.run_id} is closed")
        event, line = self._encode(type_, data)
        if self._fd is not None:
            self._write(line)
        self._publish(line)
        return event

    def finish(self, type_: str, **data: Any) -> bool:
        """The last-resort final event: record it for followers and close, never raising.

        False when it could not reach the file (the failure is logged) or the log was
        already closed. Used when finalisation itself failed, often because the disk did."""
        if self._closed:
            return False
        try:
            _, line = self._encode(type_, data)
        except Exception:  # data a bug made unencodable: followers still learn the run ended
            log.exception("run %s: %s could not be encoded", self.run_id, type_)
            _, line = self._encode(type_, {"status": data.get("status"), "error": "event not encodable"})
        on_disk = False
        if self._fd is not None:
            try:
                self._write(line)
                on_disk = True
            except Exception:
                log.exception("run %s: %s could not be written to %s", self.run_id, type_, self.path)
        self._publish(line)
        self.close()
        return on_disk

    def close(self) -> None:
        """Never raises: it runs on finalisation's last-resort path."""
        if not self._closed:
            self._closed = True
            if self._fd is not None:
                fd, self._fd = self._fd, None
                try:
                    os.close(fd)
                except OSError:
                    log.warning("run %s: closing %s failed", self.run_id, self.path, exc_info=True)
            self._notify()

    def _encode(self, type_: str, data: dict[str, Any]) -> tuple[Event, bytes]:
        event = Event(seq=len(self._lines) + 1, ts=utc_now(), run_id=self.run_id, type=type_, data=data)
        line = _encoder.encode(event) + b"\n"
        return event, self._scrub(line) if self._scrub is not None else line

    def _write(self, line: bytes) -> None:
        # One small O_APPEND write per event (a few hundred bytes): cheaper than a thread
        # hop. A failed write may leave part of a line behind: the next line starts on a
        # fresh one so only the torn line is lost (readers skip it).
        assert self._fd is not None
        data = b"\n" + line if self._torn else line
        self._torn = True
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._torn = False

    def _publish(self, line: bytes) -> None:
        self._lines.append(line)
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def follow(self, since: int = 0, *, follow: bool = True,
                     heartbeat_s: float = 15.0) -> AsyncIterator[bytes]:
        """Yield encoded lines with seq > since; heartbeats while idle."""
        position = max(since, 0)
        while True:
            while position < len(self._lines):
                position += 1
                yield self._lines[position - 1]
            if self._closed or not follow:
                return
            waiter = self._changed
            with anyio.move_on_after(heartbeat_s) as scope:
                await waiter.wait()
            if scope.cancelled_caught:
                yield heartbeat_line(self.run_id, position)


def heartbeat_line(run_id: str, seq: int) -> bytes:
    return _encoder.encode(Event(seq=seq, ts=utc_now(), run_id=run_id, type="heartbeat")) + b"\n"


def _read_whole(path: Path, since: int = 0) -> list[tuple[bytes, Event]]:
    """(line, event) for each whole event after `since`, decoded once; torn lines skipped."""
    if not path.exists():
        return []
    out = []
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                event = _decoder.decode(raw)
            except msgspec.DecodeError:
                continue  # a torn last line after a crash
            if event.seq > since:
                out.append((raw, event))
    return out


def read_event_lines(path: Path, since: int = 0) -> list[bytes]:
    """Replay a finished run's events from disk (after a daemon restart)."""
    return [raw if raw.endswith(b"\n") else raw + b"\n" for raw, _ in _read_whole(path, since)]


def read_events(path: Path) -> list[Event]:
    """Every whole event on disk, in file order; torn lines after a crash are skipped."""
    return [event for _, event in _read_whole(path)]


def append_event(path: Path, run_id: str, seq: int, type_: str, data: dict[str, Any],
                 scrub: Callable[[bytes], bytes] | None = None) -> Event:
    """Append one event to a log that no EventLog holds open (a run a dead daemon left).

    A torn last line (the crash cut a write) is ended first, so the new event is whole."""
    event = Event(seq=seq, ts=utc_now(), run_id=run_id, type=type_, data=data)
    line = _encoder.encode(event) + b"\n"
    if scrub is not None:
        line = scrub(line)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return event
