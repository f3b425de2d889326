"""Fault injection in the provider simulator (catalogue F01–F42), over real
loopback HTTP: every fault in stream and non-stream mode, the three ways of
selecting one (header, model suffix, programmed plan), the request log and stats."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from kcd.providers.sse import SSEParser
from kcd.simulator.faults import FAULTS, unused_port

from ..running_simulator import running_simulator

pytestmark = pytest.mark.anyio

TOOLS = [{"type": "function", "function": {"name": n, "description": n, "parameters": {"type": "object"}}}
         for n in ("list_dir", "read_file", "mark_task_complete")]
LONG = "The quick brown fox jumps over the lazy dog. " * 3  # 135 chars: 12 content chunks
# the first dev step with tools: list_dir with these arguments
DEV_ARGS = {"path": ".", "depth": 2}
RESET = (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)  # what a TCP reset surfaces as
DRAIN_LIMIT_S = 5.0  # no test response may take longer (the faults' default hold is 300 s)


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator:
    """One server for the module; `http` resets its state before every test."""
    async with running_simulator() as handle:
        yield handle


@pytest.fixture
async def http(sim) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.base_url, trust_env=False, timeout=5.0,
                                 headers={"Authorization": "Bearer sk-secret-value"}) as c:
        assert (await c.delete(sim.base_url.removesuffix("/v1") + "/_sim/faults")).status_code == 200
        yield c


@pytest.fixture
def root(sim) -> str:
    return sim.base_url.removesuffix("/v1")


def req(model: str = "dev", *, stream: bool = False, tools: bool = True,
        text: str = "Enumerate the workspace.", messages: list[dict] | None = None, **extra: Any) -> dict:
    body: dict[str, Any] = {"model": model, "stream": stream, **extra,
                            "messages": messages or [{"role": "system", "content": "You are a coding agent."},
                                                     {"role": "user", "content": text}]}
    if tools:
        body["tools"] = TOOLS
    return body


async def post(http: httpx.AsyncClient, body: dict, fault: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"x-kc-sim-fault": fault} if fault else {}
    return await http.post("/chat/completions", json=body, headers=headers, **kw)


def datas(raw: bytes) -> tuple[list[str], SSEParser]:
    parser = SSEParser()
    events = parser.feed(raw) + parser.close()
    return [e.data for e in events], parser


def chunks_of(data: list[str]) -> list[dict]:
    return [json.loads(d) for d in data if d != "[DONE]"]


def finishes(chunks: list[dict]) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks
            if c.get("choices") and c["choices"][0]["finish_reason"]]


def text_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def args_of(chunks: list[dict]) -> str:
    return "".join(tc["function"].get("arguments", "") for c in chunks if c.get("choices")
                   for tc in c["choices"][0]["delta"].get("tool_calls") or ())


async def drain(http: httpx.AsyncClient, body: dict, fault: str | None = None, *,
                read: float = 3.0) -> tuple[httpx.Response, bytes, str, float]:
    """Read a response to the end: (response, bytes, "eof" | "quiet" | "reset", seconds).

    "quiet": no byte for `read` seconds; "reset": the connection failed mid-body."""
    start = time.monotonic()
    headers = {"x-kc-sim-fault": fault} if fault else {}
    with anyio.fail_after(DRAIN_LIMIT_S):
        async with http.stream("POST", "/chat/completions", json=body, headers=headers,
                               timeout=httpx.Timeout(5.0, read=read)) as r:
            raw, how = b"", "eof"
            try:
                async for piece in r.aiter_raw():
                    raw += piece
            except httpx.ReadTimeout:
                how = "quiet"
            except RESET:
                how = "reset"
    return r, raw, how, time.monotonic() - start


def assert_faulted(r: httpx.Response, name: str) -> None:
    assert r.headers["x-kc-sim-fault"] == name and r.headers["x-request-id"].startswith("simreq-")


# ------------------------------------------------------------------ errors with a status (both modes)

STATUS_FAULTS = [
    # name, header value, status, retry-after, check(error body)
    ("rate_limit_retry_after", "rate_limit_retry_after", 429, "2",
     lambda e: e["error"]["code"] == "rate_limit_exceeded"),
    ("rate_limit_retry_after", "rate_limit_retry_after;retry_after=7", 429, "7", lambda e: True),
    ("rate_limit_no_header", "rate_limit_no_header", 429, None, lambda e: e["error"]["type"] == "requests"),
    ("unavailable_persistent", "unavailable_persistent", 503, None,
     lambda e: e["error"]["code"] == "service_unavailable"),
    ("overloaded_529", "overloaded_529", 529, None, lambda e: e["error"]["type"] == "overloaded_error"),
    ("context_length", "context_length", 400, None,
     lambda e: e["error"]["type"] == "invalid_request_error"
     and e["error"]["code"] == "context_length_exceeded"
     and e["error"]["message"].startswith("This model's maximum context length is")),
    ("content_filter", "content_filter", 403, None,
     lambda e: e["error"]["code"] == 403 and e["error"]["metadata"]["reasons"]
     and e["error"]["metadata"]["flagged_input"] == "Enumerate the workspace."
     and e["error"]["metadata"]["model_slug"] == "dev" and e["error"]["metadata"]["provider_name"]),
    ("auth_401", "auth_401", 401, None,
     lambda e: e["error"]["code"] == "invalid_api_key" and e["error"]["type"] == "invalid_request_error"),
    ("credits_402", "credits_402", 402, None,
     lambda e: e["error"]["code"] == 402 and "metadata" not in e["error"]),
    ("credits_402", "credits_402;retry_after=30", 402, "30",
     lambda e: e["error"]["metadata"]["limit_source"] == "openrouter_in_flight_budget"),
    ("huge_retry_after", "huge_retry_after", 429, "3600",
     lambda e: e["error"]["code"] == "rate_limit_exceeded"),
    ("all_routes_down", "all_routes_down", 503, None, lambda e: e["error"]["code"] == 503),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("name", "header", "status", "retry_after", "check"), STATUS_FAULTS,
                         ids=[h for _, h, *_ in STATUS_FAULTS])
async def test_error_status_faults(http, sim, stream, name, header, status, retry_after, check):
    for _ in range(2):  # persistent: the same on every call
        r = await post(http, req(stream=stream), header)
        assert r.status_code == status and r.headers["content-type"] == "application/json"
        assert_faulted(r, name)
        assert r.headers.get("retry-after") == retry_after
        assert check(r.json()), r.text
    entry = sim.state.requests[-1]
    assert entry["fault"] == name and entry["fault_source"] == "header" and entry["status"] == status


@pytest.mark.parametrize("stream", [False, True])
async def test_html_pages(http, stream):
    r = await post(http, req(stream=stream), "html_502")
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
    assert "cf-ray" in r.text and r.text.lstrip().startswith("<") and r.headers["cf-ray"]
    assert_faulted(r, "html_502")
    r = await post(http, req(stream=stream), "html_200")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<form" in r.text and r.text.lstrip().startswith("<")


async def test_server_error_once_per_model(http, root):
    for model in ("dev", "gpt-4o-mini"):
        statuses = [(await post(http, req(model, stream=s), "server_error_once")).status_code
                    for s in (True, False, True)]
        assert statuses == [500, 200, 200]
    await http.delete(f"{root}/_sim/faults")  # counters reset: it fails once more
    assert (await post(http, req(), "server_error_once")).status_code == 500


async def test_flapping_primary_per_model(http):
    seen: dict[str, list[int]] = {"a/m": [], "b/m": []}
    for i in range(6):
        for model in seen:  # interleaved: each model has its own cycle
            r = await post(http, req(model, stream=i % 2 == 0), "flapping_primary")
            assert_faulted(r, "flapping_primary")
            seen[model].append(r.status_code)
    assert seen["a/m"] == seen["b/m"] == [200, 200, 503, 503, 200, 200]
    odd = [(await post(http, req("c/m"), "flapping_primary;good=1;bad=2")).status_code for _ in range(4)]
    assert odd == [200, 503, 503, 200]


@pytest.mark.parametrize("stream", [False, True])
async def test_fallback_rejects_prefill(http, stream):
    prefilled = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "Sure, here"}]
    r = await post(http, req(stream=stream, messages=prefilled), "fallback_rejects_prefill")
    assert r.status_code == 400 and r.json()["error"]["code"] == "prefill_unsupported"
    r = await post(http, req(stream=stream), "fallback_rejects_prefill")
    assert r.status_code == 200 and "list_dir" in r.text


# ------------------------------------------------------------------ transport faults


@pytest.mark.parametrize("stream", [False, True])
async def test_tcp_reset_is_a_connection_reset_not_a_500(http, sim, stream):
    with pytest.raises(RESET):
        await post(http, req(stream=stream), "tcp_reset")
    entry = sim.state.requests[-1]
    assert entry["fault"] == "tcp_reset" and entry["status"] is None
    assert (await post(http, req())).status_code == 200  # the server is fine


@pytest.mark.parametrize("stream", [False, True])
async def test_no_response_until_the_client_leaves_or_hold(http, stream):
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await post(http, req(stream=stream), "no_response", timeout=httpx.Timeout(5.0, read=0.3))
    assert 0.25 < time.monotonic() - start < 2
    start = time.monotonic()
    with pytest.raises(RESET):  # hold expired: the server resets the connection
        await post(http, req(stream=stream), "no_response;hold=0.3")
    assert 0.25 < time.monotonic() - start < 2


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_ttft(http, stream):
    start = time.monotonic()
    r, raw, how, _ = await drain(http, req(stream=stream), "slow_ttft;delay=0.3")
    assert how == "eof" and time.monotonic() - start >= 0.3 and r.status_code == 200
    assert_faulted(r, "slow_ttft")
    if stream:
        data, _ = datas(raw)
        assert data[-1] == "[DONE]" and finishes(chunks_of(data)) == ["tool_calls"]
    else:
        assert json.loads(raw)["choices"][0]["finish_reason"] == "tool_calls"


async def test_stream_cut_streams_half_then_eof(http):
    r, raw, how, _ = await drain(http, req("echo", stream=True, tools=False, text=LONG), "stream_cut")
    assert how == "eof" and r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    data, parser = datas(raw)
    chunks = chunks_of(data)
    assert "[DONE]" not in data and finishes(chunks) == [] and parser.discarded_tail == 0
    assert text_of(chunks) == LONG[:72]  # 6 of the 12 twelve-character pieces
    # with tools, the tool call's arguments stop part-way
    _, raw, how, _ = await drain(http, req(stream=True), "stream_cut")
    args = args_of(chunks_of(datas(raw)[0]))
    assert how == "eof" and args and json.dumps(DEV_ARGS, separators=(",", ":")).startswith(args)
    with pytest.raises(json.JSONDecodeError):
        json.loads(args)
    # reset=1: the same cut, as a TCP reset
    _, raw, how, _ = await drain(http, req("echo", stream=True, tools=False, text=LONG), "stream_cut;reset=1")
    assert how == "reset" and text_of(chunks_of(datas(raw)[0])) == LONG[:72]


async def test_stream_cut_non_stream_is_a_truncated_body(http):
    r, raw, how, _ = await drain(http, req(), "stream_cut")
    assert how == "reset" and r.status_code == 200
    assert 0 < len(raw) < int(r.headers["content-length"])


async def test_stream_stall_keeps_the_socket_open(http):
    body = req("echo", stream=True, tools=False, text=LONG)
    r, raw, how, took = await drain(http, body, "stream_stall;tokens=2", read=0.4)
    assert how == "quiet" and r.status_code == 200 and took >= 0.4
    chunks = chunks_of(datas(raw)[0])
    assert len(chunks) == 3 and text_of(chunks) == LONG[:24] and finishes(chunks) == []
    _, raw, how, took = await drain(http, body, "stream_stall;hold=0.3")
    assert how == "reset" and 0.25 < took < 2 and len(chunks_of(datas(raw)[0])) == 4  # role + 3 tokens


async def test_stream_stall_non_stream(http):
    r, raw, how, _ = await drain(http, req(), "stream_stall", read=0.3)
    assert how == "quiet" and r.status_code == 200 and 0 < len(raw) < int(r.headers["content-length"])


@pytest.mark.parametrize("stream", [False, True])
async def test_failover_accounting(http, stream):
    if not stream:
        r = await post(http, req(), "failover_accounting")
        assert r.status_code == 502 and r.json()["error"]["metadata"]["provider_name"]
        return
    body = req("echo", stream=True, tools=False, text=LONG)
    r, raw, how, _ = await drain(http, body, "failover_accounting")
    assert how == "reset" and r.status_code == 200
    chunks = chunks_of(datas(raw)[0])
    assert len(chunks) == 4 and text_of(chunks) == LONG[:36] and finishes(chunks) == []


async def test_keepalive_only_stream(http):
    r, raw, how, took = await drain(http, req(stream=True), "keepalive_only;interval=0.05;hold=0.4", read=1)
    assert how == "reset" and r.status_code == 200 and 0.35 < took < 2
    data, parser = datas(raw)
    assert data == [] and parser.comments >= 4
    assert raw.startswith(b": OPENROUTER PROCESSING\n\n")
    # the client leaving ends it (no waiting for hold)
    start = time.monotonic()
    async with http.stream("POST", "/chat/completions", json=req(stream=True),
                           headers={"x-kc-sim-fault": "keepalive_only;interval=0.05"}) as r:
        with anyio.move_on_after(0.3):
            async for _ in r.aiter_raw():
                pass
    assert time.monotonic() - start < 1
    assert (await post(http, req())).status_code == 200


async def test_keepalive_only_non_stream_sends_whitespace(http):
    raw = b""
    async with http.stream("POST", "/chat/completions", json=req(),
                           headers={"x-kc-sim-fault": "keepalive_only;interval=0.05"}) as r:
        with anyio.move_on_after(0.3):  # then the client leaves
            async for piece in r.aiter_raw():
                raw += piece
    assert r.status_code == 200 and raw.count(b"\n") >= 3 and raw.strip() == b""
    r, raw, how, _ = await drain(http, req(), "keepalive_only;interval=0.05;hold=0.3")
    assert how == "reset" and r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert raw and raw.strip() == b""


@pytest.mark.parametrize("stream", [False, True])
async def test_inband_error_after_tokens(http, stream):
    body = req("echo", stream=stream, tools=False, text=LONG)
    r, raw, how, _ = await drain(http, body, "inband_error_after_tokens")
    assert how == "eof" and r.status_code == 200
    if not stream:
        out = json.loads(raw)
        assert out["error"]["message"] and out["choices"][0]["finish_reason"] == "error"
        assert out["choices"][0]["message"]["content"] == LONG[: len(LONG) // 2]
        return
    data, _ = datas(raw)
    assert "[DONE]" not in data
    chunks = chunks_of(data)
    assert text_of(chunks[:-1]) == LONG[:36] and all("error" not in c for c in chunks[:-1])
    last = chunks[-1]
    assert last["error"]["code"] == "server_error" and last["choices"][0]["finish_reason"] == "error"


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_chunk(http, stream):
    r, raw, how, _ = await drain(http, req(stream=stream), "malformed_chunk")
    assert how == "eof" and r.status_code == 200
    if not stream:
        assert r.headers["content-type"] == "application/json"
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
        return
    data, _ = datas(raw)
    assert data[-1] == "[DONE]"
    bad = []
    for d in data[:-1]:
        try:
            json.loads(d)
        except json.JSONDecodeError:
            bad.append(d)
    assert len(bad) == 1 and bad[0].startswith("{")


@pytest.mark.parametrize("stream", [False, True])
async def test_no_done(http, stream):
    r, raw, how, _ = await drain(http, req(stream=stream), "no_done")
    assert how == "eof" and r.status_code == 200
    if not stream:
        assert json.loads(raw)["choices"][0]["finish_reason"] == "tool_calls"
        return
    data, _ = datas(raw)
    assert "[DONE]" not in data and finishes(chunks_of(data)) == ["tool_calls"]
    assert json.loads(args_of(chunks_of(data))) == DEV_ARGS


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tools", [True, False])
async def test_finish_reason_rewrite(http, stream, tools):
    r, raw, how, _ = await drain(http, req(stream=stream, tools=tools), "finish_reason_rewrite")
    assert how == "eof" and r.status_code == 200
    if stream:
        data, _ = datas(raw)
        assert data[-1] == "[DONE]" and finishes(chunks_of(data)) == ["tool_calls"]
        args = args_of(chunks_of(data))
        names = [tc["function"]["name"] for c in chunks_of(data)
                 for tc in c["choices"][0]["delta"].get("tool_calls") or ()
                 if "name" in tc.get("function", {})]
    else:
        choice = json.loads(raw)["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        args, names = call["function"]["arguments"], [call["function"]["name"]]
    assert names == (["list_dir"] if tools else ["write_file"])
    assert args
    with pytest.raises(json.JSONDecodeError):
        json.loads(args)


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_stripping_answers_in_prose(http, stream):
    r, raw, how, _ = await drain(http, req(stream=stream), "tool_stripping")
    assert how == "eof" and r.status_code == 200
    if stream:
        chunks = chunks_of(datas(raw)[0])
        text, calls, finish = text_of(chunks), args_of(chunks), finishes(chunks)
    else:
        choice = json.loads(raw)["choices"][0]
        message = choice["message"]
        text, calls, finish = message["content"], message.get("tool_calls"), [choice["finish_reason"]]
    assert not calls and finish == ["stop"] and "list_dir" in text and "<TOOL_CALL>" not in text


async def test_fake_streaming_is_one_late_burst(http):
    start = time.monotonic()
    arrivals: list[tuple[float, bytes]] = []
    async with http.stream("POST", "/chat/completions", json=req("echo", stream=True, tools=False, text=LONG),
                           headers={"x-kc-sim-fault": "fake_streaming;delay=0.3"}) as r:
        headers_at = time.monotonic() - start
        async for piece in r.aiter_raw():
            arrivals.append((time.monotonic() - start, piece))
    assert r.status_code == 200 and headers_at < 0.25
    first, last = arrivals[0][0], arrivals[-1][0]
    assert first >= 0.3 and last - first < 0.1
    data, _ = datas(b"".join(p for _, p in arrivals))
    assert data[-1] == "[DONE]" and text_of(chunks_of(data)) == LONG and len(data) > 10
    start = time.monotonic()
    r = await post(http, req(), "fake_streaming;delay=0.3")
    assert r.status_code == 200 and time.monotonic() - start >= 0.3 and r.json()["usage"]


@pytest.mark.parametrize("stream", [False, True])
async def test_missing_usage(http, stream):
    body = req(stream=stream, stream_options={"include_usage": True}) if stream else req()
    r, raw, how, _ = await drain(http, body, "missing_usage")
    assert how == "eof" and r.status_code == 200 and b'"usage"' not in raw
    if stream:
        data, _ = datas(raw)
        assert data[-1] == "[DONE]" and finishes(chunks_of(data)) == ["tool_calls"]
    else:
        assert json.loads(raw)["choices"][0]["finish_reason"] == "tool_calls"
    healthy = await drain(http, body)
    assert b'"usage"' in healthy[1]


@pytest.mark.parametrize("stream", [False, True])
async def test_deferred_first_chunk_error(http, stream):
    r, raw, how, _ = await drain(http, req(stream=stream), "deferred_first_chunk_error")
    assert how == "eof"
    if not stream:
        assert r.status_code == 502 and json.loads(raw)["error"]["code"] == 502
        return
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    data, _ = datas(raw)
    assert len(data) == 1 and set(json.loads(data[0])) == {"error"}


async def test_slow_trickle_never_finishes(http):
    body = req("echo", stream=True, tools=False, text=LONG)
    r, raw, how, took = await drain(http, body, "slow_trickle;interval=0.1;hold=0.55")
    assert how == "reset" and r.status_code == 200 and 0.5 < took < 2
    chunks = chunks_of(datas(raw)[0])
    assert 3 <= len(chunks) - 1 <= 6 and finishes(chunks) == []  # role chunk + one token per interval
    assert text_of(chunks).startswith(LONG[:24])
    # non-stream: the body trickles in and its last byte never comes
    r, raw, how, _ = await drain(http, req(), "slow_trickle;interval=0.05;hold=0.3")
    assert how == "reset" and r.status_code == 200
    assert 8 < len(raw) < int(r.headers["content-length"])


@pytest.mark.parametrize("stream", [False, True])
async def test_json_error_in_200(http, stream):
    r, raw, how, _ = await drain(http, req(stream=stream), "json_error_in_200")
    assert how == "eof" and r.status_code == 200
    if not stream:
        assert r.headers["content-type"] == "application/json"
        assert set(json.loads(raw)) == {"error"}
        return
    data, _ = datas(raw)
    assert set(json.loads(data[0])) == {"error"} and data[1:] == ["[DONE]"]


async def test_connect_refused_is_a_route_to_a_closed_port():
    async with httpx.AsyncClient(trust_env=False, timeout=2) as c:
        with pytest.raises(httpx.ConnectError):
            await c.post(f"http://127.0.0.1:{unused_port()}/v1/chat/completions", json=req())
        with pytest.raises((httpx.ConnectError, httpx.ConnectTimeout)):
            await c.post("http://sim.invalid/v1/chat/completions", json=req())


# ------------------------------------------------------------------ selection


async def test_every_catalogue_fault_is_selectable(http, root):
    catalogue = (await http.get(f"{root}/_sim/faults")).json()["faults"]
    names = [f["name"] for f in catalogue]
    assert names == list(FAULTS) and len(names) >= 32  # F01-F33 without F07, then later ones
    assert {f["id"] for f in catalogue} >= {f"F{i:02d}" for i in range(1, 34)} - {"F07"}
    assert len({f["id"] for f in catalogue}) == len(names)
    assert all(f["stream"] and f["non_stream"] for f in catalogue)


async def test_unknown_fault_or_bad_params_are_400(http, sim):
    r = await post(http, req(), "no_such_fault")
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "unknown_fault"
    assert "stream_cut" in err["message"] and err["known_faults"] == list(FAULTS)
    assert sim.state.requests[-1]["status"] == 400
    r = await http.post("/chat/completions", json=req("dev+no_such_fault"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_fault"
    for bad in ("slow_ttft;delay=abc", "slow_ttft;nope=1", "slow_ttft;delay", "stream_stall;tokens=1.5",
                "slow_ttft;delay=-1"):
        r = await post(http, req(), bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_fault", bad


async def test_model_suffix_selects_and_is_stripped(http, sim):
    r = await http.post("/chat/completions", json=req("dev+html_502"))
    assert r.status_code == 502 and r.headers["x-kc-sim-fault"] == "html_502"
    r = await http.post("/chat/completions", json=req("x-ai/grok-4-fast+missing_usage"))
    assert r.status_code == 200 and "usage" not in r.json() and r.json()["model"] == "x-ai/grok-4-fast"
    r = await http.post("/chat/completions", json=req("gpt-4o-mini+rate_limit_retry_after;retry_after=9"))
    assert r.status_code == 429 and r.headers["retry-after"] == "9"
    entry = sim.state.requests[-1]
    assert entry["model"] == "gpt-4o-mini"
    assert entry["model_sent"] == "gpt-4o-mini+rate_limit_retry_after;retry_after=9"
    assert entry["fault_source"] == "model" and entry["fault_params"] == {"retry_after": 9}
    # the header wins over the suffix
    r = await post(http, req("dev+html_502"), "auth_401")
    assert r.status_code == 401 and sim.state.requests[-1]["fault_source"] == "header"


async def test_plans_count_queue_wildcard_and_reset(http, root, sim):
    async def program(**plan: Any) -> httpx.Response:
        return await http.post(f"{root}/_sim/faults", json=plan)

    async def status(model: str) -> int:
        return (await http.post("/chat/completions", json=req(model))).status_code

    r = await program(model="x-ai/grok-4-fast", fault="unavailable_persistent", count=2)
    assert r.status_code == 200 and r.json()["queued"] == [
        {"model": "x-ai/grok-4-fast", "fault": "unavailable_persistent", "count": 2, "params": {}}]
    await program(model="x-ai/grok-4-fast", fault="rate_limit_retry_after", count=1,
                  params={"retry_after": 5})
    plans = (await http.get(f"{root}/_sim/faults")).json()["plans"]
    assert [(p["fault"], p["remaining"]) for p in plans["x-ai/grok-4-fast"]] == [
        ("unavailable_persistent", 2), ("rate_limit_retry_after", 1)]
    assert await status("gpt-4o-mini") == 200  # another model is not affected
    assert [await status("x-ai/grok-4-fast") for _ in range(4)] == [503, 503, 429, 200]
    # a suffix or header wins and does not consume the plan
    await program(model="dev", fault="auth_401", count=1)
    assert (await http.post("/chat/completions", json=req("dev+html_200"))).status_code == 200
    assert [await status("dev") for _ in range(2)] == [401, 200]
    # "*" for every model, after a model's own queue; null count = until reset
    await program(model="*", fault="all_routes_down", count=None)
    await program(model="gpt-4o-mini", fault="overloaded_529", count=1)
    assert [await status(m) for m in ("gpt-4o-mini", "gpt-4o-mini", "dev", "x-ai/grok-4-fast")] == [
        529, 503, 503, 503]
    assert [await status("dev") for _ in range(3)] == [503] * 3
    assert (await http.delete(f"{root}/_sim/faults")).json() == {"cleared": True}
    assert await status("dev") == 200
    assert (await http.get(f"{root}/_sim/faults")).json()["plans"] == {}
    stats = (await http.get(f"{root}/_sim/stats")).json()
    assert stats == {"total": 1, "by_model": {"dev": 1}, "by_fault": {}}
    # the /v1 prefix works too, and a plan applies to streamed requests alike
    await http.post("/_sim/faults", json={"model": "dev", "fault": "stream_cut", "count": 1})
    _, raw, how, _ = await drain(http, req(stream=True))
    assert how == "eof" and b"[DONE]" not in raw and sim.state.requests[-1]["fault_source"] == "plan"


async def test_plan_validation(http, root):
    for plan, code in (({"model": "dev", "fault": "nope"}, "unknown_fault"),
                       ({"model": "dev", "fault": "slow_ttft", "count": 0}, "invalid_fault"),
                       ({"model": "dev", "fault": "slow_ttft", "params": {"delay": -1}}, "invalid_fault"),
                       ({"model": "", "fault": "slow_ttft"}, "invalid_fault"),
                       ([{"model": "dev", "fault": "auth_401"}, {"model": "dev", "fault": "bogus"}],
                        "unknown_fault")):
        r = await http.post(f"{root}/_sim/faults", json=plan)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, plan
        assert "known_faults" in r.json()["error"]
    assert (await http.get(f"{root}/_sim/faults")).json()["plans"] == {}  # a bad list queues nothing
    r = await http.post(f"{root}/_sim/faults", content=b"{nope")
    assert r.status_code == 400
    assert (await http.put(f"{root}/_sim/faults")).status_code == 405
    assert (await http.get(f"{root}/_sim/nothing")).status_code == 404


async def test_plan_count_is_exact_under_concurrency(http, root, sim):
    await http.post(f"{root}/_sim/faults", json={"model": "gpt-4o-mini", "fault": "unavailable_persistent",
                                                  "count": 5})
    statuses: list[int] = []

    async def one(stream: bool) -> None:
        statuses.append((await post(http, req("gpt-4o-mini", stream=stream))).status_code)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i % 2 == 0)
    assert sorted(statuses) == [200] * 15 + [503] * 5
    stats = (await http.get(f"{root}/_sim/stats")).json()
    assert stats == {"total": 20, "by_model": {"gpt-4o-mini": 20}, "by_fault": {"unavailable_persistent": 5}}


async def test_request_log_over_http(http, root):
    await http.post("/chat/completions", json=req("x-ai/grok-4-fast", stream=True))
    await post(http, req("gpt-4o-mini", tools=False), "html_502")
    with pytest.raises(RESET):
        await http.post("/chat/completions", json=req("dev+tcp_reset"))
    await http.post("/chat/completions", json=req("unknown-model"))
    log = (await http.get(f"{root}/_sim/requests")).json()["requests"]
    assert [(e["seq"], e["model"], e["stream"], e["has_tools"], e["fault"], e["status"]) for e in log] == [
        (1, "x-ai/grok-4-fast", True, True, None, 200),
        (2, "gpt-4o-mini", False, False, "html_502", 502),
        (3, "dev", False, True, "tcp_reset", None),
        (4, "unknown-model", False, True, None, 404),
    ]
    assert [e["fault_source"] for e in log] == [None, "header", "model", None]
    assert all(e["ts"] > 0 and "body" not in e and e["request_id"].startswith("simreq-") for e in log)
    assert all("authorization" not in e["headers"] for e in log) and "sk-secret-value" not in json.dumps(log)
    assert log[1]["headers"]["x-kc-sim-fault"] == "html_502"
    stats = (await http.get(f"{root}/_sim/stats")).json()
    assert stats == {"total": 4,
                     "by_model": {"x-ai/grok-4-fast": 1, "gpt-4o-mini": 1, "dev": 1, "unknown-model": 1},
                     "by_fault": {"html_502": 1, "tcp_reset": 1}}
    await http.delete(f"{root}/_sim/faults")
    assert (await http.get(f"{root}/_sim/requests")).json() == {"requests": []}


async def test_routes_stand_in_as_dev_and_unknown_names_404(http):
    for model in ("gpt-4o-mini", "x-ai/grok-4-fast", "openrouter/some/model"):
        r = await http.post("/chat/completions", json=req(model))
        out = r.json()
        assert r.status_code == 200 and out["model"] == model
        call = out["choices"][0]["message"]["tool_calls"][0]["function"]
        assert call["name"] == "list_dir" and json.loads(call["arguments"]) == DEV_ARGS
    for model in ("unknown-model", "nope", "x-ai/unknown-thing", "nope-2"):
        r = await http.post("/chat/completions", json=req(model))
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", model


async def test_kcd_simulate_process_exposes_fault_control():
    kcd = Path(sys.executable).parent / "kcd"
    if not kcd.exists():
        pytest.skip(f"no kcd executable next to {sys.executable}")
    async with await anyio.open_process([str(kcd), "simulate", "--port", "0"]) as proc:
        try:
            line = b""
            with anyio.fail_after(10):
                while b"\n" not in line:
                    line += await proc.stdout.receive()
            base = re.search(rb"(http://\S+/v1)", line).group(1).decode()
            root = base.removesuffix("/v1")
            async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=5) as c:
                plan = {"model": "x-ai/grok-4-fast", "fault": "html_502", "count": 1}
                assert (await c.post(f"{root}/_sim/faults", json=plan)).status_code == 200
                assert (await c.post("/chat/completions", json=req("x-ai/grok-4-fast"))).status_code == 502
                assert (await c.post("/chat/completions", json=req("x-ai/grok-4-fast"))).status_code == 200
                assert (await c.get(f"{root}/_sim/stats")).json()["by_fault"] == {"html_502": 1}
        finally:
            proc.terminate()
            with anyio.fail_after(10):
                await proc.wait()


# ------------------------------------------------------------------ F42 scripted: a per-request script


async def test_scripted_sequence_replays_literal_responses_in_order_then_healthy(http, root, sim):
    """A queue of count-1 `scripted` plans is a per-request script: each request gets its own
    recorded status, content type, body, Retry-After and delay, in order; then healthy."""
    page = "<!DOCTYPE html><html><title>502 Bad Gateway</title><body>cloudflare</body></html>"
    body = '{"error":{"message":"overloaded","type":"server_error","code":"x1"}}'
    plans = [{"model": "gpt-4o-mini", "fault": "scripted", "count": 1, "params": p} for p in (
        {"status": 503, "content_type": "application/json", "body": body, "delay": 0.3},
        {"status": 502, "content_type": "text/html; charset=UTF-8", "body": page},
        {"status": 429, "retry_after": 7},
        {"status": 200, "content_type": "text/html", "body": "<html>sign in</html>"},
    )]
    r = await http.post(f"{root}/_sim/faults", json=plans)
    assert r.status_code == 200, r.text
    seen = []
    for _ in range(5):
        started = time.monotonic()
        r = await post(http, req("gpt-4o-mini"))
        seen.append((r.status_code, r.headers["content-type"], r.headers.get("retry-after"),
                     time.monotonic() - started, r.text))
    assert [s[:3] for s in seen] == [(503, "application/json", None), (502, "text/html; charset=UTF-8", None),
                                     (429, "application/json", "7"), (200, "text/html", None),
                                     (200, "application/json", None)]
    assert seen[0][4] == body and seen[1][4] == page and seen[3][4] == "<html>sign in</html>"
    assert seen[0][3] >= 0.3 and seen[1][3] < 0.3  # the delay belongs to its own request only
    assert json.loads(seen[2][4])["error"]["message"] == "Upstream answered HTTP 429."
    assert json.loads(seen[4][4])["choices"][0]["message"]  # the script is over: healthy again
    assert (await http.get(f"{root}/_sim/stats")).json()["by_fault"] == {"scripted": 4}


async def test_scripted_stream_cut_after_events_with_or_without_terminator(http):
    body = req("echo", stream=True, tools=False, text=LONG)
    # events=3, no terminator: the role chunk and three content chunks, then a clean end of body
    r, raw, how, _ = await drain(http, body, "scripted;events=3;terminator=0")
    data, _ = datas(raw)
    assert how == "eof" and r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in data and finishes(chunks_of(data)) == [] and text_of(chunks_of(data)) == LONG[:36]
    # the same cut as a TCP reset
    _, raw, how, _ = await drain(http, body, "scripted;events=2;terminator=0;reset=1")
    assert how == "reset" and text_of(chunks_of(datas(raw)[0])) == LONG[:24]
    # every chunk with its finish reason, but no [DONE]: a missing terminator only
    _, raw, how, _ = await drain(http, body, "scripted;terminator=0")
    data, _ = datas(raw)
    assert how == "eof" and "[DONE]" not in data and finishes(chunks_of(data)) == ["stop"]
    assert text_of(chunks_of(data)) == LONG
    # plain scripted 200 is the healthy stream
    _, raw, how, _ = await drain(http, body, "scripted")
    assert datas(raw)[0][-1] == "[DONE]" and text_of(chunks_of(datas(raw)[0])) == LONG
    # a non-streamed request cannot be cut by events: half the completion, then a reset
    r, raw, how, _ = await drain(http, req(), "scripted;events=1;terminator=0")
    assert how == "reset" and 0 < len(raw) < int(r.headers["content-length"])


async def test_scripted_parameters_are_checked(http, root):
    for params in ({"status": 42}, {"status": 700}, {"body": 5}, {"delay": -1}, {"events": 1.5},
                   {"content_type": None}, {"body": "x" * (256 * 1024 + 1)}):
        r = await http.post(f"{root}/_sim/faults", json={"model": "dev", "fault": "scripted", "params": params})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_fault", params
    assert (await http.get(f"{root}/_sim/faults")).json()["plans"] == {}
