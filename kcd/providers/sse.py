"""Incremental Server-Sent Events parser (WHATWG "event stream interpretation").

Fed raw bytes as they arrive, in chunks of any size and split anywhere (inside a
line, a CRLF pair, a multi-byte character or the BOM), it returns each event as
soon as its terminating blank line has been seen. Rules followed:

- lines end in LF, CRLF or a lone CR; a UTF-8 BOM at the very start is dropped;
- a line starting with ``:`` is a comment (``: OPENROUTER PROCESSING``): never an
  event, but counted in ``comments`` so idle timers and diagnostics can see it;
- ``field:value`` with one leading space of the value removed, nothing else
  trimmed (content is byte-exact); a line without a colon is a field with an
  empty value; unknown fields are ignored;
- ``data`` lines of one event are joined with ``\\n``; an event is dispatched on
  a blank line only if it had at least one ``data`` line;
- ``id`` persists across events (the spec's last-event-id) and is ignored if it
  contains NUL; ``retry`` is used only if it is all ASCII digits.

Deviation, on purpose: ``close()`` dispatches an event whose lines were all
complete but whose closing blank line never came (servers that end with
``data: [DONE]\\n``). A final line cut off mid-way is still discarded, and its
length kept in ``discarded_tail``, so a stream cut inside a JSON payload reads
as truncated rather than as a malformed chunk.
"""

from __future__ import annotations

import msgspec

__all__ = ["SSEEvent", "SSEParser"]

_BOM = b"\xef\xbb\xbf"


class SSEEvent(msgspec.Struct, frozen=True, kw_only=True):
    event: str = "message"
    data: str
    id: str | None = None  # last event id in effect when dispatched
    retry: int | None = None  # reconnection time (ms) set by this event's block


class SSEParser:
    """Push parser: ``feed(bytes) -> [SSEEvent]``, then ``close() -> [SSEEvent]``."""

    __slots__ = (
        "_buf",
        "_skip_lf",
        "_bom_pending",
        "_data",
        "_event",
        "_retry",
        "last_id",
        "retry",
        "comments",
        "events",
        "bytes_fed",
        "discarded_tail",
    )

    def __init__(self) -> None:
        self._buf = b""  # bytes of the current, not yet terminated line
        self._skip_lf = False  # previous chunk ended in CR: a leading LF belongs to it
        self._bom_pending = True  # still at stream start, BOM may follow
        self._data: list[bytes] = []
        self._event = ""
        self._retry: int | None = None
        self.last_id: str | None = None
        self.retry: int | None = None  # latest valid retry value seen
        self.comments = 0
        self.events = 0
        self.bytes_fed = 0
        self.discarded_tail = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        self.bytes_fed += len(chunk)
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return []
        buf = self._buf + chunk if self._buf else chunk
        if self._bom_pending:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._buf = buf  # could still become a BOM
                return []
            self._bom_pending = False
            if buf.startswith(_BOM):
                buf = buf[3:]
        if b"\r" in buf:
            if buf[-1] == 0x0D:
                self._skip_lf = True  # the CR ends a line now; its LF may come next
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        if not lines:
            return []
        return self._lines(lines)

    def close(self) -> list[SSEEvent]:
        """End of stream: drop a cut-off last line, flush a complete pending event."""
        self.discarded_tail = len(self._buf)
        self._buf = b""
        self._skip_lf = False
        out: list[SSEEvent] = []
        if self._data:
            self._dispatch(out)
        return out

    # The loop below is the hot path: data lines are matched on bytes and decoded
    # once per event, other fields go through the general rule.
    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if line[:5] == b"data:":
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif not line:
                if data:
                    self._dispatch(out)
                    data = self._data
                else:
                    self._event = ""
                    self._retry = None
            elif line[0] == 0x3A:  # ":"
                self.comments += 1
            else:
                self._field(line)
        return out

    def _field(self, line: bytes) -> None:
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"data":  # "data" without a colon: an empty data line
            self._data.append(value)
        elif name == b"id":
            if b"\x00" not in value:
                self.last_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value and value.isdigit():
                self._retry = self.retry = int(value)
        # any other field is ignored, as the spec requires

    def _dispatch(self, out: list[SSEEvent]) -> None:
        data = self._data
        raw = data[0] if len(data) == 1 else b"\n".join(data)
        out.append(
            SSEEvent(
                event=self._event or "message",
                data=raw.decode("utf-8", "replace"),
                id=self.last_id,
                retry=self._retry,
            )
        )
        self.events += 1
        self._data = []
        self._event = ""
        self._retry = None
