"""The OpenAI endpoint's pure parts: request translation, response shapes, error
mapping, tokens, the model map, the relay's commit rule and the config section."""

from __future__ import annotations

import msgspec
import pytest

from kcd.config.daemon import DaemonConfigError, GatewayModel, GatewaySettings, load_daemon_config
from kcd.gateway.access import TokenTable, socket_client
from kcd.gateway.errors import OpenAIError, from_failure
from kcd.gateway.models import ModelMap
from kcd.gateway.streaming import Relay
from kcd.gateway.wire import ChunkWriter, completion_body, parse_request
from kcd.providers.errors import ProviderFailure
from kcd.providers.types import ChatMessage, ChatResponse, ToolCall, Usage

TOKEN = "tok-0123456789abcdef"


def body(**kw) -> bytes:
    return msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw})


# ---- requests -----------------------------------------------------------------


def test_parse_keeps_every_other_key_as_a_param():
    parsed = parse_request(body(temperature=0.2, top_p=0.9, max_tokens=50, stop=["x"], seed=7,
                                tool_choice="auto", response_format={"type": "json_object"},
                                provider={"order": ["a"]}, stream=True,
                                stream_options={"include_usage": True}))
    assert parsed.stream and parsed.include_usage
    assert parsed.params == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "stop": ["x"], "seed": 7,
                             "tool_choice": "auto", "response_format": {"type": "json_object"},
                             "provider": {"order": ["a"]}}
    assert parse_request(body()).params == {} and not parse_request(body()).stream


def test_parse_translates_messages_and_tools():
    parsed = parse_request(msgspec.json.encode({
        "model": "m",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
            {"role": "tool", "tool_call_id": "c1", "name": "f", "content": "ok"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
                  {"type": "function", "function": {"name": "g"}}],
    }))
    assert parsed.messages == [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="ab"),
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="c1", name="f", arguments='{"x":1}')]),
        ChatMessage(role="tool", content="ok", tool_call_id="c1", name="f"),
    ]
    assert [(t.name, t.parameters) for t in parsed.tools] == [
        ("f", {"type": "object"}), ("g", {"type": "object", "properties": {}})]


def test_image_parts_go_upstream_as_sent():
    parts = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:x"}}]
    parsed = parse_request(msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": parts}]}))
    assert parsed.messages[0].content == parts


@pytest.mark.parametrize("raw,code,param", [
    (b"", "invalid_json", None),
    (b"{not json", "invalid_json", None),
    (b"[1]", "invalid_json", None),
    (b'{"messages": []}', None, None),  # no model
    (b'{"model": "m", "messages": []}', None, "messages"),
    (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', None, "messages[0].role"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}', None, "n"),
    (b'{"model": "m", "messages": [{"content": "x"}]}', None, "messages[0]"),
])
def test_bad_requests_are_openai_400s(raw, code, param):
    with pytest.raises(OpenAIError) as info:
        parse_request(raw)
    err = info.value
    assert err.status == 400 and err.type == "invalid_request_error"
    if code:
        assert err.code == code
    if param:
        assert err.param == param
    shape = msgspec.json.decode(err.body())
    assert set(shape["error"]) == {"message", "type", "param", "code"}


# ---- responses ----------------------------------------------------------------


def test_completion_shape_names_the_model_and_keeps_usage_honest():
    out = msgspec.json.decode(completion_body(
        ChatResponse(content="hi", finish_reason="stop", usage=Usage(3, 4)), completion_id="chatcmpl-kc-1",
        model="z-ai/glm-4.6"))
    assert out["object"] == "chat.completion" and out["model"] == "z-ai/glm-4.6"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    # unknown usage is left out, never reported as zero; tool calls carry content null
    out = msgspec.json.decode(completion_body(
        ChatResponse(tool_calls=[ToolCall("c", "f", "{}")], finish_reason="tool_calls"),
        completion_id="x", model="m"))
    assert "usage" not in out
    assert out["choices"][0]["message"]["content"] is None
    assert out["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}


def _events(raw: bytes) -> list:
    assert raw.endswith(b"\n\n")
    out = []
    for block in raw.decode().split("\n\n")[:-1]:
        assert block.startswith("data: ")
        data = block[6:]
        out.append(data if data == "[DONE]" else msgspec.json.decode(data))
    return out


def test_chunks_of_a_whole_answer():
    writer = ChunkWriter("chatcmpl-kc-2", "routed-model", created=5)
    resp = ChatResponse(content="hé\"llo", tool_calls=[ToolCall("c", "f", '{"a":1}')], finish_reason="tool_calls",
                        usage=Usage(1, 2, 3), model="reported")
    events = _events(writer.with_model("reported").answer(resp, include_usage=True))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-kc-2" and c["created"] == 5
               and c["model"] == "reported" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "hé\"llo"}
    assert chunks[2]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]
    assert chunks[3]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["total_tokens"] == 3


