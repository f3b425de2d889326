"""A regression scenario from a recorded run: the incident, replayed on the simulator.

`generate(records, ...)` turns a run's provider records (`kcd.matrix.run_records`) into a
`configs/matrix/` scenario (pure: no file is read, the scrubber is given):

* routes: the run's chain (same route ids), streaming, native tools, max steps, and the
  timeouts and retry budgets its config wrote;
* faults: per route, the run's attempts in order as a per-request script of simulator
  faults (`scripted`, F42: status, content type, scrubbed error body, delay, Retry-After,
  a stream cut after N events, a missing terminator; catalogue faults for resets, stalls
  and malformed chunks), then healthy;
* breaker: the daemon's breaker settings; a route the run skipped because its circuit was
  already open gets a first step that trips it (`threshold` failing runs at once), and the
  replay step expects the skip (no request to it, `[circuit-open]`, still open);
* expect: the provider behaviour as recorded always (attempt classifications, fallbacks and
  their markers, requests per route, breaker states, stream overrides); the outcome as
  recorded when the run completed, and for a failed run either "it completes" (`fixed`,
  the default: the scenario fails until the bug is fixed) or the recorded failure.

Nothing the run sent (request bodies, prompts, the task) is in the records, so none can be
in the scenario; error bodies pass through the caller's scrubber.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import yaml

from kcd.config.daemon import BreakerSettings
from kcd.matrix.run_records import AttemptRecord, RunRecords
from kcd.matrix.scenario import load_scenario_text

__all__ = ["ExpectOutcome", "Generated", "GenerateError", "generate"]

ExpectOutcome = Literal["fixed", "recorded"]
MIN_DELAY_S = 0.25  # shorter latencies are the simulator's own noise: not replayed
MAX_TRIP_RUNS = 32  # a step's `concurrent` limit
TIMEOUTS = ("connect", "write", "ttft", "idle", "progress", "total")
RETRY = ("retries_per_route", "max_attempts_per_turn", "backoff_base_s", "backoff_cap_s",
         "retry_after_inline_max_s", "turn_deadline_s", "all_open_max_wait_s")
# Classifications that name a transport failure, not a response: a catalogue fault each.
_RESETS = ("connection_reset", "connect_error", "timeout.connect", "timeout.write")
_LITERAL_OK = ("http_error", "auth_error", "upstream_html", "non_json", "json_error_body", "empty_response")


class GenerateError(ValueError):
    """The run cannot be turned into a scenario (no attempts, no chain)."""


@dataclass(frozen=True, slots=True)
class Generated:
    text: str  # the scenario file
    summary: list[str]  # what it reproduces, one line each
    expect_outcome: ExpectOutcome


def _alias(chain: list[str], route: str) -> str:
    i = chain.index(route)
    return "primary" if i == 0 else ("fallback" if i == 1 else f"fallback{i}")


def _delay(seconds: float | None) -> float:
    return round(seconds, 2) if seconds is not None and seconds >= MIN_DELAY_S else 0.0


def delivery(a: AttemptRecord, scrub: Callable[[str], str]) -> tuple[str, dict[str, Any]]:
    """The simulator fault that answers one request the way `a` was answered."""
    delay = _delay(a.ttft_s if a.ttft_s is not None else a.latency_s)
    if a.ok:
        return "scripted", ({"delay": delay} if delay else {})
    kind = a.error or ""
    if kind in _RESETS or (a.status is None and not kind.startswith("timeout.")):
        return "tcp_reset", {}
    if kind.startswith("timeout."):
        if a.status is None or (a.sse_events == 0 and kind != "timeout.idle_progress"):
            return "no_response", {}  # nothing until the client gives up at its own deadline
        if kind == "timeout.idle_progress":
            return "keepalive_only", {}
        return "stream_stall", {"tokens": max(a.sse_events - 1, 0)}
    if kind == "stream_malformed":
        return "malformed_chunk", {}
    if kind == "stream_error":
        return ("inband_error_after_tokens", {"tokens": a.sse_events - 2}) if a.sse_events > 1 \
            else ("deferred_first_chunk_error", {})
    if kind == "stream_truncated" or (a.status == 200 and a.streamed and not a.body and a.no_terminator):
        params: dict[str, Any] = {"terminator": 0}
        if kind == "stream_truncated":
            params["events"] = max(a.sse_events - 1, 0)  # the role chunk is the first event
        return "scripted", {**params, **({"delay": delay} if delay else {})}
    params = {"status": a.status or 502}
    if a.content_type:
        params["content_type"] = a.content_type
    if a.body and (kind in _LITERAL_OK or a.status != 200 or not a.streamed):
        params["body"] = scrub(a.body)
    if delay:
        params["delay"] = delay
    if a.retry_after_s is not None:
        params["retry_after"] = math.ceil(a.retry_after_s)
    return "scripted", params


def _script(attempts: list[AttemptRecord], alias: str, scrub: Callable[[str], str]) -> list[dict[str, Any]]:
    """One route's requests in order, consecutive equal ones merged; trailing healthy ones dropped."""
    entries: list[tuple[str, dict[str, Any], int]] = []
    for a in attempts:
        name, params = delivery(a, scrub)
        if entries and entries[-1][:2] == (name, params):
            entries[-1] = (name, params, entries[-1][2] + 1)
        else:
            entries.append((name, params, 1))
    while entries and entries[-1][:2] == ("scripted", {}):
        entries.pop()
    return [{"route": alias, "name": n, "count": c, **({"params": p} if p else {})} for n, p, c in entries]


