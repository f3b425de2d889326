"""The OpenAI-compatible endpoint through a real daemon, with the real `openai` SDK.

The SDK talks to the loopback TCP listener (bearer token) and to the control
socket (through an httpx Unix-socket transport). A standalone simulator stands
in for OpenRouter and OpenAI. Every fault of the catalogue is driven through
the endpoint: each test checks what the client received (status, answer,
attribution headers) and what the upstream saw (the simulator's request log).
The SDK's own retries are off (`max_retries=0`): kcd is the one retry loop.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from kcd.simulator.faults import unused_port

from .conftest import Kcd, base_env
from .resilience_support import FAST_RETRY, FAST_TIMEOUTS, GROK, OPENAI_MINI, free_port, run_json, write_config

CI_TOKEN = "ci-token-0123456789abcdef"
ENV_TOKEN = "env-token-0123456789abcdef"
MAX_BODY = 64 * 1024
TOOLS = [{"type": "function", "function": {"name": name, "description": name, "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}}}}}
    for name in ("list_dir", "read_file", "mark_task_complete")]
HELLO = [{"role": "user", "content": "list the workspace"}]


def _model(**extra: Any) -> dict[str, Any]:
    return {"route": GROK, "fallbacks": [OPENAI_MINI], "timeouts": dict(FAST_TIMEOUTS), "retry": dict(FAST_RETRY),
            **extra}


class Gateway:
    def __init__(self, daemon: Kcd, port: int, telemetry: Path):
        self.daemon, self.port, self.telemetry = daemon, port, telemetry

    def tcp(self, token: str = CI_TOKEN, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=token, max_retries=0,
                             timeout=60, **kw)

    def socket(self) -> openai.OpenAI:
        transport = httpx.HTTPTransport(uds=str(self.daemon.socket))
        return openai.OpenAI(base_url="http://kcd/v1", api_key="unused-on-the-socket", max_retries=0,
                             http_client=httpx.Client(transport=transport, timeout=60))

    def client(self, via: str) -> openai.OpenAI:
        return self.tcp() if via == "tcp" else self.socket()

    def attempts_of(self, request_id: str, wait_for: int, timeout: float = 5.0) -> list[dict]:
        """The request's `llm.attempt` telemetry lines (the sink writes them asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [json.loads(x) for x in self.telemetry.read_text().splitlines()] if self.telemetry.exists() \
                else []
            found = [e for e in lines if e.get("event") == "llm.attempt" and e.get("run_id") == request_id]
            if len(found) >= wait_for or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="module")
def gw(sim) -> Iterator[Gateway]:
    root = Path(tempfile.mkdtemp(prefix="kcgw-", dir="/tmp"))
    (root / "home").mkdir()
    port = free_port()
    config = root / "kcd.yaml"
    config.write_text(yaml.safe_dump({
        "executor": "in-process",
        "gateway": {
            "tcp": {"port": port}, "tokens": {"ci": CI_TOKEN}, "max_body_bytes": MAX_BODY,
            "models": {
                "chat": _model(),
                "live": _model(stream_mode="passthrough"),
                "trickle": _model(timeouts={**FAST_TIMEOUTS, "total": 3}),
                "refused": _model(base_url=f"http://127.0.0.1:{unused_port()}/v1"),
            }}}))
    telemetry = root / "telemetry.jsonl"
    env = base_env(root / "home")
    env.update(OPENROUTER_BASE_URL=sim.api_base, OPENAI_BASE_URL=sim.api_base,
               RAYCODE_TELEMETRY_PATH=str(telemetry), KYLECODE_GATEWAY_TOKEN=ENV_TOKEN)
    daemon = Kcd(root, env, ["--executor", "in-process", "--config", str(config)]).start()
    try:
        yield Gateway(daemon, port, telemetry)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def clean(gw: Gateway, sim) -> None:
    """Each test starts with a healthy upstream and closed breakers."""
    sim.reset()
    with gw.daemon.http() as c:
        for route in c.get("/v1/routes").json()["routes"]:
            c.post("/v1/routes/reset", json={"route": route})


def collect(stream) -> dict[str, Any]:
    """Text, tool calls (assembled from deltas), finish reason, usage and model of an SDK stream."""
    text, calls, finish, usage, model = [], {}, None, None, None
    for chunk in stream:
        model = chunk.model
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            text.append(delta.content or "")
            for tc in delta.tool_calls or ():
                slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = tc.id or slot["id"]
                if tc.function is not None:
                    slot["name"] += tc.function.name or ""
                    slot["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    return {"text": "".join(text), "calls": [calls[i] for i in sorted(calls)], "finish": finish,
            "usage": usage, "model": model}


