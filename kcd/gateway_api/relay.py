"""The hand-over between a turn in flight and a passthrough stream to the client.

The gateway's task feeds it (`chunk` for every text delta, `finish`/`fail` at
the end) and, as its `AttemptTap`, tells it when each attempt starts. The
writer takes text out (`take`) and sends it. The moment the writer takes text
of an attempt, that attempt is *committed*: its bytes are on their way to the
client, so if it fails the gateway must stop there (no retry or fallback can
be spliced onto text the client already has). Text the writer has not taken
when its attempt fails is dropped when the next attempt starts: a failure
before the first byte reaches the client falls back transparently.

Both sides run on one event loop; every method is synchronous, so the
commit check and the take can never interleave.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from kcd.providers.dispatcher import ChainEntry, Served

__all__ = ["Relay"]


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

    # ---- the gateway's side (AttemptTap and on_chunk) ----------------------------

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
