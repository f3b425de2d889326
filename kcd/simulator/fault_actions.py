"""What each catalogue fault does to one exchange (the table is in `faults`).

Each function takes the `FaultRun` (parameters, ``nth`` application, the
healthy ``inner`` delivery), the `Exchange` and the scripted `Reply`. Bodies
and pages come from `fault_bodies`. Every response start already carries
``x-kc-sim-fault`` (the app puts it in ``Exchange.extra_headers``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from kcd.simulator import fault_bodies as B
from kcd.simulator import wire
from kcd.simulator.behaviours import CallSpec, Reply
from kcd.simulator.delivery import Exchange

if TYPE_CHECKING:
    from kcd.simulator.faults import FaultRun

TRICKLE_BYTES = 8  # non-stream slow_trickle: body bytes per interval
KEEPALIVE = b": OPENROUTER PROCESSING\n\n"

_ENCODER = msgspec.json.Encoder()

FaultFn = Callable[["FaultRun", Exchange, Reply], Awaitable[None]]
Body = Callable[["FaultRun", Exchange], dict[str, Any]]


# ------------------------------------------------------------ helpers


def _split(chunks: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The role chunk and the content-bearing chunks (without finish and usage chunks)."""
    body = list(itertools.takewhile(
        lambda c: bool(c["choices"]) and c["choices"][0]["finish_reason"] is None, chunks[1:]))
    return chunks[0], body


async def _stream(ex: Exchange, chunks: Iterable[dict[str, Any]], tail: bytes | None = wire.DONE) -> None:
    """200 event-stream, one write per chunk; `tail` None leaves the body open."""
    await ex.start()
    for chunk in chunks:
        await ex.write(wire.sse(chunk))
    if tail is not None:
        await ex.end(tail)


async def _partial_stream(ex: Exchange, reply: Reply, tokens: int) -> None:
    """The role chunk and the first `tokens` content chunks; the body stays open."""
    role, body = _split(ex.chunks(reply))
    await _stream(ex, [role, *body[:tokens]], tail=None)


