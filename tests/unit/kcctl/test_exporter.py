"""The telemetry exporter (`kcctl metrics export`, `scripts/export_provider_metrics.py`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from kcctl import export
from kcctl.cli import main
from kcctl.export import formats as export_formats
from kcctl.export import read as export_read

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2025, 10, 15, 2, 0, 0, tzinfo=timezone.utc)
MINI, GROK, CLAUDE = "openai/gpt-4o-mini", "openrouter/x-ai/grok", "anthropic/claude"
LATS = [round(0.05 * k, 2) for k in range(1, 21)]  # r-a's 20 calls on MINI


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


class Telemetry:
    """Builds a file: our events get consecutive timestamps, one second apart."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.n = 0

    def raw(self, text: str) -> None:
        self.lines.append(text)

    def orig(self, **ev) -> None:
        self.lines.append(json.dumps({"event": "provider_metrics", **ev}))

    def ours(self, event: str, run: str, **fields) -> datetime:
        self.n += 1
        ts = T0 + timedelta(seconds=self.n)
        self.lines.append(json.dumps({"schema_version": 1, "ts": iso(ts), "seq": self.n, "event": event,
                                      "run_id": run, **fields}))
        return ts

    def write(self, path: Path) -> Path:
        path.write_text("\n".join(self.lines) + "\n")
        return path


def pm_route(calls: int, success: int, html: int = 0, stream: int = 0, lsum: float = 0.0, lmax: float = 0.0,
             **extra) -> dict:
    return {"calls": calls, "success": success, "errors": calls - success, "stream_calls": stream,
            "html_errors": html, "latency_sum": lsum, "latency_max": lmax,
            "latency_avg": lsum / max(calls, 1), **extra}


