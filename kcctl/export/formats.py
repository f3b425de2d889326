"""The exporter's documents: the summary JSON, OTLP/HTTP JSON metrics, Prometheus text."""

from __future__ import annotations

import json
import time
from typing import Any

from kcctl.export.aggregate import DURATION_BOUNDS, Aggregate
from kcctl.export.schema import unix_nano


def summary_json(agg: Aggregate) -> bytes:
    return json.dumps(agg.summary(), indent=2).encode() + b"\n"


def _attr(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


def otlp_json(agg: Aggregate, *, now_ns: int | None = None) -> dict[str, Any]:
    """An OTLP/HTTP JSON ExportMetricsServiceRequest of the per-route counters and latency.

    Cumulative sums (aggregationTemporality 2) over the file's time window (the export
    time when no event had a timestamp); 64-bit integers as decimal strings, as the OTLP
    JSON mapping requires. The latency histogram covers per-call events only.
    """
    now = now_ns if now_ns is not None else time.time_ns()
    start = str(unix_nano(agg.first)) if agg.first else str(now)
    end = str(unix_nano(agg.last)) if agg.last else str(now)
    routes = {name: agg.route(name) for name in agg.route_names()}

    def points(key: str, *extra: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"attributes": [_attr("kylecode.route", name), *extra], "startTimeUnixNano": start,
                 "timeUnixNano": end, "asInt": str(r[key])} for name, r in routes.items()]

    def counter(name: str, unit: str, desc: str, pts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"name": name, "unit": unit, "description": desc,
                "sum": {"aggregationTemporality": 2, "isMonotonic": True, "dataPoints": pts}}

    metrics = [
        counter("kylecode.export.calls", "{call}", "LLM call attempts, retries included", points("calls")),
        counter("kylecode.export.errors", "{call}", "failed LLM call attempts", points("errors")),
        counter("kylecode.export.html_errors", "{call}", "attempts answered with an HTML page",
                points("html_errors")),
        counter("kylecode.export.retries", "{call}", "retry attempts", points("retries")),
        counter("gen_ai.client.token.usage", "{token}", "token usage",
                points("input_tokens", _attr("gen_ai.token.type", "input"))
                + points("output_tokens", _attr("gen_ai.token.type", "output"))),
    ]
    hist = [{"attributes": [_attr("kylecode.route", name), _attr("gen_ai.operation.name", "chat")],
             "startTimeUnixNano": start, "timeUnixNano": end, "count": str(c.lat.n), "sum": c.lat_sum.value,
             "bucketCounts": [str(n) for n in c.buckets], "explicitBounds": list(DURATION_BOUNDS),
             "min": c.lat.lo, "max": c.lat.hi}
            for name, c in sorted(agg.per_call.items()) if c.lat.n]
    if hist:
        metrics.append({"name": "gen_ai.client.operation.duration", "unit": "s",
                        "description": "LLM call attempt duration",
                        "histogram": {"aggregationTemporality": 2, "dataPoints": hist}})
    return {"resourceMetrics": [{
        "resource": {"attributes": [_attr("service.name", "kylecode")]},
        "scopeMetrics": [{"scope": {"name": "kylecode.export"}, "metrics": metrics}],
    }]}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prom_text(agg: Aggregate) -> str:
    """Prometheus text exposition 0.0.4 of the summary's counters (no run ids in labels)."""
    out: list[str] = []
    routes = [(_label(name), agg.route(name)) for name in agg.route_names()]

    def family(name: str, kind: str, help_: str, rows: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {v!r}" for labels, v in rows)

    for key, help_ in (("calls", "LLM call attempts, retries included."), ("success", "Successful attempts."),
                       ("errors", "Failed attempts."), ("html_errors", "Attempts answered with an HTML page."),
                       ("retries", "Retry attempts.")):
        family(f"kylecode_export_{key}_total", "counter", help_, [(f'{{route="{n}"}}', r[key]) for n, r in routes])
    family("kylecode_export_status_codes_total", "counter", "Attempts by HTTP status (none: no response).",
           [(f'{{route="{n}",code="{_label(c)}"}}', k) for n, r in routes for c, k in r["status_codes"].items()])
    family("kylecode_export_tokens_total", "counter", "Token usage.",
           [(f'{{route="{n}",type="{t}"}}', r[f"{t}_tokens"]) for n, r in routes for t in ("input", "output")])
    for key, help_ in (("fallbacks", "Fallbacks to another route."), ("stream_overrides", "Streaming overrides."),
                       ("tool_overrides", "Native tool overrides."),
                       ("circuit_skips", "Routes skipped by an open circuit."), ("runs", "Runs in the export."),
                       ("skipped_lines", "Blank or invalid telemetry lines.")):
        family(f"kylecode_export_{key}_total", "counter", help_, [("", getattr(agg, key))])
    name = "kylecode_export_operation_duration_seconds"
    out.append(f"# HELP {name} LLM call attempt duration (per-call events only).")
    out.append(f"# TYPE {name} histogram")
    for route, c in sorted(agg.per_call.items()):
        if not c.lat.n:
            continue
        lbl = _label(route)
        cum = 0
        for bound, n in zip((*map(repr, DURATION_BOUNDS), "+Inf"), c.buckets):
            cum += n
            out.append(f'{name}_bucket{{route="{lbl}",le="{bound}"}} {cum}')
        out.append(f'{name}_sum{{route="{lbl}"}} {c.lat_sum.value!r}')
        out.append(f'{name}_count{{route="{lbl}"}} {c.lat.n}')
    return "\n".join(out) + "\n"


def document(agg: Aggregate, fmt: str) -> tuple[bytes, str]:
    if fmt == "otlp-json":
        return json.dumps(otlp_json(agg), separators=(",", ":")).encode() + b"\n", "application/json"
    if fmt == "prom":
        return prom_text(agg).encode(), "text/plain; version=0.0.4"
    return summary_json(agg), "application/json"