# ---- the SDK, both ways in --------------------------------------------------------


@pytest.mark.parametrize("via", ["tcp", "socket"])
def test_sdk_non_streaming(gw, sim, via):
    raw = gw.client(via).chat.completions.with_raw_response.create(model="chat", messages=HELLO)
    resp = raw.parse()
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-kc-")
    assert resp.model == "x-ai/grok-4-fast"  # what the provider said answered
    assert resp.choices[0].message.content and resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert raw.headers["x-kylecode-route"] == GROK and raw.headers["x-kylecode-attempts"] == "1"
    assert 0 <= float(raw.headers["x-kylecode-overhead-ms"]) < 1000
    assert raw.headers["x-request-id"] == resp.id
    seen = sim.requests(GROK)
    assert len(seen) == 1 and not seen[0]["stream"] and seen[0]["auth_scheme"] == "Bearer"


@pytest.mark.parametrize("via", ["tcp", "socket"])
@pytest.mark.parametrize("model", ["chat", "live"])
def test_sdk_streaming(gw, sim, via, model):
    raw = gw.client(via).chat.completions.with_raw_response.create(
        model=model, messages=HELLO, stream=True, stream_options={"include_usage": True})
    assert raw.headers["content-type"] == "text/event-stream"
    assert raw.headers["x-kylecode-route"] == GROK
    out = collect(raw.parse())
    assert out["text"] and out["finish"] == "stop" and out["model"] == "x-ai/grok-4-fast"
    assert out["usage"] is not None and out["usage"].completion_tokens > 0
    assert [r["stream"] for r in sim.requests(GROK)] == [True]


@pytest.mark.parametrize("via", ["tcp", "socket"])
@pytest.mark.parametrize("stream", [False, True])
def test_sdk_tool_calls(gw, sim, via, stream):
    client = gw.client(via)
    if stream:
        out = collect(client.chat.completions.create(model="live", messages=HELLO, tools=TOOLS, stream=True))
        calls, finish = out["calls"], out["finish"]
    else:
        resp = client.chat.completions.create(model="chat", messages=HELLO, tools=TOOLS, tool_choice="auto")
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in resp.choices[0].message.tool_calls]
        finish = resp.choices[0].finish_reason
    assert finish == "tool_calls" and [c["name"] for c in calls] == ["list_dir"]
    assert calls[0]["id"] and isinstance(json.loads(calls[0]["arguments"]), dict)
    assert sim.requests(GROK)[0]["tools"] == 3  # offered natively upstream

    # the tool result goes back as a native tool message
    follow = client.chat.completions.create(model="chat", tools=TOOLS, messages=[
        *HELLO, {"role": "assistant", "content": None, "tool_calls": [
            {"id": calls[0]["id"], "type": "function",
             "function": {"name": "list_dir", "arguments": calls[0]["arguments"]}}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "README.md\nsrc/"}])
    assert follow.choices[0].message.tool_calls[0].function.name == "read_file"
    assert sim.requests(GROK)[-1]["last_role"] == "tool"


def test_models_and_route_ids(gw, sim):
    ids = [m.id for m in gw.tcp().models.list().data]
    assert {"chat", "live", GROK, OPENAI_MINI} <= set(ids)
    raw = gw.tcp().chat.completions.with_raw_response.create(model=OPENAI_MINI, messages=HELLO)
    assert raw.headers["x-kylecode-route"] == OPENAI_MINI and raw.parse().model == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as info:
        gw.tcp().chat.completions.create(model="no-such-model", messages=HELLO)
    assert info.value.code == "model_not_found" and info.value.status_code == 404
    assert sim.requests() == [r for r in sim.requests() if r["model"] == "gpt-4o-mini"]


# ---- access and bad requests ---------------------------------------------------------


def test_tokens_and_attribution(gw, sim):
    with pytest.raises(openai.AuthenticationError):
        gw.tcp(token="wrong-token-0000000000000").chat.completions.create(model="chat", messages=HELLO)
    bare = httpx.post(f"http://127.0.0.1:{gw.port}/v1/chat/completions", json={"model": "chat", "messages": HELLO})
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"http://127.0.0.1:{gw.port}/v1/runs").status_code == 401  # no control API on TCP
    assert httpx.get(f"http://127.0.0.1:{gw.port}/v1/runs",
                     headers={"authorization": f"Bearer {CI_TOKEN}"}).status_code == 404
    assert sim.requests() == []

    for client, who, uid in ((gw.tcp(), "token:ci", None), (gw.tcp(token=ENV_TOKEN), "token:env", None),
                             (gw.socket(), f"uid:{os.getuid()}", os.getuid())):
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=HELLO, extra_headers={"x-request-id": f"it-{who.replace(':', '-')}"})
        request_id = raw.headers["x-request-id"]
        assert request_id == f"it-{who.replace(':', '-')}"
        (event,) = gw.attempts_of(request_id, 1)
        assert event["attrs"]["kylecode.client"] == who and event["peer_uid"] == uid
        assert event["attrs"]["kylecode.model"] == "chat" and event["route"] == GROK
    assert CI_TOKEN not in gw.telemetry.read_text() and ENV_TOKEN not in gw.telemetry.read_text()
    assert CI_TOKEN not in gw.daemon.log() and ENV_TOKEN not in gw.daemon.log()


