"""Passthrough streams: text deltas go to the client as the turn produces them.

`Relay` is the hand-over between the turn in flight and the stream's writer.
The dispatcher's task feeds it (`chunk` for every text delta, `finish`/`fail`
at the end) and, as its `AttemptTap`, tells it when each attempt starts. The
writer takes text out (`take`) and sends it. The moment the writer takes text
of an attempt, that attempt is *committed*: its bytes are on their way to the
client, so if it fails the dispatcher must stop there (no retry or fallback
can be spliced onto text the client already has). Text the writer has not
taken when its attempt fails is dropped when the next attempt starts: a
failure before the first byte reaches the client falls back transparently.
Both sides run on one event loop; every method is synchronous, so the commit
check and the take can never interleave.

`PassthroughResponse` is the writer: SSE whose status and headers wait for the
first text. The turn runs in a task; until some of its text is sent, any
failure falls back transparently, and a turn that fails everywhere still gets
a real HTTP error status. After text has been sent, a failure ends the stream
with one in-band error event (an `error` object and `finish_reason: "error"`)
and no `[DONE]`, so no client can take a truncated answer for a complete one.
A client that disconnects cancels the turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

from kcd.gateway.errors import OpenAIError
from kcd.gateway.responses import SSE_HEADERS, start_message
from kcd.gateway.wire import ChunkWriter
from kcd.providers.dispatcher import ChainEntry, Served
from kcd.server.http import Response

__all__ = ["PassthroughResponse", "Relay", "StreamCall"]


class Relay:
    __slots__ = ("pending", "entry", "number", "started_at", "first_chunk_at", "served", "failure",
                 "_committed", "_wake", "_clock")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.pending: list[str] = []
        self.entry: ChainEntry | None = None  # the attempt in flight
        self.number = 0
        self.started_at = 0.0
        self.first_chunk_at: float | None = None
        self.served: Served | None = None
        self.failure: BaseException | None = None
        self._committed = False
        self._wake = anyio.Event()
        self._clock = clock

    # ---- the dispatcher's side (AttemptTap and on_chunk) -------------------------

    def started(self, entry: ChainEntry, number: int) -> None:
        self.entry, self.number = entry, number
        self.started_at = self._clock()
        self.first_chunk_at = None
        self.pending.clear()  # a failed attempt nobody saw: forget its text

    def committed(self) -> bool:
        return self._committed

    def chunk(self, text: str) -> None:
        if self.first_chunk_at is None:
            self.first_chunk_at = self._clock()
        self.pending.append(text)
        self._wake.set()

    def finish(self, served: Served) -> None:
        self.served = served
        self._wake.set()

    def fail(self, exc: BaseException) -> None:
        self.failure = exc
        self._wake.set()

    # ---- the writer's side -----------------------------------------------------

    async def wait(self) -> None:
        await self._wake.wait()
        self._wake = anyio.Event()

    def take(self) -> list[str]:
        """Text to send now; taking any commits the attempt in flight."""
        texts = self.pending
        if not texts:
            return texts
        self.pending = []
        self._committed = True
        return texts

    @property
    def streamed(self) -> bool:
        return self._committed


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
                    await send(start_message(200, "text/event-stream", headers))
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
                    await send(start_message(error.status, "application/json", error.headers, len(payload)))
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
        await send(start_message(200, "text/event-stream", {**SSE_HEADERS, **call.served_headers(served)},
                                 len(payload)))
        await send({"type": "http.response.body", "body": payload})
