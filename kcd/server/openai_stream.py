"""Responses of the OpenAI endpoint that the control API's generic ones cannot express.

`VerbatimResponse`: a body the App's pattern scrubber must not touch. Answers
are model output the client asked for (code full of `api_key=` and `sk-`
examples); the endpoint removes the daemon's own secrets by exact value
before it builds one.

`PassthroughResponse`: SSE whose status and headers wait for the first text.
The turn runs in a task; until some of its text is sent, any failure falls
back transparently, and a turn that fails everywhere still gets a real HTTP
error status. After text has been sent, a failure ends the stream with one
in-band error event (an `error` object and `finish_reason: "error"`) and no
`[DONE]`, so no client can take a truncated answer for a complete one. A
client that disconnects cancels the turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

from kcd.gateway_api.errors import OpenAIError
from kcd.gateway_api.relay import Relay
from kcd.gateway_api.wire import ChunkWriter
from kcd.providers.dispatcher import Served
from kcd.server.http import Response

__all__ = ["PassthroughResponse", "StreamCall", "VerbatimResponse", "SSE_HEADERS"]

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _start(status: int, content_type: str, headers: dict[str, str], length: int | None = None) -> dict:
    raw = [(b"content-type", content_type.encode("latin-1"))]
    raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": status, "headers": raw}


class VerbatimResponse(Response):
    __slots__ = ("payload",)

    def __init__(self, payload: bytes, status: int = 200, content_type: str = "application/json",
                 headers: dict[str, str] | None = None):
        super().__init__(b"", status, content_type, headers)
        self.payload = payload

    async def send(self, send: Callable) -> None:
        headers = dict(self.headers)
        content_type = headers.pop("content-type")
        await send(_start(self.status, content_type, headers, len(self.payload)))
        await send({"type": "http.response.body", "body": self.payload})


class StreamCall(Protocol):
    """What a passthrough stream needs from the request it belongs to."""

    writer: ChunkWriter
    include_usage: bool

    def first_byte_headers(self, relay: Relay) -> dict[str, str]: ...
    def served_headers(self, served: Served) -> dict[str, str]: ...
    def final_writer(self, served: Served) -> ChunkWriter: ...
    def failed(self, exc: BaseException, after_text: bool) -> OpenAIError: ...
    def scrub(self, data: bytes) -> bytes: ...  # answers: the daemon's secrets by exact value
    def redact(self, data: bytes) -> bytes: ...  # errors: the full redactor


class PassthroughResponse(Response):
    __slots__ = ("call", "run", "receive", "clock", "started")

    def __init__(self, call: StreamCall, run: Callable[[Relay], Awaitable[Served]], receive: Callable,
                 clock: Callable[[], float]):
        super().__init__(b"", 200, "text/event-stream")
        self.call = call
        self.run = run
        self.receive = receive
        self.clock = clock
        self.started = False  # status and headers sent

    async def send(self, send: Callable) -> None:
        relay = Relay(self.clock)
        async with anyio.create_task_group() as tg:

            async def turn() -> None:
                try:
                    relay.finish(await self.run(relay))
                except Exception as exc:  # ProviderFailure, or a bug: reported to the client either way
                    relay.fail(exc)

            async def watch_disconnect() -> None:
                # The body is read; receive() now returns only when the client leaves
                # (or our response is complete, when cancelling is harmless).
                if (await self.receive())["type"] == "http.disconnect":
                    tg.cancel_scope.cancel()

            tg.start_soon(turn)
            tg.start_soon(watch_disconnect)
            await self._write(relay, send)
            tg.cancel_scope.cancel()

    async def _write(self, relay: Relay, send: Callable) -> None:
        call, writer = self.call, self.call.writer
        while True:
            await relay.wait()
            texts = relay.take()
            if texts:
                data = b"".join(map(writer.content, texts))
                if not self.started:
                    headers = {**SSE_HEADERS, **call.first_byte_headers(relay)}
                    await send(_start(200, "text/event-stream", headers))
                    self.started = True
                    data = writer.role() + data
                await send({"type": "http.response.body", "body": call.scrub(data), "more_body": True})
            if relay.served is not None:
                await self._finish(relay.served, send)
                return
            if relay.failure is not None:
                error = call.failed(relay.failure, self.started)
                if self.started:
                    event = call.redact(writer.error(error.detail()))
                    await send({"type": "http.response.body", "body": event})
                else:
                    payload = call.redact(error.body())
                    await send(_start(error.status, "application/json", error.headers, len(payload)))
                    await send({"type": "http.response.body", "body": payload})
                return

    async def _finish(self, served: Served, send: Callable) -> None:
        call = self.call
        final = call.final_writer(served)
        if self.started:  # the text is out: tool calls, finish reason, usage, [DONE]
            tail = final.answer(served.response, include_usage=call.include_usage, role=False,
                                content=False)
            await send({"type": "http.response.body", "body": call.scrub(tail)})
            return
        # Nothing was streamed (the serving attempt was not, or had no text): all at once.
        payload = call.scrub(final.answer(served.response, include_usage=call.include_usage))
        await send(_start(200, "text/event-stream", {**SSE_HEADERS, **call.served_headers(served)},
                          len(payload)))
        await send({"type": "http.response.body", "body": payload})
