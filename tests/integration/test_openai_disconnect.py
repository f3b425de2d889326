"""A client that hangs up on a buffered answer stops the daemon's upstream work.

A real daemon (TCP listener and control socket) in front of a standalone simulator
whose faults would keep the turn busy for many seconds: an upstream that never
answers (each attempt runs to its 3 s deadline, then the fallback is tried), or
one answering 429 with Retry-After: 3 (the dispatcher waits inline and retries, on
both routes: 10+ s). The client leaves after 1 s. The simulator's request log must
show no request started after the disconnect (plus 100 ms), and the request's
telemetry must name the disconnect.
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
import pytest
import yaml

from .conftest import Kcd, base_env
from .resilience_support import FAST_RETRY, FAST_TIMEOUTS, GROK, OPENAI_MINI, free_port

TOKEN = "ci-token-0123456789abcdef"
LEAVE_AFTER_S = 1.0
MARGIN_S = 0.1  # the bound under test: no upstream request later than this after the disconnect
WATCH_S = 4.5  # past the point where the fault's next request would have come (3 s)
HELLO = [{"role": "user", "content": "list the workspace"}]


class Daemon:
    def __init__(self, kcd: Kcd, port: int, telemetry: Path):
        self.kcd, self.port, self.telemetry = kcd, port, telemetry

    def client(self, via: str) -> httpx.Client:
        timeout = httpx.Timeout(10.0, read=LEAVE_AFTER_S)  # the read timeout is how the client leaves
        if via == "tcp":
            return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=timeout,
                                headers={"authorization": f"Bearer {TOKEN}"})
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.kcd.socket)), base_url="http://kcd",
                            timeout=timeout)

    def records(self, request_id: str, timeout: float = 5.0) -> list[dict]:
        """The request's `llm.attempt` lines, once its disconnect record is among them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [json.loads(x) for x in self.telemetry.read_text().splitlines()] \
                if self.telemetry.exists() else []
            found = [e for e in lines if e.get("event") == "llm.attempt" and e.get("run_id") == request_id]
            if any(e["outcome"] == "client_disconnected" for e in found) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def metrics(self) -> str:
        with self.kcd.http() as c:
            return c.get("/v1/metrics").text


@pytest.fixture(scope="module")
def daemon(sim) -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="kcdc-", dir="/tmp"))
    (root / "home").mkdir()
    port = free_port()
    slow = {**FAST_TIMEOUTS, "ttft": 3, "total": 3}
    patient = {**FAST_RETRY, "retry_after_inline_max_s": 5, "turn_deadline_s": 60}
    config = root / "kcd.yaml"
    config.write_text(yaml.safe_dump({
        "executor": "in-process",
        "gateway": {"tcp": {"port": port}, "tokens": {"ci": TOKEN}, "models": {
            "stall": {"route": GROK, "fallbacks": [OPENAI_MINI], "timeouts": slow, "retry": dict(FAST_RETRY)},
            "stall_live": {"route": GROK, "fallbacks": [OPENAI_MINI], "timeouts": slow,
                           "retry": dict(FAST_RETRY), "stream_mode": "passthrough"},
            "backoff": {"route": GROK, "fallbacks": [OPENAI_MINI], "timeouts": dict(FAST_TIMEOUTS),
                        "retry": patient},
        }}}))
    telemetry = root / "telemetry.jsonl"
    env = base_env(root / "home")
    env.update(OPENROUTER_BASE_URL=sim.api_base, OPENAI_BASE_URL=sim.api_base,
               RAYCODE_TELEMETRY_PATH=str(telemetry))
    kcd = Kcd(root, env, ["--executor", "in-process", "--config", str(config)]).start()
    try:
        yield Daemon(kcd, port, telemetry)
    finally:
        kcd.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def clean(daemon: Daemon, sim) -> None:
    sim.reset()
    with daemon.kcd.http() as c:
        for route in c.get("/v1/routes").json()["routes"]:
            c.post("/v1/routes/reset", json={"route": route})


def leave_mid_request(daemon: Daemon, via: str, model: str, stream: bool) -> tuple[str, float]:
    """Ask, give up after LEAVE_AFTER_S (closing the connection); (request id, when we left)."""
    request_id = "disc-" + os.urandom(6).hex()
    body: dict[str, Any] = {"model": model, "messages": HELLO, "stream": stream}
    with daemon.client(via) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=body, headers={"x-request-id": request_id})
    return request_id, time.time()  # the client (and its connection) is closed by now


def assert_no_request_after(sim, left_at: float) -> list[dict]:
    time.sleep(max(0.0, left_at + WATCH_S - time.time()))
    seen = sim.requests()
    assert seen, "the turn never reached the upstream"
    late = [(e["model"], round(e["ts"] - left_at, 3)) for e in seen if e["ts"] > left_at + MARGIN_S]
    assert not late, f"upstream requests (model, seconds after the client left): {late}"
    return seen


@pytest.mark.parametrize("via,model,stream,mode", [
    ("tcp", "stall", False, "json"),
    ("socket", "stall", True, "buffer"),
    ("tcp", "stall_live", True, "passthrough"),  # already cancelled; recorded the same way
])
def test_leaving_cancels_the_attempt_in_flight(daemon, sim, via, model, stream, mode):
    sim.fault(GROK, "no_response")
    sim.fault(OPENAI_MINI, "no_response")  # would be asked at 3 s, when the primary's attempt times out
    request_id, left_at = leave_mid_request(daemon, via, model, stream)
    seen = assert_no_request_after(sim, left_at)
    assert [e["model"] for e in seen] == ["x-ai/grok-4-fast"]
    [record] = daemon.records(request_id)
    assert record["outcome"] == record["error.type"] == "client_disconnected"
    assert record["route"] == GROK and record["attempt"] == 1 and record["kind"] == "primary"
    assert record["attrs"]["kylecode.disconnect"] == "in_flight"
    assert 0.5 < record["latency_s"] < 2.5
    text = daemon.metrics()
    assert f'kylecode_gateway_client_disconnects_total{{model="{model}",mode="{mode}"}}' in text
    assert f'kylecode_gateway_requests_total{{model="{model}",status="499",mode="{mode}"}}' in text
    assert f'kylecode_attempts_total{{route="{GROK}",outcome="client_disconnected"}}' in text


def test_leaving_stops_the_retry_schedule(daemon, sim):
    sim.fault(GROK, "rate_limit_retry_after", retry_after=3)
    sim.fault(OPENAI_MINI, "rate_limit_retry_after", retry_after=3)
    request_id, left_at = leave_mid_request(daemon, "tcp", "backoff", False)
    seen = assert_no_request_after(sim, left_at)
    assert [e["model"] for e in seen] == ["x-ai/grok-4-fast"]  # the 3 s retry never went out
    records = daemon.records(request_id)
    assert [r["outcome"] for r in records] == ["http_error", "client_disconnected"]
    gone = records[-1]
    assert gone["attempt"] == 2 and gone["kind"] == "retry" and gone["route"] == GROK
    assert gone["attrs"]["kylecode.disconnect"] == "between_attempts"
