"""The endpoint's HTTP handlers: `POST /v1/chat/completions` and `GET /v1/models`.

Served on the control socket (attributed to the peer's uid) and, when
configured, on a loopback TCP listener that requires a bearer token
(`listener`, attributed to the token's name). Every request is one turn of the
daemon's own `Dispatcher`: the same fallbacks, retries, breakers (one shared
`BreakerBoard`: what a run sees, a client sees), probes, failure detection,
metrics and telemetry as agent runs.

Streaming (`stream: true`) per model name (`gateway.models.<name>.stream_mode`):
- `buffer` (default): the answer is collected (streamed upstream when the
  route streams) and only a complete, validated answer is sent, as SSE chunks.
  Any failure falls back transparently; the cost is time to first token.
- `passthrough`: text deltas go out as they arrive (`streaming`). A failure
  before the first byte falls back transparently; after it, the stream ends
  with an in-band error event. Tool calls are sent once complete.

A client that disconnects cancels its turn in both modes (passthrough watches in
`streaming`, buffered answers, JSON and `buffer`, in `disconnect`),
and the cut-short attempt is recorded as `client_disconnected`.

Every answer names the model that actually answered and carries its usage;
headers say which route served it (`x-kylecode-route`), after how many
attempts, and the daemon's own added time (`x-kylecode-overhead-ms`: total
minus upstream time minus retry waits).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from kcd.gateway.access import Client, TokenTable, socket_client
from kcd.gateway.disconnect import (DISCONNECTED, DisconnectWatch, InFlight, record_disconnect,
                                    until_disconnect)
from kcd.gateway.errors import OpenAIError, from_failure
from kcd.gateway.logical import LogicalRequests
from kcd.gateway.metrics import EndpointMetrics
from kcd.gateway.models import ModelMap, ModelPlan
from kcd.gateway.observer import RequestObserver
from kcd.gateway.responses import SSE_HEADERS, NoAnswer, VerbatimResponse, error_response
from kcd.gateway.streaming import PassthroughResponse, Relay
from kcd.gateway.wire import ChunkWriter, ParsedRequest, completion_body, parse_request
from kcd.observe.prometheus import DaemonMetrics
from kcd.observe.telemetry import TelemetrySink
from kcd.providers.dispatcher import AttemptTap, ChainEntry, Dispatcher, Served
from kcd.providers.errors import ProviderFailure
from kcd.providers.probes import ProbeManager
from kcd.server.http import BodyTooLarge, Request, Response, json_response

__all__ = ["OpenAIEndpoint"]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")  # an incoming id we are willing to log and echo
_TRUTHY = ("1", "true", "yes")


def _ms(seconds: float) -> str:
    return f"{max(seconds, 0.0) * 1000:.3f}"


class _Call:
    """One request in flight: its ids, plan, clocks and the headers it earns."""

    __slots__ = ("endpoint", "t0", "request_id", "completion_id", "parsed", "plan", "chain", "stream_off",
                 "observer", "writer", "include_usage", "turn_key")

    def __init__(self, endpoint: OpenAIEndpoint, t0: float, request_id: str, completion_id: str,
                 parsed: ParsedRequest, plan: ModelPlan, chain: list[ChainEntry], stream_off: set[str],
                 observer: RequestObserver):
        self.endpoint = endpoint
        self.t0 = t0
        self.request_id = request_id
        self.completion_id = completion_id
        self.parsed = parsed
        self.plan = plan
        self.chain = chain
        self.stream_off = stream_off
        self.observer = observer
        self.include_usage = parsed.include_usage
        self.turn_key = completion_id  # replaced by the logical request's key in _serve
        # Chunks sent while the answer streams name the route's model; the provider
        # reports the model that answered only at the end (then the last chunks name it).
        self.writer = ChunkWriter(completion_id, chain[0].route.model)

    def overhead(self, served: Served) -> float:
        total = self.endpoint.clock() - self.t0
        return max(total - served.upstream_s - self.observer.waited_s, 0.0)

    def headers(self, route: str, attempts: int, overhead_s: float, fallback_from: str | None = None,
                upstream_s: float | None = None) -> dict[str, str]:
        h = {"x-request-id": self.request_id, "x-kylecode-route": route,
             "x-kylecode-attempts": str(attempts), "x-kylecode-overhead-ms": _ms(overhead_s),
             "x-kylecode-model": self.plan.name}
        if upstream_s is not None:
            h["x-kylecode-upstream-ms"] = _ms(upstream_s)
        if fallback_from is not None:
            h["x-kylecode-fallback-from"] = fallback_from
        return h

    def served_headers(self, served: Served) -> dict[str, str]:
        overhead = self.overhead(served)
        self.endpoint.record_served(self.plan.name, overhead, 200, self.mode)
        return self.headers(served.entry.route.id, served.attempts, overhead, served.fallback_from,
                            served.upstream_s)

    # ---- passthrough streams (streaming.StreamCall) -----------------------------

    @property
    def mode(self) -> str:
        return "passthrough" if self.parsed.stream and self.plan.stream_mode == "passthrough" else (
            "buffer" if self.parsed.stream else "json")

    def first_byte_headers(self, relay: Relay) -> dict[str, str]:
        """Headers at the first byte: the attempt in flight is the one that will answer
        (or fail in-band). Overhead so far: ours before that attempt, and since its first text."""
        now = self.endpoint.clock()
        before = relay.started_at - self.t0 - self.observer.upstream_s - self.observer.waited_s
        since = now - relay.first_chunk_at if relay.first_chunk_at is not None else 0.0
        assert relay.entry is not None
        self.endpoint.record_served(self.plan.name, before + since, 200, self.mode)
        fallback_from = self.chain[0].route.id if relay.entry.route.id != self.chain[0].route.id else None
        return self.headers(relay.entry.route.id, relay.number, before + since, fallback_from)

    def final_writer(self, served: Served) -> ChunkWriter:
        return self.writer.with_model(served.response.model or served.entry.route.model)

    def failed(self, exc: BaseException, after_text: bool) -> OpenAIError:
        err = self.endpoint.failure_error(exc, self.plan.name, self.mode, counted=not after_text)
        if after_text and self.endpoint.metrics is not None:
            self.endpoint.metrics.midstream_errors.inc((self.plan.name,))
        err.headers.setdefault("x-request-id", self.request_id)
        err.headers["x-kylecode-attempts"] = str(self.observer.attempts)
        return err

    def scrub(self, data: bytes) -> bytes:
        return self.endpoint.scrub(data)

    def redact(self, data: bytes) -> bytes:
        return self.endpoint.redact(data)


class OpenAIEndpoint:
    """The `/v1/chat/completions` and `/v1/models` handlers, on the daemon's dispatcher."""

    def __init__(self, dispatcher: Dispatcher, models: ModelMap, *, telemetry: TelemetrySink | None,
                 metrics: DaemonMetrics | None, probes: ProbeManager | None, tokens: TokenTable,
                 env: Mapping[str, str], max_body: int, secrets: tuple[str, ...] = (),
                 redact: Callable[[bytes], bytes] | None = None,
                 log_exception: Callable[[BaseException], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.dispatcher = dispatcher
        self.models = models
        self.telemetry = telemetry
        self.live = metrics
        self.metrics = EndpointMetrics(metrics) if metrics is not None else None
        self.probes = probes
        self.probes_off = env.get("KC_DISABLE_PROVIDER_PROBES", "").strip().lower() in _TRUTHY
        self.tokens = tokens
        self.max_body = max_body
        self.logical = LogicalRequests()  # the breaker's key: a client's retries count once
        self.log_exception = log_exception
        self.clock = clock
        # Answers are passed verbatim except for the daemon's own secrets, by exact value;
        # error bodies (provider messages, echoes of the request) get the full redactor.
        encoded = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self._secrets = tuple(encoded)
        self._redact = redact

    # ---- routes -----------------------------------------------------------------

    async def chat_completions(self, req: Request) -> Response:
        """The control socket's route: the caller is the peer's uid."""
        return await self.serve_chat(req, socket_client(req.peer))

    async def list_models(self, req: Request) -> Response:
        created = int(time.time())
        data: list[dict[str, Any]] = []
        seen: set[str] = set()
        for plan in self.models.configured():
            seen.add(plan.name)
            data.append({"id": plan.name, "object": "model", "created": created, "owned_by": "kylecode",
                         "kylecode": {"routes": plan.route_ids, "stream_mode": plan.stream_mode}})
        for plan in self.models.configured():
            for route in plan.route_ids:
                if route not in seen:
                    seen.add(route)
                    data.append({"id": route, "object": "model", "created": created,
                                 "owned_by": route.split("/", 1)[0]})
        return json_response({"object": "list", "data": data})

    # ---- one chat completion ----------------------------------------------------

    async def serve_chat(self, req: Request, client: Client) -> Response:
        t0 = self.clock()
        completion_id = "chatcmpl-kc-" + os.urandom(12).hex()
        incoming = req.header("x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else completion_id
        model = "_invalid"
        try:
            parsed = await self._parse(req)
            model = parsed.model
            plan = self.models.get(parsed.model)
            if plan is None:
                model = "_unknown"
                raise OpenAIError(404, f"The model `{parsed.model}` does not exist or is not configured in "
                                       "this daemon (gateway.models); see GET /v1/models",
                                  code="model_not_found", param="model")
            return await self._serve(req, client, t0, request_id, completion_id, parsed, plan)
        except OpenAIError as err:
            if self.metrics is not None:
                self.metrics.request(model, err.status, "error")
            return error_response(err, request_id, self.redact)
        except Exception as exc:  # a bug must not take the daemon down, nor leak a kcd-shaped error
            if self.log_exception is not None:
                self.log_exception(exc)
            return error_response(OpenAIError(500, f"internal error: {type(exc).__name__}",
                                              type="server_error", code="internal_error"), request_id)

    async def _parse(self, req: Request) -> ParsedRequest:
        req.max_body = self.max_body
        try:
            body = await req.body()
        except BodyTooLarge:
            raise OpenAIError(400, f"request body exceeds the limit of {self.max_body} bytes",
                              code="request_too_large") from None
        return parse_request(body)

    async def _serve(self, req: Request, client: Client, t0: float, request_id: str, completion_id: str,
                     parsed: ParsedRequest, plan: ModelPlan) -> Response:
        chain = plan.chain(parsed.stream, parsed.params)
        stream_off: set[str] = set()
        observer = RequestObserver(request_id, client.label, client.uid, plan.name, self.telemetry, self.live)
        call = _Call(self, t0, request_id, completion_id, parsed, plan, chain, stream_off, observer)
        call.turn_key = self.logical.key(client.label, await req.body(), req.header("idempotency-key"),
                                         fresh=completion_id)
        if parsed.stream and plan.stream_mode == "passthrough":
            await self._probe(call)
            return self._passthrough(req, call)
        inflight = InFlight(chain[0].route.id, self.clock)

        async def turn() -> Served:
            await self._probe(call)  # probes call upstream too: also stopped by a disconnect
            return await self._complete(call, None, inflight)

        try:
            served = await until_disconnect(req.receive, turn)
        except ProviderFailure as failure:
            err = self.failure_error(failure, plan.name, call.mode)
            err.headers["x-kylecode-attempts"] = str(observer.attempts)
            return error_response(err, request_id, self.redact)
        if served is DISCONNECTED:
            record_disconnect(observer, inflight, chain, self.metrics, call.mode, self.clock())
            return NoAnswer()
        assert isinstance(served, Served)
        resp = served.response
        model = resp.model or served.entry.route.model
        if parsed.stream:
            payload = self.scrub(call.writer.with_model(model).answer(resp, include_usage=parsed.include_usage))
            return VerbatimResponse(payload, content_type="text/event-stream",
                                    headers={**SSE_HEADERS, **call.served_headers(served)})
        payload = self.scrub(completion_body(resp, completion_id=completion_id, model=model))
        return VerbatimResponse(payload, headers=call.served_headers(served))

    def _passthrough(self, req: Request, call: _Call) -> PassthroughResponse:
        """The stream watches for the disconnect itself; the turn records it, as buffered ones do."""
        watch = DisconnectWatch(req.receive)

        async def run(relay: Relay) -> Served:
            inflight = InFlight(call.chain[0].route.id, self.clock, inner=relay)
            try:
                return await self._complete(call, relay, inflight)
            except anyio.get_cancelled_exc_class():
                if watch.gone:
                    record_disconnect(call.observer, inflight, call.chain, self.metrics, call.mode, self.clock())
                raise

        return PassthroughResponse(call, run, watch.receive, self.clock)

    async def _complete(self, call: _Call, relay: Relay | None, tap: AttemptTap) -> Served:
        plan = call.plan
        served = await self.dispatcher.complete(
            call.chain, call.parsed.messages, call.parsed.tools, policy=plan.policy,
            # The breaker counts at most one failure per turn key: our own id, shared only by a
            # client's repeats of one request (LogicalRequests), never the client's x-request-id.
            turn_key=call.turn_key, observer=call.observer, stream_off=call.stream_off,
            on_chunk=relay.chunk if relay is not None else None, tap=tap)
        if plan.probes and self.probes is not None:
            self.probes.note_used(served.entry.route.id, served.entry, model_reported=served.response.model)
        return served

    async def _probe(self, call: _Call) -> None:
        if self.probes is not None and not self.probes_off:
            await self._apply_probes(call.plan, call.chain, call.stream_off, bool(call.parsed.tools))

    async def _apply_probes(self, plan: ModelPlan, chain: list[ChainEntry], stream_off: set[str],
                            tools: bool) -> None:
        """What the daemon's probes know about the chain's routes, applied as runs apply it:
        no upstream streaming where the stream probe failed; no tool requests where the
        tool probe failed. With `probes: true` uncached routes are probed first."""
        assert self.probes is not None
        for i, entry in enumerate(chain):
            route = entry.route.id
            if plan.probes:
                result = await self.probes.get(entry)
            else:
                result = self.probes.cached(route)
                if result is not None and not self.probes.is_fresh(result):
                    result = None
            if result is None or not result.attempted:
                continue
            if result.stream_success is False and entry.stream:
                stream_off.add(route)
            if tools and result.tool_stream_success is False and entry.native_tools:
                chain[i] = dataclasses.replace(entry, native_tools=False)

    # ---- shared helpers -----------------------------------------------------------

    def failure_error(self, exc: BaseException, model: str, mode: str, counted: bool = True) -> OpenAIError:
        if isinstance(exc, ProviderFailure):
            err = from_failure(exc)
        else:
            if self.log_exception is not None:
                self.log_exception(exc)
            err = OpenAIError(500, f"internal error: {type(exc).__name__}", type="server_error",
                              code="internal_error")
        if counted and self.metrics is not None:  # a mid-stream failure was counted at its first byte
            self.metrics.request(model, err.status, mode)
        return err

    def record_served(self, model: str, overhead_s: float, status: int, mode: str) -> None:
        if self.metrics is not None:
            self.metrics.request(model, status, mode)
            self.metrics.served(model, overhead_s)

    def scrub(self, data: bytes) -> bytes:
        for secret in self._secrets:
            if secret in data:
                data = data.replace(secret, b"***REDACTED***")
        return data

    def redact(self, data: bytes) -> bytes:
        return self._redact(data) if self._redact is not None else self.scrub(data)