def _describe(name: str, params: dict[str, Any]) -> str:
    if name != "scripted":
        return name + "".join(f" {k}={v}" for k, v in params.items())
    if params.get("status", 200) == 200 and "body" not in params:
        if "events" in params:
            text = f"stream cut after {params['events']} event(s)"
        elif params.get("terminator") == 0:
            text = "no terminator"
        else:
            text = "healthy"
    else:
        text = f"{params.get('status')} {params.get('content_type') or ''}".rstrip()
        if params.get("retry_after") is not None:
            text += f" Retry-After {params['retry_after']}"
    return text + (f" after {params['delay']}s" if params.get("delay") else "")


def _routes(rec: RunRecords, chain: list[str]) -> dict[str, Any]:
    routes: dict[str, Any] = {"primary": chain[0], "fallbacks": chain[1:]}
    routes.update((k, v) for k, v in (("stream", rec.stream), ("native_tools", rec.native_tools),
                                      ("max_steps", rec.max_steps)) if v is not None)
    timeouts = {k: rec.timeouts[k] for k in TIMEOUTS if k in rec.timeouts}
    retry = {k: rec.retry[k] for k in RETRY if k in rec.retry}
    if timeouts:
        routes["timeouts"] = timeouts
    if retry:
        routes["retry"] = retry
    return routes


def _tripped(rec: RunRecords, chain: list[str]) -> list[str]:
    """Routes the run found open before it sent them anything: another run had opened them."""
    out: list[str] = []
    for skip in rec.skips:
        first = next((a.seq for a in rec.attempts if a.route == skip.route), None)
        if skip.route in chain and skip.route not in out and (first is None or skip.seq < first):
            out.append(skip.route)
    return out


def _opened_in_run(rec: RunRecords, chain: list[str]) -> dict[str, int]:
    """Routes whose breaker opened during the run after failures of this run alone (no
    Retry-After): route -> how many of its turns had failed by then. Fewer than the threshold
    means earlier runs' failures counted too; they are not in the records."""
    out: dict[str, int] = {}
    seen: set[str] = set()
    for a in rec.attempts:
        if a.route in chain and a.route not in seen and not a.ok and a.breaker == "open":
            seen.add(a.route)  # the first opening decides; a Retry-After opens by itself
            if a.retry_after_s is None:
                out[a.route] = len({b.turn for b in rec.attempts
                                    if b.route == a.route and not b.ok and b.seq <= a.seq})
    return out


