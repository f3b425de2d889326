"""The endpoint in-process: ASGI calls into `TCPGatewayApp`, a real `Dispatcher`,
and the provider simulator on loopback. Streaming semantics: what a passthrough
or buffered stream shows the client when the upstream breaks before or after
its first text, and that a truncated answer is never presented as complete."""

from __future__ import annotations

import msgspec
import pytest
import anyio

from kcd.config.daemon import GatewayModel, GatewaySettings
from kcd.gateway.access import TokenTable
from kcd.gateway.handlers import OpenAIEndpoint
from kcd.gateway.listener import TCPGatewayApp
from kcd.gateway.models import ModelMap
from kcd.observe.prometheus import DaemonMetrics
from kcd.providers.breaker import BreakerBoard
from kcd.providers.dispatcher import Dispatcher
from kcd.providers.probes import ProbeManager
from kcd.simulator.behaviours import default_behaviours
from kcd.simulator.faults import resolve
from kcd.simulator.server import serve_simulator

pytestmark = pytest.mark.anyio

TOKEN = "unit-token-0123456789"
FAST = {"timeouts": {"connect": 2, "ttft": 2, "idle": 0.5, "progress": 1, "total": 4},
        "retry": {"backoff_base_s": 0.01, "backoff_cap_s": 0.05, "turn_deadline_s": 10}}
TEXT = "the quick brown fox jumps over the lazy dog " * 4


class Harness:
    def __init__(self, app: TCPGatewayApp, state, metrics: DaemonMetrics, endpoint: OpenAIEndpoint):
        self.app, self.state, self.metrics, self.endpoint = app, state, metrics, endpoint

    def fault(self, model: str, name: str, count: int | None = None, **params) -> None:
        self.state.plans.add(model, resolve(name, params), count)

    def seen(self, model: str) -> list[dict]:
        return [r for r in self.state.requests if r["model"] == model]

    async def call(self, body: dict, *, disconnect_after: float | None = None,
                   token: str = TOKEN) -> tuple[int, dict[str, str], bytes]:
        raw = msgspec.json.encode(body)
        done = anyio.Event()
        given = False
        messages: list[dict] = []

        async def receive() -> dict:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": raw, "more_body": False}
            if disconnect_after is not None:
                with anyio.move_on_after(disconnect_after):
                    await done.wait()
                return {"type": "http.disconnect"}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
                 "headers": [(b"authorization", f"Bearer {token}".encode()),
                             (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
        if not messages:  # the client left before anything was sent
            return 0, {}, b""
        start = messages[0]
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], headers, b"".join(m.get("body", b"") for m in messages[1:])


@pytest.fixture
async def harness():
    models = {
        "live": {"route": "openai/echo", "fallbacks": ["openai/backup"], "stream_mode": "passthrough", **FAST},
        "buf": {"route": "openai/echo", "fallbacks": ["openai/backup"], **FAST},
        "tools": {"route": "openai/dev", "stream_mode": "passthrough", **FAST},
        "probed": {"route": "openai/echo", "fallbacks": ["openai/backup"], "probes": True, **FAST},
    }
    settings = GatewaySettings(models={k: msgspec.convert(v, GatewayModel) for k, v in models.items()})
    async with anyio.create_task_group() as tg:
        handle = await tg.start(lambda task_status: serve_simulator(scripts={"backup": default_behaviours()["echo"]},
                                                                    task_status=task_status))
        dispatcher = Dispatcher({"OPENAI_BASE_URL": handle.base_url, "OPENAI_API_KEY": "sk-unit"},
                                breakers=BreakerBoard())
        metrics = DaemonMetrics()
        probes = ProbeManager(dispatcher, None, timeout_s=3)
        endpoint = OpenAIEndpoint(dispatcher, ModelMap(settings), telemetry=None, metrics=metrics, probes=probes,
                                  tokens=TokenTable({"unit": TOKEN}), env={}, max_body=1 << 20)
        yield Harness(TCPGatewayApp(endpoint), handle.state, metrics, endpoint)
        await dispatcher.aclose()
        tg.cancel_scope.cancel()


def events(raw: bytes) -> list:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else msgspec.json.decode(data))
    return out


def text_of(evs: list) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in evs
                   if isinstance(e, dict) and e.get("choices"))


def ask(model: str, stream: bool = True, **kw) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": TEXT}], "stream": stream, **kw}


async def test_passthrough_streams_a_healthy_answer(harness):
    status, headers, raw = await harness.call(ask("live", stream_options={"include_usage": True}))
    evs = events(raw)
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert headers["x-kylecode-route"] == "openai/echo" and headers["x-kylecode-attempts"] == "1"
    assert float(headers["x-kylecode-overhead-ms"]) >= 0
    assert evs[-1] == "[DONE]" and text_of(evs) == TEXT
    assert len([e for e in evs if isinstance(e, dict) and e["choices"]
                and e["choices"][0]["delta"].get("content")]) > 1  # really streamed, in pieces
    assert evs[-2]["usage"]["completion_tokens"] > 0


async def test_passthrough_failure_after_text_ends_in_band(harness):
    # tokens, then silence: the text is surely out before the idle timeout fires
    harness.fault("echo", "stream_stall", 1, tokens=2, hold=5)
    status, headers, raw = await harness.call(ask("live"))
    evs = events(raw)
    assert status == 200 and headers["x-kylecode-route"] == "openai/echo"
    assert "[DONE]" not in evs
    last = evs[-1]
    assert last["choices"][0]["finish_reason"] == "error" and last["error"]["code"] == "timeout.idle"
    assert 0 < len(text_of(evs)) < len(TEXT)
    # no splice: neither a retry nor the fallback was asked once text was out
    assert len(harness.seen("echo")) == 1 and harness.seen("backup") == []
    assert harness.metrics.registry.render().count(b"kylecode_gateway_midstream_errors_total{") == 1


