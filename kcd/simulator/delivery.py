"""HOW a simulator reply reaches the client: the seam for fault injection.

The app resolves the behaviour's `Reply`, wraps the request in an `Exchange`
and hands both to a `Delivery`. The default, `WellFormed`, answers like a
healthy OpenAI-compatible server. A fault layer is another `Delivery` (or one
wrapping `WellFormed`) that changes the transport only: a status code, an HTML
page, a stream cut after N chunks, a stall, a bad chunk. It can reuse
`Exchange.completion()` / `Exchange.chunks()` to start from the real answer,
and `Exchange.seq` (this model's request number) to fail "once, then OK".

If the client disconnects, the app cancels the delivery, so stalls end with
their connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import msgspec

from kcd.simulator import wire
from kcd.simulator.behaviours import Reply

__all__ = ["Delivery", "Exchange", "WellFormed"]

ASGISend = Callable[[dict[str, Any]], Awaitable[None]]
_ENCODER = msgspec.json.Encoder()


class Exchange:
    """One chat request in flight: what was asked, and the means to answer."""

    __slots__ = (
        "_send",
        "request",
        "model",
        "behaviour",
        "request_id",
        "seq",
        "stream",
        "include_usage",
        "created",
        "started",
    )

    def __init__(
        self,
        send: ASGISend,
        request: dict[str, Any],
        *,
        model: str,
        behaviour: str,
        request_id: str,
        seq: int,
        created: int,
    ) -> None:
        self._send = send
        self.request = request
        self.model = model
        self.behaviour = behaviour
        self.request_id = request_id
        self.seq = seq  # 1-based count of requests for this model, this one included
        self.stream = request.get("stream") is True
        options = request.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self.created = created
        self.started = False

    # shapes --------------------------------------------------------------

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.request_id}"

    def completion(self, reply: Reply) -> dict[str, Any]:
        return wire.completion(
            reply,
            model=self.model,
            completion_id=self.completion_id,
            created=self.created,
            ids=wire.call_ids(self.request, len(reply.tool_calls)),
            usage=wire.usage_for(self.request, reply),
        )

    def chunks(self, reply: Reply) -> list[dict[str, Any]]:
        return wire.chunks(
            reply,
            model=self.model,
            completion_id=self.completion_id,
            created=self.created,
            ids=wire.call_ids(self.request, len(reply.tool_calls)),
            usage=wire.usage_for(self.request, reply) if self.include_usage else None,
        )

    # transport -----------------------------------------------------------

    async def start(
        self,
        status: int = 200,
        content_type: str = "text/event-stream",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Send the status line and headers (x-request-id always included)."""
        raw = [
            (b"content-type", content_type.encode()),
            (b"x-request-id", self.request_id.encode()),
        ]
        if content_type.startswith("text/event-stream"):
            raw.append((b"cache-control", b"no-cache"))
        raw.extend((k.lower().encode(), v.encode()) for k, v in headers)
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def write(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        await self.start(status, content_type, [*headers, ("content-length", str(len(body)))])
        await self.end(body)

    async def respond_json(
        self, status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        await self.respond(status, _ENCODER.encode(obj), "application/json", headers)


class Delivery(Protocol):
    async def deliver(self, exchange: Exchange, reply: Reply) -> None: ...


class WellFormed:
    """A healthy server: a JSON completion, or SSE chunks then ``[DONE]``."""

    async def deliver(self, exchange: Exchange, reply: Reply) -> None:
        if not exchange.stream:
            await exchange.respond_json(200, exchange.completion(reply))
            return
        await exchange.start()
        for chunk in exchange.chunks(reply):
            await exchange.write(wire.sse(chunk))
        await exchange.end(wire.DONE)

