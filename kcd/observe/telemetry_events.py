"""Typed telemetry records: the lines of the central JSONL and `meta/telemetry.jsonl`.

Every record is a msgspec Struct tagged on `event`. New types share a flat
envelope (`schema_version`, `ts`, `seq`, `host`, `pid`, `run_id`, `route`,
`turn`, `peer_uid`, `trace_id`, `span_id`) so a reader can filter any line
without knowing its type, and `llm.attempt` carries the OTel GenAI attribute
names in `attrs`, so an OTLP export is a pure mapping. `provider_metrics`
is the exception: it keeps the original's shape exactly (users parse it),
plus only `ts`, `run_id`, `route_id`, `circuit_skips` and `schema_version`.

The sink stamps `ts`, `seq`, `host` and `pid`; producers fill the rest.
Build simple events directly with keywords, e.g.
``RunStart(run_id=..., config_digest=config_digest(raw), route_chain=[...], executor="ray")``,
``Fallback(run_id=..., turn=3, from_route=a, to_route=b, reason="http_503")``,
``Probe(route=r, probe="stream", success=False, error="...", elapsed=0.4)``,
``RunEnd(run_id=..., exit_reason="completed", completed=True, steps=7, duration_s=41.2)``;
and the ones that map from other objects with `attempt_event`,
`circuit_event` and `provider_metrics_event`.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any, Literal, Union

import msgspec

if TYPE_CHECKING:  # only for annotations: keeps this module free of provider imports
    from kcd.providers.breaker import Transition
    from kcd.providers.dispatcher import AttemptRecord

SCHEMA_VERSION = 1


def utc_ts(wall: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`: `2025-01-31T12:00:00.123Z`."""
    wall = time.time() if wall is None else wall
    ms = int(wall * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def genai_provider_name(provider: str) -> str:
    """`gen_ai.provider.name`: the well-known value where one exists, else a custom one."""
    return "kylecode.simulator" if provider == "mock" else provider


def config_digest(raw: bytes) -> str:
    """Digest of the effective config a run used, for `run.start`."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class Envelope(msgspec.Struct, tag_field="event", kw_only=True):
    """Fields every new record type shares (stamped ones default to empty)."""

    schema_version: int = SCHEMA_VERSION
    ts: str = ""
    seq: int = 0
    host: str = ""
    pid: int = 0
    run_id: str | None = None
    route: str | None = None  # canonical route id, where one applies
    turn: int | None = None
    peer_uid: int | None = None  # the client that started the run
    trace_id: str | None = None  # hex, for OTLP export (unset until runs carry spans)
    span_id: str | None = None


class RunStart(Envelope, tag="run.start", kw_only=True):
    config_digest: str
    route_chain: list[str]
    executor: str
    config: str | None = None  # the config file or name the run was started with


class LlmAttempt(Envelope, tag="llm.attempt", kw_only=True):
    attempt: int  # 1-based within the turn
    kind: Literal["primary", "retry", "fallback"]
    stream: bool  # streaming was requested
    streamed: bool = False  # the body was actually read as SSE
    status_code: int | None = None
    content_type: str | None = None
    request_id: str | None = None  # upstream id (x-request-id, generation id)
    latency_s: float = 0.0
    ttft_s: float | None = None
    outcome: str = "ok"  # "ok", or the error class
    error_type: str | None = msgspec.field(default=None, name="error.type")
    decision: str | None = None  # the retry decision's reason, on failure
    next_delay_s: float | None = None  # wait before the next attempt on this route
    breaker_state: str | None = None
    attrs: dict[str, Any] = {}  # OTel GenAI attribute names -> values


class Fallback(Envelope, tag="fallback", kw_only=True):
    from_route: str = msgspec.field(name="from")
    to_route: str = msgspec.field(name="to")
    reason: str


class BreakerSkip(Envelope, tag="breaker_skip", kw_only=True):
    """A route the breaker did not admit: no request was sent to it (not a failure of it)."""

    reason: str  # the breaker's: "threshold", "retry_after", "forced", "half_open_busy", ...
    reopens_in_s: float | None = None


class CircuitEvent(Envelope, kw_only=True):
    """A breaker transition; the tag says where it went (`to_state` says exactly)."""

    from_state: str
    to_state: str
    reason: str
    k: int = 0
    reopens_at: str | None = None  # ISO-8601 UTC
    last_error: str | None = None
    trigger: dict[str, Any] | None = None  # the attempt that caused it


class CircuitOpen(CircuitEvent, tag="circuit.open", kw_only=True):
    pass


class CircuitHalfOpen(CircuitEvent, tag="circuit.half_open", kw_only=True):
    pass


class CircuitClose(CircuitEvent, tag="circuit.close", kw_only=True):
    pass


class Probe(Envelope, tag="probe", kw_only=True):
    probe: str  # "stream", "tool_stream", "json_mode", ...
    success: bool | None  # None: not attempted (see skipped_reason)
    error: str | None = None
    elapsed: float = 0.0
    skipped_reason: str | None = None


class RunEnd(Envelope, tag="run.end", kw_only=True):
    exit_reason: str
    completed: bool
    steps: int
    duration_s: float


class Truncated(Envelope, tag="telemetry.truncated", kw_only=True):
    """Stands in for an event whose line exceeded the cap (never a partial line)."""

    original_event: str
    size: int  # bytes of the encoded line that was refused
    limit: int


class ProviderMetrics(msgspec.Struct, tag_field="event", tag="provider_metrics", kw_only=True):
    """The original's one-line-per-run record, field for field, then kcd's additions.
    Not an Envelope on purpose: its shape is a compatibility contract."""

    summary: dict[str, Any]
    routes: dict[str, Any]
    fallbacks: list[dict[str, Any]]
    stream_overrides: list[dict[str, Any]]
    tool_overrides: list[dict[str, Any]]
    ts: str = ""
    run_id: str | None = None
    route_id: str | None = None  # the run's primary route
    circuit_skips: list[str] = []
    schema_version: int = SCHEMA_VERSION


TelemetryEvent = Union[RunStart, LlmAttempt, Fallback, BreakerSkip, CircuitOpen, CircuitHalfOpen, CircuitClose,
                       Probe, RunEnd, Truncated, ProviderMetrics]


def decoder() -> msgspec.json.Decoder:
    """A typed reader: `decoder().decode_lines(data)` for whole files, `.decode(line)` when tailing."""
    return msgspec.json.Decoder(TelemetryEvent)


def event_name(event: msgspec.Struct) -> str:
    return str(type(event).__struct_config__.tag)


# ---- builders for records that map from other objects ---------------------------


def attempt_event(record: AttemptRecord, *, run_id: str | None, turn: int | None,
                  peer_uid: int | None = None) -> LlmAttempt:
    """`llm.attempt` from the dispatcher's `AttemptRecord` (call in `CallObserver.attempt`)."""
    route = record.entry.route
    a = record.attempt
    failure = a.failure
    error_type = None if a.ok else (failure.classification if failure is not None else "empty_response")
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": genai_provider_name(route.provider),
        "gen_ai.request.model": route.model,
        "kylecode.route": route.id,
        "kylecode.attempt": record.number,
    }
    if turn is not None:
        attrs["kylecode.turn"] = turn
    response = a.response or a.partial
    if response is not None:
        if response.model:
            attrs["gen_ai.response.model"] = response.model
        if response.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = [response.finish_reason]
        usage = response.usage
        if usage is not None:  # omitted when unknown, never reported as zero
            if usage.prompt_tokens is not None:
                attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            if usage.completion_tokens is not None:
                attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if error_type is not None:
        attrs["error.type"] = error_type
    return LlmAttempt(
        run_id=run_id, route=route.id, turn=turn, peer_uid=peer_uid,
        attempt=record.number, kind=record.kind,  # type: ignore[arg-type]
        stream=a.stream_requested, streamed=a.streamed, status_code=a.status_code,
        content_type=a.content_type, request_id=a.request_id, latency_s=round(a.latency_s, 6),
        ttft_s=None if a.ttft_s is None else round(a.ttft_s, 6),
        outcome="ok" if error_type is None else error_type, error_type=error_type,
        decision=record.decision.reason if record.decision is not None else None,
        next_delay_s=record.next_delay_s, breaker_state=record.breaker_state, attrs=attrs)