async def test_passthrough_failure_before_text_falls_back_transparently(harness):
    harness.fault("echo", "html_502")
    status, headers, raw = await harness.call(ask("live"))
    evs = events(raw)
    assert status == 200 and headers["x-kylecode-route"] == "openai/backup"
    assert headers["x-kylecode-fallback-from"] == "openai/echo"
    assert int(headers["x-kylecode-attempts"]) == len(harness.seen("echo")) + 1
    assert evs[-1] == "[DONE]" and text_of(evs) == TEXT
    assert evs[-2]["model"] == "backup"  # the last chunks name the model that answered


async def test_passthrough_failing_everywhere_is_a_real_http_error(harness):
    harness.fault("*", "unavailable_persistent")
    status, headers, raw = await harness.call(ask("live"))
    body = msgspec.json.decode(raw)
    assert status == 502 and body["error"]["type"] == "upstream_error"
    assert headers["content-type"] == "application/json" and int(headers["x-kylecode-attempts"]) >= 2


@pytest.mark.parametrize("fault,params", [
    ("stream_cut", {}), ("stream_cut", {"reset": 1}), ("inband_error_after_tokens", {}),
    ("failover_accounting", {}), ("malformed_chunk", {}), ("stream_stall", {"hold": 5}),
    ("deferred_first_chunk_error", {}), ("finish_reason_rewrite", {}),
])
async def test_passthrough_never_presents_a_truncated_answer_as_complete(harness, fault, params):
    harness.fault("echo", fault, 1, **params)
    status, headers, raw = await harness.call(ask("live"))
    assert status == 200
    evs = events(raw)
    if evs[-1] == "[DONE]":  # complete: the whole answer, and nothing spliced onto a broken one
        assert text_of(evs) == TEXT
        assert evs[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    else:
        assert evs[-1]["choices"][0]["finish_reason"] == "error" and evs[-1]["error"]["message"]
        assert TEXT.startswith(text_of(evs))


@pytest.mark.parametrize("fault,params", [("stream_cut", {}), ("stream_stall", {"hold": 5}),
                                          ("inband_error_after_tokens", {}), ("malformed_chunk", {})])
async def test_buffer_mode_hides_any_failure_before_completion(harness, fault, params):
    harness.fault("echo", fault, 1, **params)
    status, headers, raw = await harness.call(ask("buf"))
    evs = events(raw)
    assert status == 200 and evs[-1] == "[DONE]" and text_of(evs) == TEXT
    assert headers["x-kylecode-attempts"] == "2"
    seen = harness.seen("echo")
    if fault == "stream_stall":  # silence is not waited on twice: the fallback answers
        assert headers["x-kylecode-route"] == "openai/backup" and [r["stream"] for r in seen] == [True]
        return
    assert headers["x-kylecode-route"] == "openai/echo"
    assert [r["stream"] for r in seen] == [True, False]  # restarted from the same input, not streamed


async def test_passthrough_tool_calls_are_sent_once_complete(harness):
    tools = [{"type": "function", "function": {"name": "list_dir", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}}}}}]
    status, headers, raw = await harness.call({"model": "tools", "stream": True, "tools": tools,
                                               "messages": [{"role": "user", "content": "list the workspace"}]})
    evs = events(raw)
    calls = [c for e in evs if isinstance(e, dict) and e["choices"]
             for c in e["choices"][0]["delta"].get("tool_calls") or ()]
    assert status == 200 and evs[-1] == "[DONE]"
    assert len(calls) == 1 and calls[0]["function"]["name"] == "list_dir"
    assert isinstance(msgspec.json.decode(calls[0]["function"]["arguments"]), dict)
    assert evs[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_client_that_leaves_cancels_the_upstream_call(harness):
    harness.fault("echo", "no_response", hold=30)
    with anyio.fail_after(1.5):  # the ttft timeout is 2 s; leaving after 0.2 s must end it sooner
        status, _, _ = await harness.call(ask("live"), disconnect_after=0.2)
    assert status == 0 and len(harness.seen("echo")) == 1 and harness.seen("backup") == []


async def test_wrong_token_is_refused_before_anything_else(harness):
    status, headers, raw = await harness.call(ask("live"), token="not-the-token-000000")
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert msgspec.json.decode(raw)["error"]["code"] == "invalid_api_key"
    assert harness.state.requests == []


async def test_probe_results_shape_the_chain_as_for_runs(harness):
    # The first request of a `probes: true` model probes its routes; here the primary fails them all.
    harness.fault("echo", "html_200")
    status, headers, _ = await harness.call(ask("probed", stream=False))
    assert status == 200 and headers["x-kylecode-route"] == "openai/backup"
    probed = harness.endpoint.probes.cached("openai/echo")
    assert probed is not None and probed.stream_success is False and probed.tool_stream_success is False
    harness.state.reset()  # the primary is healthy again; its probe results stay cached (and fresh)

    status, headers, raw = await harness.call(ask("probed"))
    assert status == 200 and headers["x-kylecode-route"] == "openai/echo" and events(raw)[-1] == "[DONE]"
    assert [r["stream"] for r in harness.seen("echo")] == [False]  # its stream probe failed: not streamed
    tools = [{"type": "function", "function": {"name": "list_dir", "parameters": {"type": "object"}}}]
    status, headers, _ = await harness.call(ask("probed", stream=False, tools=tools))
    assert status == 200 and headers["x-kylecode-route"] == "openai/backup"  # no tool requests for it
    assert len(harness.seen("echo")) == 1
