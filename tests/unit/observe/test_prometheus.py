"""The metrics registry renders Prometheus text format 0.0.4 exactly."""

from __future__ import annotations

import math
import re

import pytest

from kcd.observe.prometheus import (
    CONTENT_TYPE,
    DURATION_BUCKETS,
    TOKEN_BUCKETS,
    DaemonMetrics,
    Registry,
    format_value,
)


def test_exact_text_of_a_small_registry() -> None:
    r = Registry()
    c = r.counter("demo_requests_total", "Requests\nserved, by \\path.", ("path", "code"))
    g = r.gauge("demo_up", "Whether it is up.")
    h = r.histogram("demo_latency_seconds", "Latency.", ("route",), buckets=(0.1, 1, 2.5))
    c.inc(('/a"b', "200"))
    c.inc(('/a"b', "200"), 2)
    c.inc(("C:\\dir\nnext", "500"))
    g.set((), 1)
    for value in (0.05, 0.1, 0.7, 3.0):
        h.observe(("x",), value)
    assert r.render().decode() == (
        "# HELP demo_requests_total Requests\\nserved, by \\\\path.\n"
        "# TYPE demo_requests_total counter\n"
        'demo_requests_total{path="/a\\"b",code="200"} 3\n'
        'demo_requests_total{path="C:\\\\dir\\nnext",code="500"} 1\n'
        "# HELP demo_up Whether it is up.\n"
        "# TYPE demo_up gauge\n"
        "demo_up 1\n"
        "# HELP demo_latency_seconds Latency.\n"
        "# TYPE demo_latency_seconds histogram\n"
        'demo_latency_seconds_bucket{route="x",le="0.1"} 2\n'
        'demo_latency_seconds_bucket{route="x",le="1"} 3\n'
        'demo_latency_seconds_bucket{route="x",le="2.5"} 3\n'
        'demo_latency_seconds_bucket{route="x",le="+Inf"} 4\n'
        'demo_latency_seconds_sum{route="x"} 3.85\n'
        'demo_latency_seconds_count{route="x"} 4\n'
    )


def test_unlabelled_series_start_at_zero_and_empty_labels_are_omitted() -> None:
    r = Registry()
    r.counter("a_total", "A.")
    h = r.histogram("b_seconds", "B.", buckets=(1,))
    c = r.counter("c_total", "C.", ("route", "error_type"))
    c.inc(("r1", ""))
    h.observe((), 5)
    text = r.render().decode()
    assert "a_total 0\n" in text
    assert ('b_seconds_bucket{le="1"} 0\nb_seconds_bucket{le="+Inf"} 1\n'
            "b_seconds_sum 5\nb_seconds_count 1\n") in text
    assert 'c_total{route="r1"} 1\n' in text


def test_value_formatting_and_validation() -> None:
    assert [format_value(v) for v in (3.0, 0.25, math.inf, -math.inf, math.nan, 1e20)] == \
        ["3", "0.25", "+Inf", "-Inf", "NaN", "1e+20"]
    r = Registry()
    with pytest.raises(ValueError):
        r.counter("bad-name", "x")
    with pytest.raises(ValueError):
        r.counter("x_total", "x", ("__reserved",))
    with pytest.raises(ValueError):
        r.histogram("h", "x", ("le",))
    c = r.counter("ok_total", "x", ("a",))
    with pytest.raises(ValueError):
        r.counter("ok_total", "again")
    with pytest.raises(ValueError):
        c.inc(("a", "b"))
    with pytest.raises(ValueError):
        c.inc(("a",), -1)


def test_genai_buckets() -> None:
    assert DURATION_BUCKETS[0] == 0.01 and DURATION_BUCKETS[-1] == 81.92 and len(DURATION_BUCKETS) == 14
    assert TOKEN_BUCKETS[0] == 1 and TOKEN_BUCKETS[-1] == 67108864 and len(TOKEN_BUCKETS) == 14


# ---- parse-back of the daemon's exposition ------------------------------------------

_SAMPLE = re.compile(
    r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*",?)*)\})?'
    r' (?P<value>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|Inf|NaN))$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"')


