"""The daemon-wide live metrics, rendered as Prometheus text format 0.0.4.

A deliberately small registry instead of prometheus_client: three metric
kinds, label sets as plain tuples (an update is one dict lookup), and a
renderer that follows the exposition rules (`# HELP`/`# TYPE`, escaped label
values, cumulative `_bucket{le=...}` up to `+Inf`, `_sum`/`_count`, trailing
newline). All updates and `render()` happen on the event loop: no locks.

Labels never carry run ids (unbounded cardinality); a label whose value is
empty is left out of the sample, which Prometheus treats as the same series.
OTel GenAI metric names are converted the Prometheus way: dots become
underscores and the unit is appended (`gen_ai.client.operation.duration` ->
`gen_ai_client_operation_duration_seconds`).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from kcd.observe.telemetry_events import genai_provider_name

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# OpenTelemetry GenAI semantic-convention buckets: 0.01 s doubling to 81.92 s; 1 token ×4 to 2^26.
DURATION_BUCKETS: tuple[float, ...] = tuple(0.01 * 2 ** i for i in range(14))
TOKEN_BUCKETS: tuple[float, ...] = tuple(float(4 ** i) for i in range(14))
RUN_DURATION_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200,
                                           14400)

# kylecode_route_state gauge values; disabled (4) means the breaker is off, not the route.
ROUTE_STATE_VALUES: Mapping[str, int] = MappingProxyType(
    {"closed": 0, "half_open": 1, "open": 2, "forced_open": 3, "disabled": 4})

Labels = tuple[str, ...]


def format_value(value: float) -> str:
    """A sample value as Go's ParseFloat reads it; integral values without `.0`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()):
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names for {name}")
        self.name = name
        self.help = help
        self.labelnames: Labels = tuple(labelnames)

    def _check(self, labels: Labels) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels!r}")

    def _pairs(self, labels: Labels) -> str:
        return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(self.labelnames, labels) if v != "")

    def _label_text(self, labels: Labels) -> str:
        pairs = self._pairs(labels)
        return "{" + pairs + "}" if pairs else ""

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class _Scalar(_Metric):
    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()):
        super().__init__(name, help, labelnames)
        # Unlabelled series exist from the start: a scrape shows 0, not nothing.
        self._values: dict[Labels, float] = {} if self.labelnames else {(): 0.0}

    def get(self, labels: Labels = ()) -> float:
        return self._values.get(labels, 0.0)

    def total(self) -> float:
        """The sum over every label set (the viewer's metric charts)."""
        return sum(self._values.values())

    def render(self) -> list[str]:
        lines = self.header()
        for labels, value in self._values.items():
            lines.append(f"{self.name}{self._label_text(labels)} {format_value(value)}")
        return lines


class Counter(_Scalar):
    kind = "counter"

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        values = self._values
        if labels not in values:
            self._check(labels)
            values[labels] = 0.0
        values[labels] += amount

    def set_total(self, labels: Labels, value: float) -> None:
        """Mirror a monotonic count kept elsewhere (e.g. the telemetry sink's)."""
        self._check(labels)
        self._values[labels] = float(value)


class Gauge(_Scalar):
    kind = "gauge"

    def set(self, labels: Labels, value: float) -> None:
        if labels not in self._values:
            self._check(labels)
        self._values[labels] = float(value)

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        values = self._values
        if labels not in values:
            self._check(labels)
            values[labels] = 0.0
        values[labels] += amount


