"""Per-run provider metrics: `meta/provider_metrics.json`.

The original's shape (`summary`, `routes`, `fallbacks`, `circuit_skips`,
`stream_overrides`, `tool_overrides`) with every attempt counted, retries
included, plus additive per-route fields: status codes, retries, latency
percentiles, time to first token and token usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


@dataclass
class RouteStats:
    calls: int = 0
    success: int = 0
    stream_calls: int = 0
    html_errors: int = 0
    retries: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    status_codes: dict[str, int] = field(default_factory=dict)
    errors_by_class: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_missing: int = 0
    stream_answered_as_json: int = 0  # asked to stream, got a plain JSON body (accepted)

    def snapshot(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 6)

        return {
            "calls": self.calls, "success": self.success, "errors": self.calls - self.success,
            "stream_calls": self.stream_calls, "html_errors": self.html_errors,
            "latency_sum": r(self.latency_sum), "latency_max": r(self.latency_max),
            "latency_avg": r(self.latency_sum / max(self.calls, 1)),
            "retries": self.retries, "status_codes": dict(self.status_codes),
            "errors_by_class": dict(self.errors_by_class),
            "stream_answered_as_json": self.stream_answered_as_json,
            "latency_p50": r(percentile(self.latencies, 50)), "latency_p95": r(percentile(self.latencies, 95)),
            "latency_p99": r(percentile(self.latencies, 99)),
            "first_token_latency_p50": r(percentile(self.ttfts, 50)),
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                      "responses_without_usage": self.usage_missing},
        }


class RunMetrics:
    """One run's provider metrics, in the original's `provider_metrics.json` shape plus kcd's fields."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteStats] = {}
        self.fallbacks: list[dict[str, str]] = []
        self.circuit_skips: list[str] = []
        self.stream_overrides: list[dict[str, str]] = []
        self.tool_overrides: list[dict[str, str]] = []
        self.invalid_tool_arguments = 0  # native tool calls whose arguments were not JSON

    def _route(self, route: str) -> RouteStats:
        stats = self.routes.get(route)
        if stats is None:
            stats = self.routes[route] = RouteStats()
        return stats

    def attempt(self, route: str, *, ok: bool, status: int | None, latency_s: float, streamed: bool,
                retry: bool, html: bool = False, error_class: str | None = None,
                ttft_s: float | None = None, prompt_tokens: int | None = None,
                completion_tokens: int | None = None, stream_as_json: bool = False) -> None:
        s = self._route(route)
        s.stream_answered_as_json += stream_as_json
        s.calls += 1
        s.success += ok
        s.stream_calls += streamed
        s.retries += retry
        s.html_errors += html
        s.latency_sum += latency_s
        s.latency_max = max(s.latency_max, latency_s)
        s.latencies.append(latency_s)
        if ttft_s is not None:
            s.ttfts.append(ttft_s)
        key = str(status) if status is not None else "none"
        s.status_codes[key] = s.status_codes.get(key, 0) + 1
        if error_class:
            s.errors_by_class[error_class] = s.errors_by_class.get(error_class, 0) + 1
        if ok:
            if prompt_tokens is None and completion_tokens is None:
                s.usage_missing += 1
            s.prompt_tokens += prompt_tokens or 0
            s.completion_tokens += completion_tokens or 0

    def fallback(self, from_route: str, to_route: str, reason: str) -> None:
        self.fallbacks.append({"from": from_route, "to": to_route, "reason": reason})

    def circuit_skip(self, route: str) -> None:
        self.circuit_skips.append(route)

    def stream_override(self, route: str, reason: str) -> None:
        self.stream_overrides.append({"route": route, "reason": reason})

    def tool_override(self, route: str, reason: str) -> None:
        self.tool_overrides.append({"route": route, "reason": reason})

    def snapshot(self) -> dict[str, Any]:
        routes = {route: stats.snapshot() for route, stats in self.routes.items()}
        calls = sum(r["calls"] for r in routes.values())
        success = sum(r["success"] for r in routes.values())
        return {
            "summary": {
                "calls": calls, "success": success, "errors": calls - success,
                "html_errors": sum(r["html_errors"] for r in routes.values()),
                "retries": sum(r["retries"] for r in routes.values()),
                "fallbacks": len(self.fallbacks),
                "circuit_skips": len(self.circuit_skips),
                "stream_overrides": len(self.stream_overrides),
                "tool_overrides": len(self.tool_overrides),
                "invalid_tool_arguments": self.invalid_tool_arguments,
            },
            "routes": routes,
            "fallbacks": list(self.fallbacks),
            "circuit_skips": list(self.circuit_skips),
            "stream_overrides": list(self.stream_overrides),
            "tool_overrides": list(self.tool_overrides),
        }
