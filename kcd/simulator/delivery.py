"""HOW a simulator reply reaches the client: the seam for fault injection.

The app resolves the behaviour's `Reply`, wraps the request in an `Exchange`
and hands both to a `Delivery`. The default, `WellFormed`, answers like a
healthy OpenAI-compatible server. A fault layer is another `Delivery` (or one
wrapping `WellFormed`) that changes the transport only: a status code, an HTML
page, a stream cut after N chunks, a stall, a bad chunk. It can reuse
`Exchange.completion()` / `Exchange.chunks()` to start from the real answer,
and `Exchange.seq` (this model's request number) to fail "once, then OK".

If the client disconnects, the app cancels the delivery, so stalls end with
their connection. `Exchange.abort()` drops the connection itself (a TCP reset),
before or after the headers. The fault catalogue lives in `faults`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import anyio
import msgspec

from kcd.simulator import wire
from kcd.simulator.behaviours import Reply

__all__ = ["Delivery", "Exchange", "WellFormed"]

ASGISend = Callable[[dict[str, Any]], Awaitable[None]]
Abort = Callable[[], None]
ABORT_SETTLE_S = 5.0  # after an abort, how long to wait for the app to notice the disconnect
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
        "extra_headers",
        "credential",
        "_abort",
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
        extra_headers: Sequence[tuple[str, str]] = (),
        abort: Abort | None = None,
        credential: str | None = None,
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
        self.extra_headers = tuple(extra_headers)  # on every response start (e.g. x-kc-sim-fault)
        self._abort = abort
        self.credential = credential  # the presented API key, for the key-echo fault only

    # shapes --------------------------------------------------------------

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.request_id}"

    def completion(
        self, reply: Reply, *, usage: bool = True, arguments: list[str] | None = None
    ) -> dict[str, Any]:
        return wire.completion(
            reply,
            model=self.model,
            completion_id=self.completion_id,
            created=self.created,
            ids=reply.call_ids or wire.call_ids(self.request, len(reply.tool_calls)),
            usage=wire.usage_for(self.request, reply) if usage else None,
            arguments=arguments or reply.raw_arguments or None,
        )

    def chunks(
        self, reply: Reply, *, usage: bool | None = None, arguments: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """`usage` None: a usage chunk only if the request asked for one."""
        return wire.chunks(
            reply,
            model=self.model,
            completion_id=self.completion_id,
            created=self.created,
            ids=reply.call_ids or wire.call_ids(self.request, len(reply.tool_calls)),
            usage=wire.usage_for(self.request, reply)
            if (self.include_usage if usage is None else usage)
            else None,
            arguments=arguments or reply.raw_arguments or None,
        )

    def chunk_head(self) -> dict[str, Any]:
        """The fields every chunk of this completion carries."""
        return {"id": self.completion_id, "object": "chat.completion.chunk",
                "created": self.created, "model": self.model}

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
        raw.extend((k.lower().encode(), v.encode()) for k, v in (*self.extra_headers, *headers))
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def write(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def abort(self) -> None:
        """Drop the connection with a TCP reset (nothing more reaches the client),
        then wait for the app to see the disconnect and cancel this delivery.

        Without a way to reach the socket (not served by uvicorn) it raises
        instead: the server then closes the connection, or answers 500 if no
        headers were sent yet.
        """
        if self._abort is None:
            raise ConnectionAbortedError("simulated connection reset: no transport to abort")
        self._abort()
        with anyio.move_on_after(ABORT_SETTLE_S):
            await anyio.sleep_forever()

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