def build() -> tuple[Telemetry, dict[str, datetime]]:
    """Two original lines, four kcd runs and a future event type, plus junk lines."""
    t = Telemetry()
    marks: dict[str, datetime] = {}
    t.orig(summary={"calls": 4, "success": 3, "errors": 1, "html_errors": 1, "circuit_skips": 1,
                    "stream_overrides": 1, "tool_overrides": 0},
           routes={GROK: pm_route(3, 2, html=1, stream=3, lsum=3.0, lmax=1.8),
                   MINI: pm_route(1, 1, lsum=0.5, lmax=0.5)},
           fallbacks=[{"from": GROK, "to": MINI, "reason": "http_error"}],
           stream_overrides=[{"route": GROK, "reason": "openrouter_tool_turn_policy"}], tool_overrides=[])
    t.raw("")
    t.orig(summary={"calls": 2, "success": 2, "errors": 0, "html_errors": 0, "circuit_skips": 0,
                    "stream_overrides": 0, "tool_overrides": 1},
           routes={GROK: pm_route(2, 2, stream=2, lsum=2.0, lmax=1.2)}, fallbacks=[], stream_overrides=[],
           tool_overrides=[{"route": GROK, "reason": "capability_probe_tool_failure"}])
    t.raw("   ")
    t.raw("not json at all {")
    # r-a: per-call events; its provider_metrics call figures are bogus and must be ignored.
    t.ours("run.start", "r-a", route=MINI)
    for k, lat in enumerate(LATS, 1):
        outcome = "ok" if k <= 17 else {18: "upstream_html", 19: "timeout.ttft", 20: "http_error"}[k]
        status = 200 if k <= 17 else {18: 502, 19: None, 20: 503}[k]
        ts = t.ours("llm.attempt", "r-a", route=MINI, status_code=status, latency_s=lat,
                    ttft_s=round(0.01 * k, 2) if k <= 17 else None, outcome=outcome,
                    kind="retry" if k in (18, 19) else "primary", stream=k % 2 == 0,
                    attrs={"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
                           **({"gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10}
                              if k <= 17 else {})})
        marks[f"a{k}"] = ts
    t.raw("[1, 2]")
    t.ours("fallback", "r-a", route=MINI, **{"from": MINI, "to": GROK, "reason": "http_error"})
    for lat in (2.0, 3.0):
        t.ours("llm.attempt", "r-a", route=GROK, status_code=200, latency_s=lat, outcome="ok")
    t.ours("circuit.open", "r-a", route=MINI, reason="3 transient failures")
    t.ours("run.end", "r-a", status="ok")
    t.ours("provider_metrics", "r-a", route_id=MINI, circuit_skips=[],
           summary={"calls": 99, "success": 1, "errors": 98, "html_errors": 50, "circuit_skips": 0,
                    "stream_overrides": 2, "tool_overrides": 0},
           routes={MINI: pm_route(99, 1)}, fallbacks=[{"from": MINI, "to": GROK, "reason": "x"}],
           stream_overrides=[{"route": MINI, "reason": "a"}, {"route": MINI, "reason": "b"}], tool_overrides=[])
    t.raw('{"no_event": 1}')
    # r-b: only a provider_metrics event (no per-call events), so it counts.
    t.ours("provider_metrics", "r-b", route_id=CLAUDE, circuit_skips=[CLAUDE],
           summary={"calls": 5, "success": 4, "errors": 1, "html_errors": 0, "stream_overrides": 0,
                    "tool_overrides": 0},
           routes={CLAUDE: pm_route(5, 4, lsum=5.0, lmax=2.5, status_codes={"200": 4, "529": 1})},
           fallbacks=[{"from": CLAUDE, "to": MINI, "reason": "a"}, {"from": CLAUDE, "to": GROK, "reason": "b"}],
           stream_overrides=[], tool_overrides=[])
    # r-c: its provider_metrics (and a fallback) come *before* its llm.attempt.
    t.ours("provider_metrics", "r-c", route_id="bogus/route", circuit_skips=[],
           summary={"calls": 50, "success": 50, "errors": 0, "html_errors": 0, "circuit_skips": 0,
                    "stream_overrides": 0, "tool_overrides": 1},
           routes={"bogus/route": pm_route(50, 50)}, fallbacks=[{"from": "x", "to": "y", "reason": "z"}],
           stream_overrides=[], tool_overrides=[{"route": "bogus/route", "reason": "t"}])
    t.ours("fallback", "r-c", route=CLAUDE, **{"from": GROK, "to": CLAUDE, "reason": "http_error"})
    t.ours("llm.attempt", "r-c", route=CLAUDE, status_code=200, latency_s=1.0, outcome="ok",
           attrs={"gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 3})
    # r-d: a lone fallback event; r-e: an event type the exporter does not know.
    t.ours("fallback", "r-d", route=GROK, **{"from": GROK, "to": MINI, "reason": "http_error"})
    t.ours("llm.attempt", "r-x", route=MINI, latency_s="slow", outcome="ok")  # wrong type: skipped
    marks["last"] = t.ours("kc.future_event", "r-e", detail={"anything": [1, 2]})
    return t, marks


@pytest.fixture
def telemetry(tmp_path: Path) -> Path:
    return build()[0].write(tmp_path / "telemetry.jsonl")


def summarise(path: Path, **kw) -> dict:
    return export.scan(path, **kw).summary()


def test_summary_matches_hand_computed_figures(telemetry: Path) -> None:
    s = summarise(telemetry)
    # Original lines (4 + 2), r-a's 22 attempts, r-b's provider_metrics (5), r-c's attempt (1).
    assert (s["calls"], s["success"], s["errors"], s["html_errors"]) == (34, 29, 5, 2)
    assert s["retries"] == 2
    # O1 1, r-a's event 1, r-b's list 2, r-c's early event 1, r-d's lone event 1 (r-a and r-c lists ignored).
    assert s["fallbacks"] == 6
    assert (s["stream_overrides"], s["tool_overrides"], s["circuit_skips"]) == (3, 2, 2)
    assert s["runs"] == 7  # r-a..r-e plus the two original lines
    assert s["events"] == 35  # 2 original + 27 of r-a + 1 + 3 + 1 + 1
    assert s["skipped_lines"] == 6 and s["schema_mismatches"] == 1
    assert s["time_window"] == {"first_ts": "2025-10-15T02:00:01Z", "last_ts": iso(build()[1]["last"])}
    assert list(s["routes"]) == [CLAUDE, MINI, GROK]  # sorted; no "bogus/route"

    mini = s["routes"][MINI]
    assert {k: mini[k] for k in ("calls", "success", "errors", "html_errors", "stream_calls", "retries")} == \
        {"calls": 21, "success": 18, "errors": 3, "html_errors": 1, "stream_calls": 10, "retries": 2}
    assert mini["latency_avg"] == round((sum(LATS) + 0.5) / 21, 6)
    assert mini["latency_max"] == 1.0
    # Nearest rank over 0.05 … 1.00: p50 is the 10th value, p95 the 19th, p99 the 20th.
    assert (mini["latency_p50"], mini["latency_p95"], mini["latency_p99"]) == (0.5, 0.95, 1.0)
    assert mini["ttft_p50"] == 0.09  # 9th of 0.01 … 0.17
    assert mini["latency_samples"] == 20
    assert mini["status_codes"] == {"200": 17, "502": 1, "503": 1, "none": 1}
    assert (mini["input_tokens"], mini["output_tokens"]) == (1700, 170)

    grok = s["routes"][GROK]
    assert (grok["calls"], grok["success"], grok["errors"], grok["html_errors"], grok["stream_calls"]) == \
        (7, 6, 1, 1, 5)
    assert grok["latency_avg"] == round(10.0 / 7, 6) and grok["latency_max"] == 3.0
    assert (grok["latency_p50"], grok["latency_p95"], grok["latency_p99"], grok["ttft_p50"]) == (2.0, 3.0, 3.0, None)

    claude = s["routes"][CLAUDE]
    assert (claude["calls"], claude["success"], claude["errors"], claude["latency_avg"], claude["latency_max"]) == \
        (6, 5, 1, 1.0, 2.5)
    assert claude["latency_p50"] == 1.0 and claude["latency_samples"] == 1
    assert claude["status_codes"] == {"200": 5, "529": 1}
    assert (claude["input_tokens"], claude["output_tokens"]) == (7, 3)


def test_original_only_file_gives_the_original_summary(tmp_path: Path) -> None:
    t = Telemetry()
    t.orig(summary={"calls": 3, "success": 2, "errors": 1, "html_errors": 1},
           routes={GROK: pm_route(3, 2, html=1)}, fallbacks=[], stream_overrides=[], tool_overrides=[])
    t.orig(summary={"calls": 1, "success": 1, "errors": 0, "html_errors": 0},
           routes={GROK: pm_route(1, 1)}, fallbacks=[], stream_overrides=[], tool_overrides=[])
    s = summarise(t.write(tmp_path / "t.jsonl"))
    assert (s["calls"], s["errors"], s["html_errors"], s["runs"]) == (4, 1, 1, 2)
    assert {k: s["routes"][GROK][k] for k in ("calls", "errors", "html_errors")} == \
        {"calls": 4, "errors": 1, "html_errors": 1}
    assert s["routes"][GROK]["latency_p50"] is None and s["time_window"]["first_ts"] is None


def test_chunk_boundaries_do_not_change_the_result(telemetry: Path) -> None:
    whole = summarise(telemetry)
    for size in (1, 7, 64, 4096):
        assert summarise(telemetry, chunk_size=size) == whole


def test_overlong_line_is_dropped_without_buffering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_read, "MAX_LINE", 100)
    good = json.dumps({"event": "llm.attempt", "run_id": "r", "route": MINI, "latency_s": 1.0, "outcome": "ok"})
    path = tmp_path / "t.jsonl"
    path.write_text(good + "\n" + "x" * 1000 + "\n" + good + "\n" + "y" * 500)
    s = summarise(path, chunk_size=16)
    assert s["calls"] == 2 and s["skipped_lines"] == 2


def test_timestamps_naive_numeric_and_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [{"event": "run.start", "run_id": "r", "ts": "2025-10-15T02:00:05"},  # naive: UTC
             {"event": "run.end", "run_id": "r", "ts": T0.timestamp() + 9.5},  # Unix seconds
             {"event": "run.end", "run_id": "r", "ts": 1e30}]  # out of range: skipped
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = summarise(path)
    assert s["events"] == 2 and s["skipped_lines"] == 1
    assert s["time_window"] == {"first_ts": "2025-10-15T02:00:05Z", "last_ts": "2025-10-15T02:00:09.500000Z"}


def test_filters(tmp_path: Path) -> None:
    t, marks = build()
    path = t.write(tmp_path / "t.jsonl")
    by_run = summarise(path, filters=export.Filters(run_id="r-a"))
    assert (by_run["calls"], by_run["errors"], by_run["runs"], by_run["fallbacks"]) == (22, 3, 1, 1)
    assert by_run["stream_overrides"] == 2  # from r-a's provider_metrics
    assert list(by_run["routes"]) == [MINI, GROK]

    window = export.Filters(since=marks["a1"], until=marks["a11"])  # half-open: a1 … a10
    s = summarise(path, filters=window)
    assert (s["calls"], s["errors"], s["runs"]) == (10, 0, 1)  # the original's untimed lines are out
    assert s["time_window"] == {"first_ts": iso(marks["a1"]), "last_ts": iso(marks["a10"])}
    assert s["routes"][MINI]["latency_p50"] == 0.25

    only_since = summarise(path, filters=export.Filters(since=marks["last"]))
    assert (only_since["events"], only_since["calls"], only_since["runs"]) == (1, 0, 1)


def test_parse_ts() -> None:
    assert export.parse_ts("2025-10-15T02:00:01Z") == T0 + timedelta(seconds=1)
    assert export.parse_ts("2025-10-15T04:00:01+02:00") == T0 + timedelta(seconds=1)
    assert export.parse_ts("2025-10-15T02:00:01") == T0 + timedelta(seconds=1)  # naive means UTC
    assert export.parse_ts(str(T0.timestamp())) == T0
    with pytest.raises(ValueError):
        export.parse_ts("yesterday")


def test_percentiles_past_the_cap_are_within_the_histograms_bound(tmp_path: Path) -> None:
    import random

    rng = random.Random(7)
    values = [round(rng.lognormvariate(0.0, 1.0), 6) for _ in range(50_000)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"event": "llm.attempt", "run_id": "r", "route": MINI, "latency_s": v,
                                        "outcome": "ok"}) + "\n" for v in values))
    agg = export.scan(path, sample_cap=2_000)
    r = agg.summary()["routes"][MINI]
    series = agg.per_call[MINI].lat
    assert r["latency_samples"] == 50_000 and series.exact is None  # a histogram now
    ordered = sorted(values)
    for q in (50, 95, 99):
        true = export.nearest_rank(ordered, q)
        assert abs(r[f"latency_p{q}"] - true) <= export.REL_ERROR * true + 1e-6, (q, r[f"latency_p{q}"], true)
    assert r["latency_max"] == max(values)  # min and max stay exact
    assert sum(agg.per_call[MINI].buckets) == 50_000  # the OTLP/Prometheus histogram stays exact
    exact = export.scan(path).summary()["routes"][MINI]  # under the default cap: exact
    assert [exact[f"latency_p{q}"] for q in (50, 95, 99)] == [export.nearest_rank(ordered, q) for q in (50, 95, 99)]