@pytest.mark.parametrize("via", ["tcp", "socket"])
def test_bad_bodies_get_openai_400s_and_the_daemon_keeps_serving(gw, sim, via):
    # raw HTTP: the SDK would refuse to send these bodies
    client = httpx.Client(timeout=30) if via == "tcp" else \
        httpx.Client(transport=httpx.HTTPTransport(uds=str(gw.daemon.socket)), timeout=30)
    headers = {"authorization": f"Bearer {CI_TOKEN}", "content-type": "application/json"}
    base = f"http://127.0.0.1:{gw.port}/v1" if via == "tcp" else "http://kcd/v1"
    malformed = client.post(f"{base}/chat/completions", content=b'{"model": "chat", "messages": [', headers=headers)
    assert malformed.status_code == 400
    assert malformed.json()["error"]["type"] == "invalid_request_error"
    assert set(malformed.json()["error"]) == {"message", "type", "param", "code"}
    huge = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "x" * MAX_BODY}]})
    too_large = client.post(f"{base}/chat/completions", content=huge, headers=headers)
    assert too_large.status_code == 400 and too_large.json()["error"]["code"] == "request_too_large"
    wrong = client.post(f"{base}/chat/completions", json={"model": "chat", "messages": "hi"}, headers=headers)
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "messages"
    assert sim.requests() == []
    assert gw.client(via).chat.completions.create(model="chat", messages=HELLO).choices[0].message.content


def test_metrics_count_requests_and_overhead(gw):
    gw.tcp().chat.completions.create(model="chat", messages=HELLO)
    with gw.daemon.http() as c:
        text = c.get("/v1/metrics").text
    assert 'kylecode_gateway_requests_total{model="chat",status="200",mode="json"}' in text
    assert 'kylecode_gateway_overhead_seconds_count{model="chat"}' in text
    assert f'kylecode_attempts_total{{route="{GROK}",outcome="ok"}}' in text


# ---- every fault through the endpoint ------------------------------------------------------

# (fault, plan count, client streams, offers tools, expected); primary GROK, fallback OPENAI_MINI.
# ok: the primary served at once; retry: the primary served after failed attempts;
# fallback: the fallback served; (status, code): the client got that error.
CASES = [
    ("rate_limit_retry_after", 1, False, False, "retry"),
    ("rate_limit_no_header", None, False, False, "fallback"),
    ("server_error_once", None, False, False, "retry"),
    ("unavailable_persistent", None, False, False, "fallback"),
    ("overloaded_529", None, False, False, "fallback"),
    ("tcp_reset", None, False, False, "fallback"),
    ("no_response", None, True, False, "fallback"),
    ("slow_ttft", None, True, False, "ok"),
    ("stream_cut", 1, True, False, "retry"),
    ("stream_stall", 1, True, False, "fallback"),  # silence is not waited on twice
    ("malformed_chunk", 1, True, False, "retry"),
    ("no_done", None, True, False, "ok"),
    ("context_length", None, False, False, (400, "context_length_exceeded")),
    ("content_filter", None, False, False, (400, "content_policy_violation")),
    ("fallback_rejects_prefill", None, False, False, (400, "http_400")),
    ("flapping_primary", None, False, False, "ok"),
    ("failover_accounting", None, True, False, "fallback"),
    ("html_502", None, False, False, "fallback"),
    ("html_200", None, False, False, "fallback"),
    ("keepalive_only", None, True, False, "fallback"),
    ("inband_error_after_tokens", 1, True, False, "retry"),
    ("finish_reason_rewrite", 1, True, True, "retry"),
    ("tool_stripping", None, False, True, "ok"),
    ("fake_streaming", None, True, False, "ok"),
    ("missing_usage", None, True, False, "ok"),
    ("deferred_first_chunk_error", 1, True, False, "retry"),
    ("auth_401", None, False, False, "fallback"),
    ("credits_402", None, False, False, "fallback"),
    ("huge_retry_after", None, False, False, "fallback"),
    ("slow_trickle", None, True, False, "fallback"),
    ("all_routes_down", None, False, False, (502, "http_error")),
    ("json_error_in_200", None, False, False, "fallback"),
]


