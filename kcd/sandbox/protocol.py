"""Frames between a tool host's client and the call's supervisor.

The helper's own channel (a SOCK_SEQPACKET pair) carries one tiny message per
call, `b"run"`, with three descriptors: the call's control socket (a
SOCK_STREAM pair) and the write ends of its stdout and stderr pipes. On the
control socket both sides exchange frames: a 4-byte big-endian length, then
JSON. Client → supervisor: the request, then `{"op": "kill"}` (cancel) or
`{"op": "finish"}` (the command exited and its output is drained). Supervisor →
client: `{"event": "exited", ...}` when the command's first process exits, then
`{"event": "done", ...}` with the outcome, after every process has been killed.

Standard library only: the helper imports this without site-packages.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

__all__ = ["FrameReader", "MAX_FRAME", "send_frame"]

MAX_FRAME = 64 * 1024 * 1024  # a request carries the command text; 64 MiB is far past any sane one
_HEADER = struct.Struct(">I")


def send_frame(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


class FrameReader:
    """Incremental frame decoding for a socket read when it is readable."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.closed = False

    def feed(self, sock: socket.socket) -> list[Any]:
        """Read what is available (one recv) and return the complete frames; sets `closed` at EOF."""
        try:
            chunk = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
            return []
        self._buf += chunk
        frames: list[Any] = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
            if len(self._buf) < _HEADER.size + size:
                break
            frames.append(json.loads(self._buf[_HEADER.size : _HEADER.size + size]))
            del self._buf[: _HEADER.size + size]
        return frames
