"""The simulator's ASGI app: an OpenAI-compatible chat-completions server.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``, and
the ``/_sim/...`` control API (`control`). A plain ASGI callable (no
framework). The model field picks the behaviour: a registered name (``dev``),
else its last segment (``sim/dev``), else ``dev``, so the simulator can stand
in for OpenRouter or OpenAI models (``x-ai/grok-4-fast``, ``gpt-4o-mini``).
Only names starting with ``unknown`` or ``nope`` are 404s, and ``replay`` when
the namespace has no recorded script loaded (`recorded`). The
``x-kc-sim-behaviour`` header picks another registered behaviour for one
request. A fault (`faults`) is chosen by the ``x-kc-sim-fault`` header, a
``+fault`` model suffix, or a programmed plan, in that order. Every response
carries ``x-request-id``; a faulted one also ``x-kc-sim-fault``.

What the upstream saw is kept in the app's own `SimulatorState` (no
module-level state), so tests can assert on it in-process or over HTTP.
Every route also exists under ``/ns/<name>/...`` with a separate state per
namespace (`namespaces`); ``GET /_sim/namespaces`` lists the live ones.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
import msgspec

from kcd.providers.errors import sanitize_headers
from kcd.simulator import wire
from kcd.simulator.behaviours import Behaviour, default_behaviours
from kcd.simulator.control import CONTROL_PREFIXES, SimulatorState, control
from kcd.simulator.delivery import Delivery, Exchange, WellFormed
from kcd.simulator.faults import FAULT_HEADER, FaultError, FaultRun, FaultSpec, FAULTS, choose
from kcd.simulator.namespaces import NamespaceError, Namespaces, split_namespace
from kcd.simulator.recorded import SCRIPT_MODEL, ScriptExhausted

__all__ = ["BEHAVIOUR_HEADER", "FAULT_HEADER", "SimulatorApp", "SimulatorState", "create_app"]

BEHAVIOUR_HEADER = "x-kc-sim-behaviour"
DEFAULT_BEHAVIOUR = "dev"  # what any other model name gets
MISSING_MODEL_PREFIXES = ("unknown", "nope")  # model names that stay 404 (the tested not-found path)
MAX_BODY_BYTES = 32 * 1024 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


def _bearer(headers: dict[str, str]) -> str | None:
    """The presented API key: only the auth_401 fault with echo_key=1 ever shows it."""
    auth = headers.get("authorization", "")
    return auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else None


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


def _status_recorder(send: Send, entry: dict[str, Any]) -> Send:
    """`send`, noting the response status in the request's log entry."""

    async def recording(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            entry["status"] = message["status"]
        await send(message)

    return recording


def _connection_aborter(send: Send) -> Callable[[], None] | None:
    """A function that resets this request's TCP connection, if it can be reached.

    ASGI has no way to abort a connection, and raising from the app before the
    headers makes uvicorn answer 500. uvicorn's `send` is a bound method of its
    request cycle, which holds the transport: SO_LINGER 0 turns the close into
    an RST, as an upstream crash or a middlebox would.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not callable(getattr(transport, "abort", None)):
        return None

    def abort() -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    return abort


class SimulatorApp:
    """ASGI callable; `state` holds what the default namespace has seen,
    `namespaces` the state of every other one."""

    def __init__(
        self,
        behaviours: Mapping[str, Behaviour],
        delivery: Delivery,
        state: SimulatorState,
    ) -> None:
        self.behaviours = dict(behaviours)
        self.delivery = delivery
        self.state = state
        self.namespaces = Namespaces(state.max_log)

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
        request_id = self.state.next_request_id()  # unique across namespaces
        method = scope["method"]
        try:
            namespace, path = split_namespace(scope["path"].rstrip("/") or "/")
            state = self.state if namespace is None else self.namespaces.get(namespace)
        except NamespaceError as exc:
            await _respond(send, exc.status, wire.error_body(str(exc), "invalid_request_error", "bad_namespace"),
                           request_id)
            return
        if path == "/v1/chat/completions":
            if method != "POST":
                await _respond(send, 405, wire.error_body("use POST", "invalid_request_error",
                                                          "method_not_allowed"), request_id)
                return
            await self._chat(scope, receive, send, request_id, state)
        elif namespace is None and method == "GET" and path in ("/_sim/namespaces", "/v1/_sim/namespaces"):
            await _respond(send, 200, {"namespaces": self.namespaces.listing()}, request_id)
        elif path.startswith(CONTROL_PREFIXES):
            body = await _read_body(receive) if method == "POST" else b""
            if body is None:
                status, obj = 400, wire.error_body("request body missing or too large",
                                                   "invalid_request_error", "invalid_body")
            else:
                status, obj = control(state, method, path, body)
                if namespace is not None and method == "DELETE" and status == 200:
                    self.namespaces.drop(namespace)  # reset == gone: nothing is left behind
            await _respond(send, status, obj, request_id)
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
        if override:
            found = self.behaviours.get(override)
            return None if found is None else (override, found)
        names = (model, model.rsplit("/", 1)[-1])
        for name in names:
            behaviour = self.behaviours.get(name)
            if behaviour is not None:
                return name, behaviour
        missing = any(n.startswith(MISSING_MODEL_PREFIXES) for n in names)
        if missing or DEFAULT_BEHAVIOUR not in self.behaviours:
            return None
        return DEFAULT_BEHAVIOUR, self.behaviours[DEFAULT_BEHAVIOUR]

    def _select(
        self, state: SimulatorState, headers: Mapping[str, str], sent: str, override: str | None
    ) -> tuple[str, tuple[str, Behaviour] | None, FaultSpec | None, str | None, FaultError | None]:
        """(model, behaviour, fault, where the fault came from, selection error).

        A plan is consumed only by a request that will really get its fault:
        not by one the header or suffix already decided, nor by a 404.
        """
        try:
            model, fault, source = choose(headers.get(FAULT_HEADER), sent)
        except FaultError as exc:
            return sent, None, None, None, exc
        if not override and SCRIPT_MODEL in (model, model.rsplit("/", 1)[-1]):
            # The namespace's recorded script, when one is loaded; never a stand-in agent.
            found = (SCRIPT_MODEL, state.script) if state.script is not None else None
        else:
            found = self._behaviour(model, override)
        if found is None:
            return model, None, None, None, None
        if fault is None:
            fault = state.plans.take(model)
            source = "plan" if fault else None
        return model, found, fault, source, None

    async def _chat(self, scope: Scope, receive: Receive, send: Send, request_id: str,
                    state: SimulatorState) -> None:
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
        override = headers.get(BEHAVIOUR_HEADER)
        model, found, fault, source, problem = self._select(state, headers, request["model"], override)
        nth = state.applied(fault.name, model) if fault else 0
        auth = headers.get("authorization", "")
        messages = request["messages"]
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        entry: dict[str, Any] = {
            "request_id": request_id,
            "ts": time.time(),
            "model": model,  # without any +fault suffix
            "model_sent": request["model"],
            "behaviour": found[0] if found else None,
            "stream": request.get("stream") is True,
            "has_tools": bool(request.get("tools")),
            "tools": len(request.get("tools") or ()),
            "messages": len(messages),
            "last_role": last.get("role"),
            "fault": fault.name if fault else None,
            "fault_source": source,  # "header" | "model" | "plan" | None
            "fault_params": fault.params if fault else None,
            "status": None,  # set when the response starts; stays None for a reset or no answer
            "auth_scheme": auth.split(" ", 1)[0] if auth else None,  # never the credential
            "headers": sanitize_headers(headers),
            "body": request,
        }
        seq = state.record(entry)
        tracked = _status_recorder(send, entry)
        if problem is not None:
            await _respond(tracked, 400, problem.body(), request_id)
            return
        if found is None:
            what = f"behaviour `{override}`" if override else f"model `{model}`"
            error = wire.error_body(f"The {what} does not exist", "invalid_request_error", "model_not_found")
            await _respond(tracked, 404, error, request_id)
            return
        name, behaviour = found
        try:
            reply = behaviour.reply(request)
        except ScriptExhausted as exc:
            await _respond(tracked, 400, wire.error_body(str(exc), "invalid_request_error", "replay_exhausted"),
                           request_id)
            return
        except Exception as exc:  # a broken script must not take the server down
            await _respond(tracked, 500, wire.error_body(f"behaviour {name!r} failed: {exc!r}",
                                                         "server_error", "behaviour_failed"), request_id)
            return
        delivery: Delivery = self.delivery
        if fault is not None:
            delivery = FaultRun(FAULTS[fault.name], fault.params, nth, self.delivery)
        exchange = Exchange(tracked, request, model=model, behaviour=name, request_id=request_id,
                            seq=seq, created=int(time.time()),
                            extra_headers=[(FAULT_HEADER, fault.name)] if fault else (),
                            abort=_connection_aborter(send),
                            credential=_bearer(headers))
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                # With the body read, receive() returns only on disconnect or completion.
                await receive()
                tg.cancel_scope.cancel()

            tg.start_soon(watch_disconnect)
            await delivery.deliver(exchange, reply)
            tg.cancel_scope.cancel()


def create_app(
    scripts: Mapping[str, Behaviour] | None = None,
    *,
    delivery: Delivery | None = None,
    max_log: int = 256,
) -> SimulatorApp:
    """A simulator app. `scripts` are added to (and override) the default
    behaviours; `delivery` defaults to a well-formed server (faults wrap it)."""
    behaviours = default_behaviours()
    if scripts:
        behaviours.update(scripts)
    return SimulatorApp(behaviours, delivery or WellFormed(), SimulatorState(max_log))
