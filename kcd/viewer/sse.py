"""A run's event stream as Server-Sent Events, for a browser that may leave at any time.

Each event line becomes one SSE message (`id:` its seq, so a reconnecting EventSource resumes
with Last-Event-ID; `data:` the event's JSON); heartbeats become comments; the end of the
stream is an `end` event, so the page stops reconnecting. The response also watches the
connection: a closed tab detaches its follower at once instead of at the run's end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import msgspec

from kcd.api.types import Event
from kcd.server.http import StreamResponse

__all__ = ["FollowingResponse", "sse_messages"]

_decoder = msgspec.json.Decoder(Event)


async def sse_messages(lines: AsyncIterator[bytes], scrub: Callable[[bytes], bytes]) -> AsyncIterator[bytes]:
    """SSE messages from NDJSON event lines (`RunManager.follow`); torn lines are skipped."""
    try:
        async for line in lines:
            try:
                event = _decoder.decode(line)
            except msgspec.DecodeError:
                continue
            if event.type == "heartbeat":
                yield b": heartbeat\n\n"
                continue
            yield b"id: %d\ndata: %s\n\n" % (event.seq, scrub(line.strip()).replace(b"\n", b" "))
        yield b"event: end\ndata: {}\n\n"
    finally:
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                await aclose()  # only this follower stops; the run goes on


class FollowingResponse(StreamResponse):
    """A StreamResponse that stops when the client disconnects, not only when it runs dry."""

    __slots__ = ("receive",)

    def __init__(self, chunks: AsyncIterator[bytes], receive: Callable, *, content_type: str,
                 headers: dict[str, str] | None = None):
        super().__init__(chunks, content_type=content_type, headers=headers)
        self.receive = receive

    async def send(self, send: Callable) -> None:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                # A GET's (empty) body comes first; after it receive() returns only on disconnect.
                while (await self.receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await super().send(send)
            tg.cancel_scope.cancel()
