"""Events per second through the telemetry sink with 64 concurrent runs.

64 tasks on one event loop stand in for 64 runs: each emits its run's events
(run.start, then llm.attempt events as fast as it can, then provider_metrics
and run.end) to the central file and to its own `meta/telemetry.jsonl`, the
way the daemon does. We time from the first emit until `aclose()` has written
and fsynced everything, and check that every line arrived (the files parse
and the count is exact). A second variant writes the same lines with a plain
`json.dumps` + one `write` per line under a lock (what a naive sink does).

    .venv/bin/python bench/bench_telemetry.py [--runs 64] [--events 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kcd.observe.telemetry import LlmAttempt, RunEnd, RunStart, TelemetrySink  # noqa: E402


def attempt(run_id: str, n: int) -> LlmAttempt:
    return LlmAttempt(run_id=run_id, route="openrouter/x-ai/grok-4-fast", turn=n // 3 + 1, attempt=1,
                      kind="primary", stream=True, streamed=True, status_code=200,
                      content_type="text/event-stream", request_id=f"gen-{run_id}-{n}", latency_s=0.8123,
                      ttft_s=0.2101, outcome="ok",
                      attrs={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openrouter",
                             "gen_ai.request.model": "x-ai/grok-4-fast", "gen_ai.usage.input_tokens": 1200,
                             "gen_ai.usage.output_tokens": 180})


async def sink_variant(root: Path, runs: int, events: int) -> tuple[float, int]:
    central = root / "central.jsonl"
    sink = TelemetrySink(central)
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        started = time.perf_counter()

        async def run(i: int) -> None:
            run_id, run_dir = f"r{i:03d}", root / f"run{i:03d}"
            (run_dir / "meta").mkdir(parents=True, exist_ok=True)
            sink.emit(RunStart(run_id=run_id, config_digest="sha256:x", route_chain=["a"], executor="ray"),
                      run_dir)
            for n in range(events):
                sink.emit(attempt(run_id, n), run_dir)
                if n % 64 == 0:
                    await anyio.sleep(0)  # runs interleave, as they do in the daemon
            sink.emit(RunEnd(run_id=run_id, exit_reason="mark_task_complete", completed=True, steps=3,
                             duration_s=1.0), run_dir)
            sink.close_run(run_dir)

        async with anyio.create_task_group() as runs_tg:
            for i in range(runs):
                runs_tg.start_soon(run, i)
        await sink.aclose()
        elapsed = time.perf_counter() - started
        tg.cancel_scope.cancel()
    stats = sink.stats()
    assert stats["dropped"] == 0, stats
    lines = sum(1 for _ in central.open())
    assert lines == runs * (events + 2), (lines, runs * (events + 2))
    return elapsed, lines


def naive_variant(root: Path, runs: int, events: int) -> tuple[float, int]:
    central = root / "naive.jsonl"
    lock = threading.Lock()
    started = time.perf_counter()
    with open(central, "a") as out:
        for i in range(runs):
            for n in range(events + 2):
                line = json.dumps({"event": "llm.attempt", "run_id": f"r{i}", "n": n, "latency_s": 0.8123,
                                   "attrs": {"gen_ai.request.model": "x-ai/grok-4-fast"}}) + "\n"
                with lock:
                    out.write(line)
                    out.flush()
    return time.perf_counter() - started, runs * (events + 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sink_rates, naive_rates = [], []
    for _ in range(args.rounds):  # interleaved
        with tempfile.TemporaryDirectory(prefix="kcb-tel-") as tmp:
            elapsed, lines = anyio.run(sink_variant, Path(tmp), args.runs, args.events)
            sink_rates.append(lines / elapsed)
        with tempfile.TemporaryDirectory(prefix="kcb-tel-") as tmp:
            elapsed, lines = naive_variant(Path(tmp), args.runs, args.events)
            naive_rates.append(lines / elapsed)
        print(f"sink {sink_rates[-1]:,.0f} events/s (2 files per event), "
              f"naive one-file {naive_rates[-1]:,.0f} lines/s", flush=True)
    s, n = statistics.median(sink_rates), statistics.median(naive_rates)
    print(f"\n| {time.strftime('%Y-%m-%d')} | {args.runs} | {args.runs * (args.events + 2):,} | {s:,.0f} | "
          f"{n:,.0f} | Python {platform.python_version()}, {os.cpu_count()} cores |")


if __name__ == "__main__":
    main()
