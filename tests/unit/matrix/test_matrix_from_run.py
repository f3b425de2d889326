"""Scenarios from recorded runs (kcd.matrix.from_run, kcd.matrix.run_records): per-request
replay of the recorded attempts, breaker trips, expectations, scrubbing, and what the reader
never reads."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from kcd.bundles.scrub import make_scrubber
from kcd.config.daemon import BreakerSettings
from kcd.matrix.from_run import GenerateError, delivery, generate
from kcd.matrix.run_records import AttemptRecord, RunRecords, SkipRecord, read_run_records
from kcd.matrix.scenario import load_scenario_text
from kcd.observe.redact import Redactor

P, F, F2 = "openrouter/x-ai/grok-4-fast", "openai/gpt-4o-mini", "openrouter/openai/gpt-4o-mini"
CANARY = "sk-or-canary-from-run-0123456789abcdef"
PAGE = "<!DOCTYPE html><html><head><title>502 Bad gateway</title></head><body>cf-ray 8f1c</body></html>"


def att(seq: int, route: str = P, ok: bool = False, turn: int = 1, **kw) -> AttemptRecord:
    return AttemptRecord(seq=seq, turn=turn, attempt=seq, kind="primary", route=route, ok=ok, **kw)


def ok(seq: int, route: str = F, turn: int = 1, **kw) -> AttemptRecord:
    return att(seq, route, True, turn, status=200, content_type="application/json", **kw)


def records(attempts, **kw) -> RunRecords:
    base = dict(run_id="abc123", created_at="2026-12-01T10:00:00Z", primary=P, fallbacks=[F], stream=True,
                max_steps=6, completed=True, exit_reason="mark_task_complete", served_route=F, duration_s=1.0)
    base.update(kw)
    return RunRecords(attempts=attempts, **base)


def gen(rec: RunRecords, outcome=None, breaker=BreakerSettings(), scrub=lambda t: t):
    made = generate(rec, name="incident_x", expect_outcome=outcome, breaker=breaker, scrub=scrub,
                    generated_at="2026-12-08 00:00 UTC")
    load_scenario_text(made.text, None)
    return made, yaml.safe_load(made.text)


def test_stream_cut_html_502_and_429_retry_after_replay_in_order():
    rec = records([
        att(1, status=200, content_type="text/event-stream", streamed=True, error="stream_truncated", sse_events=4),
        att(2, status=502, content_type="text/html; charset=UTF-8", error="upstream_html", html_detected=True,
            body=PAGE, ttft_s=0.8, latency_s=0.8),
        att(3, status=429, content_type="application/json", error="http_error", retry_after_s=2.2,
            body='{"error":{"message":"slow down"}}'),
        ok(4),
    ], fallbacks_seen=[{"from": P, "to": F, "reason": "http_error"}])
    made, doc = gen(rec)
    assert doc["fault"] == [
        {"route": "primary", "name": "scripted", "count": 1, "params": {"terminator": 0, "events": 3}},
        {"route": "primary", "name": "scripted", "count": 1,
         "params": {"status": 502, "content_type": "text/html; charset=UTF-8", "body": PAGE, "delay": 0.8}},
        {"route": "primary", "name": "scripted", "count": 1,
         "params": {"status": 429, "content_type": "application/json", "body": '{"error":{"message":"slow down"}}',
                    "retry_after": 3}},
    ]  # the fallback's healthy answer needs no fault
    assert doc["routes"] == {"primary": P, "fallbacks": [F], "stream": True, "max_steps": 6}
    e = doc["expect"]
    assert e["completed"] is True and e["exit_reason"] == "mark_task_complete" and e["served_route"] == "fallback"
    assert e["fallback_target"] == "fallback" and e["markers_present"] == ["[fallback_route] from={primary} to={fallback}"]
    assert e["attempt_errors"] == ["http_error", "stream_truncated", "upstream_html"]
    assert e["upstream"] == {"primary": ">=3", "fallback": ">=1"}
    assert "run abc123" in made.text.splitlines()[1] and any("stream cut after 3" in s for s in made.summary)


def test_equal_requests_merge_and_a_healthy_request_between_failures_stays():
    body = '{"error":{"code":503}}'
    fail = dict(status=503, content_type="application/json", error="http_error", body=body)
    rec = records([att(1, **fail), att(2, **fail), ok(3, route=P), att(4, turn=2, **fail), ok(5, route=P, turn=2)],
                  served_route=P, fallbacks=[])
    _, doc = gen(rec)
    assert [(f["name"], f["count"], f.get("params", {}).get("status")) for f in doc["fault"]] == [
        ("scripted", 2, 503), ("scripted", 1, None), ("scripted", 1, 503)]


@pytest.mark.parametrize(("kw", "expected"), [
    (dict(error="connection_reset"), ("tcp_reset", {})),
    (dict(error="timeout.ttft"), ("no_response", {})),
    (dict(error="timeout.idle", status=200, sse_events=3, streamed=True), ("stream_stall", {"tokens": 2})),
    (dict(error="timeout.idle_progress", status=200, sse_events=0, streamed=True), ("keepalive_only", {})),
    (dict(error="stream_malformed", status=200, streamed=True), ("malformed_chunk", {})),
    (dict(error="stream_error", status=200, streamed=True, sse_events=4), ("inband_error_after_tokens", {"tokens": 2})),
    (dict(error="stream_error", status=200, streamed=True, sse_events=1), ("deferred_first_chunk_error", {})),
    (dict(error="empty_response", status=200, streamed=True, no_terminator=True), ("scripted", {"terminator": 0})),
    (dict(error="upstream_html", status=200, content_type="text/html", body="<html>sign in</html>"),
     ("scripted", {"status": 200, "content_type": "text/html", "body": "<html>sign in</html>"})),
])
def test_each_kind_of_failure_maps_to_a_simulator_fault(kw, expected):
    assert delivery(att(1, **kw), lambda t: t) == expected


def test_error_bodies_pass_through_the_scrubber(tmp_path):
    redactor = Redactor([CANARY])
    scrubber = make_scrubber(redactor, tmp_path, runs_root=tmp_path.parent)
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {CANARY}; Authorization: Bearer {CANARY}"}})
    rec = records([att(1, status=401, content_type="application/json", error="auth_error", body=body), ok(2)])
    made, doc = gen(rec, scrub=lambda t: scrubber.scrub(t.encode())[0].decode())
    assert CANARY not in made.text and CANARY[:20] not in made.text
    assert "Incorrect API key provided" in doc["fault"][0]["params"]["body"]


def test_a_route_found_open_is_tripped_first_then_its_skip_is_expected():
    rec = records([ok(5), ok(9, turn=2)], skips=[SkipRecord(seq=4, turn=1, route=P, reason="failure_rate",
                                                            reopens_in_s=4.2)],
                  fallbacks_seen=[{"from": P, "to": F, "reason": "breaker_open"}])
    made, doc = gen(rec, breaker=BreakerSettings(threshold=4, cooldown_s=30, cap_s=60))
    trip, replay = doc["steps"]
    assert trip["fault"] == [{"route": "primary", "name": "unavailable_persistent"}]
    assert trip["concurrent"] == 4 and trip["expect"]["breaker"] == {"primary": "open"}
    assert doc["breaker"]["threshold"] == 4 and doc["breaker"]["cooldown_s"] == 30
    e = replay["expect"]
    assert e["upstream"] == {"primary": 0, "fallback": ">=2"} and e["breaker"] == {"primary": "open"}
    assert "[circuit-open]" in e["markers_present"] and e["fallback_target"] == "fallback"
    assert any("step 1 opens" in s for s in made.summary)


def test_an_open_fallback_is_reached_past_a_primary_that_fails_without_counting():
    rec = records([att(1, status=503, error="http_error"), ok(3, route=F2)], fallbacks=[F, F2], served_route=F2,
                  skips=[SkipRecord(seq=2, turn=1, route=F, reason="retry_after", reopens_in_s=20.0)])
    _, doc = gen(rec)
    trip = doc["steps"][0]
    assert trip["fault"] == [{"route": "primary", "name": "auth_401"},
                             {"route": "fallback", "name": "rate_limit_retry_after", "params": {"retry_after": 20}}]
    assert doc["steps"][1]["expect"]["upstream"] == {"primary": ">=1", "fallback": 0, "fallback2": ">=1"}


def test_a_breaker_opened_mid_run_by_earlier_failures_lowers_the_threshold():
    rec = records([att(1, status=500, error="http_error", breaker="open"), ok(2)],
                  skips=[SkipRecord(seq=3, turn=2, route=P, reason="failure_rate")])
    made, doc = gen(rec)
    assert doc["breaker"]["threshold"] == 1 and "fault" in doc  # not tripped first: it opens during the replay
    assert "threshold 3 -> 1" in made.text
    # opened by a Retry-After: nothing to lower
    rec = records([att(1, status=429, error="http_error", breaker="open", retry_after_s=1.0), ok(2)])
    assert gen(rec)[1]["breaker"]["threshold"] == 3


def test_failed_run_expects_completion_by_default_or_the_recorded_failure():
    fail = dict(status=503, content_type="application/json", error="http_error", body="{}")
    rec = records([att(1, **fail), att(2, route=F, **fail)], completed=False, exit_reason="provider_error",
                  error_type="http_error", served_route=None)
    made, doc = gen(rec)
    assert made.expect_outcome == "fixed" and doc["expect"]["completed"] is True
    assert "exit_reason" not in doc["expect"] and "served_route" not in doc["expect"]
    made, doc = gen(rec, "recorded")
    assert made.expect_outcome == "recorded"
    assert (doc["expect"]["completed"], doc["expect"]["exit_reason"], doc["expect"]["error_type"]) == (
        False, "provider_error", "http_error")
    assert doc["expect"]["attempt_errors"] == ["http_error"]


def test_nothing_to_replay_is_an_error():
    with pytest.raises(GenerateError):
        generate(records([]), name="x", expect_outcome=None, breaker=BreakerSettings(), scrub=str,
                 generated_at="now")
    with pytest.raises(GenerateError):
        generate(records([ok(1)], primary=None), name="x", expect_outcome=None, breaker=BreakerSettings(),
                 scrub=str, generated_at="now")


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_the_reader_takes_responses_and_never_what_was_sent(tmp_path):
    run = tmp_path / "run"
    secret_prompt = "PROMPT-CANARY-do-not-copy"
    events = [
        {"seq": 1, "type": "run.start", "data": {"native_tools": True}},
        {"seq": 2, "type": "policy", "data": {"marker": "circuit-open", "turn": 1, "text":
            f"Skipping direct call for route {F} (failure_rate, reopens in 3.5s); attempting fallback."}},
        {"seq": 3, "type": "llm.attempt", "data": {"turn": 1, "attempt": 1, "kind": "primary", "route": P, "ok": False,
                                                   "status": 429, "content_type": "application/json",
                                                   "latency_s": 0.3, "stream": False, "error": "http_error",
                                                   "breaker": "open"}},
    ]
    _write(run / "meta" / "events.jsonl", "\n".join(json.dumps(e) for e in events) + "\n")
    _write(run / "meta" / "run.json", {"run_id": "r1", "route": P, "stream": False, "max_steps": 4,
                                        "task": secret_prompt, "timings": {"created_at": "t0", "duration_s": 2.0},
                                        "resolved_config": {"providers": {"retry": {"retries_per_route": 1},
                                                                          "models": [{"id": P, "routing": {
                                                                              "fallback_models": [F]},
                                                                              "timeouts": {"ttft": 9}}]}}})
    _write(run / "result.json", {"completed": False, "exit_reason": "provider_error", "error_type": "http_error"})
    _write(run / "raw" / "responses" / "turn_1_attempt_1.json",
           {"ttft_s": 0.3, "sse_events": 0, "headers": {"Retry-After": "7"}, "status_code": 429})
    _write(run / "raw" / "responses" / "turn_1_attempt_1.body.b64", base64.b64encode(b'{"error":"rate"}').decode())
    _write(run / "errors" / "turn_1.json", {"turn": 1, "attempts": [{"attempt": 1, "error_type": "http_error"}]})
    for sent in ("meta/requests/turn_1_attempt_1.json", "raw/requests/turn_1.request.json"):
        _write(run / sent, {"messages": [{"role": "user", "content": secret_prompt}]})
    rec = read_run_records(run)
    assert (rec.run_id, rec.primary, rec.fallbacks, rec.native_tools, rec.max_steps) == ("r1", P, [F], True, 4)
    assert rec.timeouts == {"ttft": 9} and rec.retry == {"retries_per_route": 1}
    (a,) = rec.attempts
    assert (a.status, a.retry_after_s, a.body, a.error, a.breaker) == (429, 7.0, '{"error":"rate"}', "http_error", "open")
    assert rec.skips == [SkipRecord(seq=2, turn=1, route=F, reason="failure_rate", reopens_in_s=3.5)]
    made, _ = gen(rec)
    assert secret_prompt not in made.text and secret_prompt not in repr(rec)


def test_a_base64_body_garbled_by_the_runs_redaction_gives_way_to_the_excerpt(tmp_path):
    run = tmp_path / "run"
    masked = '{"error":{"message":"Incorrect API key provided: ***REDACTED***."}}'
    original = base64.b64encode(b'{"error":{"message":"Incorrect API key provided: sk-abcdefghijklmnop."}}').decode()
    garbled = original[:60] + "REDACTED" + original[76:]  # what masking a secret's base64 core leaves
    _write(run / "meta" / "events.jsonl", json.dumps({"seq": 1, "type": "llm.attempt", "data": {
        "turn": 1, "attempt": 1, "route": P, "ok": False, "status": 401, "error": "auth_error"}}) + "\n")
    _write(run / "raw" / "responses" / "turn_1_attempt_1.body.b64", garbled)
    _write(run / "raw" / "responses" / "turn_1_attempt_1.raw_excerpt.txt", masked)
    assert read_run_records(run).attempts[0].body == masked
    # an intact copy wins: it is the whole body, the excerpt only its start
    page = "<html>" + "x" * 5000 + "</html>"
    _write(run / "raw" / "responses" / "turn_1_attempt_1.body.b64", base64.b64encode(page.encode()).decode())
    _write(run / "raw" / "responses" / "turn_1_attempt_1.raw_excerpt.txt", page[:2000])
    assert read_run_records(run).attempts[0].body == page
