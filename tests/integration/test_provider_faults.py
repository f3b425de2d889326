"""Every simulator fault through the real daemon, real socket and real HTTP.

The simulator runs as its own process and stands in for OpenRouter and OpenAI
(`OPENROUTER_BASE_URL`/`OPENAI_BASE_URL` point at it). Each run either
completes (on the primary after a retry, or on the fallback) or ends with a
typed error that names the route and the cause, within its deadline.
"""

from __future__ import annotations

import time

import pytest

from .resilience_support import (
    FAST_TIMEOUTS,
    GROK,
    OPENAI_MINI,
    OR_MINI,
    free_port,
    read_json,
    run_json,
    write_config,
)


@pytest.fixture
def fault_kcd(make_kcd, sim):
    sim.reset()
    return make_kcd("--executor", "in-process",
                    env_extra={"OPENROUTER_BASE_URL": sim.api_base, "OPENAI_BASE_URL": sim.api_base})


# (fault, count, stream, native, expected outcome); primary GROK, fallback OPENAI_MINI.
# "ok": the primary served every turn with no failure; "retry": the primary served
# after a failed attempt (same-route retry or non-stream restart); "fallback": the
# fallback served; "fail": a typed provider_error naming the route and cause; "moved_on": the
# turn left a silent route for the fallback at once, and later turns use the primary unstreamed.
CASES = [
    ("rate_limit_retry_after", 1, False, False, "retry"),
    ("rate_limit_no_header", None, False, False, "fallback"),
    ("server_error_once", None, False, False, "retry"),
    ("unavailable_persistent", None, False, False, "fallback"),
    ("overloaded_529", None, False, False, "fallback"),
    ("tcp_reset", None, False, False, "fallback"),
    ("no_response", None, True, False, "fallback"),
    ("slow_ttft", None, True, False, "ok"),
    ("stream_cut", 1, True, False, "retry"),
    ("stream_stall", 1, True, False, "moved_on"),
    ("malformed_chunk", 1, True, False, "retry"),
    ("no_done", None, True, False, "ok"),
    ("context_length", None, False, False, "fail"),
    ("content_filter", None, False, False, "fail"),
    ("flapping_primary", None, False, False, "completed"),
    ("failover_accounting", None, True, False, "fallback"),
    ("html_502", None, False, False, "fallback"),
    ("html_200", None, False, False, "fallback"),
    ("keepalive_only", None, True, False, "fallback"),
    ("inband_error_after_tokens", 1, True, False, "retry"),
    ("fake_streaming", None, True, False, "ok"),
    ("missing_usage", None, True, False, "ok"),
    ("deferred_first_chunk_error", 1, True, False, "retry"),
    ("auth_401", None, False, False, "fallback"),
    ("credits_402", None, False, False, "fallback"),
    ("huge_retry_after", None, False, False, "fallback"),
    ("slow_trickle", None, True, False, "fallback"),
    ("json_error_in_200", None, False, False, "fallback"),
]


def _convo(run_dir):
    return (run_dir / "conversation/conversation.md").read_text()


def check_outcome(expected: str, end: dict, run_dir, primary: str, fallback: str) -> None:
    data = end["data"]
    result = read_json(run_dir / "result.json")
    metrics = read_json(run_dir / "meta/provider_metrics.json")
    convo = _convo(run_dir)
    if expected == "fail":
        assert data["exit_reason"] == "provider_error", data
        assert primary in result["error"], result["error"]
        assert result["error_type"], result
        return
    assert data["exit_reason"] == "mark_task_complete", (data, result)
    if expected == "completed":
        return
    if expected == "ok":
        assert result["served_route"] == primary
        assert metrics["summary"]["errors"] == 0, metrics["summary"]
        assert "[fallback_route]" not in convo
    elif expected == "retry":
        assert result["served_route"] == primary
        assert metrics["summary"]["errors"] >= 1
        assert metrics["fallbacks"] == []
        assert "[provider-retry]" in convo or "[stream-policy]" in convo
        assert list(run_dir.glob("errors/turn_*.json"))
    elif expected == "moved_on":
        assert result["served_route"] == primary
        assert [(f["from"], f["to"]) for f in metrics["fallbacks"]] == [(primary, fallback)]
        assert "[stream-policy]" in convo and "[provider-retry]" not in convo
    elif expected == "fallback":
        assert result["served_route"] == fallback, result
        assert "[fallback_route]" in convo and f"to={fallback}" in convo
        assert metrics["fallbacks"] and metrics["fallbacks"][0]["from"] == primary
        assert metrics["summary"]["errors"] >= 1
        errors = read_json(run_dir / "errors/turn_1.json")
        assert errors["attempts"][0]["route"] == primary and errors["attempts"][0]["error_type"]
        assert (run_dir / "meta/requests/turn_1_attempt_1.json").is_file()
        assert (run_dir / "raw/responses/turn_1_attempt_1.json").is_file()


