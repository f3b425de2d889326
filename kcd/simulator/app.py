"""The simulator's ASGI app: an OpenAI-compatible chat-completions server.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.
A plain ASGI callable (no framework). The model field picks the behaviour
(``mock/dev`` sends ``dev``; a prefixed name such as ``sim/dev`` falls back to
its last segment); the ``x-kc-sim-behaviour`` header picks another registered
behaviour for one request. Every response carries ``x-request-id``.

What the upstream saw is kept in the app's own `SimulatorState` (no
module-level state), so tests can assert on it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
import msgspec

from kcd.providers.errors import sanitize_headers
from kcd.simulator import wire
from kcd.simulator.behaviours import Behaviour, default_behaviours
from kcd.simulator.delivery import Delivery, Exchange, WellFormed

__all__ = ["BEHAVIOUR_HEADER", "SimulatorApp", "SimulatorState", "create_app"]

BEHAVIOUR_HEADER = "x-kc-sim-behaviour"
MAX_BODY_BYTES = 32 * 1024 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


class SimulatorState:
    """What this app has seen: a bounded request log and per-model counts."""

    def __init__(self, max_log: int = 256) -> None:
        self.max_log = max_log
        self.requests: list[dict[str, Any]] = []  # newest last; oldest dropped past max_log
        self.counts: dict[str, int] = {}  # chat requests per requested model
        self.total = 0  # every HTTP request, any route

    def next_request_id(self) -> str:
        self.total += 1
        return f"simreq-{self.total:06d}"

    def record(self, entry: dict[str, Any]) -> int:
        """Log one chat request; returns its 1-based number for the model."""
        model = entry.get("model") or ""
        seq = self.counts[model] = self.counts.get(model, 0) + 1
        self.requests.append(entry)
        if len(self.requests) > self.max_log:
            del self.requests[: len(self.requests) - self.max_log]
        return seq


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


async def _respond(send: Send, status: int, obj: Any, request_id: str) -> None:
    body = _ENCODER.encode(obj)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode())],
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None if the client went away or it is too large."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        size += len(body)
        if size > MAX_BODY_BYTES:
            return None
        parts.append(body)
        if not message.get("more_body", False):
            return b"".join(parts)


class SimulatorApp:
    """ASGI callable; `state` holds what it has seen."""

    def __init__(
        self,
        behaviours: Mapping[str, Behaviour],
        delivery: Delivery,
        state: SimulatorState,
    ) -> None:
        self.behaviours = dict(behaviours)
        self.delivery = delivery
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":  # in case a server runs it with lifespan on
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        request_id = self.state.next_request_id()
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        if path == "/v1/chat/completions":
            if method != "POST":
                await _respond(send, 405, wire.error_body("use POST", "invalid_request_error",
                                                          "method_not_allowed"), request_id)
                return
            await self._chat(scope, receive, send, request_id)
        elif path == "/v1/models" and method == "GET":
            data = [{"id": name, "object": "model", "owned_by": "kylecode-simulator"}
                    for name in self.behaviours]
            await _respond(send, 200, {"object": "list", "data": data}, request_id)
        elif path == "/health" and method == "GET":
            await _respond(send, 200, {"status": "ok"}, request_id)
        else:
            await _respond(send, 404, wire.error_body(f"no route {method} {path}",
                                                      "invalid_request_error", "not_found"), request_id)

    def _behaviour(self, model: str, override: str | None) -> tuple[str, Behaviour] | None:
        for name in ([override] if override else [model, model.rsplit("/", 1)[-1]]):
            behaviour = self.behaviours.get(name)
            if behaviour is not None:
                return name, behaviour
        return None

    async def _chat(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        body = await _read_body(receive)
        if body is None:
            await _respond(send, 400, wire.error_body("request body missing or too large",
                                                      "invalid_request_error", "invalid_body"), request_id)
            return
        try:
            request = _DECODER.decode(body)
        except msgspec.DecodeError as exc:
            await _respond(send, 400, wire.error_body(f"request body is not valid JSON: {exc}",
                                                      "invalid_request_error", "invalid_json"), request_id)
            return
        if (not isinstance(request, dict) or not isinstance(request.get("model"), str)
                or not isinstance(request.get("messages"), list)):
            await _respond(send, 400, wire.error_body("body must be an object with `model` and `messages`",
                                                      "invalid_request_error", "invalid_request"), request_id)
            return
        headers = _headers(scope.get("headers") or ())
        model = request["model"]
        override = headers.get(BEHAVIOUR_HEADER)
        found = self._behaviour(model, override)
        if found is None:
            what = f"behaviour `{override}`" if override else f"model `{model}`"
            await _respond(send, 404, wire.error_body(f"The {what} does not exist",
                                                      "invalid_request_error", "model_not_found"), request_id)
            return
        name, behaviour = found
        auth = headers.get("authorization", "")
        seq = self.state.record({
            "request_id": request_id,
            "model": model,
            "behaviour": name,
            "stream": request.get("stream") is True,
            "tools": len(request.get("tools") or ()),
            "messages": len(request["messages"]),
            "auth_scheme": auth.split(" ", 1)[0] if auth else None,  # never the credential
            "headers": sanitize_headers(headers),
            "body": request,
        })
        try:
            reply = behaviour.reply(request)
        except Exception as exc:  # a broken script must not take the server down
            await _respond(send, 500, wire.error_body(f"behaviour {name!r} failed: {exc!r}",
                                                      "server_error", "behaviour_failed"), request_id)
            return
        exchange = Exchange(send, request, model=model, behaviour=name, request_id=request_id,
                            seq=seq, created=int(time.time()))
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                # With the body read, receive() returns only on disconnect or completion.
                await receive()
                tg.cancel_scope.cancel()

            tg.start_soon(watch_disconnect)
            await self.delivery.deliver(exchange, reply)
            tg.cancel_scope.cancel()


def create_app(
    scripts: Mapping[str, Behaviour] | None = None,
    *,
    delivery: Delivery | None = None,
    max_log: int = 256,
) -> SimulatorApp:
    """A simulator app. `scripts` are added to (and override) the default
    behaviours; `delivery` defaults to a well-formed server."""
    behaviours = default_behaviours()
    if scripts:
        behaviours.update(scripts)
    return SimulatorApp(behaviours, delivery or WellFormed(), SimulatorState(max_log))
