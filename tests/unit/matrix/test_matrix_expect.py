"""The expectation grammar, the checks against a run's evidence, and the failoverbench grades."""

from __future__ import annotations

import pytest

from kcd.matrix.compare import MISSING, GrammarError, compare, lookup, parse_comparison, parse_path
from kcd.matrix.expect import AttemptError, Evidence, Transition, check, grade
from kcd.matrix.scenario import Expect

PRIMARY, FALLBACK = "openrouter/x-ai/grok-4-fast", "openai/gpt-4o-mini"
ALIASES = {"primary": PRIMARY, "fallback": FALLBACK}


def resolve(ref: str) -> str:
    return ALIASES.get(ref, ref)


def fill(text: str) -> str:
    for name, route in ALIASES.items():
        text = text.replace("{" + name + "}", route)
    return text


def model_of(route: str) -> str:
    return route.split("/", 1)[1]


def run_check(expect: Expect, ev: Evidence) -> list[str]:
    return check(expect, ev, resolve, fill, model_of)


def fallback_evidence(**over) -> Evidence:
    base = dict(
        ended=True, seconds=1.2, exit_reason="mark_task_complete", completed=True, steps=2,
        served_route=FALLBACK, native_tools=False,
        metrics={"summary": {"errors": 3, "stream_overrides": 0}, "fallbacks": [
            {"from": PRIMARY, "to": FALLBACK, "reason": "http_error"}],
            "routes": {PRIMARY: {"calls": 3, "status_codes": {"503": 3}}, FALLBACK: {"calls": 2}},
            "stream_overrides": [],
            "tool_overrides": [{"route": PRIMARY, "reason": "provider_default_no_native_tools"}]},
        conversation=f"[tool-policy] x\n[fallback_route] from={PRIMARY} to={FALLBACK} reason=http_error\n",
        files=["errors/turn_1.json", "meta/requests/turn_1_attempt_1.json", "result.json"],
        attempt_errors=[AttemptError(turn=1, attempt=1, route=PRIMARY, error_type="http_error", status=503)],
        upstream={"x-ai/grok-4-fast": 3, "gpt-4o-mini": 2}, breaker={PRIMARY: "open"},
        transitions=[Transition(PRIMARY, "closed", "open")])
    base.update(over)
    return Evidence(**base)


# ---- grammar ------------------------------------------------------------------------------


@pytest.mark.parametrize("text,parts", [
    ("summary.errors", ("summary", "errors")),
    ("routes[openrouter/x-ai/grok-4-fast].calls", ("routes", "openrouter/x-ai/grok-4-fast", "calls")),
    ("fallbacks[0].to", ("fallbacks", 0, "to")),
    ("routes[openai/gpt-4.1].status_codes.429", ("routes", "openai/gpt-4.1", "status_codes", "429")),
])
def test_paths(text, parts):
    assert parse_path(text) == parts


@pytest.mark.parametrize("bad", ["", "a..b", "a.", ".a", "a[]", "a b ", "a[0]b"])
def test_bad_paths(bad):
    with pytest.raises(GrammarError):
        parse_path(bad)


@pytest.mark.parametrize("spec,actual,ok", [
    (0, 0, True), (0, 1, False), (">0", 2, True), (">0", 0, False), (">=1", 1, True), ("<3", 3, False),
    ("<=3", 3, True), ("==0", 0.0, True), ("!=0", 0, False), (">0", [1], True), ("==0", {}, True),
    (2, [1, 2], True), (True, True, True), (True, 1, False), ("open", "open", True), ("~grok", PRIMARY, True),
    ("~grok", 3, False), (">0", None, False), (">0", "x", False), ("1.5", "1.5", True), (">1.5", 2, True),
])
def test_comparisons(spec, actual, ok):
    assert (compare(actual, parse_comparison(spec)) is None) is ok


def test_missing_values_fail_and_say_so():
    assert compare(lookup({"a": {}}, ("a", "b")), parse_comparison(0)) == "missing"
    assert lookup({"a": [1]}, ("a", 3)) is MISSING


@pytest.mark.parametrize("bad", [">", ">=x", "<", "!", "~"])
def test_bad_comparisons(bad):
    with pytest.raises(GrammarError):
        parse_comparison(bad)


# ---- check ----------------------------------------------------------------------------------


