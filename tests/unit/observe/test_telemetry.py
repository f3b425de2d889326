"""TelemetrySink: typed records, one writer, whole lines, rotation, back-pressure."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import msgspec
import pytest

from kcd.observe.run_metrics import RunMetrics
from kcd.observe.telemetry import (
    CircuitHalfOpen,
    CircuitOpen,
    Fallback,
    LlmAttempt,
    Probe,
    ProviderMetrics,
    RunEnd,
    RunStart,
    TelemetrySink,
    Truncated,
    attempt_event,
    circuit_event,
    config_digest,
    decoder,
    default_central_path,
    provider_metrics_event,
)
from kcd.providers.attempt import Attempt
from kcd.providers.breaker import Transition
from kcd.providers.dispatcher import AttemptRecord, ChainEntry
from kcd.providers.errors import ProviderFailure
from kcd.providers.retry import Decision
from kcd.providers.routes import Route
from kcd.providers.types import ChatResponse, Usage

pytestmark = pytest.mark.anyio

ENVELOPE = ("event", "schema_version", "ts", "seq", "host", "pid", "run_id", "route", "turn", "peer_uid")


def lines_of(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "torn last line"
    return [msgspec.json.decode(line) for line in data.splitlines()]


def run_file(run_dir: Path) -> Path:
    return run_dir / "meta" / "telemetry.jsonl"


async def wait_written(sink: TelemetrySink, n: int) -> None:
    with anyio.fail_after(10):
        while sink.stats()["written"] < n:
            await anyio.sleep(0.005)


def _record(ok: bool) -> AttemptRecord:
    route = Route(id="openrouter/x-ai/grok-4-fast", provider="openrouter", model="x-ai/grok-4-fast")
    if ok:
        attempt = Attempt(route=route.id, url="https://x/chat", stream_requested=True, streamed=True,
                          response=ChatResponse(content="hi", finish_reason="stop",
                                                model="x-ai/grok-4-fast-0901", request_id="gen-1",
                                                usage=Usage(prompt_tokens=12, completion_tokens=3)),
                          status_code=200, content_type="text/event-stream", request_id="gen-1",
                          latency_s=1.25, ttft_s=0.4)
        return AttemptRecord(1, "primary", ChainEntry(route=route), attempt, breaker_state="closed")
    failure = ProviderFailure(route.id, "upstream_html", "HTML error page", status_code=502)
    attempt = Attempt(route=route.id, url="https://x/chat", stream_requested=False, failure=failure,
                      status_code=502, content_type="text/html", latency_s=0.2)
    decision = Decision(retry_same_route=True, fall_over=True, counted=True, ignored=False,
                        retry_after_s=None, reason="upstream_html", hint=None)
    return AttemptRecord(2, "retry", ChainEntry(route=route), attempt, decision, next_delay_s=0.5,
                         breaker_state="closed")


async def test_events_carry_the_envelope_and_otel_names(tmp_path: Path) -> None:
    central = tmp_path / "central.jsonl"
    sink = TelemetrySink(central)
    run_dir = tmp_path / "run1"
    sink.emit(RunStart(run_id="r1", peer_uid=1000, config_digest=config_digest(b"cfg"),
                       route_chain=["openrouter/x-ai/grok-4-fast", "openai/gpt-4o-mini"], executor="ray"),
              run_dir)
    sink.emit(attempt_event(_record(True), run_id="r1", turn=1, peer_uid=1000), run_dir)
    sink.emit(attempt_event(_record(False), run_id="r1", turn=2), run_dir)
    sink.emit(Fallback(run_id="r1", turn=2, route="openai/gpt-4o-mini",
                       from_route="openrouter/x-ai/grok-4-fast", to_route="openai/gpt-4o-mini",
                       reason="upstream_html"), run_dir)
    sink.emit(circuit_event(Transition("openai/gpt-4o-mini", "closed", "open", "failures", 1.7e9, 1,
                                       reopens_at=1.7e9 + 900, last_error="HTTP 503")))
    sink.emit(circuit_event(Transition("openai/gpt-4o-mini", "open", "half_open", "deadline", 1.7e9, 1)))
    sink.emit(Probe(route="mock/dev", probe="stream", success=True, elapsed=0.01))
    sink.emit(RunEnd(run_id="r1", exit_reason="completed", completed=True, steps=3, duration_s=2.5), run_dir)
    await sink.aclose()

    records = lines_of(central)
    assert [r["event"] for r in records] == ["run.start", "llm.attempt", "llm.attempt", "fallback",
                                             "circuit.open", "circuit.half_open", "probe", "run.end"]
    assert [r["seq"] for r in records] == list(range(1, 9))
    for r in records:
        assert list(r)[:len(ENVELOPE)] == list(ENVELOPE)
        assert r["schema_version"] == 1 and r["pid"] == os.getpid() and r["host"]
        assert len(r["ts"]) == 24 and r["ts"].endswith("Z") and r["ts"][10] == "T"
    ok, bad = records[1], records[2]
    assert ok["peer_uid"] == 1000 and ok["route"] == "openrouter/x-ai/grok-4-fast" and ok["turn"] == 1
    assert ok["outcome"] == "ok" and ok["error.type"] is None and ok["request_id"] == "gen-1"
    assert ok["status_code"] == 200 and ok["ttft_s"] == 0.4 and ok["stream"] is True
    assert ok["attrs"] == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openrouter",
        "gen_ai.request.model": "x-ai/grok-4-fast", "kylecode.route": "openrouter/x-ai/grok-4-fast",
        "kylecode.attempt": 1, "kylecode.turn": 1, "gen_ai.response.model": "x-ai/grok-4-fast-0901",
        "gen_ai.response.finish_reasons": ["stop"], "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3}
    assert bad["kind"] == "retry" and bad["outcome"] == bad["error.type"] == "upstream_html"
    assert bad["decision"] == "upstream_html" and bad["next_delay_s"] == 0.5
    assert "gen_ai.usage.input_tokens" not in bad["attrs"]  # unknown: omitted, not zero
    assert bad["attrs"]["error.type"] == "upstream_html"
    assert records[3]["from"] == "openrouter/x-ai/grok-4-fast" and records[3]["to"] == "openai/gpt-4o-mini"
    opened = records[4]
    assert opened["reopens_at"].endswith("Z") and opened["k"] == 1 and opened["to_state"] == "open"
    # Per-run file: only the events given a run_dir, in order.
    assert [r["event"] for r in lines_of(run_file(run_dir))] == ["run.start", "llm.attempt", "llm.attempt",
                                                                 "fallback", "run.end"]
    # The typed reader decodes the whole file.
    typed = decoder().decode_lines(central.read_bytes())
    assert isinstance(typed[1], LlmAttempt) and isinstance(typed[4], CircuitOpen)
    assert isinstance(typed[5], CircuitHalfOpen)


async def test_simulator_provider_name(tmp_path: Path) -> None:
    record = _record(True)
    record.entry = ChainEntry(route=Route(id="mock/dev", provider="mock", model="dev"))
    assert attempt_event(record, run_id=None, turn=None).attrs["gen_ai.provider.name"] == "kylecode.simulator"


async def test_provider_metrics_keeps_the_original_shape(tmp_path: Path) -> None:
    metrics = RunMetrics()
    metrics.attempt("mock/dev", ok=True, status=200, latency_s=0.1, streamed=False, retry=False)
    metrics.circuit_skip("openai/gpt-4o-mini")
    central = tmp_path / "c.jsonl"
    sink = TelemetrySink(central)
    sink.emit(provider_metrics_event(metrics.snapshot(), run_id="r9", route_id="mock/dev"))
    await sink.aclose()
    (record,) = lines_of(central)
    assert list(record) == ["event", "summary", "routes", "fallbacks", "stream_overrides", "tool_overrides",
                            "ts", "run_id", "route_id", "circuit_skips", "schema_version"]
    assert record["event"] == "provider_metrics" and record["circuit_skips"] == ["openai/gpt-4o-mini"]
    assert record["routes"]["mock/dev"]["calls"] == 1 and record["ts"].endswith("Z")
    assert isinstance(decoder().decode(central.read_bytes()), ProviderMetrics)


async def test_concurrent_producers_one_writer(tmp_path: Path) -> None:
    central = tmp_path / "central.jsonl"
    sink = TelemetrySink(central)
    producers, per = 8, 2000
    run_dirs = [tmp_path / f"run{i}" for i in range(producers)]

    async def produce(i: int) -> None:
        for n in range(per):
            sink.emit(Probe(run_id=f"r{i}", probe=f"p{n}", success=True, error="x" * (n % 300)), run_dirs[i])
            if n % 50 == 0:
                await anyio.sleep(0)  # interleave with the other producers and the writer

    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        async with anyio.create_task_group() as producers_tg:
            for i in range(producers):
                producers_tg.start_soon(produce, i)
        await sink.aclose()

    records = lines_of(central)
    assert len(records) == producers * per
    assert sorted(r["seq"] for r in records) == list(range(1, producers * per + 1))
    for i, run_dir in enumerate(run_dirs):
        mine = lines_of(run_file(run_dir))
        assert [r["probe"] for r in mine] == [f"p{n}" for n in range(per)]
        assert {r["run_id"] for r in mine} == {f"r{i}"}
    stats = sink.stats()
    assert stats["written"] == producers * per and stats["dropped"] == 0 and stats["write_errors"] == 0


async def test_rotation_with_reopen_loses_and_tears_nothing(tmp_path: Path) -> None:
    central = tmp_path / "telemetry.jsonl"
    rotated = tmp_path / "telemetry.jsonl.1"
    sink = TelemetrySink(central)
    total = 6000
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        for n in range(total):
            sink.emit(RunEnd(run_id=f"r{n}", exit_reason="completed", completed=True, steps=n,
                             duration_s=1.0))
            if n % 100 == 0:
                await anyio.sleep(0)
            if n == total // 2:
                await wait_written(sink, 1000)  # lines are flowing when the rotator strikes
                central.rename(rotated)  # logrotate `create`: rename, then SIGHUP
                sink.reopen()
        await sink.aclose()

    old, new = lines_of(rotated), lines_of(central)
    assert old and new
    assert sorted(r["steps"] for r in old + new) == list(range(total))
    assert max(r["seq"] for r in old) < min(r["seq"] for r in new)  # switched between lines, once


async def test_inode_check_follows_rotation_without_a_signal(tmp_path: Path) -> None:
    central = tmp_path / "telemetry.jsonl"
    rotated = tmp_path / "telemetry.jsonl.1"
    sink = TelemetrySink(central, check_interval_s=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        for n in range(100):
            sink.emit(Probe(probe=str(n), success=True))
        await wait_written(sink, 100)
        central.rename(rotated)
        central.touch()  # the rotator's `create`; no SIGHUP follows
        await anyio.sleep(0.1)  # past the check interval
        for n in range(100, 200):
            sink.emit(Probe(probe=str(n), success=True))
        await sink.aclose()
    old, new = lines_of(rotated), lines_of(central)
    assert [r["probe"] for r in old] == [str(n) for n in range(100)]
    assert [r["probe"] for r in new] == [str(n) for n in range(100, 200)]


async def test_oversized_event_becomes_a_truncated_record(tmp_path: Path) -> None:
    central = tmp_path / "c.jsonl"
    sink = TelemetrySink(central)
    run_dir = tmp_path / "run"
    big = Probe(run_id="r1", route="mock/dev", probe="big", success=False, error="e" * (1 << 20))
    sink.emit(big, run_dir)
    sink.emit(Probe(run_id="r1", probe="small", success=True), run_dir)
    await sink.aclose()
    records = lines_of(central)
    assert central.stat().st_size < 4096
    assert records[0]["event"] == "telemetry.truncated"
    assert records[0]["original_event"] == "probe" and records[0]["size"] > 1 << 20
    assert records[0]["limit"] == 1 << 20
    assert records[0]["run_id"] == "r1" and records[0]["route"] == "mock/dev"
    assert records[1]["probe"] == "small"
    assert lines_of(run_file(run_dir)) == records
    assert isinstance(decoder().decode(central.read_bytes().splitlines()[0]), Truncated)
    assert sink.stats()["truncated"] == 1


async def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    central = tmp_path / "c.jsonl"
    sink = TelemetrySink(central, queue_size=4)  # and no writer running
    for n in range(10):
        sink.emit(Probe(probe=str(n), success=True))
    stats = sink.stats()
    assert stats["queued"] == 4 and stats["dropped"] == 6 and stats["written"] == 0
    await sink.aclose()
    assert [r["probe"] for r in lines_of(central)] == ["0", "1", "2", "3"]
    sink.emit(Probe(probe="late", success=True))  # after close: dropped, not raised
    assert sink.stats()["dropped"] == 7


async def test_redact_hook_keeps_secrets_off_disk(tmp_path: Path) -> None:
    central = tmp_path / "c.jsonl"
    run_dir = tmp_path / "run"
    canary = "sk-CANARY-0123456789"
    sink = TelemetrySink(central, redact=lambda b: b.replace(canary.encode(), b"***REDACTED***"))
    sink.emit(Probe(probe="stream", success=False, error=f"401: bad key {canary}"), run_dir)
    await sink.aclose()
    for path in (central, run_file(run_dir)):
        assert canary.encode() not in path.read_bytes()
        assert lines_of(path)[0]["error"] == "401: bad key ***REDACTED***"


async def test_aclose_flushes_a_running_writer(tmp_path: Path) -> None:
    central = tmp_path / "c.jsonl"
    sink = TelemetrySink(central)
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        for n in range(5000):
            sink.emit(Probe(probe=str(n), success=True))
        await sink.aclose()  # the writer returns once everything queued is on disk
    assert len(lines_of(central)) == 5000
    assert sink.stats()["queued"] == 0


async def test_close_run_writes_first_then_closes(tmp_path: Path) -> None:
    sink = TelemetrySink(None)
    run_dir = tmp_path / "run"
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        for n in range(50):
            sink.emit(Probe(probe=str(n), success=True), run_dir)
        sink.close_run(run_dir)
        await wait_written(sink, 50)
        with anyio.fail_after(5):
            while sink.stats()["queued"]:
                await anyio.sleep(0.005)
        assert len(lines_of(run_file(run_dir))) == 50
        sink.emit(Probe(probe="after", success=True), run_dir)  # a late line reopens and appends
        await sink.aclose()
    assert lines_of(run_file(run_dir))[-1]["probe"] == "after"
    assert oct(run_file(run_dir).stat().st_mode & 0o777) == oct(0o600 & ~_umask())


async def test_emit_never_raises_and_write_errors_are_counted(tmp_path: Path) -> None:
    blocked = tmp_path / "a-directory"
    blocked.mkdir()
    sink = TelemetrySink(blocked)  # the central "file" cannot be opened
    run_dir = tmp_path / "run"
    sink.emit(Probe(probe="x", success=True, error=object()))  # type: ignore[arg-type]  # unencodable
    sink.emit(Probe(probe="y", success=True), run_dir)
    await sink.aclose()
    stats = sink.stats()
    assert stats["emit_errors"] == 1 and stats["write_errors"] == 1 and stats["written"] == 0
    assert [r["probe"] for r in lines_of(run_file(run_dir))] == ["y"]  # the other target still gets it


def test_default_central_path(tmp_path: Path) -> None:
    env = {"RAYCODE_TELEMETRY_PATH": "/x/t.jsonl"}
    assert default_central_path(env, "system", tmp_path) == Path("/x/t.jsonl")
    assert default_central_path({}, "system", tmp_path) == Path("/var/log/kylecode/telemetry.jsonl")
    blank = {"RAYCODE_TELEMETRY_PATH": " "}
    assert default_central_path(blank, "user", tmp_path) == tmp_path / "telemetry.jsonl"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
