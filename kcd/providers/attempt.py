"""Records of one provider attempt: its deadlines (`Timeouts`) and what it did (`Attempt`)."""

from __future__ import annotations

from typing import Any

import msgspec

from kcd.providers.errors import ProviderFailure
from kcd.providers.types import ChatResponse

__all__ = ["Attempt", "Timeouts"]


class Timeouts(msgspec.Struct, frozen=True, kw_only=True):
    """Per-attempt deadlines in seconds (how each is armed: `kcd.providers.openai_compat`)."""

    connect: float = 10.0  # TCP/TLS connect and waiting for a pooled connection
    write: float = 30.0  # sending the request body
    ttft: float = 45.0  # streams: until the first content event
    idle: float = 30.0  # gap between any two reads once the headers are in
    progress: float | None = 60.0  # gap between content events after the first; None: off
    total: float = 600.0  # the whole attempt


class Attempt(msgspec.Struct, kw_only=True):
    """What one HTTP attempt did; `failure` is None exactly when `response` is set."""

    route: str
    url: str
    stream_requested: bool
    streamed: bool = False  # the body was read as an SSE stream
    request_headers: dict[str, str] = {}  # as sent, credentials masked
    body_excerpt: str = ""  # first 2048 chars of the JSON body sent
    body_length: int = 0
    response: ChatResponse | None = None
    partial: ChatResponse | None = None  # a failed stream's content so far (wasted tokens)
    failure: ProviderFailure | None = None
    status_code: int | None = None
    content_type: str | None = None
    response_headers: dict[str, str] = {}  # lower-cased, credential headers dropped
    request_id: str | None = None
    latency_s: float = 0.0
    ttft_s: float | None = None
    max_gap_s: float | None = None  # longest gap between reads of the body
    raw_excerpt: str | None = None  # non-JSON bodies; head of a failed stream
    events: int = 0  # SSE events dispatched
    comments: int = 0  # SSE comment lines (keep-alives)
    no_terminator: bool = False  # stream had a finish reason but no [DONE]

    @property
    def ok(self) -> bool:
        return self.failure is None and self.response is not None

    def to_record(self) -> dict[str, Any]:
        """JSON-ready record (the failure as its dict)."""
        out = {f: getattr(self, f) for f in self.__struct_fields__ if f != "failure"}
        out = msgspec.to_builtins(out)
        out["failure"] = self.failure.to_dict() if self.failure is not None else None
        return out
