"""What a run records about its provider calls: one `CallObserver` per run.

Per attempt (primary, retry and fallback alike, failures a fallback recovered
included): `meta/requests/turn_<N>_attempt_<k>.json`,
`raw/responses/turn_<N>_attempt_<k>.json` (+ raw/HTML excerpts and a base64
body for failures), `errors/turn_<N>.json` (every failed attempt of the turn,
with its classification and the retry schedule), an `llm.attempt` event and
the run's metrics. Policy markers go to the transcript and the event stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kcd.observe.conversation import Conversation
from kcd.observe.eventlog import EventLog, utc_now
from kcd.observe.rundir import RunDir
from kcd.observe.prometheus import DaemonMetrics
from kcd.observe.run_metrics import RunMetrics
from kcd.observe.telemetry import BreakerSkip, Fallback, TelemetrySink, attempt_event
from kcd.providers.dispatcher import AttemptRecord


class RunCallObserver:
    def __init__(self, rundir: RunDir, events: EventLog, conversation: Conversation,
                 metrics: RunMetrics, turn: Callable[[], int], *, telemetry: TelemetrySink | None = None,
                 live: DaemonMetrics | None = None, run_id: str | None = None, peer_uid: int | None = None):
        self.rundir = rundir
        self.telemetry = telemetry
        self.live = live
        self.run_id = run_id
        self.peer_uid = peer_uid
        self.events = events
        self.conversation = conversation
        self.metrics = metrics
        self._turn = turn
        self._errors: dict[int, list[dict[str, Any]]] = {}

    async def attempt(self, rec: AttemptRecord) -> None:
        turn, k, a = self._turn(), rec.number, rec.attempt
        route = rec.entry.route.id
        failure = a.failure
        await self.rundir.write_json(f"meta/requests/turn_{turn}_attempt_{k}.json", {
            "turn": turn, "attempt": k, "kind": rec.kind, "timestamp_utc": utc_now(),
            "route": route, "provider": rec.entry.route.provider, "model": rec.entry.route.model,
            "endpoint": a.url, "stream": a.stream_requested,
            "tool_count": a.body_excerpt.count('"type":"function"'),
            "request": {"headers": a.request_headers, "body_excerpt": a.body_excerpt,
                        "body_length": a.body_length, "body_truncated": a.body_length > len(a.body_excerpt)},
            "status_code": a.status_code, "request_id": a.request_id, "latency": round(a.latency_s, 6)})
        details = failure.details if failure is not None else {}
        response_record = {
            "turn": turn, "attempt": k, "route": route, "ok": failure is None,
            "status_code": a.status_code, "content_type": a.content_type, "headers": a.response_headers,
            "request_id": a.request_id, "streamed": a.streamed, "latency_s": round(a.latency_s, 6),
            "ttft_s": a.ttft_s, "sse_events": a.events, "sse_comments": a.comments,
            "no_terminator": a.no_terminator,
            "classification": failure.classification if failure else None,
            "html_detected": bool(details.get("html_detected")),
        }
        base = f"raw/responses/turn_{turn}_attempt_{k}"
        await self.rundir.write_json(f"{base}.json", response_record)
        if failure is not None:
            if details.get("raw_excerpt") or a.raw_excerpt:
                await self.rundir.write_text(f"{base}.raw_excerpt.txt", details.get("raw_excerpt") or a.raw_excerpt)
            if details.get("html_excerpt"):
                await self.rundir.write_text(f"{base}.html_excerpt.txt", details["html_excerpt"])
            if details.get("raw_body_b64"):
                await self.rundir.write_text(f"{base}.body.b64", details["raw_body_b64"])
            await self._record_error(turn, rec)

        usage = a.response.usage if a.response is not None else None
        self.metrics.attempt(
            route, ok=failure is None, status=a.status_code, latency_s=a.latency_s, streamed=a.streamed,
            retry=rec.kind == "retry", html=bool(details.get("html_detected")),
            error_class=failure.classification if failure else None, ttft_s=a.ttft_s,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            stream_as_json=failure is None and a.stream_requested and not a.streamed)
        if self.telemetry is not None:
            self.telemetry.emit(attempt_event(rec, run_id=self.run_id, turn=turn, peer_uid=self.peer_uid),
                                self.rundir.path)
        if self.live is not None:
            self.live.attempt(
                route, rec.entry.route.provider, rec.entry.route.model, ok=failure is None,
                error_type=failure.classification if failure else None, duration_s=a.latency_s,
                ttft_s=a.ttft_s if a.streamed else None,
                input_tokens=usage.prompt_tokens if usage else None,
                output_tokens=usage.completion_tokens if usage else None, retry=rec.kind == "retry",
                html=bool(details.get("html_detected")), status_code=a.status_code)
        self.events.emit("llm.attempt", turn=turn, attempt=k, kind=rec.kind, route=route,
                         ok=failure is None, status=a.status_code, content_type=a.content_type,
                         request_id=a.request_id, latency_s=round(a.latency_s, 4), stream=a.streamed,
                         error=failure.classification if failure else None,
                         retry_in_s=rec.next_delay_s, breaker=rec.breaker_state)

    async def _record_error(self, turn: int, rec: AttemptRecord) -> None:
        failure = rec.attempt.failure
        assert failure is not None
        decision = rec.decision
        entry = {
            "attempt": rec.number, "kind": rec.kind, "route": rec.entry.route.id,
            "error": str(failure), "error_type": failure.classification,
            "status_code": failure.status_code,
            "hint": (decision.hint if decision else None) or failure.details.get("hint"),
            "decision": {"retry_same_route": decision.retry_same_route, "fall_over": decision.fall_over,
                         "counted_by_breaker": decision.counted, "reason": decision.reason} if decision else None,
            "retry_schedule": {"next_delay_s": rec.next_delay_s,
                               "retry_after_s": decision.retry_after_s if decision else None},
            "breaker_state": rec.breaker_state,
            "details": {k: v for k, v in failure.details.items() if k != "raw_body_b64"},
        }
        errors = self._errors.setdefault(turn, [])
        errors.append(entry)
        await self.rundir.write_json(f"errors/turn_{turn}.json", {
            "turn": turn, "error": entry["error"], "error_type": entry["error_type"],
            "hint": entry["hint"], "attempts": errors})

    async def marker(self, prefix: str, text: str) -> None:
        await self.conversation.marker(prefix, text)
        self.events.emit("policy", marker=prefix, text=text, turn=self._turn())

    async def fallback(self, from_route: str, to_route: str, reason: str) -> None:
        self.metrics.fallback(from_route, to_route, reason)
        if self.telemetry is not None:
            self.telemetry.emit(Fallback(run_id=self.run_id, route=from_route, turn=self._turn(),
                                         peer_uid=self.peer_uid, from_route=from_route, to_route=to_route,
                                         reason=reason), self.rundir.path)
        if self.live is not None:
            self.live.fallback(from_route, to_route, reason)
        await self.marker("fallback_route", f"from={from_route} to={to_route} reason={reason} "
                                            f"(Selected fallback route '{to_route}' for '{from_route}' "
                                            f"after '{reason}'.)")

    async def circuit_skip(self, route: str, reason: str, reopens_in_s: float | None) -> None:
        self.metrics.circuit_skip(route)
        if self.telemetry is not None:
            self.telemetry.emit(BreakerSkip(run_id=self.run_id, route=route, turn=self._turn(),
                                            peer_uid=self.peer_uid, reason=reason,
                                            reopens_in_s=reopens_in_s), self.rundir.path)
        if self.live is not None:
            self.live.circuit_skip(route)
        reopen = f", reopens in {reopens_in_s:.1f}s" if reopens_in_s is not None else ""
        await self.marker("circuit-open", f"Skipping direct call for route {route} ({reason}{reopen}); "
                                          "attempting fallback.")

    async def route_skipped(self, route: str, reason: str) -> None:
        await self.marker("routing", f"Skipping route '{route}': {reason}.")

    async def stream_disabled(self, route: str, reason: str) -> None:
        self.metrics.stream_override(route, reason)
        provider = route.split("/", 1)[0]
        await self.marker("streaming-disabled", f"Provider {provider} ({route}) rejected streaming: {reason}. "
                                                "Falling back to non-streaming.")
        await self.marker("stream-policy", f"Disabled streaming for route '{route}' for the rest of the "
                                           f"run after {reason}.")