# ---- formats --------------------------------------------------------------------------------

def _keys(obj: object) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


def test_otlp_json_structure(telemetry: Path) -> None:
    agg = export.scan(telemetry)
    body = json.loads(export.document(agg, "otlp-json")[0])
    assert all(re.fullmatch(r"[a-z][a-zA-Z]*", k) for k in _keys(body))  # lowerCamelCase
    (rm,) = body["resourceMetrics"]
    assert rm["resource"]["attributes"] == [{"key": "service.name", "value": {"stringValue": "kylecode"}}]
    (sm,) = rm["scopeMetrics"]
    metrics = {m["name"]: m for m in sm["metrics"]}
    calls = metrics["kylecode.export.calls"]["sum"]
    assert calls["aggregationTemporality"] == 2 and calls["isMonotonic"] is True
    by_route = {p["attributes"][0]["value"]["stringValue"]: p for p in calls["dataPoints"]}
    assert {r: p["asInt"] for r, p in by_route.items()} == {CLAUDE: "6", MINI: "21", GROK: "7"}
    point = by_route[MINI]
    assert point["startTimeUnixNano"] == str(int((T0 + timedelta(seconds=1)).timestamp()) * 10**9)
    assert point["timeUnixNano"].isdigit() and int(point["timeUnixNano"]) > int(point["startTimeUnixNano"])
    errors = {p["attributes"][0]["value"]["stringValue"]: p["asInt"]
              for p in metrics["kylecode.export.errors"]["sum"]["dataPoints"]}
    assert errors == {CLAUDE: "1", MINI: "3", GROK: "1"}
    hist = metrics["gen_ai.client.operation.duration"]["histogram"]
    assert hist["aggregationTemporality"] == 2
    points = {p["attributes"][0]["value"]["stringValue"]: p for p in hist["dataPoints"]}
    assert set(points) == {CLAUDE, MINI, GROK}  # routes with per-call latencies
    mini = points[MINI]
    assert mini["count"] == "20" and sum(int(c) for c in mini["bucketCounts"]) == 20
    assert len(mini["bucketCounts"]) == len(mini["explicitBounds"]) + 1
    assert (mini["min"], mini["max"]) == (0.05, 1.0) and mini["sum"] == pytest.approx(sum(LATS))
    # ≤0.01, ≤0.02, ≤0.04: none; ≤0.08: 0.05; ≤0.16: 0.10, 0.15; ≤0.32: 0.20 … 0.30;
    # ≤0.64: 0.35 … 0.60; ≤1.28: the rest
    assert [int(c) for c in mini["bucketCounts"]][:8] == [0, 0, 0, 1, 2, 3, 6, 8]


