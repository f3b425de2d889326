"""Capability probes against the real simulator over loopback HTTP.

Faults come from the ``+fault`` model suffix (every probe of the route gets it)
or the simulator's plan API. A model that ignores JSON mode is the `prose`
script below: scripts a test registers answer probes themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from kcd.providers.dispatcher import ChainEntry, Dispatcher
from kcd.providers.probes import NOOP_TOOL_NAME, PROBE_SYSTEM, ProbeManager, ProbeResult, skipped_result
from kcd.providers.routes import parse_route
from kcd.simulator.behaviours import Reply
from kcd.simulator.faults import resolve
from kcd.simulator.server import SimulatorHandle
from kcd.state import StateStore

from ..running_simulator import running_simulator

pytestmark = pytest.mark.anyio


class Prose:
    """A model that answers everything in prose: ignores JSON mode and tools."""

    def reply(self, request: dict) -> Reply:
        return Reply(content="Sure! pong: yes")


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorHandle]:
    async with running_simulator(scripts={"prose": Prose()}) as handle:
        yield handle


def make_dispatcher(sim: SimulatorHandle, env: Mapping[str, str] | None = None) -> Dispatcher:
    async def sim_url() -> str:
        return sim.base_url

    return Dispatcher({"OPENAI_API_KEY": "sk-test"} if env is None else env, simulator_url=sim_url)


@pytest.fixture
async def dispatcher(sim: SimulatorHandle) -> AsyncIterator[Dispatcher]:
    disp = make_dispatcher(sim)
    yield disp
    await disp.aclose()


def mock(model: str = "dev") -> ChainEntry:
    return ChainEntry(route=parse_route(f"mock/{model}"))


def openai(sim: SimulatorHandle) -> ChainEntry:
    return ChainEntry(route=parse_route("openai/gpt-4o-mini"), base_url=sim.base_url)


def requests(sim: SimulatorHandle) -> int:
    assert sim.state is not None
    return sim.state.chat_total


def manager(dispatcher: Dispatcher, store: StateStore | None = None, **kw: Any) -> ProbeManager:
    return ProbeManager(dispatcher, store, **kw)


# ------------------------------------------------------------------ outcomes


@pytest.mark.parametrize("which", ["mock", "openai"])
async def test_healthy_route_passes_all_three(sim, dispatcher, which):
    seen: list[tuple[ProbeResult, dict]] = []
    probes = manager(dispatcher, on_result=lambda r, s: seen.append((r, dict(s))))
    entry = mock() if which == "mock" else openai(sim)
    result = await probes.get(entry)

    assert result.attempted and result.skipped_reason is None
    assert (result.stream_success, result.tool_stream_success, result.json_mode_success) == (True, True, True)
    assert result.errors == {} and result.error is None
    assert result.model_id == result.route == entry.route.id
    assert result.stream_events and result.stream_events >= 1
    assert result.model_reported == ("dev" if which == "mock" else "gpt-4o-mini")
    assert set(result.probe_elapsed) == {"stream", "tool", "json"} and result.elapsed > 0
    assert seen == [(result, {"stream": True, "tool": True, "json": True})]

    # What went on the wire: three small requests, each probing one thing.
    assert sim.state is not None
    bodies = {("stream" if e["stream"] else "tool" if e["has_tools"] else "json"): e["body"]
              for e in sim.state.requests}
    assert set(bodies) == {"stream", "tool", "json"}
    for body in bodies.values():
        assert body["messages"][0] == {"role": "system", "content": PROBE_SYSTEM}
        assert body["temperature"] == 0 and body["max_tokens"] <= 64
    assert bodies["tool"]["tool_choice"] == {"type": "function", "function": {"name": NOOP_TOOL_NAME}}
    assert bodies["tool"]["tools"][0]["function"]["parameters"]["required"] == ["echo"]
    assert bodies["json"]["response_format"] == {"type": "json_object"}
    assert "response_format" not in bodies["stream"] and "tools" not in bodies["stream"]
    # Probes are not real traffic: no breaker was touched.
    assert dispatcher.breakers.routes() == []


async def test_openai_reasoning_models_are_probed_with_max_completion_tokens(sim, dispatcher):
    # o-series and gpt-5 reject max_tokens and temperature 0 with a 400, which would fail
    # every probe and wrongly switch streaming and native tools off for them.
    entry = ChainEntry(route=parse_route("openai/o4-mini"), base_url=sim.base_url)
    result = await manager(dispatcher).get(entry)
    assert result.attempted
    assert sim.state is not None
    bodies = [e["body"] for e in sim.state.requests]
    assert len(bodies) == 3
    for body in bodies:
        assert "max_tokens" not in body and "temperature" not in body
        assert body["max_completion_tokens"] >= 1024
    openrouter = parse_route("openrouter/openai/o4-mini")  # OpenRouter maps max_tokens itself
    from kcd.providers.probes import probe_params

    assert probe_params(openrouter, 16) == {"max_tokens": 16, "temperature": 0}
    assert probe_params(parse_route("openai/gpt-4o-mini"), 16) == {"max_tokens": 16, "temperature": 0}


async def test_stream_cut_fails_the_stream_probe_with_its_reason(dispatcher):
    result = await manager(dispatcher).get(mock("dev+stream_cut"))
    assert result.attempted and result.stream_success is False
    assert result.errors["stream"].startswith("stream_truncated")


async def test_html_502_fails_every_probe_with_its_reason(sim, dispatcher):
    assert sim.state is not None
    sim.state.plans.add("dev", resolve("html_502"), None)  # the plan API, in process
    result = await manager(dispatcher).get(mock())
    assert result.summary() == {"stream": False, "tool": False, "json": False}
    for probe in ("stream", "tool", "json"):
        assert result.errors[probe].startswith("upstream_html (HTTP 502)"), result.errors
    assert result.error == result.errors["json"]  # the last one, as in the original


async def test_tool_stripping_fails_only_the_tool_probe(dispatcher):
    result = await manager(dispatcher).get(mock("dev+tool_stripping"))
    assert result.summary() == {"stream": True, "tool": False, "json": True}
    assert "no structured tool call" in result.errors["tool"]
    assert f"I would now use {NOOP_TOOL_NAME}" in result.errors["tool"]


async def test_json_probe_fails_when_the_content_is_not_json(dispatcher):
    result = await manager(dispatcher).get(mock("prose"))  # ignores JSON mode (and tools)
    assert result.summary() == {"stream": True, "tool": False, "json": False}
    assert result.errors["json"] == "content is not a JSON object: 'Sure! pong: yes'"


async def test_a_broken_json_body_fails_the_json_probe(dispatcher):
    result = await manager(dispatcher).get(mock("dev+malformed_chunk"))
    assert result.json_mode_success is False and result.errors["json"]


async def test_a_timeout_is_a_failure_never_unknown(dispatcher):
    result = await manager(dispatcher, timeout_s=0.5).get(mock("dev+no_response"))
    assert result.summary() == {"stream": False, "tool": False, "json": False}
    assert all(e.startswith("timeout.") for e in result.errors.values()), result.errors
    assert result.elapsed < 5


async def test_missing_key_is_skipped_without_a_request(sim):
    disp = make_dispatcher(sim, env={})
    try:
        result = await manager(disp).get(openai(sim))
    finally:
        await disp.aclose()
    assert not result.attempted and result.skipped_reason == "missing_api_key"
    assert result.summary() == {"stream": None, "tool": None, "json": None}
    assert "OPENAI_API_KEY" in (result.error or "") and requests(sim) == 0


async def test_unresolvable_endpoint_is_client_init_failed():
    disp = Dispatcher({})  # no simulator: mock routes cannot resolve
    result = await manager(disp).get(mock())
    assert not result.attempted and result.skipped_reason == "client_init_failed"
    assert "simulator" in (result.error or "")


def test_skipped_result_for_disabled_probes_has_the_original_fields():
    record = skipped_result("mock/dev", "disabled", checked_at=1.0).record()
    for key in ("model_id", "attempted", "stream_success", "tool_stream_success", "json_mode_success",
                "skipped_reason", "error", "elapsed"):
        assert key in record
    assert record["skipped_reason"] == "disabled" and record["attempted"] is False


# ------------------------------------------------------------------ the cache


async def test_fresh_cache_sends_nothing_and_ttl_expiry_probes_again(sim, dispatcher):
    wall = Clock()
    probes = manager(dispatcher, wall=wall, ttl_s=100)
    first = await probes.get(mock())
    assert requests(sim) == 3
    wall.now += 99
    assert await probes.get(mock()) is first and probes.cached("mock/dev") is first
    assert requests(sim) == 3 and probes.age_s(first) == 99
    wall.now += 2
    assert not probes.is_fresh(first)
    second = await probes.get(mock())
    assert second is not first and requests(sim) == 6 and probes.is_fresh(second)
    await probes.get(mock(), refresh=True)
    assert requests(sim) == 9


async def test_failed_results_expire_sooner(sim, dispatcher):
    wall = Clock()
    probes = manager(dispatcher, wall=wall, ttl_s=3600, failure_ttl_s=60)
    failed = await probes.get(mock("dev+tool_stripping"))
    assert probes.ttl_for(failed) == 60
    wall.now += 61
    assert not probes.is_fresh(failed)


async def test_single_flight(sim, dispatcher):
    probes = manager(dispatcher)
    results: list[ProbeResult] = []

    async def get() -> None:
        results.append(await probes.get(mock()))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(get)
    assert len(results) == 10 and all(r is results[0] for r in results)
    assert requests(sim) == 3


async def test_a_cancelled_leader_hands_the_run_to_a_waiter(sim, dispatcher):
    probes = manager(dispatcher)
    entry = mock("dev+slow_ttft;delay=0.3")
    got: list[ProbeResult] = []

    async def until_requests(n: int) -> None:
        with anyio.fail_after(5):
            while requests(sim) < n:
                await anyio.sleep(0.005)

    async def waiter() -> None:
        await until_requests(1)  # the leader's run is in flight: join it
        got.append(await probes.get(entry))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        with anyio.CancelScope() as leader:
            async with anyio.create_task_group() as inner:
                inner.start_soon(probes.get, entry)
                await until_requests(3)
                leader.cancel()
    assert len(got) == 1 and got[0].summary() == {"stream": True, "tool": True, "json": True}
    assert requests(sim) == 6  # the cancelled run's three, then the waiter's own


async def test_a_model_swap_makes_the_result_stale(sim, dispatcher):
    probes = manager(dispatcher)
    entry = mock()
    first = await probes.get(entry)
    probes.note_used("mock/dev", entry, model_reported="dev")  # same model: still fresh
    assert probes.is_fresh(first)
    probes.note_used("mock/dev", entry, model_reported="dev-2025-01-01")
    assert not probes.is_fresh(first)
    second = await probes.get(entry)
    assert second is not first and probes.is_fresh(second) and requests(sim) == 6


async def test_results_persist_across_a_restart(sim, dispatcher, tmp_path: Path):
    wall = Clock()
    store = StateStore(tmp_path / "state.db")
    before = await manager(dispatcher, store, wall=wall).get(mock("dev+tool_stripping"))
    store.close()

    wall.now += 10
    store = StateStore(tmp_path / "state.db")  # the daemon restarts
    try:
        probes = manager(dispatcher, store, wall=wall)
        assert probes.restore() == 1
        restored = probes.cached("mock/dev+tool_stripping")
        assert restored == before and probes.is_fresh(restored) and probes.age_s(restored) == 10
        assert probes.results() == [restored]
        assert await probes.get(mock("dev+tool_stripping")) is restored
        assert requests(sim) == 3  # nothing re-probed
    finally:
        store.close()


# ------------------------------------------------------------------ refresher


async def test_refresher_reprobes_a_used_route_about_to_expire(sim, dispatcher):
    wall = Clock()
    probes = manager(dispatcher, wall=wall, ttl_s=100, refresh_before_s=30)
    used, idle = mock(), mock("echo")
    await probes.get(used)
    await probes.get(idle)
    assert requests(sim) == 6
    wall.now += 10
    probes.note_used("mock/dev", used)
    probes.note_used("mock/echo", idle)
    assert await probes.refresh_due() == []  # nothing expires within 30 s yet
    wall.now += 65  # 25 s left
    await probes.get(idle, refresh=True)  # probed since its last use: not due any more
    assert await probes.refresh_due() == ["mock/dev"]
    assert requests(sim) == 12 and probes.age_s(probes.cached("mock/dev")) == 0
    assert await probes.refresh_due() == []  # not used since that probe


async def test_refresher_loop_runs_in_the_background(sim, dispatcher):
    wall = Clock()
    probes = manager(dispatcher, wall=wall, ttl_s=100, refresh_before_s=30, refresh_every_s=0.01)
    entry = mock()
    await probes.get(entry)
    wall.now += 80
    probes.note_used("mock/dev", entry)
    async with anyio.create_task_group() as tg:
        await tg.start(probes.refresher)
        with anyio.fail_after(5):
            while requests(sim) < 6:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert probes.is_fresh(probes.cached("mock/dev"))


async def test_refresher_survives_a_failing_pass(dispatcher, caplog):
    probes = manager(dispatcher, refresh_every_s=0.01)
    calls: list[int] = []

    async def broken() -> list[str]:
        calls.append(1)
        raise RuntimeError("boom")

    probes.refresh_due = broken  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        await tg.start(probes.refresher)
        with anyio.fail_after(5):
            while len(calls) < 3:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert "probe refresher pass failed" in caplog.text
