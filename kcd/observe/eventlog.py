"""A run's event log: one ordered record, in memory, on disk and on the wire.

Every event gets the next `seq`, is kept in memory for followers, and is
appended to `meta/events.jsonl`. Followers replay from any `seq` and then wait
for new events, so a client that reconnects with `since=N` loses nothing.
"""

from __future__ import annotations

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


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventLog:
    def __init__(self, run_id: str, path: Path | None, scrub: Callable[[bytes], bytes] | None = None):
        self.run_id = run_id
        self._scrub = scrub
        self.path = path
        self._lines: list[bytes] = []
        self._changed = anyio.Event()
        self._closed = False
        self._fd: int | None = None
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
        """Record an event. Synchronous on purpose: seq order is emit order."""
        if self._closed:
            raise RuntimeError(f"event log of run {self.run_id} is closed")
        event = Event(seq=len(self._lines) + 1, ts=utc_now(), run_id=self.run_id, type=type_, data=data)
        line = _encoder.encode(event) + b"\n"
        if self._scrub is not None:
            line = self._scrub(line)
        self._lines.append(line)
        if self._fd is not None:
            # One small O_APPEND write per event (a few hundred bytes): cheaper
            # than a thread hop, and the line is whole on disk before followers see it.
            os.write(self._fd, line)
        self._notify()
        return event

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
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


def read_event_lines(path: Path, since: int = 0) -> list[bytes]:
    """Replay a finished run's events from disk (after a daemon restart)."""
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
                out.append(raw if raw.endswith(b"\n") else raw + b"\n")
    return out