def parse_exposition(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """A tiny 0.0.4 parser: TYPE per family and every sample; fails on any other line."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples = []
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types
            types[name] = kind
            continue
        m = _SAMPLE.fullmatch(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(_LABEL.findall(m["labels"] or ""))
        samples.append((m["name"], labels, float(m["value"])))
    return types, samples


def test_daemon_metrics_render_parses_back() -> None:
    m = DaemonMetrics()
    m.run_started()
    m.attempt("openrouter/x-ai/grok-4-fast", "openrouter", "x-ai/grok-4-fast", True, None, 1.5, 0.3,
              1200, 80, retry=False, html=False, status_code=200)
    m.attempt("openrouter/x-ai/grok-4-fast", "openrouter", "x-ai/grok-4-fast", False, "upstream_html",
              0.2, None, None, None, retry=True, html=True, status_code=502)
    m.attempt("mock/dev", "mock", "dev", True, None, 0.01, None, None, None, retry=False, html=False,
              status_code=None)
    m.fallback("openrouter/x-ai/grok-4-fast", "openai/gpt-4o-mini", "upstream_html")
    m.breaker_transition("openai/gpt-4o-mini", "closed", "open")
    m.breaker_transition("openai/gpt-4o-mini", "open", "half_open")
    m.circuit_skip("openai/gpt-4o-mini")
    m.probe("mock/dev", "stream", True)
    m.probe("mock/dev", "tool_stream", False)
    m.probe("openai/gpt-4o-mini", "stream", None)
    m.tool_call("run_shell", True)
    m.tool_call('we"ird\ntool', False)
    m.turn()
    m.run_ended("completed", 42.0)
    m.telemetry_stats(written=10, dropped=2, write_errors=1)

    types, samples = parse_exposition(m.render().decode())
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"

    def value(name: str, **labels: str) -> float:
        found = [v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    assert types["gen_ai_client_operation_duration_seconds"] == "histogram"
    assert types["kylecode_route_state"] == "gauge"
    for name, kind in types.items():
        if kind == "counter":
            assert name.endswith("_total")
    for _, labels, _ in samples:
        assert "run_id" not in labels
    ok = dict(gen_ai_operation_name="chat", gen_ai_provider_name="openrouter",
              gen_ai_request_model="x-ai/grok-4-fast", kylecode_route="openrouter/x-ai/grok-4-fast")
    failed = [ls for n, ls, _ in samples if n == "gen_ai_client_operation_duration_seconds_count"
              and ls.get("error_type") == "upstream_html"]
    assert failed and failed[0]["kylecode_route"] == "openrouter/x-ai/grok-4-fast"
    ok_counts = [v for n, ls, v in samples if n == "gen_ai_client_operation_duration_seconds_count"
                 and ls == ok]
    assert ok_counts == [1]
    assert value("gen_ai_client_operation_duration_seconds_bucket", le="+Inf",
                 gen_ai_provider_name="kylecode.simulator") == 1
    assert value("gen_ai_client_operation_time_to_first_chunk_seconds_count", **ok) == 1
    assert value("gen_ai_client_token_usage_sum", gen_ai_token_type="input") == 1200
    assert value("gen_ai_client_token_usage_bucket", gen_ai_token_type="output", le="64") == 0
    assert value("gen_ai_client_token_usage_bucket", gen_ai_token_type="output", le="256") == 1
    assert value("kylecode_attempts_total", route="openrouter/x-ai/grok-4-fast", outcome="upstream_html") == 1
    assert value("kylecode_retries_total", route="openrouter/x-ai/grok-4-fast") == 1
    assert value("kylecode_html_errors_total", route="openrouter/x-ai/grok-4-fast") == 1
    assert value("kylecode_http_status_total", route="openrouter/x-ai/grok-4-fast", code="502") == 1
    assert value("kylecode_fallbacks_total", **{"from": "openrouter/x-ai/grok-4-fast"}) == 1
    assert value("kylecode_route_state", route="openai/gpt-4o-mini") == 1
    assert value("kylecode_route_transitions_total", route="openai/gpt-4o-mini", to="open") == 1
    assert value("kylecode_route_rejected_total", route="openai/gpt-4o-mini") == 1
    assert value("kylecode_probe_success", route="mock/dev", probe="tool_stream") == 0
    assert value("kylecode_probes_total", route="openai/gpt-4o-mini", outcome="skipped") == 1
    assert value("kylecode_tool_calls_total", tool='we\\"ird\\ntool', status="error") == 1
    assert value("kylecode_runs_total", exit_reason="completed") == 1
    assert value("kylecode_runs_active") == 0
    assert value("kylecode_run_duration_seconds_bucket", le="60") == 1
    assert value("kylecode_turns_total") == 1
    assert value("kylecode_telemetry_events_dropped_total") == 2
    assert value("kylecode_telemetry_write_errors_total") == 1

    # Histogram buckets are cumulative and end at +Inf == _count.
    buckets = [v for n, ls, v in samples if n == "gen_ai_client_operation_duration_seconds_bucket" and
               ls.get("gen_ai_provider_name") == "openrouter" and "error_type" not in ls]
    assert buckets == sorted(buckets) and buckets[-1] == 1
