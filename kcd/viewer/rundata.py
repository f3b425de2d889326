"""A run directory read for the viewer: its events turned into per-turn attempts, breaker
skips, tool calls beside their results, and policy markers.

Everything comes from `meta/events.jsonl` (the same lines the live event stream carries),
plus each attempt's time to first token from `raw/responses/turn_N_attempt_K.json`. Reading
is tolerant: a torn or unknown line is skipped, never an error, since a run may be live or
may have been cut short by a crash.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from kcd.api.types import Event
from kcd.observe.eventlog import read_events

__all__ = ["Attempt", "RunRecord", "Skip", "ToolCall", "Turn", "load_run", "parse_events"]

MAX_EVENTS = 20_000  # a page beyond this would not be read anyway
_SKIP_ROUTE = re.compile(r"route (\S+) \(")
_PLACED = frozenset({"turn.start", "llm.attempt", "policy"})  # the events placed in time (the others: no parse)


class Attempt(msgspec.Struct, kw_only=True):
    """One LLM call attempt (`llm.attempt`), placed in time relative to its turn's start."""

    turn: int
    attempt: int
    kind: str  # primary | retry | fallback
    route: str
    ok: bool
    status: int | None
    content_type: str | None = None
    error: str | None = None
    latency_s: float = 0.0
    retry_in_s: float | None = None
    breaker: str | None = None
    ttft_s: float | None = None
    end_s: float = 0.0  # when it ended, seconds after the turn started


class Skip(msgspec.Struct, kw_only=True):
    """A route skipped because its breaker was open (the `[circuit-open]` marker)."""

    turn: int
    route: str
    text: str
    at_s: float = 0.0
    after_attempts: int = 0  # attempts of the turn logged before it: its place among equal start times


class Turn(msgspec.Struct, kw_only=True):
    number: int
    route: str | None = None
    attempts: list[Attempt] = []
    skips: list[Skip] = []

    @property
    def span_s(self) -> float:
        ends = [a.end_s + (a.retry_in_s or 0.0) for a in self.attempts] + [s.at_s for s in self.skips]
        return max(ends, default=0.0)


class ToolCall(msgspec.Struct, kw_only=True):
    turn: int
    call_id: str
    name: str
    args: str = ""
    ok: bool | None = None  # None: no result yet
    output: str | None = None


class RunRecord(msgspec.Struct, kw_only=True):
    events: list[Event]
    turns: list[Turn]
    tools: list[ToolCall]
    markers: list[tuple[int, str, str]]  # (turn, marker, text)

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0


def _time(ts: str) -> float | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_events(events: list[Event], ttft: dict[tuple[int, int], float] | None = None) -> RunRecord:
    """Turns, tool calls and markers from events in order (pure: `ttft` maps (turn, attempt)
    to seconds when known)."""
    ttft = ttft or {}
    turns: dict[int, Turn] = {}
    starts: dict[int, float] = {}
    tools: dict[str, ToolCall] = {}
    markers: list[tuple[int, str, str]] = []

    def turn_of(n: int, at: float | None) -> Turn:
        if n not in turns:
            turns[n] = Turn(number=n)
            if at is not None:
                starts.setdefault(n, at)
        return turns[n]

    for ev in events:
        d = ev.data if isinstance(ev.data, dict) else {}
        at = _time(ev.ts) if ev.type in _PLACED else None
        n = _int(d.get("turn"))
        if ev.type == "turn.start":
            t = turn_of(n, at)
            t.route = _str(d.get("route"))
            if at is not None:
                starts[n] = at
        elif ev.type == "llm.attempt":
            t = turn_of(n, at)
            k = _int(d.get("attempt"), len(t.attempts) + 1)
            rel = at - starts[n] if at is not None and n in starts else 0.0
            t.attempts.append(Attempt(
                turn=n, attempt=k, kind=_str(d.get("kind")) or "primary", route=_str(d.get("route")) or "?",
                ok=d.get("ok") is True, status=_int(d.get("status"), -1) if d.get("status") is not None else None,
                content_type=_str(d.get("content_type")), error=_str(d.get("error")),
                latency_s=_num(d.get("latency_s")) or 0.0, retry_in_s=_num(d.get("retry_in_s")),
                breaker=_str(d.get("breaker")), ttft_s=ttft.get((n, k)), end_s=max(rel, 0.0)))
        elif ev.type == "policy":
            marker, text = _str(d.get("marker")) or "", _str(d.get("text")) or ""
            markers.append((n, marker, text))
            if marker == "circuit-open":
                t = turn_of(n, at)
                m = _SKIP_ROUTE.search(text)
                rel = at - starts[n] if at is not None and n in starts else 0.0
                t.skips.append(Skip(turn=n, route=m.group(1) if m else "?", text=text, at_s=max(rel, 0.0),
                                   after_attempts=len(t.attempts)))
        elif ev.type == "tool.call":
            call_id = _str(d.get("call_id")) or f"seq{ev.seq}"
            tools[call_id] = ToolCall(turn=n, call_id=call_id, name=_str(d.get("name")) or "?",
                                      args=_str(d.get("args")) or "")
        elif ev.type == "tool.result":
            call_id = _str(d.get("call_id")) or f"seq{ev.seq}"
            call = tools.setdefault(call_id, ToolCall(turn=n, call_id=call_id, name=_str(d.get("name")) or "?"))
            call.ok = d.get("ok") is True
            call.output = _str(d.get("output")) or ""
    return RunRecord(events=events, turns=[turns[k] for k in sorted(turns)], tools=list(tools.values()),
                     markers=markers)


def _ttfts(run_dir: Path, record_keys: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
    out: dict[tuple[int, int], float] = {}
    for turn, attempt in record_keys:
        path = run_dir / "raw" / "responses" / f"turn_{turn}_attempt_{attempt}.json"
        try:
            if path.is_symlink():
                continue
            value = msgspec.json.decode(path.read_bytes()).get("ttft_s")
        except (OSError, msgspec.DecodeError, AttributeError):
            continue
        if _num(value) is not None:
            out[(turn, attempt)] = float(value)
    return out


def load_run(run_dir: Path, *, ttft_turns: int | None = None) -> RunRecord:
    """The run's record from disk (blocking: call it in a worker thread). Times to first token
    are read for the last `ttft_turns` turns only (all when None, none when 0): each is a file
    of its own, and the chart draws only the last turns."""
    events = read_events(run_dir / "meta" / "events.jsonl")[:MAX_EVENTS]
    record = parse_events(events)
    turns = record.turns if ttft_turns is None else record.turns[max(len(record.turns) - ttft_turns, 0):]
    ttft = _ttfts(run_dir, [(a.turn, a.attempt) for t in turns for a in t.attempts])
    for t in turns:
        for a in t.attempts:
            a.ttft_s = ttft.get((a.turn, a.attempt))
    return record