def _settings(rec: RunRecords, chain: list[str], breaker: BreakerSettings) -> tuple[BreakerSettings, str | None]:
    """The daemon's breaker settings, with the threshold lowered to what this run alone needed
    when its breaker opened mid-run on failures carried over from earlier runs."""
    opened = _opened_in_run(rec, chain)
    low = min((m for m in opened.values() if m < breaker.threshold), default=None)
    if low is None:
        return breaker, None
    lowered = msgspec.structs.replace(breaker, threshold=low,
                                      min_calls=min(breaker.min_calls, low) if breaker.min_calls else None)
    routes = ", ".join(r for r, m in opened.items() if m == low)
    return lowered, (f"breaker threshold {breaker.threshold} -> {low}: {routes} opened after {low} failed "
                     "turn(s) of this run (earlier runs' failures are not replayed)")


def _trip_step(rec: RunRecords, chain: list[str], tripped: list[str], breaker: BreakerSettings,
               max_seconds: float) -> tuple[dict[str, Any], str]:
    """Fail the tripped routes (counted 503s, or a Retry-After when that opened them) in enough
    runs at once to open their breakers; routes before them in the chain fail with a 401,
    which falls over without counting, so their own breakers stay closed."""
    last = max(chain.index(r) for r in tripped)
    faults = []
    for route in chain[: last + 1]:
        alias = _alias(chain, route)
        if route not in tripped:
            faults.append({"route": alias, "name": "auth_401"})
            continue
        skip = next(s for s in rec.skips if s.route == route)
        if skip.reason == "retry_after":
            wait = math.ceil(max(skip.reopens_in_s or breaker.cooldown_s, 1.0))
            faults.append({"route": alias, "name": "rate_limit_retry_after", "params": {"retry_after": wait}})
        else:
            faults.append({"route": alias, "name": "unavailable_persistent"})
    runs = min(max(breaker.threshold, breaker.min_calls or breaker.threshold), MAX_TRIP_RUNS)
    step = {"fault": faults, "concurrent": runs,
            "expect": {"breaker": {_alias(chain, r): "open" for r in tripped}, "max_seconds": max_seconds}}
    return step, (f"step 1 opens {', '.join(tripped)} ({runs} failing run(s) at once; breaker threshold "
                  f"{breaker.threshold}, cooldown {breaker.cooldown_s:g}s)")


def _expect(rec: RunRecords, chain: list[str], tripped: list[str], outcome: ExpectOutcome,
            max_seconds: float) -> tuple[dict[str, Any], list[str]]:
    e: dict[str, Any] = {}
    notes: list[str] = []
    if rec.completed:
        e.update(completed=True, exit_reason=rec.exit_reason)
        notes.append(f"the run completes ({rec.exit_reason}), as recorded")
    elif outcome == "fixed":
        e["completed"] = True
        notes.append(f"the run completes (recorded: {rec.exit_reason}, {rec.error_type}): "
                     "fails until the bug is fixed")
    else:
        e.update(completed=False, exit_reason=rec.exit_reason)
        if rec.error_type:
            e["error_type"] = rec.error_type
        notes.append(f"the run fails as recorded ({rec.exit_reason}, {rec.error_type})")
    served = rec.served_route if rec.served_route in chain else None
    if rec.completed and served:
        e["served_route"] = _alias(chain, served)
    hops = [f for f in rec.fallbacks_seen if f.get("from") in chain and f.get("to") in chain]
    if hops:
        e["fallbacks_min"] = 1
        first = hops[0]
        e["markers_present"] = [f"[fallback_route] from={{{_alias(chain, first['from'])}}} "
                                f"to={{{_alias(chain, first['to'])}}}"]
        if rec.completed and served and hops[-1]["to"] == served:
            e["fallback_target"] = _alias(chain, served)
        notes.append("fallback " + ", ".join(dict.fromkeys(f"{f['from']} -> {f['to']} ({f.get('reason')})"
                                                           for f in hops)))
    if rec.skips:
        e.setdefault("markers_present", []).append("[circuit-open]")
        skipped = dict.fromkeys(s.route for s in rec.skips)
        notes.append(f"skips {', '.join(skipped)} (circuit open{', opened by earlier runs' if tripped else ''})")
    if rec.stream_overrides:
        e["stream_policy"] = "disabled"
    kinds = sorted({a.error for a in rec.attempts if not a.ok and a.error})
    if kinds:
        e["attempt_errors"] = kinds
    upstream: dict[str, Any] = {}
    for route in chain:
        n = sum(1 for a in rec.attempts if a.route == route)
        if n:
            upstream[_alias(chain, route)] = f">={n}"
        elif route in tripped:
            upstream[_alias(chain, route)] = 0
    if upstream:
        e["upstream"] = upstream
    opened = {_alias(chain, r): "open" for r in tripped if not any(a.route == r for a in rec.attempts)}
    if opened:
        e["breaker"] = opened
    e["max_seconds"] = max_seconds
    return e, notes