def test_the_error_event_ends_a_stream_without_done():
    writer = ChunkWriter("id", "m")
    event = _events(writer.error({"message": "cut", "type": "upstream_error", "param": None, "code": "x"}))
    assert event[0]["choices"][0]["finish_reason"] == "error"
    assert event[0]["error"]["message"] == "cut"


# ---- failures -------------------------------------------------------------------


def _aggregate(classification: str, status: int | None = None) -> ProviderFailure:
    return ProviderFailure("openai/x", classification, "all routes failed", status_code=status,
                           details={"attempts": [{}], "primary": "openai/x"})


def test_failure_mapping():
    open_ = ProviderFailure("a", "all_routes_open", "every route is open", retryable=False,
                            details={"routes": [{"route": "a", "reopens_in_s": 41.2}, {"route": "b",
                                                                                         "reopens_in_s": 9.1}]})
    err = from_failure(open_)
    assert (err.status, err.code, err.headers["retry-after"]) == (503, "all_routes_open", "10")
    assert from_failure(_aggregate("timeout.ttft")).status == 504
    err = from_failure(_aggregate("http_error", 503))
    assert (err.status, err.type, err.code) == (502, "upstream_error", "http_error")
    # upstream credentials are the daemon's problem, never a 401 to the client
    assert from_failure(_aggregate("auth_error", 401)).status == 502
    ctx = ProviderFailure("a", "http_error", "maximum context length is 8k", status_code=400,
                          details={"provider_error": {"code": "context_length_exceeded"}})
    assert (from_failure(ctx).status, from_failure(ctx).code) == (400, "context_length_exceeded")
    policy = ProviderFailure("a", "auth_error", "flagged", status_code=403,
                             details={"provider_error": {"metadata": {"reasons": ["x"]}}})
    assert (from_failure(policy).status, from_failure(policy).code) == (400, "content_policy_violation")
    bad = ProviderFailure("a", "http_error", "bad field", status_code=422)
    assert from_failure(bad).status == 422


# ---- access -----------------------------------------------------------------------


