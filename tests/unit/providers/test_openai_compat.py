"""OpenAI-compatible adapter: request bodies, the real simulator over loopback,
and classification of every provider fault the adapter must detect."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable

import anyio
import httpx
import msgspec
import pytest

from kcd.providers.endpoints import Endpoint, Secret, resolve_endpoint
from kcd.providers.openai_compat import Timeouts, build_body, send_chat
from kcd.providers.routes import parse_route
from kcd.providers.types import ChatMessage, ChatRequest, ToolCall, ToolSchema
from kcd.simulator.behaviours import Reply
from kcd.simulator.delivery import Exchange
from kcd.simulator.server import serve_asgi, serve_simulator
from kcd.simulator import wire

from ..running_simulator import running_simulator

pytestmark = pytest.mark.anyio

KEY = "sk-or-test-SECRET-0123456789"
ROUTE = parse_route("openrouter/x-ai/grok-4-fast")
ENDPOINT = Endpoint(provider="openrouter", base_url="http://upstream.test/api/v1",
                    api_key=Secret(KEY), key_env="OPENROUTER_API_KEY", headers={"X-Title": "KyleCode"})
FAST = Timeouts(connect=2, write=2, ttft=2, idle=2, progress=2, total=5)

LIST_DIR = ToolSchema(name="list_dir", description="List a directory",
                      parameters={"type": "object", "properties": {"path": {"type": "string"}},
                                  "required": ["path"]})


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def user(text: str = "hi", *, stream: bool = False, tools: list[ToolSchema] | None = None) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], stream=stream, tools=tools or [])


# ------------------------------------------------------------------ build_body


def test_build_body_relays_tool_calls_and_results_and_never_mutates():
    request = ChatRequest(
        messages=[
            ChatMessage(role="system", content="sys"),
            ChatMessage(role="user", content="list"),
            ChatMessage(role="assistant", content=None,
                        tool_calls=[ToolCall(id="call_1", name="list_dir", arguments='{"path":"."}')]),
            ChatMessage(role="tool", content="a\nb/", tool_call_id="call_1", name="list_dir"),
        ],
        tools=[LIST_DIR],
        stream=True,
        params={"temperature": 0.2, "max_tokens": 50, "model": "ignored", "stream": False},
    )
    before = msgspec.to_builtins(request)
    body = build_body(ROUTE, request)
    assert msgspec.to_builtins(request) == before
    assert body["model"] == "x-ai/grok-4-fast"
    assert body["temperature"] == 0.2 and body["max_tokens"] == 50
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "list"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "list_dir", "arguments": '{"path":"."}'}}
        ]},
        {"role": "tool", "content": "a\nb/", "tool_call_id": "call_1", "name": "list_dir"},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "list_dir", "description": "List a directory", "parameters": LIST_DIR.parameters}}]
    # the body is plain JSON
    assert json.loads(msgspec.json.encode(body)) == body


def test_build_body_without_tools_has_no_tools_key_and_no_stream_fields():
    body = build_body(ROUTE, user())
    assert "tools" not in body
    assert "stream" not in body and "stream_options" not in body
    assert body["messages"] == [{"role": "user", "content": "hi"}]


# ------------------------------------------------------------------ helpers


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    async def async_handler(request: httpx.Request) -> httpx.Response:
        return handler(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(async_handler))


def sse_body(*objs: object, done: bool = True) -> bytes:
    out = b"".join(b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n" for o in objs)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(content: str | None = None, finish: str | None = None, **delta: object) -> dict:
    d = dict(delta)
    if content is not None:
        d["content"] = content
    return {"id": "gen-1", "object": "chat.completion.chunk", "model": "x-ai/grok-4-fast",
            "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def respond(status: int, body: bytes, ctype: str | None, headers: dict | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        h = dict(headers or {})
        if ctype is not None:
            h["content-type"] = ctype
        return httpx.Response(status, headers=h, content=body)
    return handler


async def attempt_with(handler, request: ChatRequest | None = None, **kw):
    async with mock_client(handler) as client:
        return await send_chat(client, ENDPOINT, ROUTE, request or user(stream=True), timeouts=FAST, **kw)


# ------------------------------------------------------------------ real simulator


@pytest.fixture
async def sim() -> AsyncIterator:
    async with running_simulator() as handle:
        yield handle


@pytest.fixture(params=["httpx", "aiohttp", "aiohttp-client"])
async def client(request) -> AsyncIterator[httpx.AsyncClient]:
    """Every upstream client must behave alike: httpx's own (`upstream_client: httpx`), httpx
    on the aiohttp transport, and the daemon's default `AiohttpClient`; every loopback test
    below runs on each."""
    from kcd.providers.aiohttp_client import AiohttpClient
    from kcd.providers.aiohttp_transport import AiohttpTransport
    from kcd.providers.dispatcher import POOL_LIMITS

    if request.param == "aiohttp-client":
        direct = AiohttpClient(POOL_LIMITS)
        try:
            yield direct
        finally:
            await direct.aclose()
        return
    transport = AiohttpTransport(POOL_LIMITS) if request.param == "aiohttp" else None
    async with httpx.AsyncClient(trust_env=False, transport=transport) as c:
        yield c


def sim_endpoint(sim) -> tuple:
    route = parse_route("mock/dev")
    return route, resolve_endpoint(route, {"MOCK_API_KEY": KEY}, simulator_url=sim.base_url)


@pytest.mark.parametrize("stream", [False, True])
async def test_native_tool_call_from_simulator(sim, client, stream):
    route, endpoint = sim_endpoint(sim)
    att = await send_chat(client, endpoint, route, user("enumerate", stream=stream, tools=[LIST_DIR]),
                          timeouts=FAST)
    assert att.ok, att.failure
    assert att.streamed is stream and att.stream_requested is stream
    r = att.response
    assert r.finish_reason == "tool_calls" and r.content == ""
    assert [(c.id, c.name, json.loads(c.arguments)) for c in r.tool_calls] == [
        ("call_1", "list_dir", {"path": ".", "depth": 2})]
    assert r.usage is not None and r.usage.total_tokens > 0
    assert r.model == "dev"
    assert att.status_code == 200 and att.request_id and att.request_id.startswith("simreq-")
    assert r.request_id == att.request_id
    assert att.url == sim.base_url + "/chat/completions"
    assert att.ttft_s is not None and att.latency_s >= att.ttft_s
    if stream:
        assert att.events > 3 and att.content_type.startswith("text/event-stream")
        assert att.request_headers["Accept"] == "text/event-stream"
    seen = sim.state.requests[-1]
    assert seen["stream"] is stream and seen["tools"] == 1 and seen["auth_scheme"] == "Bearer"
    assert "authorization" not in seen["headers"]
    assert (seen["body"].get("stream_options") == {"include_usage": True}) is stream
    # no secret anywhere in what the attempt records
    assert KEY not in json.dumps(att.to_record())
    assert att.request_headers["Authorization"] == "Bearer ***REDACTED***"


async def test_text_mode_stream_is_byte_exact_and_reports_chunks(sim, client):
    route, endpoint = sim_endpoint(sim)
    pieces: list[str] = []
    streamed = await send_chat(client, endpoint, route, user("enumerate", stream=True),
                               timeouts=FAST, on_chunk=pieces.append)
    plain = await send_chat(client, endpoint, route, user("enumerate"), timeouts=FAST)
    assert streamed.ok and plain.ok
    expected = '<TOOL_CALL> list_dir(path=".", depth=2) </TOOL_CALL>'
    assert plain.response.content == expected
    assert streamed.response.content == expected
    assert len(pieces) > 1 and "".join(pieces) == expected
    assert streamed.response.tool_calls == [] and streamed.response.finish_reason == "stop"
    assert streamed.no_terminator is False


async def test_echo_preserves_whitespace_and_unicode(sim, client):
    route = parse_route("mock/echo")
    endpoint = resolve_endpoint(route, {}, simulator_url=sim.base_url)
    text = "  leading\n\ttabs and trailing  \r\n é€😀  "
    for stream in (True, False):
        att = await send_chat(client, endpoint, route, user(text, stream=stream), timeouts=FAST)
        assert att.ok and att.response.content == text


async def test_connections_are_reused_after_streams(client):
    """Streams are drained to EOF, so the next attempt reuses the connection."""
    from kcd.simulator.app import create_app

    inner = create_app()
    peers: list[tuple] = []

    async def recording(scope, receive, send):
        if scope["type"] == "http":
            peers.append(tuple(scope["client"]))
        await inner(scope, receive, send)

    async with anyio.create_task_group() as tg:
        handle = await tg.start(serve_asgi, recording)
        route = parse_route("mock/echo")
        endpoint = resolve_endpoint(route, {}, simulator_url=handle.base_url)
        for stream in (True, True, False, True):
            assert (await send_chat(client, endpoint, route, user(stream=stream), timeouts=FAST)).ok
        tg.cancel_scope.cancel()
    assert len(peers) == 4 and len(set(peers)) == 1


async def test_authorization_omitted_without_key():
    seen: list[httpx.Request] = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]})

    endpoint = Endpoint(provider="openai", base_url="http://upstream.test/v1", key_env="OPENAI_API_KEY")
    async with mock_client(handler) as c:
        att = await send_chat(c, endpoint, parse_route("gpt-4o-mini"), user(), timeouts=FAST)
    assert att.ok and att.response.content == "ok" and att.response.usage is None
    assert "authorization" not in seen[0].headers
    assert seen[0].headers["accept"] == "application/json"
    assert str(seen[0].url) == "http://upstream.test/v1/chat/completions"


# ------------------------------------------------------------------ HTML and bodies


CF_PAGE = (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
           b"<h1>Bad gateway</h1><p>cloudflare</p><p>cf-ray: 8a1b2c</p></body></html>")


async def test_html_502_is_retryable_upstream_html_with_evidence():
    att = await attempt_with(respond(502, CF_PAGE, "text/html; charset=utf-8",
                                     {"cf-ray": "8a1b2c", "set-cookie": "session=abc", "x-request-id": "r-1"}),
                             user())
    f = att.failure
    assert f is not None and att.response is None
    assert str(f) == "openrouter/x-ai/grok-4-fast: upstream_html (HTTP 502): HTML error page from the provider"
    assert f.classification == "upstream_html" and f.retryable is True and f.status_code == 502
    d = f.details
    assert d["html_detected"] is True and d["html_class"] == "gateway_protection"
    assert "Bad gateway" in d["html_excerpt"] and "<h1>" not in d["html_excerpt"]
    assert d["body_snippet"].startswith("<!DOCTYPE html>")
    assert d["raw_body_b64"] and d["request_id"] == "r-1"
    assert "set-cookie" not in d["response_headers"] and d["response_headers"]["cf-ray"] == "8a1b2c"
    assert "set-cookie" not in att.response_headers
    assert att.raw_excerpt.startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("stream", [False, True])
async def test_html_200_is_not_retried_and_hints_at_base_url(stream):
    page = b"\n  <html><body>Please sign in to continue</body></html>"
    att = await attempt_with(respond(200, page, "text/html"), user(stream=stream))
    f = att.failure
    assert f.classification == "upstream_html" and f.retryable is False
    assert f.details["html_class"] == "upstream_html" and "base_url" in f.details["hint"]


async def test_html_sniffed_without_content_type_and_inside_event_stream():
    att = await attempt_with(respond(503, b"   <html>Too Many Requests</html>", None), user())
    assert att.failure.classification == "upstream_html"
    assert att.failure.details["html_class"] == "rate_limited"
    att = await attempt_with(respond(200, b"<html>Down for maintenance</html>", "text/event-stream"))
    assert att.failure.classification == "upstream_html"
    assert att.failure.details["html_class"] == "maintenance"


async def test_error_object_in_a_200_body_is_a_failure():
    body = json.dumps({"error": {"message": "Provider returned error", "code": 502,
                                 "metadata": {"provider_name": "xAI"}}}).encode()
    att = await attempt_with(respond(200, body, "application/json"), user())
    f = att.failure
    assert f.classification == "json_error_body" and f.retryable is True
    assert "Provider returned error" in str(f)
    assert f.details["provider_error"]["metadata"]["provider_name"] == "xAI"


async def test_auth_error_names_the_key_variable():
    body = json.dumps({"error": {"message": "No auth credentials found", "code": 401}}).encode()
    att = await attempt_with(respond(401, body, "application/json"), user())
    f = att.failure
    assert f.classification == "auth_error" and f.retryable is False and f.status_code == 401
    assert "OPENROUTER_API_KEY" in f.details["hint"]
    assert "No auth credentials found" in str(f)
    assert KEY not in json.dumps(att.to_record())


@pytest.mark.parametrize("status,retryable", [(400, False), (404, False), (422, False), (408, True),
                                              (429, True), (500, True), (503, True)])
@pytest.mark.parametrize("stream", [False, True])
async def test_http_errors_carry_the_provider_message(status, retryable, stream):
    body = json.dumps({"error": {"message": f"boom {status}", "type": "x"}}).encode()
    att = await attempt_with(respond(status, body, "application/json", {"retry-after": "2"}),
                             user(stream=stream))
    f = att.failure
    assert f.classification == "http_error" and f.retryable is retryable and f.status_code == status
    assert f.message == f"boom {status}"
    assert f.details["retry_after_s"] == 2.0


async def test_other_content_types_are_non_json():
    att = await attempt_with(respond(200, b"hello, plain text", "text/plain"), user())
    assert att.failure.classification == "non_json" and att.failure.retryable is True
    assert att.raw_excerpt == "hello, plain text"
    att = await attempt_with(respond(200, b'{"choices": [', "application/json"), user())
    assert att.failure.classification == "non_json"


async def test_empty_completion_is_a_failure():
    body = json.dumps({"choices": [{"message": {"content": None}, "finish_reason": "stop"}]}).encode()
    att = await attempt_with(respond(200, body, "application/json"), user())
    assert att.failure.classification == "empty_response"


async def test_plain_json_answer_to_a_stream_request_is_accepted():
    body = json.dumps({"id": "c1", "model": "m", "choices": [{"message": {"content": "hi there"},
                       "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                           "total_tokens": 5}}).encode()
    att = await attempt_with(respond(200, body, "application/json; charset=utf-8"), user(stream=True))
    assert att.ok and att.streamed is False and att.stream_requested is True
    assert att.response.content == "hi there" and att.response.usage.total_tokens == 5


async def test_non_stream_tool_calls_with_cut_arguments_are_truncated():
    body = json.dumps({"choices": [{"message": {"content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "write", "arguments": '{"path": "a.c", "cont'}}]},
        "finish_reason": "tool_calls"}]}).encode()
    att = await attempt_with(respond(200, body, "application/json"), user())
    assert att.failure.classification == "stream_truncated"
    assert att.partial is not None and att.partial.tool_calls[0].name == "write"


# ------------------------------------------------------------------ streams


async def test_stream_assembles_content_tools_usage_and_counts_comments():
    usage = {"id": "gen-1", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}
    body = (b": OPENROUTER PROCESSING\n\n" + sse_body(
        chunk("", role="assistant"),
        chunk(" Hel"), chunk("lo  "),
        chunk(tool_calls=[{"index": 0, "id": "call_a", "type": "function",
                           "function": {"name": "read_file", "arguments": ""}}]),
        chunk(tool_calls=[{"index": 1, "id": "call_b", "function": {"name": "list_dir", "arguments": "{}"}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"path":'}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": ' "a b.c"}'}}]),
        chunk(finish="tool_calls"),
        usage,
    ))
    pieces: list[str] = []
    att = await attempt_with(respond(200, body, "text/event-stream", {"x-generation-id": "gen-1"}),
                             on_chunk=pieces.append)
    assert att.ok, att.failure
    r = att.response
    assert r.content == " Hello  " and pieces == [" Hel", "lo  "]
    assert [(c.id, c.name, c.arguments) for c in r.tool_calls] == [
        ("call_a", "read_file", '{"path": "a b.c"}'), ("call_b", "list_dir", "{}")]
    assert r.usage.total_tokens == 12 and r.finish_reason == "tool_calls"
    assert r.request_id == "gen-1" and att.request_id == "gen-1"
    assert att.comments == 1 and att.events == 10
    assert r.raw["choices"][0]["message"]["tool_calls"][0]["id"] == "call_a"


async def test_stream_without_usage_or_done_is_a_flagged_success():
    body = sse_body(chunk("ok"), chunk(finish="stop"), done=False)
    att = await attempt_with(respond(200, body, "text/event-stream"))
    assert att.ok and att.response.usage is None and att.no_terminator is True


@pytest.mark.parametrize("before_tokens", [False, True])
async def test_in_band_error_fails_the_stream(before_tokens):
    err = {"id": "gen-1", "error": {"message": "Upstream overloaded", "code": 503},
           "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}
    objs = [err] if before_tokens else [chunk("partial "), chunk("answer"), err]
    att = await attempt_with(respond(200, sse_body(*objs), "text/event-stream"))
    f = att.failure
    assert f.classification == "stream_error" and f.retryable is True
    assert "Upstream overloaded" in str(f)
    assert f.details["after_tokens"] is (not before_tokens)
    if not before_tokens:
        assert att.partial.content == "partial answer"


async def test_finish_reason_error_without_error_object():
    att = await attempt_with(respond(200, sse_body(chunk("x"), chunk(finish="error")), "text/event-stream"))
    assert att.failure.classification == "stream_error"


async def test_eof_without_finish_reason_is_truncated():
    body = sse_body(chunk("The answer is"), done=False) + b'data: {"id":"gen-1","choi'
    att = await attempt_with(respond(200, body, "text/event-stream"))
    f = att.failure
    assert f.classification == "stream_truncated" and f.retryable is True
    assert f.details["cut_line_bytes"] > 0
    assert att.partial.content == "The answer is"
    assert att.raw_excerpt.startswith("data: ")


async def test_done_without_finish_reason_is_truncated():
    att = await attempt_with(respond(200, sse_body(chunk("abc")), "text/event-stream"))
    assert att.failure.classification == "stream_truncated"


async def test_malformed_chunk():
    body = sse_body(chunk("a"), b"{not json", chunk(finish="stop"))
    att = await attempt_with(respond(200, body, "text/event-stream"))
    f = att.failure
    assert f.classification == "stream_malformed" and f.retryable is True
    assert f.details["data"] == "{not json"


async def test_tool_calls_finish_with_cut_arguments_is_truncated():
    body = sse_body(
        chunk(tool_calls=[{"index": 0, "id": "c1", "function": {"name": "write", "arguments": '{"path": "x", '}}]),
        chunk(finish="tool_calls"),
    )
    att = await attempt_with(respond(200, body, "text/event-stream"))
    f = att.failure
    assert f.classification == "stream_truncated" and "write" in f.message
    assert f.details["arguments_excerpt"] == '{"path": "x", '


async def test_empty_stream_answer_is_empty_response():
    att = await attempt_with(respond(200, sse_body(chunk("", role="assistant"), chunk(finish="stop")),
                                     "text/event-stream"))
    assert att.failure.classification == "empty_response"


async def test_connect_error_is_typed(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    endpoint = Endpoint(provider="openai", base_url=f"http://127.0.0.1:{port}/v1", key_env="OPENAI_API_KEY")
    att = await send_chat(client, endpoint, parse_route("gpt-4o-mini"), user(), timeouts=FAST)
    assert att.failure.classification == "connect_error" and att.failure.retryable is True
    assert att.status_code is None


# ------------------------------------------------------------------ timeouts


def slow_stream(*steps: tuple[float, bytes]):
    """A handler whose SSE body yields each (delay, bytes) step in turn."""
    async def body() -> AsyncIterator[bytes]:
        for delay, data in steps:
            await anyio.sleep(delay)
            yield data

    def handler(request):
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())
    return handler


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_headers_hit_ttft_only_for_streams(stream):
    async def handler(request):
        await anyio.sleep(0.5)  # a non-streamed answer arrives whole, after generation
        return httpx.Response(200, json={"choices": [{"message": {"content": "late"}, "finish_reason": "stop"}]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
        att = await send_chat(c, ENDPOINT, ROUTE, user(stream=stream), timeouts=Timeouts(ttft=0.2, total=5))
    if stream:
        assert att.failure.classification == "timeout.ttft" and att.status_code is None
    else:
        assert att.ok and att.response.content == "late" and att.ttft_s >= 0.5


async def test_keepalive_comments_do_not_satisfy_ttft():
    t = Timeouts(ttft=0.3, idle=5, total=5)
    handler = slow_stream(*[(0.05, b": OPENROUTER PROCESSING\n\n")] * 40)
    async with mock_client(handler) as c:
        att = await send_chat(c, ENDPOINT, ROUTE, user(stream=True), timeouts=t)
    f = att.failure
    assert f.classification == "timeout.ttft" and f.retryable is True
    assert att.comments >= 3 and att.latency_s < 1.5


async def test_idle_timeout_when_no_bytes_arrive():
    t = Timeouts(ttft=5, idle=0.3, total=5)
    handler = slow_stream((0, sse_body(chunk("a"), done=False)), (3, b""))
    async with mock_client(handler) as c:
        att = await send_chat(c, ENDPOINT, ROUTE, user(stream=True), timeouts=t)
    assert att.failure.classification == "timeout.idle" and att.partial.content == "a"
    assert att.latency_s < 1.5


async def test_progress_timeout_when_only_keepalives_follow_tokens():
    t = Timeouts(ttft=5, idle=5, progress=0.3, total=5)
    handler = slow_stream((0, sse_body(chunk("a"), done=False)), *[(0.05, b": ping\n\n")] * 60)
    async with mock_client(handler) as c:
        att = await send_chat(c, ENDPOINT, ROUTE, user(stream=True), timeouts=t)
    assert att.failure.classification == "timeout.idle_progress"


async def test_total_timeout_on_a_slow_trickle():
    t = Timeouts(ttft=5, idle=5, progress=5, total=0.4)
    handler = slow_stream(*[(0.05, sse_body(chunk("x"), done=False))] * 40)
    async with mock_client(handler) as c:
        att = await send_chat(c, ENDPOINT, ROUTE, user(stream=True), timeouts=t)
    assert att.failure.classification == "timeout.total"
    assert 0.35 < att.latency_s < 1.5


async def test_server_holding_the_body_open_after_done_is_still_a_success():
    t = Timeouts(ttft=5, idle=0.3, total=10)
    handler = slow_stream((0, sse_body(chunk("fine"), chunk(finish="stop"))), (30, b""))
    async with mock_client(handler) as c:
        att = await send_chat(c, ENDPOINT, ROUTE, user(stream=True), timeouts=t)
    assert att.ok and att.response.content == "fine"
    assert att.latency_s < 2


async def test_cancellation_propagates_and_closes_the_response():
    handler = slow_stream((0, b": hi\n\n"), (30, b""))
    async with mock_client(handler) as c:
        with anyio.move_on_after(0.2) as scope:
            await send_chat(c, ENDPOINT, ROUTE, user(stream=True), timeouts=Timeouts())
    assert scope.cancelled_caught


# ------------------------------------------------------------------ over loopback, through the delivery seam


class KeepAliveOnly:
    """A fault delivery: 200 event-stream headers, then only comments."""

    def __init__(self) -> None:
        self.disconnected = anyio.Event()

    async def deliver(self, ex: Exchange, reply: Reply) -> None:
        await ex.start()
        try:
            for _ in range(200):
                await ex.write(b": OPENROUTER PROCESSING\n\n")
                await anyio.sleep(0.02)
        finally:
            self.disconnected.set()  # cancelled by the app when the client goes away


class CutMidStream:
    """A fault delivery: half the chunks, then the connection drops."""

    async def deliver(self, ex: Exchange, reply: Reply) -> None:
        chunks = ex.chunks(reply)
        await ex.start()
        for c in chunks[: len(chunks) // 2]:
            await ex.write(wire.sse(c))
        raise RuntimeError("simulated connection reset")  # uvicorn closes the transport


async def test_ttft_timeout_over_loopback_and_server_sees_disconnect(client):
    delivery = KeepAliveOnly()
    async with anyio.create_task_group() as tg:
        handle = await tg.start(lambda **kw: serve_simulator(delivery=delivery, **kw))
        route = parse_route("mock/echo")
        endpoint = resolve_endpoint(route, {}, simulator_url=handle.base_url)
        att = await send_chat(client, endpoint, route, user(stream=True),
                              timeouts=Timeouts(ttft=0.3, idle=5, total=5))
        assert att.failure.classification == "timeout.ttft" and att.comments > 3
        with anyio.fail_after(3):
            await delivery.disconnected.wait()
        tg.cancel_scope.cancel()


async def test_stream_cut_over_loopback_is_truncated(client):
    async with anyio.create_task_group() as tg:
        handle = await tg.start(lambda **kw: serve_simulator(delivery=CutMidStream(), **kw))
        route = parse_route("mock/echo")
        endpoint = resolve_endpoint(route, {}, simulator_url=handle.base_url)
        att = await send_chat(client, endpoint, route, user("a fairly long message to stream " * 3, stream=True),
                              timeouts=FAST)
        tg.cancel_scope.cancel()
    f = att.failure
    assert f.classification == "stream_truncated" and f.retryable is True
    assert att.partial is not None and 0 < len(att.partial.content) < 99


# ------------------------------------------------------------------ endpoints and failures


def test_endpoint_defaults_env_overrides_and_secrets():
    from kcd.providers.endpoints import EndpointError

    env = {"OPENAI_API_KEY": KEY, "OPENROUTER_API_KEY": KEY, "OPENROUTER_HTTP_REFERER": ""}
    oa = resolve_endpoint(parse_route("gpt-4o-mini"), env)
    assert oa.base_url == "https://api.openai.com/v1" and oa.key_env == "OPENAI_API_KEY" and oa.has_key
    assert oa.api_key.reveal() == KEY
    assert KEY not in repr(oa) and KEY not in str(oa.api_key) and repr(oa.api_key) == "Secret('***')"
    with pytest.raises(TypeError):
        msgspec.json.encode(oa)  # a Secret cannot be serialised by accident

    orr = resolve_endpoint(ROUTE, env)
    assert orr.base_url == "https://openrouter.ai/api/v1"
    assert orr.headers == {"X-Title": "KyleCode"}  # empty referer is not sent
    orr = resolve_endpoint(ROUTE, {**env, "OPENROUTER_BASE_URL": "http://proxy.local/api/v1/",
                                   "OPENROUTER_APP_TITLE": "CI", "OPENROUTER_HTTP_REFERER": "https://x.dev"})
    assert orr.base_url == "http://proxy.local/api/v1"
    assert orr.headers == {"X-Title": "CI", "HTTP-Referer": "https://x.dev"}
    assert orr.key == "openrouter@http://proxy.local/api/v1"

    # a per-model base_url wins over the environment and the simulator
    assert resolve_endpoint(ROUTE, env, base_url="http://model.local/v1").base_url == "http://model.local/v1"
    mock = resolve_endpoint(parse_route("mock/dev"), {}, simulator_url="http://127.0.0.1:9/v1")
    assert mock.api_key.reveal() == "mock" and mock.key_env == "MOCK_API_KEY"
    assert resolve_endpoint(parse_route("mock/dev"), {}, base_url="http://other/v1",
                            simulator_url="http://127.0.0.1:9/v1").base_url == "http://other/v1"
    with pytest.raises(EndpointError, match="simulator"):
        resolve_endpoint(parse_route("mock/dev"), {})
    with pytest.raises(EndpointError, match="http"):
        resolve_endpoint(ROUTE, env, base_url="openrouter.ai/api/v1")
    assert resolve_endpoint(parse_route("gpt-4o-mini"), {}).api_key is None


def test_failure_str_record_and_pickle():
    import pickle

    from kcd.providers.errors import ProviderFailure

    f = ProviderFailure(ROUTE, "timeout.ttft", "no content within 45s")
    assert str(f) == "openrouter/x-ai/grok-4-fast: timeout.ttft: no content within 45s"
    assert f.retryable is True and f.details["classification"] == "timeout.ttft"
    g = pickle.loads(pickle.dumps(ProviderFailure(ROUTE, "http_error", "bad", status_code=400,
                                                  details={"body_snippet": "x"})))
    assert (g.route, g.classification, g.status_code, g.retryable) == (ROUTE.id, "http_error", 400, False)
    assert g.details["body_snippet"] == "x"
    assert json.loads(json.dumps(g.to_dict()))["message"] == "bad"


def test_openai_reasoning_models_get_max_completion_tokens():
    request = ChatRequest(messages=[ChatMessage(role="user", content="hi")], params={"max_tokens": 300})
    assert build_body(parse_route("openai/o4-mini"), request)["max_completion_tokens"] == 300
    assert "max_tokens" not in build_body(parse_route("openai/gpt-5-mini"), request)
    for other in ("openai/gpt-4o-mini", "openrouter/openai/o4-mini", "openrouter/x-ai/grok-4-fast"):
        body = build_body(parse_route(other), request)
        assert body["max_tokens"] == 300 and "max_completion_tokens" not in body
    assert request.params == {"max_tokens": 300}  # never mutated
