"""What the gateway records about one OpenAI-endpoint request: every attempt.

One `RequestObserver` per request (a `CallObserver` for `Dispatcher.complete`).
Each attempt, primary, retry and fallback alike, becomes an `llm.attempt`
telemetry event whose `run_id` is the request's id (the envelope has no other
id field), with the client and the model name asked for in `attrs`
(`kylecode.request_id`, `kylecode.client`, `kylecode.model`, `kylecode.source`),
and a sample in the daemon's live metrics, exactly as runs record theirs. It
also adds up the retry waits, so the overhead the client is told excludes
time the dispatcher deliberately slept.
"""

from __future__ import annotations

import re

from kcd.observe.prometheus import DaemonMetrics
from kcd.observe.telemetry import BreakerSkip, Fallback, TelemetrySink, attempt_event
from kcd.providers.dispatcher import AttemptRecord

__all__ = ["RequestObserver", "SOURCE"]

SOURCE = "openai_api"  # `kylecode.source` of endpoint attempts: a telemetry value, kept as it was
_ALL_OPEN_WAIT = re.compile(r"All routes are open; waiting ([0-9.]+)s ")


class RequestObserver:
    __slots__ = ("request_id", "client", "peer_uid", "model", "telemetry", "live", "attempts", "failed",
                 "upstream_s", "waited_s")

    def __init__(self, request_id: str, client: str, peer_uid: int | None, model: str,
                 telemetry: TelemetrySink | None, live: DaemonMetrics | None):
        self.request_id = request_id
        self.client = client
        self.peer_uid = peer_uid
        self.model = model
        self.telemetry = telemetry
        self.live = live
        self.attempts = 0  # finished attempts
        self.failed = 0  # failed attempts (wasted upstream calls)
        self.upstream_s = 0.0  # time inside finished attempts
        self.waited_s = 0.0  # backoff and Retry-After waits between attempts

    async def attempt(self, rec: AttemptRecord) -> None:
        a = rec.attempt
        failure = a.failure
        self.attempts += 1
        self.upstream_s += a.latency_s
        if failure is not None:
            self.failed += 1
            if rec.next_delay_s:
                self.waited_s += rec.next_delay_s
        if self.telemetry is not None:
            event = attempt_event(rec, run_id=self.request_id, turn=None, peer_uid=self.peer_uid)
            event.attrs["kylecode.source"] = SOURCE
            event.attrs["kylecode.request_id"] = self.request_id
            event.attrs["kylecode.client"] = self.client
            event.attrs["kylecode.model"] = self.model
            self.telemetry.emit(event)
        if self.live is not None:
            route = rec.entry.route
            usage = a.response.usage if a.response is not None else None
            details = failure.details if failure is not None else {}
            self.live.attempt(
                route.id, route.provider, route.model, ok=failure is None,
                error_type=failure.classification if failure else None, duration_s=a.latency_s,
                ttft_s=a.ttft_s if a.streamed else None,
                input_tokens=usage.prompt_tokens if usage else None,
                output_tokens=usage.completion_tokens if usage else None, retry=rec.kind == "retry",
                html=bool(details.get("html_detected")), status_code=a.status_code)

    async def marker(self, prefix: str, text: str) -> None:
        if prefix == "circuit-open":
            # The dispatcher sleeps until a route half-opens: not our own overhead either.
            # (The marker is the only report of that wait; its text is the dispatcher's.)
            m = _ALL_OPEN_WAIT.match(text)
            if m:
                self.waited_s += float(m.group(1))

    async def fallback(self, from_route: str, to_route: str, reason: str) -> None:
        if self.telemetry is not None:
            self.telemetry.emit(Fallback(run_id=self.request_id, route=from_route, peer_uid=self.peer_uid,
                                         from_route=from_route, to_route=to_route, reason=reason))
        if self.live is not None:
            self.live.fallback(from_route, to_route, reason)

    async def circuit_skip(self, route: str, reason: str, reopens_in_s: float | None) -> None:
        if self.telemetry is not None:
            self.telemetry.emit(BreakerSkip(run_id=self.request_id, route=route, peer_uid=self.peer_uid,
                                            reason=reason, reopens_in_s=reopens_in_s))
        if self.live is not None:
            self.live.circuit_skip(route)

    async def route_skipped(self, route: str, reason: str) -> None:
        pass  # visible in the aggregate failure if no route serves

    async def stream_disabled(self, route: str, reason: str) -> None:
        pass  # per request only: the next request streams again (probes decide for longer)
