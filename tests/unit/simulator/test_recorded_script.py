"""The simulator's recorded script over real loopback HTTP: turns served in order with the
recorded ids and argument text (streamed or not), probes answered without using a turn,
an over-ask refused as `replay_exhausted`, and namespaces kept apart."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from kcd.providers.sse import SSEParser

pytestmark = pytest.mark.anyio

TURNS = [
    {"content": None, "tool_calls": [{"id": "call_abc", "name": "read_file", "arguments": '{"path":"README.md"}'}],
     "finish_reason": "tool_calls"},
    {"content": "broken", "tool_calls": [{"id": "call_xyz", "name": "list_dir", "arguments": '{"path": '}],
     "finish_reason": "tool_calls"},
    {"content": "All done. TASK COMPLETE", "finish_reason": "stop"},
]
CHAT = {"model": "replay", "messages": [{"role": "user", "content": "go"}],
        "tools": [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    from kcd.simulator.server import serve_simulator

    async with anyio.create_task_group() as tg:
        handle = await tg.start(lambda **kw: serve_simulator(**kw))
        root = handle.base_url.removesuffix("/v1")
        async with httpx.AsyncClient(base_url=root, trust_env=False) as client:
            yield client
        tg.cancel_scope.cancel()


async def _load(http: httpx.AsyncClient, ns: str) -> None:
    r = await http.post(f"/ns/{ns}/_sim/script", json={"turns": TURNS, "source": "run123"})
    assert r.status_code == 200, r.text
    assert r.json()["script"] == {"source": "run123", "turns": 3, "served": 0, "over_asked": 0, "exhausted": False}


async def test_turns_are_served_in_order_with_the_recorded_ids_and_argument_text(http) -> None:
    await _load(http, "a")
    first = (await http.post("/ns/a/v1/chat/completions", json=CHAT)).json()
    call = first["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == "call_abc" and call["function"] == {"name": "read_file", "arguments": '{"path":"README.md"}'}
    second = (await http.post("/ns/a/v1/chat/completions", json=CHAT)).json()
    message = second["choices"][0]["message"]
    assert message["content"] == "broken"
    assert message["tool_calls"][0]["function"]["arguments"] == '{"path": '  # not JSON, sent as recorded
    third = (await http.post("/ns/a/v1/chat/completions", json=CHAT)).json()
    assert third["choices"][0]["message"]["content"] == "All done. TASK COMPLETE"
    assert third["choices"][0]["finish_reason"] == "stop"

    over = await http.post("/ns/a/v1/chat/completions", json=CHAT)
    assert over.status_code == 400
    assert over.json()["error"]["code"] == "replay_exhausted"
    status = (await http.get("/ns/a/_sim/script")).json()["script"]
    assert status["served"] == 3 and status["over_asked"] == 1 and status["exhausted"] is True


async def test_a_streamed_request_gets_the_recorded_turn_as_chunks(http) -> None:
    await _load(http, "s")
    async with http.stream("POST", "/ns/s/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        parser, events = SSEParser(), []
        async for chunk in resp.aiter_bytes():
            events.extend(parser.feed(chunk))
    datas = [e.data for e in events if e.data != "[DONE]"]
    deltas = [json.loads(d)["choices"][0]["delta"] for d in datas if json.loads(d)["choices"]]
    calls = [tc for d in deltas for tc in d.get("tool_calls") or ()]
    assert calls[0]["id"] == "call_abc"
    assert "".join(tc["function"].get("arguments", "") for tc in calls) == '{"path":"README.md"}'


async def test_probes_do_not_use_a_turn_and_namespaces_are_apart(http) -> None:
    await _load(http, "p")
    probe = {"model": "replay", "messages": [{"role": "system", "content": "You are a diagnostic probe."},
                                             {"role": "user", "content": "ping"}]}
    assert (await http.post("/ns/p/v1/chat/completions", json=probe)).json()["choices"][0]["message"]["content"] == "PING"
    assert (await http.get("/ns/p/_sim/script")).json()["script"]["served"] == 0
    # Another namespace has no script: `replay` is not a stand-in agent there.
    other = await http.post("/ns/q/v1/chat/completions", json=CHAT)
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
    # Dropping the namespace drops its script.
    assert (await http.delete("/ns/p/_sim/faults")).status_code == 200
    assert (await http.get("/ns/p/_sim/script")).json()["script"] is None


async def test_a_malformed_script_is_refused(http) -> None:
    r = await http.post("/ns/m/_sim/script", json={"turns": [{"tool_calls": [{"id": 1}]}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_script"
    r = await http.post("/ns/m/_sim/script", json={"turns": [], "extra": 1})
    assert r.status_code == 400