def call(client: openai.OpenAI, model: str, stream: bool, tools: bool,
         messages: list[dict] = HELLO) -> tuple[int, dict[str, str], dict[str, Any]]:
    """(status, headers, answer or error body) as the SDK saw them."""
    kw: dict[str, Any] = {"tools": TOOLS} if tools else {}
    if stream:
        kw["stream_options"] = {"include_usage": True}
    try:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, stream=stream, **kw)
    except openai.APIStatusError as exc:
        return exc.status_code, dict(exc.response.headers), exc.body if isinstance(exc.body, dict) else {}
    if stream:
        return raw.status_code, dict(raw.headers), collect(raw.parse())
    msg = raw.parse().choices[0]
    return raw.status_code, dict(raw.headers), {
        "text": msg.message.content or "", "finish": msg.finish_reason, "usage": raw.parse().usage,
        "calls": [{"name": c.function.name, "arguments": c.function.arguments}
                  for c in msg.message.tool_calls or ()]}


@pytest.mark.parametrize("fault,count,stream,tools,expected", CASES, ids=[c[0] for c in CASES])
def test_fault(gw, sim, fault, count, stream, tools, expected):
    model, messages = "chat", HELLO
    if fault == "slow_trickle":
        model = "trickle"
    if fault == "fallback_rejects_prefill":  # the fault bites a request that ends in an assistant prefix
        messages = [*HELLO, {"role": "assistant", "content": "Sure, here"}]
    if fault == "all_routes_down":
        assert sim.http.post("/_sim/faults", json={"model": "*", "fault": fault}).status_code == 200
    else:
        sim.fault(GROK, fault, count)
    client = gw.tcp()
    started = time.monotonic()
    rounds = 4 if fault == "flapping_primary" else 1
    for _ in range(rounds):
        status, headers, answer = call(client, model, stream, tools, messages)
    assert time.monotonic() - started < 30
    primary, fallback = sim.requests(GROK), sim.requests(OPENAI_MINI)
    attempts = int(headers["x-kylecode-attempts"])
    # every attempt of the (last) request is in telemetry under the request's own id
    events = gw.attempts_of(headers["x-request-id"], attempts)
    assert [e["attempt"] for e in events] == list(range(1, attempts + 1))
    assert {e["attrs"]["kylecode.source"] for e in events} <= {"openai_api"}

    if isinstance(expected, tuple):  # the client gets a typed OpenAI error, never a made-up answer
        want_status, want_code = expected
        assert status == want_status, (status, answer)
        assert answer["code"] == want_code and answer["message"]
        assert attempts == len(primary) + len(fallback)
        if want_status == 400:
            assert len(primary) == 1 and fallback == []  # a request fault: no retry, no fallback
        return

    assert status == 200, (status, answer)
    assert answer["finish"] in ("stop", "tool_calls") and (answer["text"] or answer["calls"])
    if fault != "flapping_primary":
        assert attempts == len(primary) + len(fallback)  # every upstream call is one attempt, and vice versa
    if expected == "ok":
        assert headers["x-kylecode-route"] == GROK and fallback == []
        if fault != "flapping_primary":
            assert attempts == 1
    elif expected == "retry":
        assert headers["x-kylecode-route"] == GROK and attempts >= 2 and fallback == []
    else:
        assert headers["x-kylecode-route"] == OPENAI_MINI and len(fallback) == 1 and primary
        assert headers["x-kylecode-fallback-from"] == GROK

    if fault == "rate_limit_retry_after":  # the 2 s Retry-After wait is not the daemon's overhead
        assert float(headers["x-kylecode-overhead-ms"]) < 500
    if fault == "stream_stall":
        assert [r["stream"] for r in primary] == [True]  # the stalled call, never restarted on it
    if fault in ("stream_cut", "malformed_chunk", "inband_error_after_tokens",
                 "deferred_first_chunk_error", "finish_reason_rewrite"):
        assert [r["stream"] for r in primary] == [True, False]  # restarted from the same input, unstreamed
    if fault == "finish_reason_rewrite":
        assert isinstance(json.loads(answer["calls"][0]["arguments"]), dict)
    if fault == "tool_stripping":  # prose where a tool call was due: passed on as it is
        assert answer["calls"] == [] and answer["text"]
    if fault == "missing_usage":
        assert answer["usage"] is None  # unknown, never zeros
    if fault in ("auth_401", "html_200"):
        assert len(primary) == 1  # no same-route retry
    if fault == "huge_retry_after":
        with gw.daemon.http() as c:
            route = c.get("/v1/routes").json()["routes"][GROK]
        assert route["state"] == "open" and route["reopens_in_s"] > 3000


