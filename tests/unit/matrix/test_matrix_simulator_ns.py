"""Simulator namespaces over real loopback HTTP: separate plans, counters and logs per
namespace; the root paths unchanged; a reset drops the namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from kcd.simulator.namespaces import NamespaceError, Namespaces, split_namespace

from ..running_simulator import running_simulator

pytestmark = pytest.mark.anyio

CHAT = {"model": "x-ai/grok-4-fast", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sim() -> AsyncIterator:
    async with running_simulator() as handle:
        yield handle


@pytest.fixture
async def http(sim) -> AsyncIterator[httpx.AsyncClient]:
    root = sim.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=root, trust_env=False, timeout=10) as client:
        yield client


def test_split_namespace():
    assert split_namespace("/ns/a-1.b_2/v1/chat/completions") == ("a-1.b_2", "/v1/chat/completions")
    assert split_namespace("/v1/chat/completions") == (None, "/v1/chat/completions")
    assert split_namespace("/ns/a") == ("a", "/")
    for bad in ("/ns//v1", "/ns/-a/v1", "/ns/a b/v1", "/ns/" + "x" * 200 + "/v1"):
        with pytest.raises(NamespaceError):
            split_namespace(bad)


def test_the_number_of_namespaces_is_capped():
    spaces = Namespaces(limit=2)
    spaces.get("a")
    spaces.get("b")
    with pytest.raises(NamespaceError) as info:
        spaces.get("c")
    assert info.value.status == 503
    assert spaces.drop("a") and spaces.get("c") and spaces.names() == ["b", "c"]


async def test_plans_and_counters_stay_in_their_namespace(http, sim):
    r = await http.post("/ns/a/_sim/faults", json={"model": "*", "fault": "unavailable_persistent"})
    assert r.status_code == 200
    assert (await http.post("/ns/a/v1/chat/completions", json=CHAT)).status_code == 503
    assert (await http.post("/ns/b/v1/chat/completions", json=CHAT)).status_code == 200
    assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
    # server_error_once counts per model *per namespace*: each namespace gets its own first 500
    for ns in ("c", "d"):
        await http.post(f"/ns/{ns}/_sim/faults", json={"model": CHAT["model"], "fault": "server_error_once"})
        codes = [(await http.post(f"/ns/{ns}/v1/chat/completions", json=CHAT)).status_code for _ in range(2)]
        assert codes == [500, 200]
    stats = (await http.get("/ns/a/_sim/stats")).json()
    assert stats["by_model"] == {"x-ai/grok-4-fast": 1}
    assert len((await http.get("/ns/b/_sim/requests")).json()["requests"]) == 1
    assert sim.state.stats()["total"] == 1  # the default namespace saw only its own request
    listing = {n["name"]: n["total"] for n in (await http.get("/_sim/namespaces")).json()["namespaces"]}
    assert listing == {"a": 1, "b": 1, "c": 2, "d": 2}


async def test_reset_drops_the_namespace_and_ids_stay_unique(http):
    ids = set()
    for path in ("/ns/a/v1/chat/completions", "/ns/b/v1/chat/completions", "/v1/chat/completions"):
        ids.add((await http.post(path, json=CHAT)).headers["x-request-id"])
    assert len(ids) == 3
    assert (await http.delete("/ns/a/_sim/faults")).status_code == 200
    names = [n["name"] for n in (await http.get("/_sim/namespaces")).json()["namespaces"]]
    assert names == ["b"]
    also = await http.post("/ns/b/v1/_sim/faults", json={"model": "*", "fault": "html_502"})  # /v1/_sim works
    assert also.status_code == 200


async def test_a_bad_namespace_is_a_400_not_a_crash(http):
    r = await http.post("/ns/-bad/v1/chat/completions", json=CHAT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_namespace"
