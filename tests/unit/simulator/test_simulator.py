"""The provider simulator over real loopback HTTP: wire format, routing, errors,
and the `dev` script driving the enumerate-workspace conversation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from kcd.providers.sse import SSEParser
from kcd.simulator.behaviours import Reply, parse_listing, pick_file

from ..running_simulator import running_simulator

pytestmark = pytest.mark.anyio

TOOLS = [
    {"type": "function", "function": {"name": n, "description": n, "parameters": {"type": "object"}}}
    for n in ("list_dir", "read_file", "mark_task_complete")
]
TREE = (
    '<TOOL_OUTPUT tool="list_dir" path=".">\n'
    "├── include/\n"
    "│   └── fs.h\n"
    "├── src/\n"
    "│   └── fs.c\n"
    "├── Makefile\n"
    "└── README.md\n"
    "</TOOL_OUTPUT>"
)
README = '<TOOL_OUTPUT tool="read_file" file="README.md"># c_project\nA tiny filesystem.</TOOL_OUTPUT>'


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class Boom:
    def reply(self, request: dict) -> Reply:
        raise ValueError("script bug")


@pytest.fixture
async def sim() -> AsyncIterator:
    async with running_simulator(scripts={"boom": Boom()}) as handle:
        yield handle


@pytest.fixture
async def http(sim) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.base_url, trust_env=False,
                                 headers={"Authorization": "Bearer sk-secret-value"}) as c:
        yield c


async def chat(http: httpx.AsyncClient, messages: list[dict], *, tools: bool, model: str = "dev") -> dict:
    body: dict = {"model": model, "messages": messages}
    if tools:
        body["tools"] = TOOLS
    r = await http.post("/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json" and r.headers["x-request-id"]
    out = r.json()
    assert out["object"] == "chat.completion" and out["usage"]["total_tokens"] > 0
    return out


def start(task: str = "Enumerate the workspace.") -> list[dict]:
    return [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": task}]


async def test_dev_native_three_steps(http):
    messages = start()
    steps = []
    for result in (TREE, README, None):
        out = await chat(http, messages, tools=True)
        choice = out["choices"][0]
        msg = choice["message"]
        steps.append((choice["finish_reason"], [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                                                for c in msg.get("tool_calls") or ()]))
        if result is None:
            break
        messages.append(msg)
        for call in msg["tool_calls"]:
            messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                             "content": result})
    assert steps == [
        ("tool_calls", [("call_1", "list_dir", {"path": ".", "depth": 2})]),
        ("tool_calls", [("call_2", "read_file", {"path": "README.md"})]),
        ("tool_calls", [("call_3", "mark_task_complete", {})]),
    ]
    summary = msg["content"]
    bullets = [line for line in summary.splitlines() if line.startswith("- ")]
    assert 2 <= len(bullets) <= 3
    assert "`include/`" in summary and "`Makefile`" in summary and "`src/fs.c`" in summary


async def test_dev_text_mode_three_steps(http):
    messages = start()
    replies = []
    for result in (TREE, README, None):
        out = await chat(http, messages, tools=False)
        msg = out["choices"][0]["message"]
        assert "tool_calls" not in msg and out["choices"][0]["finish_reason"] == "stop"
        replies.append(msg["content"])
        if result is None:
            break
        messages.append({"role": "assistant", "content": msg["content"]})
        messages.append({"role": "user", "content": "Tool execution results:\n\n" + result})
    assert replies[0] == '<TOOL_CALL> list_dir(path=".", depth=2) </TOOL_CALL>'
    assert replies[1] == '<TOOL_CALL> read_file(path="README.md") </TOOL_CALL>'
    final = replies[2]
    assert final.count("<TOOL_CALL>") == 1
    assert final.rstrip().endswith("<TOOL_CALL> mark_task_complete() </TOOL_CALL>")
    assert final.startswith("## Workspace summary")


async def test_dev_native_speaks_the_offered_opencode_names(http):
    tools = [{"type": "function", "function": {"name": n, "description": n, "parameters": {"type": "object"}}}
             for n in ("list", "read", "mark_task_complete")]
    r = await http.post("/chat/completions", json={"model": "dev", "messages": start(), "tools": tools})
    [call] = r.json()["choices"][0]["message"]["tool_calls"]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == ("list", {"path": "."})
    listing = '<TOOL_OUTPUT tool="list" path=".">\n./\n  docs/\n    guide.md\n  README.md\n</TOOL_OUTPUT>'
    messages = start() + [r.json()["choices"][0]["message"],
                          {"role": "tool", "tool_call_id": call["id"], "content": listing}]
    r = await http.post("/chat/completions", json={"model": "dev", "messages": messages, "tools": tools})
    [call] = r.json()["choices"][0]["message"]["tool_calls"]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == ("read", {"filePath": "README.md"})


async def test_editor_text_mode_edits_with_a_search_replace_block(http):
    from kcd.agent.dialects import render_text_catalogue

    system = "You are a coding agent.\n\n" + render_text_catalogue(["read_file", "apply_search_replace",
                                                                      "mark_task_complete"])
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": 'edit README.md: replace "tiny" with "small"'}]
    first = (await chat(http, messages, tools=False, model="editor"))["choices"][0]["message"]["content"]
    assert first == '<TOOL_CALL> read_file(path="README.md") </TOOL_CALL>'
    messages += [{"role": "assistant", "content": first},
                 {"role": "user", "content": "Tool execution results:\n\n" + README.replace("tiny", "tiny\n")}]
    second = (await chat(http, messages, tools=False, model="editor"))["choices"][0]["message"]["content"]
    assert "README.md\n```\n<<<<<<< SEARCH\nA tiny\n=======\nA small\n>>>>>>> REPLACE\n```" in second


async def test_dev_empty_workspace_completes_after_the_listing(http):
    messages = start() + [
        {"role": "assistant", "content": '<TOOL_CALL> list_dir(path=".", depth=2) </TOOL_CALL>'},
        {"role": "user", "content": 'Tool execution results:\n\n<TOOL_OUTPUT tool="list_dir" path=".">\n'
                                    "(empty directory)\n</TOOL_OUTPUT>"},
    ]
    out = await chat(http, messages, tools=False)
    content = out["choices"][0]["message"]["content"]
    assert "empty" in content and content.endswith("<TOOL_CALL> mark_task_complete() </TOOL_CALL>")


async def test_streamed_reply_is_valid_sse_with_usage_and_done(http):
    body = {"model": "dev", "messages": start(), "tools": TOOLS, "stream": True,
            "stream_options": {"include_usage": True}}
    async with http.stream("POST", "/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = await r.aread()
    parser = SSEParser()
    events = parser.feed(raw) + parser.close()
    assert events[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    args = "".join(tc["function"].get("arguments", "") for c in chunks[:-1]
                   for tc in c["choices"][0]["delta"].get("tool_calls") or ())
    assert json.loads(args) == {"path": ".", "depth": 2}
    # without include_usage there is no usage chunk
    body.pop("stream_options")
    async with http.stream("POST", "/chat/completions", json=body) as r:
        raw = await r.aread()
    assert b'"usage"' not in raw and raw.endswith(b"data: [DONE]\n\n")


async def test_unknown_model_is_404_in_openai_error_shape(http):
    r = await http.post("/chat/completions", json={"model": "nope", "messages": start()})
    assert r.status_code == 404 and r.headers["x-request-id"]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code"} and err["code"] == "model_not_found"
    assert "nope" in err["message"]


async def test_bad_json_and_bad_shape_are_400(http):
    r = await http.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await http.post("/chat/completions", json={"model": "dev"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


async def test_routing_health_models_and_header_override(http, sim):
    assert (await http.get("/chat/completions")).status_code == 405
    assert (await http.get("/nowhere")).status_code == 404
    root = httpx.URL(sim.base_url).copy_with(path="/health")
    health = await http.get(root)
    assert health.json() == {"status": "ok"} and health.headers["x-request-id"]
    models = {m["id"] for m in (await http.get("/models")).json()["data"]}
    assert {"dev", "editor", "echo", "shell", "boom"} <= models
    # the header picks another behaviour; a prefixed model falls back to its last segment
    r = await http.post("/chat/completions", json={"model": "dev", "messages": start("say this")},
                        headers={"x-kc-sim-behaviour": "echo"})
    assert r.json()["choices"][0]["message"]["content"] == "say this"
    r = await http.post("/chat/completions", json={"model": "sim/echo", "messages": start("x")})
    assert r.status_code == 200
    state = sim.state
    assert state.counts == {"dev": 1, "sim/echo": 1}
    assert [e["behaviour"] for e in state.requests] == ["echo", "echo"]
    assert all("authorization" not in e["headers"] and e["auth_scheme"] == "Bearer" for e in state.requests)
    assert "sk-secret-value" not in json.dumps(state.requests)


async def test_broken_behaviour_is_a_500_not_a_crash(http):
    r = await http.post("/chat/completions", json={"model": "boom", "messages": start()})
    assert r.status_code == 500 and r.json()["error"]["code"] == "behaviour_failed"
    assert (await http.post("/chat/completions", json={"model": "echo", "messages": start()})).status_code == 200


async def test_shell_script_runs_the_task_then_completes(http):
    out = await chat(http, start("sleep 60\n\nUse the tools."), tools=True, model="shell")
    call = out["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "run_shell"
    assert json.loads(call["function"]["arguments"]) == {"command": "sleep 60"}
    messages = start("sleep 60") + [out["choices"][0]["message"],
                                    {"role": "tool", "tool_call_id": call["id"], "content": "<BASH_RESULT></BASH_RESULT>"}]
    out = await chat(http, messages, tools=True, model="shell")
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "mark_task_complete"


def test_listing_parser_tree_plain_and_errors():
    entries = parse_listing(TREE)
    assert [(e.path, e.is_dir, e.level) for e in entries] == [
        ("include", True, 0), ("include/fs.h", False, 1), ("src", True, 0), ("src/fs.c", False, 1),
        ("Makefile", False, 0), ("README.md", False, 0)]
    assert pick_file(entries) == "README.md"
    nested = parse_listing("src/\n    └── main.c\nMakefile")
    assert pick_file(nested) == "src/main.c"  # a file with an extension beats one without
    assert pick_file(parse_listing("docs/\nbuild/")) is None
    assert parse_listing('<TOOL_ERROR tool="list_dir">no such directory</TOOL_ERROR>') == []


# ------------------------------------------------------------------ capability probes

PROBE_START = [{"role": "system", "content": "You are a diagnostic probe. Reply concisely."},
               {"role": "user", "content": "Respond with the single word PING."}]


@pytest.mark.parametrize("model", ["dev", "editor", "shell", "echo", "gpt-4o-mini", "x-ai/grok-4-fast"])
async def test_every_model_answers_probes(http, model):
    out = await chat(http, PROBE_START, tools=False, model=model)
    assert out["choices"][0]["message"]["content"] == "PING"
    out = await chat(http, PROBE_START, tools=True, model=model)  # a call to the first offered tool
    [call] = out["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "list_dir"
    assert json.loads(call["function"]["arguments"]) == {"echo": "ping"}
    r = await http.post("/chat/completions", json={"model": model, "messages": PROBE_START,
                                                   "response_format": {"type": "json_object"}})
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"pong": "yes"}


async def test_faults_still_apply_to_probes(http):
    out = await chat(http, PROBE_START, tools=True, model="dev+tool_stripping")
    msg = out["choices"][0]["message"]
    assert "tool_calls" not in msg and "I would now use list_dir" in msg["content"]
    r = await http.post("/chat/completions", json={"model": "dev+html_502", "messages": PROBE_START})
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")


def test_probe_responder_only_answers_probes():
    from kcd.simulator.agents_probe import is_probe, probe_reply
    from kcd.simulator.behaviours import DevAgent, Echo, default_behaviours

    registry = default_behaviours()
    assert isinstance(registry["dev"], DevAgent) and isinstance(registry["echo"], Echo)
    plain = {"messages": start("hello")}
    assert not is_probe(plain) and probe_reply(plain) is None
    assert registry["echo"].reply(plain).content == "hello"
    later = {"messages": start() + [{"role": "system", "content": "You are a diagnostic probe."}]}
    assert not is_probe(later)  # only the first system message counts
    assert registry["echo"].reply({"messages": PROBE_START}).content == "PING"