def test_connect_refused_falls_over_at_once(gw, sim):
    status, headers, answer = call(gw.tcp(), "refused", False, False)
    assert status == 200 and headers["x-kylecode-route"] == OPENAI_MINI and headers["x-kylecode-attempts"] == "2"
    assert sim.requests(GROK) == [] and len(sim.requests(OPENAI_MINI)) == 1


# ---- passthrough streams: the first byte is the line ------------------------------------------


def test_passthrough_failure_after_text_is_an_in_band_error(gw, sim):
    sim.fault(GROK, "stream_stall", 1, tokens=2)
    client = gw.tcp()
    raw = client.chat.completions.with_raw_response.create(model="live", messages=HELLO, stream=True)
    assert raw.status_code == 200 and raw.headers["x-kylecode-route"] == GROK
    text = []
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
    assert "timeout.idle" in str(info.value)  # the stall: no new content within the idle limits
    assert "".join(text)  # some text did arrive, and the SDK refused to call it an answer
    assert len(sim.requests(GROK)) == 1 and sim.requests(OPENAI_MINI) == []  # nothing spliced on
    (event,) = gw.attempts_of(raw.headers["x-request-id"], 1)
    assert event["outcome"].startswith("timeout.idle")

    # the raw stream: an error event with finish_reason "error", and no [DONE]
    sim.fault(GROK, "stream_stall", 1, tokens=2)
    with httpx.stream("POST", f"http://127.0.0.1:{gw.port}/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {CI_TOKEN}"},
                      json={"model": "live", "messages": HELLO, "stream": True}) as resp:
        body = resp.read().decode()
    events = [b[6:] for b in body.split("\n\n") if b.startswith("data: ")]
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["choices"][0]["finish_reason"] == "error" and last["error"]["code"].startswith("timeout.idle")


def test_passthrough_failure_before_text_falls_back_transparently(gw, sim):
    sim.fault(GROK, "html_502")
    raw = gw.tcp().chat.completions.with_raw_response.create(model="live", messages=HELLO, stream=True)
    out = collect(raw.parse())
    assert raw.headers["x-kylecode-route"] == OPENAI_MINI and out["finish"] == "stop" and out["text"]
    assert out["model"] == "gpt-4o-mini"
    assert int(raw.headers["x-kylecode-attempts"]) == len(sim.requests(GROK)) + 1


def test_passthrough_failing_everywhere_is_an_http_error(gw, sim):
    assert sim.http.post("/_sim/faults", json={"model": "*", "fault": "unavailable_persistent"}).status_code == 200
    with pytest.raises(openai.InternalServerError) as info:
        gw.tcp().chat.completions.create(model="live", messages=HELLO, stream=True)
    assert info.value.status_code == 502


def test_all_routes_open_is_a_503_with_retry_after(gw, sim):
    sim.fault(GROK, "huge_retry_after")
    sim.fault(OPENAI_MINI, "huge_retry_after")
    first = call(gw.tcp(), "chat", False, False)
    assert first[0] == 502
    status, headers, body = call(gw.tcp(), "chat", False, False)
    assert status == 503 and body["code"] == "all_routes_open" and int(headers["retry-after"]) > 3000
    assert headers["x-kylecode-attempts"] == "0"