def generate(rec: RunRecords, *, name: str, expect_outcome: ExpectOutcome | None, breaker: BreakerSettings,
             scrub: Callable[[str], str], generated_at: str) -> Generated:
    """The scenario file for `rec` (GenerateError if the run has nothing to replay)."""
    if rec.primary is None:
        raise GenerateError("the run records no route (meta/run.json has none): nothing to replay")
    if not rec.attempts and not rec.skips:
        raise GenerateError("the run made no provider request and skipped no route: nothing to replay")
    chain = list(dict.fromkeys([rec.primary, *rec.fallbacks]))
    outcome: ExpectOutcome = expect_outcome or ("recorded" if rec.completed else "fixed")
    max_seconds = float(max(60, math.ceil((rec.duration_s or 0) * 2 + 20)))
    faults: list[dict[str, Any]] = []
    summary = [f"chain: {' -> '.join(chain)} (stream {'on' if rec.stream else 'off'})"]
    strays = sorted({a.route for a in rec.attempts} - set(chain))
    for route in chain:
        attempts = [a for a in rec.attempts if a.route == route]
        script = _script(attempts, _alias(chain, route), scrub)
        faults.extend(script)
        shown = ", ".join(f"{_describe(f['name'], f.get('params', {}))} x{f['count']}" for f in script)
        summary.append(f"{_alias(chain, route)} {route}: {len(attempts)} request(s)"
                       + (f": {shown}, then healthy" if script else ": healthy"))
    if strays:
        summary.append(f"not replayed (not in the chain): {', '.join(strays)}")
    breaker, lowered = _settings(rec, chain, breaker)
    if lowered:
        summary.append(lowered)
    tripped = _tripped(rec, chain)
    expect, notes = _expect(rec, chain, tripped, outcome, max_seconds)
    replay: dict[str, Any] = {"fault": faults, "expect": expect}
    doc: dict[str, Any] = {
        "name": name,
        "description": f"Replays the provider behaviour of run {rec.run_id} ({rec.created_at}) on the "
                       f"simulator: {'; '.join(notes)}.",
        "routes": _routes(rec, chain),
        "breaker": msgspec.to_builtins(breaker),
    }
    if tripped:
        trip, line = _trip_step(rec, chain, tripped, breaker, max_seconds)
        doc["steps"] = [trip, replay]
        summary.append(line)
    else:
        doc.update(replay)
    summary.append("expects: " + "; ".join(notes))
    header = (f"# Generated by `kcctl incident {rec.run_id} --scenario {name}` on {generated_at}\n"
              f"# from run {rec.run_id} ({rec.created_at}); expected outcome: {outcome}.\n"
              + (f"# {lowered}.\n" if lowered else "") +
              "# Provider responses are replayed per request (simulator fault `scripted`); error bodies are\n"
              "# scrubbed; nothing the run sent (prompts, request bodies, the task) is included.\n")
    text = header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1_000_000)
    load_scenario_text(text, None)  # what we write must load: a ConfigError here is our bug
    return Generated(text=text, summary=summary, expect_outcome=outcome)