def circuit_event(t: Transition, *, run_id: str | None = None) -> CircuitEvent:
    """`circuit.*` from a breaker `Transition` (call in the board's `on_transition`)."""
    # open, forced_open and disabled all reject calls: one tag; `to_state` distinguishes.
    cls: type[CircuitEvent] = (CircuitClose if t.to_state == "closed" else
                               CircuitHalfOpen if t.to_state == "half_open" else CircuitOpen)
    return cls(run_id=run_id, route=t.route, from_state=t.from_state, to_state=t.to_state,
               reason=t.reason, k=t.k,
               reopens_at=None if t.reopens_at is None else utc_ts(t.reopens_at),
               last_error=t.last_error, trigger=t.trigger)


def provider_metrics_event(snapshot: dict[str, Any], *, run_id: str | None,
                           route_id: str | None) -> ProviderMetrics:
    """`provider_metrics` from `RunMetrics.snapshot()` (emit once per run, crashed runs too)."""
    return ProviderMetrics(
        summary=snapshot.get("summary", {}), routes=snapshot.get("routes", {}),
        fallbacks=snapshot.get("fallbacks", []), stream_overrides=snapshot.get("stream_overrides", []),
        tool_overrides=snapshot.get("tool_overrides", []), run_id=run_id, route_id=route_id,
        circuit_skips=snapshot.get("circuit_skips", []))