# ---- one breaker for runs and clients ------------------------------------------------------


def test_a_run_and_an_external_client_share_one_breaker(make_kcd, sim, kcd_root, tmp_path):
    daemon_cfg = kcd_root / "kcd.yaml"
    daemon_cfg.write_text(yaml.safe_dump({
        "breaker": {"threshold": 2, "window_s": 600, "cooldown_s": 600, "cap_s": 3600, "jitter": 0},
        "gateway": {"models": {"chat": _model(retry={**FAST_RETRY, "retries_per_route": 0})}}}))
    daemon = make_kcd("--executor", "in-process", "--config", str(daemon_cfg),
                      env_extra={"OPENROUTER_BASE_URL": sim.api_base, "OPENAI_BASE_URL": sim.api_base})
    client = Gateway(daemon, 0, kcd_root / "none").socket()
    run_cfg = write_config(tmp_path / "run.yaml", GROK, [OPENAI_MINI])

    def routes() -> dict:
        with daemon.http() as c:
            return c.get("/v1/routes").json()["routes"]

    # 1. External requests trip the primary's breaker; a run then skips it without a call.
    sim.fault(GROK, "unavailable_persistent")
    for n in range(2):  # two different requests (a repeat of one body would count once)
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": f"request {n}"}])
        assert raw.headers["x-kylecode-route"] == OPENAI_MINI
    assert routes()[GROK]["state"] == "open" and len(sim.requests(GROK)) == 2
    end, run_dir = run_json(daemon, run_cfg)
    assert json.loads((run_dir / "result.json").read_text())["served_route"] == OPENAI_MINI
    assert "[circuit-open]" in (run_dir / "conversation/conversation.md").read_text()
    assert len(sim.requests(GROK)) == 2  # the run made no call to the open route

    # 2. A run trips it; an external request then skips it without a call.
    sim.reset()
    with daemon.http() as c:
        c.post("/v1/routes/reset", json={"route": GROK})
    sim.fault(GROK, "unavailable_persistent")
    end, run_dir = run_json(daemon, run_cfg)
    assert routes()[GROK]["state"] == "open"
    before = len(sim.requests(GROK))
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=HELLO)
    assert raw.headers["x-kylecode-route"] == OPENAI_MINI and raw.headers["x-kylecode-attempts"] == "1"
    assert len(sim.requests(GROK)) == before


def test_a_clients_immediate_retries_count_once_against_the_breaker(make_kcd, sim, kcd_root):
    """One failed aider call used to be three kcd requests that locked the route for everyone."""
    sim.reset()
    daemon_cfg = kcd_root / "kcd.yaml"
    daemon_cfg.write_text(yaml.safe_dump({"gateway": {"models": {
        "solo": {"route": GROK, "timeouts": dict(FAST_TIMEOUTS), "retry": {**FAST_RETRY, "retries_per_route": 0}}}}}))
    daemon = make_kcd("--executor", "in-process", "--config", str(daemon_cfg),
                      env_extra={"OPENROUTER_BASE_URL": sim.api_base})
    sim.fault(GROK, "unavailable_persistent")
    transport = httpx.HTTPTransport(uds=str(daemon.socket))

    def routes() -> dict:
        with daemon.http() as c:
            return c.get("/v1/routes").json()["routes"][GROK]

    with httpx.Client(transport=transport, base_url="http://kcd", timeout=30) as client:
        body = {"model": "solo", "messages": [{"role": "user", "content": "the same request"}]}
        for _ in range(3):  # the request and the client's two immediate retries
            assert client.post("/v1/chat/completions", json=body).status_code >= 500
        state = routes()
        assert (state["state"], state["window_failures"], state["window_calls"]) == ("closed", 1, 1), state
        # An Idempotency-Key joins retries whatever their bodies say.
        for n in range(2):
            r = client.post("/v1/chat/completions", headers={"idempotency-key": "job-7"},
                            json={"model": "solo", "messages": [{"role": "user", "content": f"attempt {n}"}]})
            assert r.status_code >= 500
        assert routes()["window_failures"] == 2
        # A third, different request is the third failure: the route opens.
        r = client.post("/v1/chat/completions", json={"model": "solo", "messages": [
            {"role": "user", "content": "another request"}]})
        assert r.status_code >= 500
    assert routes()["state"] == "open"
    assert len(sim.requests(GROK)) == 6  # every request still went upstream while closed
