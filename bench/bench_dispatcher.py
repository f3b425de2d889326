"""The dispatcher's added latency per call, and how many calls a dead route wastes.

1. Overhead: the same chat call to the same simulator endpoint, (A) as a plain
   httpx POST and (B) through `Dispatcher.complete` (breaker admission,
   retry decision, attempt record, response assembly), interleaved A/B in
   rounds on one event loop and one pool size, at concurrency 1 and 64,
   non-streamed and streamed. Prints p50/p99 of each, the added latency, and
   CPU per call. The simulator runs in its own process (`kcd simulate`).
2. Breaker: the primary starts returning 503 on every call; turns keep coming
   (sequentially, then 8 at a time). We count the upstream calls the dead
   route receives before its breaker opens and turns stop reaching it.

    .venv/bin/python bench/bench_dispatcher.py [--calls 400] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import anyio
import httpx
from _common import measure, pct, start_simulator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kcd.providers.breaker import BreakerBoard, BreakerConfig  # noqa: E402
from kcd.providers.dispatcher import ChainEntry, Dispatcher  # noqa: E402
from kcd.providers.openai_compat import build_body  # noqa: E402
from kcd.providers.retry import RetryPolicy  # noqa: E402
from kcd.providers.routes import parse_route  # noqa: E402
from kcd.providers.types import ChatMessage, ChatRequest  # noqa: E402

MESSAGES = [ChatMessage(role="system", content="You are terse."),
            ChatMessage(role="user", content="Say hello in five words.")]


async def run_direct(client: httpx.AsyncClient, url: str, body: bytes, stream: bool) -> None:
    headers = {"content-type": "application/json", "authorization": "Bearer mock"}
    if stream:
        async with client.stream("POST", url, content=body, headers=headers) as resp:
            async for _ in resp.aiter_raw():
                pass
            assert resp.status_code == 200
    else:
        resp = await client.post(url, content=body, headers=headers)
        assert resp.status_code == 200 and b"choices" in resp.content


async def overhead(base: str, calls: int, rounds: int) -> list[str]:
    import msgspec

    route = parse_route("openai/echo")
    # httpx's own transport, like the direct path: this measures the dispatcher's logic, not the
    # HTTP client (the aiohttp transport is compared in bench_endpoint.py, docs/benchmarks.md §5).
    dispatcher = Dispatcher({"OPENAI_API_KEY": "mock"}, breakers=BreakerBoard(BreakerConfig()),
                            upstream_client="httpx")
    url = f"{base}/v1/chat/completions"
    lines = []
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=64, keepalive_expiry=30)
    direct_client = httpx.AsyncClient(limits=limits, trust_env=False)
    for stream in (False, True):
        entry = ChainEntry(route=route, base_url=f"{base}/v1", stream=stream)
        body = msgspec.json.encode(build_body(route, ChatRequest(messages=MESSAGES, stream=stream)))
        turn = 0

        async def via_dispatcher() -> None:
            nonlocal turn
            turn += 1
            served = await dispatcher.complete([entry], MESSAGES, [], policy=RetryPolicy(),
                                               turn_key=f"bench:{turn}")
            assert served.response.content

        async def direct() -> None:
            await run_direct(direct_client, url, body, stream)

        for conc in (1, 64):
            n = calls if conc == 1 else calls * 4
            await measure(conc, 50, direct)  # warm both pools
            await measure(conc, 50, via_dispatcher)
            a_lat, b_lat, a_cpu, b_cpu = [], [], 0.0, 0.0
            for _ in range(rounds):  # interleaved A/B rounds
                lat, cpu = await measure(conc, n // rounds, direct)
                a_lat += lat
                a_cpu += cpu
                lat, cpu = await measure(conc, n // rounds, via_dispatcher)
                b_lat += lat
                b_cpu += cpu
            a50, a99, b50, b99 = (pct(a_lat, 50), pct(a_lat, 99), pct(b_lat, 50), pct(b_lat, 99))
            line = (f"| {'stream' if stream else 'non-stream'} | {conc} | {a50 * 1e3:.2f} / {a99 * 1e3:.2f} | "
                    f"{b50 * 1e3:.2f} / {b99 * 1e3:.2f} | {(b50 - a50) * 1e3:+.2f} / {(b99 - a99) * 1e3:+.2f} | "
                    f"{a_cpu / len(a_lat) * 1e3:.2f} / {b_cpu / len(b_lat) * 1e3:.2f} | {len(a_lat)} + {len(b_lat)} |")
            print(line, flush=True)
            lines.append(line)
    await direct_client.aclose()
    await dispatcher.aclose()
    return lines


async def wasted_calls(base: str) -> list[str]:
    """Upstream calls a dead route receives before its breaker stops traffic."""
    primary, fallback = parse_route("openrouter/x-ai/grok-4-fast"), parse_route("openai/gpt-4o-mini")
    lines = []
    for parallel in (1, 8):
        httpx.delete(f"{base}/_sim/faults")
        httpx.post(f"{base}/_sim/faults", json={"model": primary.model, "fault": "unavailable_persistent"})
        dispatcher = Dispatcher({"OPENAI_API_KEY": "k", "OPENROUTER_API_KEY": "k"},
                                breakers=BreakerBoard(BreakerConfig()))
        policy = RetryPolicy(backoff_base_s=0.01, backoff_cap_s=0.05)
        chain = [ChainEntry(route=primary, base_url=f"{base}/v1"),
                 ChainEntry(route=fallback, base_url=f"{base}/v1")]
        turns = 0
        while dispatcher.breakers.state(primary.id) != "open":
            async with anyio.create_task_group() as tg:
                for i in range(parallel):
                    turns += 1
                    tg.start_soon(lambda k=turns: dispatcher.complete(chain, MESSAGES, [], policy=policy,
                                                                      turn_key=f"t{k}"))
        stats = httpx.get(f"{base}/_sim/stats").json()["by_model"]
        wasted = stats.get(primary.model, 0)
        # Turns after the open make no call to the dead route.
        for k in range(5):
            await dispatcher.complete(chain, MESSAGES, [], policy=policy, turn_key=f"after{k}")
        after = httpx.get(f"{base}/_sim/stats").json()["by_model"].get(primary.model, 0)
        line = (f"| {parallel} | {turns} | {wasted} | {after - wasted} | threshold 3, 1 failure counted "
                f"per turn, 2 same-route retries per turn |")
        print(line, flush=True)
        lines.append(line)
        await dispatcher.aclose()
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    proc, base = start_simulator()
    try:
        print(f"# dispatcher overhead, {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
              f"{os.cpu_count()} cores")
        print("| mode | concurrency | direct httpx p50 / p99 ms | dispatcher p50 / p99 ms | added p50 / p99 ms "
              "| CPU per call direct / dispatcher ms | calls |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        anyio.run(overhead, base, args.calls, args.rounds)
        print("\n# route down -> breaker open")
        print("| turns in flight | turns until open | upstream calls to the dead route | calls after open (5 turns) | policy |")
        print("| --- | --- | --- | --- | --- |")
        anyio.run(wasted_calls, base)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