def test_a_fallback_run_meets_the_runbook_expectations():
    expect = Expect(exit_reason="mark_task_complete", fallback_target="fallback", fallbacks_min=1,
                    tool_policy="disabled", stream_policy="unchanged",
                    markers_present=["[fallback_route] from={primary} to={fallback}"],
                    markers_absent=["[stream-policy]"],
                    metrics={"summary.errors": ">0", "routes[{primary}].status_codes.503": 3,
                             "fallbacks[0].from": "{primary}"},
                    artifacts=["errors/turn_*.json"], artifacts_absent=["raw/responses/*.html_excerpt.txt"],
                    attempt_errors=["http_error"], upstream={"primary": 3, "*": ">=5"},
                    breaker={"primary": "open", "fallback": "closed"},
                    breaker_transitions={"primary": ["closed>open"]}, max_seconds=5)
    assert run_check(expect, fallback_evidence()) == []


def test_every_unmet_expectation_is_a_reason():
    expect = Expect(exit_reason="provider_error", completed=False, served_route="primary",
                    fallbacks_max=0, stream_policy="disabled", native_tools=True,
                    markers_present=["[circuit-open]"], markers_absent=["[fallback_route]"],
                    metrics={"summary.errors": 0, "summary.nothing": 1}, artifacts=["meta/capability_probes.json"],
                    artifacts_absent=["errors/*"], attempt_errors=["timeout.ttft"], error_type="all_routes_open",
                    error_contains=["{primary}"], upstream={"fallback": 0}, breaker={"primary": "closed"},
                    breaker_transitions={"primary": ["open>half_open"]}, steps=">5", max_seconds=1)
    reasons = run_check(expect, fallback_evidence())
    text = "\n".join(reasons)
    for words in ("took 1.2s", "exit_reason is 'mark_task_complete'", "completed is True", "served_route is",
                  "expected at most 0", "stream_policy", "native tools were off", "'[circuit-open]' not in",
                  "'[fallback_route]' is in", "metrics summary.errors is 3", "summary.nothing missing",
                  "no artifact matches 'meta/capability_probes.json'", "errors/turn_1.json",
                  "no failed attempt was 'timeout.ttft'", "error_type is None", "does not mention",
                  "upstream requests to openai/gpt-4o-mini is 2", "breaker of openrouter/x-ai/grok-4-fast is open",
                  "changed closed>open", "steps is 2"):
        assert words in text, words
    assert len(reasons) == 20


def test_fallback_target_must_be_where_the_run_fell_back_to_and_served():
    ev = fallback_evidence(served_route=PRIMARY)
    assert "fell back to" in run_check(Expect(fallback_target="fallback"), ev)[0]
    ev = fallback_evidence(metrics={"fallbacks": []})
    assert "no fallback happened" in run_check(Expect(fallback_target="fallback"), ev)[0]


def test_policies_distinguish_probe_overrides():
    ev = fallback_evidence(conversation="[stream-policy] off\n", metrics={
        "stream_overrides": [{"route": PRIMARY, "reason": "stream_truncated"}]})
    assert run_check(Expect(stream_policy="disabled"), ev) == []
    assert "failed capability probe" in run_check(Expect(stream_policy="disabled_by_probe"), ev)[0]
    ev.metrics["stream_overrides"][0]["reason"] = "capability_probe_stream_failure"
    assert run_check(Expect(stream_policy="disabled_by_probe"), ev) == []


def test_a_hang_is_reported_as_such():
    reasons = run_check(Expect(max_seconds=3), fallback_evidence(ended=False, seconds=3.0))
    assert reasons == ["the run did not end within 3s (cancelled)"]


def test_untouched_breakers_count_as_closed_and_upstream_needs_the_simulator():
    ev = fallback_evidence(breaker={}, upstream=None)
    reasons = run_check(Expect(breaker={"fallback": "closed"}, upstream={"primary": 0}), ev)
    assert reasons == ["upstream counts are unknown (no simulator)"]


# ---- grades ----------------------------------------------------------------------------------


@pytest.mark.parametrize("over,expect,want", [
    ({}, Expect(), "pass"),
    ({"seconds": 2.5}, Expect(partial_after_s=2.0), "partial"),
    ({"completed": False, "exit_reason": "provider_error", "error_type": "all_routes_open"}, Expect(), "safe"),
    ({"completed": False, "exit_reason": "max_steps_exhausted"}, Expect(), "safe"),
    ({"completed": False, "exit_reason": "provider_error", "error_type": None}, Expect(), "fail"),
    ({"completed": False, "exit_reason": "run_loop_exception"}, Expect(), "fail"),
    ({"ended": False}, Expect(), "fail"),
    ({}, Expect(completed=False), "fail"),  # a success where a failure was due
])
def test_grades_follow_failoverbench(over, expect, want):
    assert grade(fallback_evidence(**over), expect) == want
