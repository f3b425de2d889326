"""What kcd and its Ray driver process say to each other.

One stream socket (a socketpair made by kcd, inherited by the driver); each
message is a 4-byte big-endian length, then a msgpack-encoded tagged Struct.
kcd → driver: `Turn`, `Cancel`, `Shutdown`. Driver → kcd: `Status` (at start
and on every liveness check), `TurnDone`. This module imports neither Ray nor
anything of the daemon's, so both sides share it.
"""

from __future__ import annotations

import struct
from typing import Any, Literal, Union

import msgspec

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings

__all__ = ["Cancel", "FrameBuffer", "Message", "NodeInfo", "Release", "Shutdown", "Status", "Turn", "TurnDone",
           "decode", "encode"]

MAX_FRAME = 256 * 1024 * 1024  # a turn's results carry tool outputs, never workspaces
_HEADER = struct.Struct(">I")

PlaneState = Literal["starting", "ready", "degraded"]


class NodeInfo(msgspec.Struct, omit_defaults=True):
    node_id: str
    address: str
    alive: bool
    cpus_total: float = 0.0
    cpus_free: float = 0.0
    resources: dict[str, float] = {}  # custom resources (not CPU/GPU/memory/object store)
    runs: int = 0  # runs whose workspace copy is there (where their last turn ran)
    local: bool = False  # the driver's own node (kcd's host)


class Status(msgspec.Struct, tag="status", omit_defaults=True):
    """driver -> kcd: the plane's state and its nodes."""

    state: PlaneState
    detail: dict[str, Any] = {}  # address, gcs_address, ray_version, error, hint, ...
    nodes: list[NodeInfo] = []


class Turn(msgspec.Struct, tag="turn"):
    """kcd -> driver: run these tool calls on the run's workspace."""

    id: int
    workspace: str
    calls: list[ToolInvocation]
    settings: ToolSettings


class TurnDone(msgspec.Struct, tag="done", omit_defaults=True):
    """driver -> kcd: a turn's outcomes, or why it has none."""

    id: int
    outcomes: list[ToolOutcome] | None = None
    error: str | None = None  # why the turn has no outcomes (the calls' effects are unknown)
    node_id: str | None = None
    resumed: bool = False  # its first node died; it ran again elsewhere from the last snapshot


class Cancel(msgspec.Struct, tag="cancel"):
    """kcd -> driver: cancel the turn with this id."""

    id: int


class Release(msgspec.Struct, tag="release"):
    """The run is over: forget its snapshot and remove its node's cache."""

    workspace: str


class Shutdown(msgspec.Struct, tag="shutdown"):
    """kcd -> driver: leave Ray and exit."""


Message = Union[Status, Turn, TurnDone, Cancel, Release, Shutdown]
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: msgspec.Struct) -> bytes:
    """One message as a length-prefixed msgpack frame."""
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


def decode(body: bytes) -> Message:
    return _decoder.decode(body)


class FrameBuffer:
    """Bytes in, whole messages out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[Message]:
        self._buf += chunk
        out: list[Message] = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            out.append(decode(bytes(self._buf[_HEADER.size:end])))
            del self._buf[:end]
        return out
