"""A client that hangs up stops the turn it started, and the record says so.

A buffered answer (JSON, or `buffer`-mode SSE) sends nothing until the turn
ends, so nothing would notice a client that left: the dispatcher would go on
retrying and falling back for the whole turn deadline, spending upstream calls
on an answer nobody reads. `until_disconnect` runs the turn beside a watch on
the ASGI receive channel and cancels it (one cancel scope) the moment
`http.disconnect` arrives. `record_disconnect` then writes what was cut short:
an `llm.attempt` whose outcome is `client_disconnected`, for the attempt in
flight or, between attempts, for the one that will now never be sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import anyio

from kcd.gateway.metrics import EndpointMetrics
from kcd.gateway.observer import SOURCE, RequestObserver
from kcd.observe.telemetry import LlmAttempt, genai_provider_name
from kcd.providers.dispatcher import AttemptTap, ChainEntry

__all__ = ["CLIENT_DISCONNECTED", "DISCONNECTED", "DisconnectWatch", "InFlight", "record_disconnect",
           "until_disconnect"]

CLIENT_DISCONNECTED = "client_disconnected"
T = TypeVar("T")
Receive = Callable[[], Awaitable[dict[str, Any]]]


class _Disconnected:
    def __repr__(self) -> str:
        return "DISCONNECTED"


DISCONNECTED = _Disconnected()


async def until_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> T | _Disconnected:
    """`work()`'s result, or DISCONNECTED if the client left first (work is then cancelled).

    Call only once the request body has been read: from then on receive() returns
    only when the client disconnects (or the response is complete, which cannot
    happen before `work` returns). Exceptions of `work` propagate unwrapped.

    The watch is a bare asyncio task beside `work` (the daemon runs anyio on asyncio),
    not an anyio task group: a group's spawn, and its cancel scope's cancel (which
    formats the task's repr into the cancel message), cost more CPU per request than
    the rest of this module (docs/benchmarks.md §5). Stopping the watch is one
    `Task.cancel()`; only a real disconnect cancels a scope.
    """
    with anyio.CancelScope() as scope:
        watcher = asyncio.get_running_loop().create_task(_watch(receive, scope))
        try:
            return await work()
        finally:
            if watcher.done():
                if not watcher.cancelled():
                    watcher.result()  # a failed receive() is not swallowed
            else:
                watcher.cancel()
    return DISCONNECTED


async def _watch(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # a stray empty body part: keep watching
    scope.cancel()


Kind = Literal["primary", "retry", "fallback"]


class InFlight:
    """An `AttemptTap` that remembers which attempt is on the wire. Alone it never
    commits (a buffered answer reaches the client only once complete); wrapping a
    passthrough stream's tap it forwards to it."""

    __slots__ = ("primary", "entry", "number", "kind", "started_at", "_clock", "_inner")

    def __init__(self, primary: str, clock: Callable[[], float], inner: AttemptTap | None = None) -> None:
        self.primary = primary  # the chain's first route: the dispatcher's "primary" kind
        self.entry: ChainEntry | None = None
        self.number = 0
        self.kind: Kind = "primary"
        self.started_at = 0.0
        self._clock = clock
        self._inner = inner

    def started(self, entry: ChainEntry, number: int) -> None:
        route = entry.route.id
        if self.entry is not None and self.entry.route.id == route:
            self.kind = "retry"
        else:
            self.kind = "primary" if route == self.primary else "fallback"
        self.entry, self.number, self.started_at = entry, number, self._clock()
        if self._inner is not None:
            self._inner.started(entry, number)

    def committed(self) -> bool:
        return self._inner is not None and self._inner.committed()


class DisconnectWatch:
    """An ASGI receive that notes when it reported the client gone, for callers
    whose watch lives elsewhere (`PassthroughResponse`) but who record the cause."""

    __slots__ = ("_receive", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.gone = False

    async def receive(self) -> dict[str, Any]:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.gone = True
        return message


def record_disconnect(observer: RequestObserver, inflight: InFlight, chain: list[ChainEntry],
                      metrics: EndpointMetrics | None, mode: str, now: float) -> None:
    """Telemetry and metrics for a turn the client abandoned.

    `observer.attempts` counts finished attempts: if the last started one is past
    it, that attempt was cut off in flight; otherwise the turn was waiting (a
    backoff, a Retry-After, a breaker) and the record stands for the next attempt.
    """
    in_flight = inflight.entry is not None and inflight.number > observer.attempts
    entry = inflight.entry or chain[0]
    route = entry.route
    latency = now - inflight.started_at if in_flight else 0.0
    kind: Kind = inflight.kind if in_flight else ("retry" if observer.attempts else "primary")
    number = inflight.number if in_flight else observer.attempts + 1
    if observer.telemetry is not None:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": genai_provider_name(route.provider),
            "gen_ai.request.model": route.model,
            "kylecode.route": route.id,
            "kylecode.attempt": number,
            "error.type": CLIENT_DISCONNECTED,
            "kylecode.disconnect": "in_flight" if in_flight else "between_attempts",
            "kylecode.source": SOURCE,
            "kylecode.request_id": observer.request_id,
            "kylecode.client": observer.client,
            "kylecode.model": observer.model,
        }
        observer.telemetry.emit(LlmAttempt(
            run_id=observer.request_id, route=route.id, peer_uid=observer.peer_uid,
            attempt=number, kind=kind, stream=entry.stream, latency_s=round(latency, 6), outcome=CLIENT_DISCONNECTED,
            error_type=CLIENT_DISCONNECTED, decision=CLIENT_DISCONNECTED, attrs=attrs))
    if observer.live is not None and in_flight:  # a real upstream call was cut off
        observer.live.attempt(route.id, route.provider, route.model, ok=False, error_type=CLIENT_DISCONNECTED,
                              duration_s=latency, ttft_s=None, input_tokens=None, output_tokens=None,
                              retry=kind == "retry", html=False, status_code=None)
    if metrics is not None:
        metrics.client_disconnected(observer.model, mode)