def test_tokens_identify_their_name_only():
    table = TokenTable({"ci": TOKEN, "laptop": TOKEN[::-1]})
    assert table.identify(f"Bearer {TOKEN}").label == "token:ci"
    assert table.identify(f"bearer {TOKEN[::-1]}").label == "token:laptop"
    for bad in (None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer " + TOKEN[:-1]):
        assert table.identify(bad) is None
    assert TokenTable({}).identify(f"Bearer {TOKEN}") is None and not TokenTable({})
    assert TOKEN not in repr(table.__dict__)  # only digests are kept


def test_socket_clients_are_their_uid():
    class Peer:
        uid = 1234

    assert socket_client(Peer()).label == "uid:1234" and socket_client(Peer()).uid == 1234
    assert socket_client(None).uid is None


# ---- models -------------------------------------------------------------------------


def _map(**models) -> ModelMap:
    return ModelMap(GatewaySettings(models={k: msgspec.convert(v, GatewayModel) for k, v in models.items()}))


def test_model_chains_and_settings():
    models = _map(fast={"route": "openrouter/z-ai/glm-4.6",
                        "fallbacks": ["openai/gpt-4o-mini", {"route": "mock/dev", "timeouts": {"total": 5},
                                                             "native_tools": False},
                                      "openrouter/z-ai/glm-4.6"],
                        "timeouts": {"ttft": 7}, "retry": {"retries_per_route": 1, "turn_deadline_s": 20},
                        "params": {"temperature": 0}})
    plan = models.get("fast")
    assert plan is not None and plan.route_ids == ["openrouter/z-ai/glm-4.6", "openai/gpt-4o-mini", "mock/dev"]
    first, second, third = plan.plain
    assert first.timeouts.ttft == 7 and first.timeouts.total == 600.0
    assert third.timeouts.ttft == 7 and third.timeouts.total == 5  # layered over the model's
    assert [e.native_tools for e in plan.plain] == [True, True, False]
    assert plan.policy.retries_per_route == 1 and plan.policy.turn_deadline_s == 20
    assert all(e.retries_per_route == 1 for e in plan.plain)
    # buffer: upstream streams when the client does; params: the client's win
    assert not any(e.stream for e in plan.chain(False, {})) and all(e.stream for e in plan.chain(True, {}))
    chain = plan.chain(False, {"temperature": 1, "seed": 3})
    assert chain[0].params == {"temperature": 1, "seed": 3} and plan.plain[0].params == {"temperature": 0}


def test_stream_modes_pick_the_upstream_stream():
    models = _map(p={"route": "mock/a", "stream_mode": "passthrough", "stream_upstream": False},
                  b={"route": "mock/a", "stream_upstream": True})
    assert models.get("p").upstream_streams(True)  # passthrough needs a stream to pass through
    assert not models.get("p").upstream_streams(False)
    assert models.get("b").upstream_streams(False) and models.get("b").upstream_streams(True)


def test_route_ids_as_names():
    models = _map(fast={"route": "mock/dev"})
    plan = models.get("openrouter/z-ai/glm-4.6")
    assert plan is not None and plan.route_ids == ["openrouter/z-ai/glm-4.6"] and not plan.configured
    assert models.get("openrouter/z-ai/glm-4.6") is plan  # cached
    for unknown in ("nope", "gpt-4o", "x-ai/grok", "openai/"):
        assert models.get(unknown) is None
    strict = ModelMap(GatewaySettings(allow_route_ids=False))
    assert strict.get("openai/gpt-4o") is None


# ---- the relay's commit rule ------------------------------------------------------------


def test_text_commits_an_attempt_only_once_taken():
    from kcd.providers.dispatcher import ChainEntry
    from kcd.providers.routes import parse_route

    relay = Relay(lambda: 0.0)
    a, b = ChainEntry(route=parse_route("mock/a")), ChainEntry(route=parse_route("mock/b"))
    relay.started(a, 1)
    relay.chunk("lost")
    assert not relay.committed()  # nothing reached the client: a fallback is invisible
    relay.started(b, 2)
    assert relay.pending == []
    relay.chunk("kept")
    assert relay.take() == ["kept"] and relay.committed() and relay.take() == []


# ---- config -------------------------------------------------------------------------------


def _load(tmp_path, text: str, env: dict | None = None):
    f = tmp_path / "kcd.yaml"
    f.write_text(text)
    return load_daemon_config(f, env or {}, {})


def test_gateway_config_defaults_and_env_token(tmp_path):
    cfg = _load(tmp_path, "executor: in-process\n")
    assert cfg.gateway.tcp.port is None and cfg.gateway.tcp.host == "127.0.0.1" and cfg.gateway.models == {}
    cfg = _load(tmp_path, "gateway:\n  tcp: {port: 8080}\n", {"KYLECODE_GATEWAY_TOKEN": TOKEN})
    assert cfg.gateway.tokens == {"env": TOKEN}
    cfg = _load(tmp_path, f"gateway:\n  tcp: {{port: 8080, host: 0.0.0.0, allow_remote: true}}\n"
                          f"  tokens: {{ci: {TOKEN}}}\n")
    assert cfg.gateway.tcp.host == "0.0.0.0"


@pytest.mark.parametrize("text,where,what", [
    ("gateway: 3\n", "$.gateway", "Expected `object`"),
    ("gateway:\n  tcp: {port: 8080}\n", "$.gateway.tcp.port", "needs a bearer token"),
    (f"gateway:\n  tcp: {{port: 8080, host: 0.0.0.0}}\n  tokens: {{a: {TOKEN}}}\n", "$.gateway.tcp.host",
     "not a loopback address"),
    (f"gateway:\n  tcp: {{port: 8080, host: example.com}}\n  tokens: {{a: {TOKEN}}}\n", "$.gateway.tcp.host",
     "allow_remote"),
    ("gateway:\n  tcp: {port: 70000}\n", "$.gateway.tcp.port", "<= 65535"),
    ("gateway:\n  tokens: {a: tinytok}\n", "$.gateway.tokens.a", "shorter than 16"),
    ("gateway:\n  models:\n    fast: {route: x-ai/grok}\n", "$.gateway.models.fast.route", "unknown provider"),
    ("gateway:\n  models:\n    fast: {route: mock/a, fallbacks: [mock/b, nope/c]}\n",
     "$.gateway.models.fast.fallbacks[1]", "unknown provider"),
    ("gateway:\n  models:\n    fast: {route: mock/a, fallbacks: [{route: mock/b, base_url: ftp://x}]}\n",
     "$.gateway.models.fast.fallbacks[0].base_url", "http://"),
    ("gateway:\n  models:\n    fast: {route: mock/a, stream_mode: fast}\n", "$.gateway.models.fast.stream_mode",
     "Invalid enum value"),
    ("gateway:\n  models:\n    fast: {route: mock/a, timeouts: {ttft: 0}}\n",
     "$.gateway.models.fast.timeouts.ttft", "> 0"),
    ("gateway:\n  models:\n    fast: {route: mock/a, retry: {max_attempts_per_turn: 0}}\n",
     "$.gateway.models.fast.retry.max_attempts_per_turn", ">= 1"),
    ('gateway:\n  models:\n    "openai/gpt-4o": {route: mock/a, colour: red}\n',
     '$.gateway.models["openai/gpt-4o"]', "unknown field `colour`"),
])
def test_bad_gateway_config_names_the_key(tmp_path, text, where, what):
    with pytest.raises(DaemonConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert f"at `{where}`" in message and what in message
    assert "tinytok" not in message  # a token is never quoted


def test_a_weak_env_token_is_refused(tmp_path):
    with pytest.raises(DaemonConfigError, match="KYLECODE_GATEWAY_TOKEN"):
        _load(tmp_path, "executor: in-process\n", {"KYLECODE_GATEWAY_TOKEN": "abc"})
