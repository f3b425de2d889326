"""Checking one run against its expectations, and grading it. Pure functions.

`check(expect, evidence, routes)` returns the reasons the run fails its
expectations (empty: it passes). `grade(evidence, expect)` places what the
run did on the four-grade scale of the public failoverbench scorecard
(docs/references.md):

* pass: the run completed;
* partial: it completed, but slower than `expect.partial_after_s`;
* safe: a clean, typed failure (a provider error with its type, or the loop's
  own limits: max steps, an empty reply);
* fail: a hang (no `run.end` in time), a crash, or a completion where the
  scenario expected none (a wrong answer presented as success).

The verdict of a scenario comes from `check` alone; the grade is reported
next to it (a scenario that expects a typed failure passes with grade safe).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from kcd.matrix.compare import compare, lookup, parse_comparison, parse_path
from kcd.matrix.scenario import ANY_MODEL, Expect

__all__ = ["AttemptError", "Evidence", "Grade", "Transition", "check", "grade"]

Grade = Literal["pass", "partial", "safe", "fail"]
SAFE_EXITS = frozenset({"max_steps_exhausted", "empty_response"})  # the loop's own clean limits
PROBE_REASONS = ("capability_probe_stream_failure", "capability_probe_tool_failure")


class AttemptError(msgspec.Struct, frozen=True):
    """One failed attempt, from `errors/turn_<N>.json`."""

    turn: int
    attempt: int
    route: str
    error_type: str
    status: int | None = None


class Transition(msgspec.Struct, frozen=True):
    route: str
    from_state: str
    to_state: str


class Evidence(msgspec.Struct, kw_only=True):
    """What one run left behind, plus what the simulator and the breakers saw meanwhile."""

    ended: bool  # run.end arrived within the time limit
    seconds: float
    exit_reason: str | None = None
    completed: bool | None = None
    steps: int | None = None
    served_route: str | None = None
    error: str | None = None
    error_type: str | None = None
    native_tools: bool | None = None  # from the run.start event
    metrics: dict[str, Any] = {}  # meta/provider_metrics.json
    conversation: str = ""  # conversation/conversation.md
    files: list[str] = []  # every file of the run dir (relative, posix), workspace excluded
    attempt_errors: list[AttemptError] = []
    upstream: dict[str, int] | None = None  # chat requests per model (None: no simulator)
    breaker: dict[str, str] | None = None  # route -> state after the run (None: not observed)
    transitions: list[Transition] = []


# Route references in expectations, already resolved by the caller (aliases -> route ids).
Resolve = Callable[[str], str]


def check(expect: Expect, ev: Evidence, resolve: Resolve, fill: Callable[[str], str],
          model_of: Callable[[str], str]) -> list[str]:
    """Why `ev` does not meet `expect` (empty list: it does).

    `resolve` maps an alias or route id to a canonical route id, `fill`
    substitutes `{primary}`-style templates, `model_of` gives the model name the
    simulator sees for a route.
    """
    reasons: list[str] = []
    add = reasons.append
    if not ev.ended:
        add(f"the run did not end within {expect.max_seconds:g}s (cancelled)")
    elif ev.seconds > expect.max_seconds:
        add(f"took {ev.seconds:.1f}s, more than max_seconds {expect.max_seconds:g}")
    if expect.exit_reason is not None and ev.exit_reason != expect.exit_reason:
        add(f"exit_reason is {ev.exit_reason!r}, expected {expect.exit_reason!r}")
    if expect.completed is not None and ev.completed is not expect.completed:
        add(f"completed is {ev.completed}, expected {expect.completed}")
    if expect.steps is not None:
        _compare(add, "steps", ev.steps, expect.steps)
    if expect.served_route is not None and ev.served_route != resolve(expect.served_route):
        add(f"served_route is {ev.served_route!r}, expected {resolve(expect.served_route)!r}")
    fallbacks = ev.metrics.get("fallbacks") or []
    if expect.fallback_target is not None:
        target = resolve(expect.fallback_target)
        if not fallbacks:
            add(f"no fallback happened; expected one to {target!r}")
        elif fallbacks[-1].get("to") != target or ev.served_route != target:
            add(f"fell back to {fallbacks[-1].get('to')!r} (served by {ev.served_route!r}), expected {target!r}")
    if expect.fallbacks_min is not None and len(fallbacks) < expect.fallbacks_min:
        add(f"{len(fallbacks)} fallback(s), expected at least {expect.fallbacks_min}")
    if expect.fallbacks_max is not None and len(fallbacks) > expect.fallbacks_max:
        add(f"{len(fallbacks)} fallback(s), expected at most {expect.fallbacks_max}: "
            + ", ".join(f"{f.get('from')}->{f.get('to')} ({f.get('reason')})" for f in fallbacks))
    _policy(add, "stream_policy", expect.stream_policy, ev.metrics.get("stream_overrides") or [], "[stream-policy]",
            ev.conversation)
    _policy(add, "tool_policy", expect.tool_policy, ev.metrics.get("tool_overrides") or [], "[tool-policy]",
            ev.conversation)
    if expect.native_tools is not None and ev.native_tools is not expect.native_tools:
        add(f"native tools were {'on' if ev.native_tools else 'off'}, expected "
            f"{'on' if expect.native_tools else 'off'}")
    for marker in expect.markers_present:
        if fill(marker) not in ev.conversation:
            add(f"marker {fill(marker)!r} not in conversation.md")
    for marker in expect.markers_absent:
        if fill(marker) in ev.conversation:
            add(f"marker {fill(marker)!r} is in conversation.md")
    for path, spec in expect.metrics.items():
        filled = fill(path)
        _compare(add, f"metrics {filled}", lookup(ev.metrics, parse_path(filled)),
                 fill(spec) if isinstance(spec, str) else spec)
    for pattern in expect.artifacts:
        if not any(fnmatch.fnmatchcase(f, pattern) for f in ev.files):
            add(f"no artifact matches {pattern!r}")
    for pattern in expect.artifacts_absent:
        found = [f for f in ev.files if fnmatch.fnmatchcase(f, pattern)]
        if found:
            add(f"artifact {found[0]!r} matches {pattern!r}, expected none")
    seen = {a.error_type for a in ev.attempt_errors}
    for kind in expect.attempt_errors:
        if kind not in seen:
            add(f"no failed attempt was {kind!r} (saw: {', '.join(sorted(seen)) or 'none'})")
    if expect.error_type is not None and ev.error_type != expect.error_type:
        add(f"error_type is {ev.error_type!r}, expected {expect.error_type!r}")
    for text in expect.error_contains:
        if fill(text) not in (ev.error or ""):
            add(f"the run's error does not mention {fill(text)!r}")
    for ref, spec in expect.upstream.items():
        if ev.upstream is None:
            add("upstream counts are unknown (no simulator)")
            break
        count = sum(ev.upstream.values()) if ref == ANY_MODEL else ev.upstream.get(model_of(resolve(ref)), 0)
        _compare(add, f"upstream requests to {ref if ref == ANY_MODEL else resolve(ref)}", count, spec)
    for ref, state in expect.breaker.items():
        route = resolve(ref)
        actual = (ev.breaker or {}).get(route, "closed")  # a route never touched is closed
        if actual != state:
            add(f"breaker of {route} is {actual}, expected {state}")
    for ref, changes in expect.breaker_transitions.items():
        route = resolve(ref)
        seen_changes = [f"{t.from_state}>{t.to_state}" for t in ev.transitions if t.route == route]
        if not _subsequence(changes, seen_changes):
            add(f"breaker of {route} changed {' '.join(seen_changes) or '(never)'}, expected {' '.join(changes)}")
    return reasons


def grade(ev: Evidence, expect: Expect) -> Grade:
    if not ev.ended:
        return "fail"
    if ev.completed:
        if expect.completed is False:
            return "fail"
        if expect.partial_after_s is not None and ev.seconds > expect.partial_after_s:
            return "partial"
        return "pass"
    if ev.exit_reason == "provider_error" and ev.error_type:
        return "safe"
    if ev.exit_reason in SAFE_EXITS:
        return "safe"
    return "fail"


def _compare(add: Callable[[str], None], what: str, actual: Any, spec: Any) -> None:
    problem = compare(actual, parse_comparison(spec))
    if problem is not None:
        add(f"{what} {problem}")


def _policy(add: Callable[[str], None], key: str, want: str | None, overrides: list[dict[str, Any]],
            marker: str, conversation: str) -> None:
    if want is None:
        return
    reasons = [o.get("reason") for o in overrides]
    if want == "unchanged":
        if overrides or marker in conversation:
            add(f"{key}: expected no override, got {reasons or marker}")
        return
    if not overrides or marker not in conversation:
        add(f"{key}: expected an override with a {marker} marker, got {reasons or 'none'}")
    elif want == "disabled_by_probe" and not any(r in PROBE_REASONS for r in reasons):
        add(f"{key}: expected an override from a failed capability probe, got {reasons}")


def _subsequence(wanted: list[str], seen: list[str]) -> bool:
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)