class _Series:
    __slots__ = ("counts", "sum", "count")

    def __init__(self, buckets: int):
        self.counts = [0] * (buckets + 1)  # per bucket, not cumulative; last is (top, +Inf)
        self.sum = 0.0
        self.count = 0


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (),
                 buckets: Iterable[float] = DURATION_BUCKETS):
        super().__init__(name, help, labelnames)
        if "le" in self.labelnames:
            raise ValueError("`le` is reserved for histogram buckets")
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct and non-empty")
        self.buckets: tuple[float, ...] = tuple(bounds)
        self._le = [f'le="{format_value(b)}"' for b in self.buckets] + ['le="+Inf"']
        self._series: dict[Labels, _Series] = {} if self.labelnames else {(): _Series(len(bounds))}

    def observe(self, labels: Labels, value: float) -> None:
        if math.isnan(value):
            return
        series = self._series.get(labels)
        if series is None:
            self._check(labels)
            series = self._series[labels] = _Series(len(self.buckets))
        # bisect_left: the first bound >= value, as `le` is inclusive.
        series.counts[bisect.bisect_left(self.buckets, value)] += 1
        series.sum += value
        series.count += 1

    def get(self, labels: Labels = ()) -> tuple[int, float]:
        """(count, sum) of one series."""
        series = self._series.get(labels)
        return (0, 0.0) if series is None else (series.count, series.sum)

    def render(self) -> list[str]:
        lines = self.header()
        for labels, series in self._series.items():
            pairs = self._pairs(labels)
            prefix = f"{self.name}_bucket{{{pairs}," if pairs else f"{self.name}_bucket{{"
            running = 0
            for le, n in zip(self._le, series.counts):
                running += n
                lines.append(f"{prefix}{le}}} {running}")
            text = "{" + pairs + "}" if pairs else ""
            lines.append(f"{self.name}_sum{text} {format_value(series.sum)}")
            lines.append(f"{self.name}_count{text} {series.count}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self.register(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self.register(metric)
        return metric

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (),
                  buckets: Iterable[float] = DURATION_BUCKETS) -> Histogram:
        metric = Histogram(name, help, labelnames, buckets)
        self.register(metric)
        return metric

    def scalar(self, name: str) -> Counter | Gauge | None:
        """A registered counter or gauge by name (None for an unknown name or a histogram)."""
        metric = self._metrics.get(name)
        return metric if isinstance(metric, (Counter, Gauge)) else None

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return ("\n".join(lines) + "\n").encode()


_GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                 "kylecode_route", "error_type")