async def _partial_body(ex: Exchange, reply: Reply) -> None:
    """A 200 promising the whole JSON completion, and half of it; the body stays open."""
    body = _ENCODER.encode(ex.completion(reply))
    await ex.start(200, "application/json", [("content-length", str(len(body)))])
    await ex.write(body[: len(body) // 2])


async def _hold_then_reset(fx: FaultRun, ex: Exchange) -> None:
    await anyio.sleep(fx.param("hold"))  # the app cancels this when the client leaves
    await ex.abort()


def _error(status: int, body: Body, retry_after: str | None = None) -> FaultFn:
    """A fault that answers every request with one JSON error (stream or not)."""

    async def run(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
        seconds = fx.params.get(retry_after) if retry_after else None
        headers = [] if seconds is None else [("retry-after", str(math.ceil(seconds)))]
        await ex.respond_json(status, body(fx, ex), headers)

    return run


# ------------------------------------------------------------ the faults

rate_limit_retry_after = _error(429, B.rate_limited, retry_after="retry_after")
rate_limit_no_header = _error(429, B.rate_limited)
unavailable_persistent = _error(503, B.unavailable)
overloaded_529 = _error(529, B.overloaded)
context_length = _error(400, B.context_length)
content_filter = _error(403, B.moderation)
auth_401 = _error(401, B.invalid_key)
credits_402 = _error(402, B.no_credits, retry_after="retry_after")
huge_retry_after = _error(429, B.rate_limited, retry_after="retry_after")
all_routes_down = _error(503, B.no_providers)
_internal_error = _error(500, B.server_error)
_unavailable_503 = _error(503, B.unavailable)
_bad_gateway_502 = _error(502, B.bad_gateway)
_upstream_error_502 = _error(502, B.upstream_error)
_prefill_400 = _error(400, B.prefill_rejected)


async def server_error_once(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    await (_internal_error(fx, ex, reply) if fx.nth == 0 else fx.inner.deliver(ex, reply))


async def flapping_primary(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    good = int(fx.param("good"))
    cycle = good + int(fx.param("bad")) or 1
    await (fx.inner.deliver(ex, reply) if fx.nth % cycle < good else _unavailable_503(fx, ex, reply))


async def flapping_timed(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    """Down (503) for <down> s, then up for <up> s, repeating from wall-clock <epoch>: a
    flapping upstream in time, whatever the traffic (flapping_primary counts requests)."""
    down, up = fx.param("down"), fx.param("up")
    phase = (time.time() - fx.param("epoch")) % ((down + up) or 1.0)
    await (_unavailable_503(fx, ex, reply) if phase < down else fx.inner.deliver(ex, reply))


async def fallback_rejects_prefill(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    messages = ex.request.get("messages") or [None]
    last = messages[-1]
    prefilled = isinstance(last, dict) and last.get("role") == "assistant"
    await (_prefill_400(fx, ex, reply) if prefilled else fx.inner.deliver(ex, reply))


async def tcp_reset(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    await ex.abort()


async def no_response(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    await _hold_then_reset(fx, ex)


async def slow_ttft(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    await anyio.sleep(fx.param("delay"))
    await fx.inner.deliver(ex, reply)


async def stream_cut(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    if not ex.stream:
        await _partial_body(ex, reply)
        await ex.abort()
        return
    role, body = _split(ex.chunks(reply))
    await _stream(ex, [role, *body[: (len(body) + 1) // 2]], tail=None)
    await (ex.abort() if fx.param("reset") else ex.end())


async def stream_stall(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    await (_partial_stream(ex, reply, int(fx.param("tokens"))) if ex.stream else _partial_body(ex, reply))
    await _hold_then_reset(fx, ex)


async def malformed_chunk(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    if not ex.stream:
        body = _ENCODER.encode(ex.completion(reply))
        await ex.respond(200, body[: len(body) // 2], "application/json")
        return
    chunks = ex.chunks(reply)
    bad = len(chunks) // 2  # never the role chunk: there are always at least two
    await ex.start()
    for i, chunk in enumerate(chunks):
        data = _ENCODER.encode(chunk)
        await ex.write(b"data: " + data[: len(data) // 2] + b"\n\n" if i == bad else wire.sse(chunk))
    await ex.end(wire.DONE)


async def no_done(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    if not ex.stream:
        await fx.inner.deliver(ex, reply)
        return
    await _stream(ex, ex.chunks(reply), tail=b"")


async def failover_accounting(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    if not ex.stream:
        await _bad_gateway_502(fx, ex, reply)
        return
    await _partial_stream(ex, reply, int(fx.param("tokens")))
    await ex.abort()


async def html_502(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    await ex.respond(502, B.CLOUDFLARE_502.encode(), B.HTML, [("server", "cloudflare"), ("cf-ray", B.CF_RAY)])


async def html_200(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    await ex.respond(200, B.LOGIN_PAGE.encode(), B.HTML)


async def keepalive_only(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    # Non-stream: newlines are valid leading JSON whitespace, so the body never goes wrong, only never ends.
    await (ex.start() if ex.stream else ex.start(200, "application/json"))
    beat = KEEPALIVE if ex.stream else b"\n"
    with anyio.move_on_after(fx.param("hold")):
        while True:
            await ex.write(beat)
            await anyio.sleep(fx.param("interval"))
    await ex.abort()


async def inband_error_after_tokens(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    error = {"code": "server_error", "message": "Provider disconnected unexpectedly"}
    if not ex.stream:
        text = reply.content or ""
        await ex.respond_json(200, {
            "id": ex.completion_id, "object": "chat.completion", "created": ex.created, "model": ex.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text[: len(text) // 2]},
                         "finish_reason": "error"}],
            "error": error,
        })
        return
    await _partial_stream(ex, reply, int(fx.param("tokens")))
    await ex.end(wire.sse({**ex.chunk_head(), "provider": B.PROVIDER, "error": error,
                           "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}))


def _made_up_call(request: dict[str, Any], reply: Reply) -> CallSpec:
    """The call a model cut off at max_tokens might have been writing."""
    tools = request.get("tools") or ()
    first = tools[0] if tools and isinstance(tools[0], dict) else {}
    name = (first.get("function") or {}).get("name") or "write_file"
    return CallSpec(name, {"path": "NOTES.md", "content": reply.content or "Notes on the workspace."})


async def finish_reason_rewrite(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    call = reply.tool_calls[0] if reply.tool_calls else _made_up_call(ex.request, reply)
    full = _ENCODER.encode(call.arguments).decode()
    cut = [full[: max(1, len(full) // 2)]]  # a strict prefix of a JSON object never parses
    rewritten = Reply(content=reply.content if reply.tool_calls else None, tool_calls=[call],
                      finish_reason="tool_calls")
    if ex.stream:
        await _stream(ex, ex.chunks(rewritten, arguments=cut))
    else:
        await ex.respond_json(200, ex.completion(rewritten, arguments=cut))


def _prose(reply: Reply) -> Reply:
    if not reply.tool_calls:
        return reply
    said = "; ".join(f"{c.name} with {_ENCODER.encode(c.arguments).decode()}" for c in reply.tool_calls)
    text = f"I would now use {said}, but I cannot call tools here."
    return Reply(content=f"{reply.content}\n\n{text}" if reply.content else text, finish_reason="stop")


async def tool_stripping(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    await fx.inner.deliver(ex, _prose(reply))


async def fake_streaming(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    if not ex.stream:
        await slow_ttft(fx, ex, reply)
        return
    await ex.start()
    await anyio.sleep(fx.param("delay"))
    await ex.end(b"".join(map(wire.sse, ex.chunks(reply))) + wire.DONE)  # one write: one burst


async def missing_usage(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    if ex.stream:
        await _stream(ex, ex.chunks(reply, usage=False))
    else:
        await ex.respond_json(200, ex.completion(reply, usage=False))


async def deferred_first_chunk_error(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    if not ex.stream:
        await _upstream_error_502(fx, ex, reply)
        return
    await ex.start()
    await ex.end(wire.sse(B.upstream_error(fx, ex)))


async def _trickle_stream(ex: Exchange, reply: Reply, interval: float) -> None:
    role, body = _split(ex.chunks(reply))
    await _stream(ex, [role], tail=None)
    pieces = [c["choices"][0]["delta"].get("content") for c in body]
    for piece in itertools.cycle([p for p in pieces if p] or ["…"]):
        await anyio.sleep(interval)
        await ex.write(wire.sse({**ex.chunk_head(), "choices": [
            {"index": 0, "delta": {"content": piece}, "finish_reason": None}]}))


async def _trickle_body(ex: Exchange, reply: Reply, interval: float) -> None:
    data = _ENCODER.encode(ex.completion(reply))
    await ex.start(200, "application/json", [("content-length", str(len(data)))])
    for at in range(0, len(data) - 1, TRICKLE_BYTES):
        await ex.write(data[at : min(at + TRICKLE_BYTES, len(data) - 1)])
        await anyio.sleep(interval)
    await anyio.sleep_forever()  # the last byte never comes


async def slow_trickle(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    with anyio.move_on_after(fx.param("hold")):
        await (_trickle_stream if ex.stream else _trickle_body)(ex, reply, fx.param("interval"))
    await ex.abort()


async def json_error_in_200(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    error = B.openrouter_error(502, "Upstream provider returned an error", provider_name=B.PROVIDER)
    if ex.stream:
        await ex.start()
        await ex.write(wire.sse(error))
        await ex.end(wire.DONE)
    else:
        await ex.respond_json(200, error)


# ------------------------------------------------------------ scripted: one recorded response


async def scripted(fx: FaultRun, ex: Exchange, reply: Reply) -> None:
    """One response as a run recorded it (`kcctl incident --scenario`): after <delay> s, either
    a literal status / content type / body (error bodies, HTML pages, a JSON error in a 200),
    or, for a 200 without a body, the scripted reply itself, whole or cut after <events>
    content chunks, with or without its terminator, ending cleanly or with a TCP reset."""
    await anyio.sleep(fx.param("delay"))
    status, body, content_type = int(fx.param("status")), str(fx.params["body"]), str(fx.params["content_type"])
    seconds = fx.params.get("retry_after")
    headers = [] if seconds is None else [("retry-after", str(math.ceil(seconds)))]
    if body or status != 200:
        data = body.encode() if body else _ENCODER.encode(B.for_status(status))
        await ex.respond(status, data, content_type or "application/json", headers)
        return
    events, whole = fx.params.get("events"), bool(fx.param("terminator"))
    if events is None and whole:
        await fx.inner.deliver(ex, reply)
        return
    if not ex.stream:
        await _partial_body(ex, reply)  # a JSON completion cannot be cut by events: half of it, then a reset
        await ex.abort()
        return
    chunks = ex.chunks(reply)
    role, content = _split(chunks)
    sent = [role, *content[: int(events)]] if events is not None else chunks
    await ex.start(200, content_type or "text/event-stream", headers)
    for chunk in sent:
        await ex.write(wire.sse(chunk))
    if fx.param("reset"):
        await ex.abort()
    else:
        await ex.end(wire.DONE if whole else b"")

