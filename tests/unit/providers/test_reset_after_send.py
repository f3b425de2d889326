"""A TCP reset after the request went out is `connection_reset` on both upstream
transports, and is retried once, then falls over (retry.decide).

Real loopback HTTP to the provider simulator: its `tcp_reset` fault reads the whole
request body, then resets the connection (SO_LINGER 0) before any response header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from kcd.providers import errors as E
from kcd.providers.attempt import Timeouts
from kcd.providers.dispatcher import AttemptRecord, ChainEntry, NullObserver, Dispatcher
from kcd.providers.openai_compat import send_chat
from kcd.providers.retry import RetryPolicy, decide
from kcd.providers.routes import parse_route
from kcd.providers.types import ChatMessage, ChatRequest
from kcd.simulator.faults import unused_port

from ..running_simulator import running_simulator

pytestmark = pytest.mark.anyio

TRANSPORTS = ["aiohttp", "httpx"]
PRIMARY = "openrouter/x-ai/grok-4-fast"
FALLBACK = "openai/gpt-4o-mini"
ENV = {"OPENROUTER_API_KEY": "sk-or-test", "OPENAI_API_KEY": "sk-test"}
FAST = Timeouts(connect=2, write=2, ttft=3, idle=3, progress=3, total=5)
POLICY = RetryPolicy(backoff_base_s=0.01, backoff_cap_s=0.02, turn_deadline_s=20)
MESSAGES = [ChatMessage(role="user", content="Enumerate the workspace.")]


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator:
    async with running_simulator() as handle:
        yield handle


@pytest.fixture
async def control(sim) -> AsyncIterator[httpx.AsyncClient]:
    """The simulator's control API, with fresh state for each test."""
    async with httpx.AsyncClient(base_url=sim.base_url.removesuffix("/v1") + "/_sim", trust_env=False,
                                 timeout=5.0) as c:
        assert (await c.delete("/faults")).status_code == 200
        yield c


@pytest.fixture(params=TRANSPORTS)
async def dispatcher(request) -> AsyncIterator[Dispatcher]:
    disp = Dispatcher(ENV, upstream_client=request.param)
    yield disp
    await disp.aclose()


async def reset_route(control: httpx.AsyncClient, route: str, count: int | None = None) -> None:
    plan = {"model": parse_route(route).model, "fault": "tcp_reset", "count": count}
    assert (await control.post("/faults", json=plan)).status_code == 200


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.records: list[AttemptRecord] = []

    async def attempt(self, record: AttemptRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("stream", [False, True])
async def test_reset_after_send_is_connection_reset(sim, control, dispatcher, stream):
    await reset_route(control, PRIMARY)
    route = parse_route(PRIMARY)
    endpoint = await dispatcher.endpoint_for(route, sim.base_url)
    attempt = await send_chat(dispatcher.client_for(endpoint), endpoint, route,
                              ChatRequest(messages=MESSAGES, stream=stream), timeouts=FAST)
    f = attempt.failure
    assert f is not None and f.classification == E.CONNECTION_RESET, (dispatcher.upstream_client, f)
    assert "reset after the request was sent" in f.message
    assert PRIMARY in f.message and sim.base_url in f.message  # names the route and where it went
    assert "cannot connect" not in f.message
    decision = decide(f)
    assert (decision.retry_same_route, decision.fall_over, decision.retry_limit) == (True, True, 1)
    assert decision.reason == "connection_reset"
    # The simulator had the whole request (it logs only parsed bodies) and answered nothing.
    [entry] = (await control.get("/requests")).json()["requests"]
    assert entry["fault"] == "tcp_reset" and entry["status"] is None and entry["stream"] is stream


async def test_reset_is_retried_once_then_falls_over(sim, control, dispatcher):
    await reset_route(control, PRIMARY)  # every request to the primary
    chain = [ChainEntry(parse_route(PRIMARY), base_url=sim.base_url, timeouts=FAST),
             ChainEntry(parse_route(FALLBACK), base_url=sim.base_url, timeouts=FAST)]
    obs = Recorder()
    served = await dispatcher.complete(chain, MESSAGES, [], policy=POLICY, turn_key="t1", observer=obs)
    assert served.entry.route.id == FALLBACK and served.attempts == 3
    seen = [(r.kind, r.entry.route.id, r.attempt.failure.classification if r.attempt.failure else "ok")
            for r in obs.records]
    assert seen == [("primary", PRIMARY, "connection_reset"), ("retry", PRIMARY, "connection_reset"),
                    ("fallback", FALLBACK, "ok")]
    stats = (await control.get("/stats")).json()
    assert stats["by_model"] == {"x-ai/grok-4-fast": 2, "gpt-4o-mini": 1}


async def test_reset_once_is_served_by_the_retry(sim, control, dispatcher):
    await reset_route(control, PRIMARY, count=1)
    chain = [ChainEntry(parse_route(PRIMARY), base_url=sim.base_url, timeouts=FAST)]
    obs = Recorder()
    served = await dispatcher.complete(chain, MESSAGES, [], policy=POLICY, turn_key="t2", observer=obs)
    assert served.entry.route.id == PRIMARY and served.attempts == 2
    assert [r.kind for r in obs.records] == ["primary", "retry"]


async def test_refused_connection_stays_connect_error(dispatcher):
    route = parse_route(PRIMARY)
    endpoint = await dispatcher.endpoint_for(route, f"http://127.0.0.1:{unused_port()}/v1")
    attempt = await send_chat(dispatcher.client_for(endpoint), endpoint, route, ChatRequest(messages=MESSAGES),
                              timeouts=FAST)
    f = attempt.failure
    assert f is not None and f.classification == E.CONNECT_ERROR and "cannot connect" in f.message
    assert decide(f).retry_same_route is False