@pytest.mark.parametrize("fault,count,stream,native,expected", CASES, ids=[c[0] for c in CASES])
def test_fault(fault_kcd, sim, tmp_path, fault, count, stream, native, expected):
    timeouts = dict(FAST_TIMEOUTS)
    if fault == "slow_trickle":
        timeouts["total"] = 3
    cfg = write_config(tmp_path / "cfg.yaml", GROK, [OPENAI_MINI], stream=stream, use_native=native,
                       timeouts=timeouts)
    sim.fault(GROK, fault, count)
    started = time.monotonic()
    end, run_dir = run_json(fault_kcd, cfg)
    assert time.monotonic() - started < 60
    check_outcome(expected, end, run_dir, GROK, OPENAI_MINI)
    if fault in ("auth_401",):
        errors = read_json(run_dir / "errors/turn_1.json")
        assert "OPENROUTER_API_KEY" in (errors["attempts"][0]["hint"] or "")
        assert len([a for a in errors["attempts"] if a["route"] == GROK]) == 1  # no same-route retry
    if fault in ("html_502", "html_200"):
        metrics = read_json(run_dir / "meta/provider_metrics.json")
        assert metrics["summary"]["html_errors"] >= 1
        assert list(run_dir.glob("raw/responses/turn_1_attempt_1.html_excerpt.txt"))
        assert list(run_dir.glob("raw/responses/turn_1_attempt_1.body.b64"))
    if fault == "html_200":
        errors = read_json(run_dir / "errors/turn_1.json")
        assert len([a for a in errors["attempts"] if a["route"] == GROK]) == 1
    if stream and expected == "retry":
        metrics = read_json(run_dir / "meta/provider_metrics.json")
        assert metrics["stream_overrides"] and metrics["stream_overrides"][0]["route"] == GROK
        assert "[streaming-disabled]" in _convo(run_dir)
    if fault == "huge_retry_after":
        with fault_kcd.http() as c:
            route = c.get("/v1/routes").json()["routes"][GROK]
        assert route["state"] == "open" and route["reopens_in_s"] > 3000


def test_native_tool_call_with_cut_arguments_is_never_executed(fault_kcd, sim, tmp_path):
    # F23: finish_reason rewritten to tool_calls with arguments cut off mid-JSON.
    cfg = write_config(tmp_path / "cfg.yaml", OPENAI_MINI, [OR_MINI], stream=True, use_native=True)
    sim.fault(OPENAI_MINI, "finish_reason_rewrite", 1)
    end, run_dir = run_json(fault_kcd, cfg)
    check_outcome("retry", end, run_dir, OPENAI_MINI, OR_MINI)
    errors = read_json(run_dir / "errors/turn_1.json")
    assert errors["attempts"][0]["error_type"] == "stream_truncated"


def test_connect_refused_falls_over_at_once(fault_kcd, sim, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    cfg = write_config(tmp_path / "cfg.yaml", GROK, [OPENAI_MINI], base_urls={GROK: dead})
    end, run_dir = run_json(fault_kcd, cfg)
    check_outcome("fallback", end, run_dir, GROK, OPENAI_MINI)
    errors = read_json(run_dir / "errors/turn_1.json")
    assert [a["error_type"] for a in errors["attempts"]] == ["connect_error"]  # no backoff on that route


def test_all_routes_down_is_a_typed_error_listing_each_route(fault_kcd, sim, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", GROK, [OR_MINI, OPENAI_MINI])
    sim.http.post("/_sim/faults", json={"model": "*", "fault": "all_routes_down", "count": None})
    started = time.monotonic()
    end, run_dir = run_json(fault_kcd, cfg)
    assert time.monotonic() - started < 40
    result = read_json(run_dir / "result.json")
    assert end["data"]["exit_reason"] == "provider_error"
    for route in (GROK, OR_MINI, OPENAI_MINI):
        assert route in result["error"]
    assert "[provider-error]" in _convo(run_dir)


def test_fallback_skips_routes_without_a_key(make_kcd, sim, tmp_path):
    sim.reset()
    daemon = make_kcd("--executor", "in-process",
                      env_extra={"OPENROUTER_BASE_URL": sim.api_base, "OPENAI_BASE_URL": sim.api_base,
                                 "OPENROUTER_API_KEY": ""})
    cfg = write_config(tmp_path / "cfg.yaml", OPENAI_MINI, [OR_MINI, "gpt-4o"])
    sim.fault(OPENAI_MINI, "unavailable_persistent")
    end, run_dir = run_json(daemon, cfg)
    assert end["data"]["completed"]
    convo = _convo(run_dir)
    assert f"Skipping route '{OR_MINI}': missing_api_key (OPENROUTER_API_KEY is not set)" in convo
    assert read_json(run_dir / "result.json")["served_route"] == "openai/gpt-4o"


def test_fallback_to_direct_openai_never_reselects_the_primary(fault_kcd, sim, tmp_path):
    # The runbook's fallback_to_openai: the OpenRouter gpt-4o-mini primary fails;
    # the chain lists the primary itself, which must be skipped.
    cfg = write_config(tmp_path / "cfg.yaml", OR_MINI, [OR_MINI, OPENAI_MINI], stream=True, use_native=True)
    sim.fault(OR_MINI, "unavailable_persistent")
    end, run_dir = run_json(fault_kcd, cfg)
    check_outcome("fallback", end, run_dir, OR_MINI, OPENAI_MINI)
    metrics = read_json(run_dir / "meta/provider_metrics.json")
    assert set(metrics["routes"]) == {OR_MINI, OPENAI_MINI}  # keyed by full route id
    assert all(f["to"] == OPENAI_MINI for f in metrics["fallbacks"])