class DaemonMetrics:
    """Every series `kcd` exposes on `/v1/metrics`. Call the methods from the event loop."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.operation_duration = r.histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (one LLM call attempt).", _GENAI_LABELS, DURATION_BUCKETS)
        self.time_to_first_chunk = r.histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time to the first chunk of a streamed response.", _GENAI_LABELS, DURATION_BUCKETS)
        self.token_usage = r.histogram(
            "gen_ai_client_token_usage", "Tokens used per LLM call, when the provider reports them.",
            ("gen_ai_token_type", *_GENAI_LABELS[:4]), TOKEN_BUCKETS)
        self.attempts = r.counter("kylecode_attempts_total", "LLM call attempts, retries included.",
                                  ("route", "outcome"))
        self.retries = r.counter("kylecode_retries_total", "Same-route retry attempts.", ("route",))
        self.html_errors = r.counter("kylecode_html_errors_total",
                                     "Attempts answered with an HTML error page.", ("route",))
        self.http_status = r.counter("kylecode_http_status_total", "Attempts by HTTP status code.",
                                     ("route", "code"))
        self.fallbacks = r.counter("kylecode_fallbacks_total", "Fallbacks from one route to another.",
                                   ("from", "to", "reason"))
        self.route_state = r.gauge(
            "kylecode_route_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open, 3 forced-open, 4 disabled.", ("route",))
        self.route_transitions = r.counter("kylecode_route_transitions_total",
                                           "Circuit breaker state changes.", ("route", "from", "to"))
        self.route_rejected = r.counter("kylecode_route_rejected_total",
                                        "Calls skipped because the route's circuit was open.", ("route",))
        self.probe_success = r.gauge("kylecode_probe_success",
                                     "Last capability probe result (1 success, 0 failure).",
                                     ("route", "probe"))
        self.probes = r.counter("kylecode_probes_total", "Capability probes run.",
                                ("route", "probe", "outcome"))
        self.runs = r.counter("kylecode_runs_total", "Finished runs by exit reason.", ("exit_reason",))
        self.runs_active = r.gauge("kylecode_runs_active", "Runs in progress.")
        self.run_duration = r.histogram("kylecode_run_duration_seconds", "Run wall-clock duration.",
                                        (), RUN_DURATION_BUCKETS)
        self.turns = r.counter("kylecode_turns_total", "Agent turns (one LLM call each, after retries).")
        self.tool_calls = r.counter("kylecode_tool_calls_total", "Tool calls by tool and status.",
                                    ("tool", "status"))
        self.telemetry_written = r.counter("kylecode_telemetry_events_written_total",
                                           "Telemetry events written to every target.")
        self.telemetry_dropped = r.counter("kylecode_telemetry_events_dropped_total",
                                           "Telemetry events dropped because the queue was full.")
        self.telemetry_write_errors = r.counter("kylecode_telemetry_write_errors_total",
                                                "Failed telemetry writes (one per target and line).")

    def attempt(self, route: str, provider: str, model: str, ok: bool, error_type: str | None,
                duration_s: float, ttft_s: float | None, input_tokens: int | None,
                output_tokens: int | None, retry: bool, html: bool, status_code: int | None) -> None:
        genai = genai_provider_name(provider)
        err = "" if ok else (error_type or "_OTHER")  # OTel's fallback value for an unknown class
        labels = ("chat", genai, model, route, err)
        self.operation_duration.observe(labels, duration_s)
        if ttft_s is not None:
            self.time_to_first_chunk.observe(labels, ttft_s)
        # Token usage: only what the provider reported (OTel: omit when unknown).
        if input_tokens is not None:
            self.token_usage.observe(("input", "chat", genai, model, route), input_tokens)
        if output_tokens is not None:
            self.token_usage.observe(("output", "chat", genai, model, route), output_tokens)
        self.attempts.inc((route, "ok" if ok else err))
        if retry:
            self.retries.inc((route,))
        if html:
            self.html_errors.inc((route,))
        if status_code is not None:
            self.http_status.inc((route, str(status_code)))

    def fallback(self, from_route: str, to_route: str, reason: str) -> None:
        self.fallbacks.inc((from_route, to_route, reason))

    def set_route_state(self, route: str, state: str) -> None:
        """Seed the gauge (e.g. for every route restored at start-up)."""
        value = ROUTE_STATE_VALUES.get(state.replace("-", "_"))
        if value is not None:
            self.route_state.set((route,), value)

    def breaker_transition(self, route: str, from_state: str, to_state: str) -> None:
        self.set_route_state(route, to_state)
        self.route_transitions.inc((route, from_state, to_state))

    def circuit_skip(self, route: str) -> None:
        self.route_rejected.inc((route,))

    def probe(self, route: str, probe: str, success: bool | None) -> None:
        """`success=None`: the probe was skipped (no key, ...): counted, gauge untouched."""
        if success is not None:
            self.probe_success.set((route, probe), 1 if success else 0)
        outcome = "skipped" if success is None else ("success" if success else "failure")
        self.probes.inc((route, probe, outcome))

    def run_started(self) -> None:
        self.runs_active.inc()

    def run_ended(self, exit_reason: str, duration_s: float) -> None:
        if self.runs_active.get() > 0:
            self.runs_active.inc(amount=-1)
        self.runs.inc((exit_reason,))
        self.run_duration.observe((), duration_s)

    def turn(self) -> None:
        self.turns.inc()

    def tool_call(self, tool: str, ok: bool) -> None:
        self.tool_calls.inc((tool, "ok" if ok else "error"))

    def telemetry_stats(self, written: int, dropped: int, write_errors: int) -> None:
        """Mirror `TelemetrySink.stats()`; call just before `render()` on a scrape."""
        self.telemetry_written.set_total((), written)
        self.telemetry_dropped.set_total((), dropped)
        self.telemetry_write_errors.set_total((), write_errors)

    def render(self) -> bytes:
        return self.registry.render()