_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse_prom(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """A strict-enough parser of text format 0.0.4: returns (types, samples)."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped") and name not in types
            types[name] = kind
            continue
        m = _SAMPLE.fullmatch(line)
        assert m, line
        name, labels, value = m.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no TYPE line before it"
        pairs = []
        rest = labels or ""
        while rest:
            lm = _LABEL.match(rest)
            assert lm, rest
            pairs.append((lm.group(1), lm.group(2)))
            rest = rest[lm.end():]
        samples[(name, frozenset(pairs))] = float(value)
    return types, samples


def test_prom_text_parses_and_matches_the_summary(telemetry: Path) -> None:
    agg = export.scan(telemetry)
    types, samples = parse_prom(export.prom_text(agg))
    assert types["kylecode_export_calls_total"] == "counter"
    assert all(name.startswith("kylecode_export_") for name in types)
    assert samples[("kylecode_export_calls_total", frozenset({("route", MINI)}))] == 21
    assert samples[("kylecode_export_errors_total", frozenset({("route", GROK)}))] == 1
    assert samples[("kylecode_export_status_codes_total", frozenset({("route", MINI), ("code", "none")}))] == 1
    assert samples[("kylecode_export_fallbacks_total", frozenset())] == 6
    assert not any(v == "r-a" for _, labels in samples for _, v in labels)  # no run ids in labels
    h = "kylecode_export_operation_duration_seconds"
    assert types[h] == "histogram"
    assert samples[(f"{h}_bucket", frozenset({("route", MINI), ("le", "+Inf")}))] == 20
    assert samples[(f"{h}_count", frozenset({("route", MINI)}))] == 20
    assert export_formats._label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_jsonl_passes_filtered_events_through_byte_for_byte(telemetry: Path) -> None:
    res = CliRunner().invoke(main, ["metrics", "export", str(telemetry), "--format", "jsonl", "--run-id", "r-c"])
    assert res.exit_code == 0, res.output
    out = res.stdout.splitlines()
    originals = [line for line in telemetry.read_text().splitlines() if '"run_id": "r-c"' in line]
    assert out == originals and len(out) == 3


# ---- the CLI and the script ---------------------------------------------------------------------

def test_cli_summary_from_a_file_needs_no_daemon(telemetry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KYLECODE_HOST", "unix:///nonexistent/kcd.sock")
    res = CliRunner().invoke(main, ["--no-autostart", "metrics", "export", str(telemetry), "--print-summary"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == summarise(telemetry)


def test_cli_accepts_a_run_directory(tmp_path: Path) -> None:
    (tmp_path / "run" / "meta").mkdir(parents=True)
    build()[0].write(tmp_path / "run" / "meta" / "telemetry.jsonl")
    res = CliRunner().invoke(main, ["metrics", "export", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["calls"] == 34


def test_cli_resolves_a_run_id_through_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kcctl import cli

    (tmp_path / "meta").mkdir()
    build()[0].write(tmp_path / "meta" / "telemetry.jsonl")
    asked = []

    class FakeClient:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def call(self, method, path):
            asked.append((method, path))
            return {"id": "a1b2c3d4e5f6", "run_dir": str(tmp_path)}

    monkeypatch.setattr(cli.Ctx, "client", lambda self: FakeClient())
    res = CliRunner().invoke(main, ["metrics", "export", "a1b2c3d4e5f6", "--format", "prom"])
    assert res.exit_code == 0, res.output
    assert asked == [("GET", "/v1/runs/a1b2c3d4e5f6")]
    assert "kylecode_export_calls_total" in res.stdout


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "telemetry.jsonl"
    res = CliRunner().invoke(main, ["metrics", "export", str(missing)])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"[export-provider-metrics] telemetry file not found: {missing}"
    assert res.stdout == ""


def test_two_documents_on_stdout_is_a_usage_error(telemetry: Path) -> None:
    res = CliRunner().invoke(main, ["metrics", "export", str(telemetry), "--format", "prom", "--print-summary"])
    assert res.exit_code == 2 and res.stdout == ""


def test_read_failure_prints_no_summary(telemetry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing:  # the first chunk reads, the next fails as a bad disk would
        name = str(telemetry)

        def __init__(self) -> None:
            self.reads = 0

        def read(self, size: int) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise OSError(5, "Input/output error")
            return telemetry.read_bytes()[:300]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(export_read, "open", lambda path, mode: Failing(), raising=False)
    res = CliRunner().invoke(main, ["metrics", "export", str(telemetry), "--print-summary"])
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.strip() == f"[export-provider-metrics] cannot read {telemetry}: Input/output error"


def test_metrics_group_lists_export_and_needs_a_daemon_for_live_metrics(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["metrics", "--help"])
    assert res.exit_code == 0 and "export" in res.stdout
    live = CliRunner().invoke(main, ["--socket", str(tmp_path / "none.sock"), "--no-autostart", "metrics"])
    assert live.exit_code == 3


def test_script_runs_from_a_checkout(telemetry: Path, tmp_path: Path) -> None:
    script = REPO / "scripts" / "export_provider_metrics.py"
    ok = subprocess.run([sys.executable, str(script), str(telemetry), "--print-summary"], cwd=tmp_path,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == summarise(telemetry)
    missing = subprocess.run([sys.executable, str(script), str(tmp_path / "nope.jsonl")], cwd=tmp_path,
                             capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"[export-provider-metrics] telemetry file not found: {tmp_path / 'nope.jsonl'}"


def test_exporter_imports_stay_light() -> None:
    # kcd.api.backoff: the retry rules shared with the daemon (pure, stdlib only)
    code = ("import sys, kcctl.export; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('ray', 'kcd', 'httpx', 'click') and m not in ('kcd', 'kcd.api', 'kcd.api.backoff')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# ---- delivery ----------------------------------------------------------------------------------

class Receiver:
    """A local HTTP endpoint: answers the scripted statuses first, then 200."""

    def __init__(self, script: list[int] | None = None, retry_after: str | None = None):
        self.script = list(script or [])
        self.retry_after = retry_after
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.accepted: list[bytes] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                with lock:
                    outer.requests.append((dict(self.headers.items()), body))
                    status = outer.script.pop(0) if outer.script else 200
                    if status == 200:
                        outer.accepted.append(body)
                self.send_response(status)
                if status != 200 and outer.retry_after is not None:
                    self.send_header("Retry-After", outer.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


FAST = ["--backoff", "0.01", "--backoff-max", "0.05", "--timeout", "2"]


def kept_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and isinstance(ev.get("event"), str) and ev.get("latency_s") != "slow":
            out.append(ev)
    return out


def test_delivery_retries_503_then_every_event_arrives_once(telemetry: Path) -> None:
    with Receiver(script=[503, 503]) as rx:
        res = CliRunner().invoke(main, ["metrics", "export", str(telemetry), "--http-endpoint", rx.url,
                                        "--batch-size", "7", *FAST])
    assert res.exit_code == 0, res.output
    assert res.stdout == ""  # no --print-summary: nothing on stdout
    delivered = [ev for body in rx.accepted for ev in json.loads(body)]
    assert delivered == kept_lines(telemetry)  # each exactly once, in file order
    assert len(rx.accepted) == 5 and all(len(json.loads(b)) <= 7 for b in rx.accepted)
    assert len(rx.requests) == 7  # the first batch was sent three times, the others once
    keys = [h["idempotency-key"] for h, _ in rx.requests]
    assert keys[0] == keys[1] == keys[2] and len(set(keys)) == 5
    assert all(h["content-type"] == "application/json" for h, _ in rx.requests)
    assert "delivered 35 events in 5 batches" in res.stderr


def test_delivery_honours_retry_after(telemetry: Path) -> None:
    with Receiver(script=[429], retry_after="0") as rx:
        res = CliRunner().invoke(main, ["metrics", "export", str(telemetry), "--http-endpoint", rx.url,
                                        "--backoff", "30", "--backoff-max", "30"])
    assert res.exit_code == 0, res.output  # Retry-After: 0 replaced the (up to 30 s) backoff
    assert len(rx.requests) == 2


def test_print_summary_and_endpoint_both_honoured(telemetry: Path) -> None:
    with Receiver() as rx:
        res = CliRunner().invoke(main, ["metrics", "export", str(telemetry), "--http-endpoint", rx.url,
                                        "--print-summary"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == summarise(telemetry)
    assert sum(len(json.loads(b)) for b in rx.accepted) == 35


def test_otlp_json_is_posted_as_one_document(telemetry: Path) -> None:
    with Receiver() as rx:
        res = CliRunner().invoke(main, ["metrics", "export", str(telemetry), "--format", "otlp-json",
                                        "--http-endpoint", rx.url])
    assert res.exit_code == 0, res.output
    (body,) = rx.accepted
    assert "resourceMetrics" in json.loads(body)


def test_dead_endpoint_fails_fast_with_nonzero_exit(telemetry: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    res = CliRunner().invoke(main, ["metrics", "export", str(telemetry), "--http-endpoint",
                                    f"http://127.0.0.1:{port}/ingest", "--print-summary", "--retries", "2", *FAST])
    assert res.exit_code == 1
    assert res.stdout == ""  # no summary: the delivery did not happen
    assert "[export-provider-metrics] delivery failed after 3 attempts: ConnectError" in res.stderr
    assert time.monotonic() - started < 10  # generous: three refused connects and ~0.1 s of backoff


def test_permanent_4xx_is_not_retried(telemetry: Path) -> None:
    with Receiver(script=[200, 400]) as rx:
        res = CliRunner().invoke(main, ["metrics", "export", str(telemetry), "--http-endpoint", rx.url,
                                        "--batch-size", "10", *FAST])
    assert res.exit_code == 1
    assert len(rx.requests) == 2
    assert "delivery failed after 1 attempt: HTTP 400 Bad Request" in res.stderr
    assert "permanent" in res.stderr
    assert "10 events in 1 batches were delivered before the failure" in res.stderr


def test_endpoint_must_be_http(telemetry: Path) -> None:
    res = CliRunner().invoke(main, ["metrics", "export", str(telemetry), "--http-endpoint", "ftp://x"])
    assert res.exit_code == 2


# ---- memory ---------------------------------------------------------------------------------------

def test_memory_stays_flat_on_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    attempt = ('{"schema_version":1,"ts":"2025-10-15T02:%02d:%02d.%06dZ","seq":%d,"event":"llm.attempt",'
               '"run_id":"run%05d","route":"%s","status_code":200,"latency_s":%.4f,"ttft_s":0.1,"outcome":"ok",'
               '"attrs":{"gen_ai.provider.name":"openai","gen_ai.usage.input_tokens":1200,'
               '"gen_ai.usage.output_tokens":80},"padding":"' + "p" * 120 + '"}\n')
    routes = (MINI, GROK, CLAUDE)
    with open(path, "w") as f:
        for block in range(200):
            f.write("".join(attempt % (i // 60 % 60, i % 60, i, i, i // 20, routes[i % 3], (i % 997) / 100)
                            for i in range(block * 1000, block * 1000 + 1000)))
    size = path.stat().st_size
    assert size > 50e6
    code = f"""
import json, resource
from kcctl.export import scan
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = scan({str(path)!r}).summary()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"growth_kb": after - before, "calls": s["calls"]}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    cwd=REPO).stdout)
    assert out["calls"] == 200_000
    # Two 8 MiB chunks at the peak plus three routes' samples; never the file.
    assert out["growth_kb"] * 1024 < size * 0.5, out
