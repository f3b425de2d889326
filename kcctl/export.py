"""Telemetry exporter: one streaming pass over a telemetry JSONL file.

Used by `kcctl metrics export` and `scripts/export_provider_metrics.py`. Imports only
the standard library and msgspec at module level (httpx only when delivering), so
kcctl start-up stays fast, and never touches the daemon.

Reading. The file is read in 8 MiB binary chunks and split on newlines; each line is
decoded by a typed msgspec decoder (a tagged union on `event` whose Structs declare only
the fields the summary needs; unknown fields are ignored). Memory is flat: the pass keeps
aggregates, per-route latency samples (capped, below) and one entry per run id (about
100 bytes), never the events. A line longer than 64 MiB (a corrupt file, e.g. a zero-filled tail after a crash)
is dropped without being buffered whole. Blank lines, invalid JSON, non-objects and
objects without a string `event` are skipped and counted (`skipped_lines`); so is a line
of a type the summary reads (`llm.attempt`, `fallback`, `provider_metrics`) whose fields
have unexpected types (also reported in `schema_mismatches`). Lines of other event types
are kept as events (runs, time window, `jsonl` output, delivery) but not aggregated.

Two sources, no double counting. kcd writes one `llm.attempt` event per attempt *and* a
`provider_metrics` event per run (the original's shape); the original wrote only the
latter, one per run, without `run_id`. Per run: if the file holds at least one
`llm.attempt` event of that run, its per-call figures (calls, success, errors, HTML
errors, retries, latency, status codes, tokens) and its fallbacks come from its
`llm.attempt` and `fallback` events, and its `provider_metrics` event only contributes
what nothing else carries (stream/tool overrides, circuit skips). Otherwise everything
comes from its `provider_metrics` events. Events without `run_id` (the original's) are
always taken as they are. The decision is exact whatever the line order: a run's
`provider_metrics` (and stray `fallback`) events seen before its first `llm.attempt` are
held per run until the end, which costs memory only for such runs (in kcd's files the
run's summary event comes last, so normally nothing is held).

Percentiles (nearest rank) come from per-call latencies, i.e. `llm.attempt` events only:
`provider_metrics` carries just sums and maxima, so a route known only from those reports
`latency_p50` etc. as null (and `latency_samples: 0`); `latency_avg`/`latency_max` cover
both sources. Up to SAMPLE_CAP (100,000) values per route and series are kept exactly;
beyond that a uniform reservoir sample of SAMPLE_CAP values stands in (Algorithm R,
seeded, so output is deterministic). The estimate's rank error then has a standard
deviation of sqrt(q(1-q)/100000): about 0.16 percentile points at p50 and 0.03 at p99,
i.e. the reported p99 lies between the true p98.94 and p99.06 with ~95% confidence.
Memory: at most 2 x 800 KB per route. The OTLP/Prometheus latency histograms use fixed
buckets and are exact.

Filters: `run_id` (events without one never match) and a half-open time window
`since <= ts < until`; events without `ts` (the original's) pass only when no time filter
is given. `runs` counts distinct run ids plus each `provider_metrics` line without one.

Delivery (`--http-endpoint`): `summary`/`jsonl` formats POST the filtered events, byte for
byte as read (the decoder sees only some fields, so re-encoding would lose the rest), as
JSON array bodies of at most `batch_size` events / 4 MiB, sent *during* the pass, so memory
stays flat. `otlp-json` and `prom` POST their one document after the pass. Each POST has a
10 s timeout and is retried with exponential backoff and full jitter (Retry-After honoured,
capped at `backoff_max`) on transport errors (connect, timeouts, resets) and on 408, 429 and
5xx except 501; any other non-2xx is permanent. A batch is never re-sent after a 2xx. A
batch whose 2xx was lost in transit may arrive twice: each carries an `Idempotency-Key`
(`<export id>-<batch no>`) so a receiver can drop the repeat. Ordering: deliver first,
print after; the summary is printed only once every batch has been accepted, so a summary on
stdout means the delivery succeeded, and a failed delivery exits 1 with nothing on stdout.
"""

from __future__ import annotations

import json
import random
import sys
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Literal, Union

import msgspec

PREFIX = "[export-provider-metrics]"
CHUNK_SIZE = 8 << 20
MAX_LINE = 64 << 20
SAMPLE_CAP = 100_000
BATCH_MAX_BYTES = 4 << 20
# gen_ai.client.operation.duration's advisory buckets (seconds, doubling from 10 ms).
DURATION_BOUNDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
Format = Literal["summary", "jsonl", "otlp-json", "prom"]
FORMATS: tuple[str, ...] = ("summary", "jsonl", "otlp-json", "prom")


# ---- the partial event schema -------------------------------------------------------

class _Base(msgspec.Struct, tag_field="event"):
    ts: datetime | float | None = None
    run_id: str | None = None


class _Attrs(msgspec.Struct):
    input_tokens: int | None = msgspec.field(default=None, name="gen_ai.usage.input_tokens")
    output_tokens: int | None = msgspec.field(default=None, name="gen_ai.usage.output_tokens")


class _Attempt(_Base, tag="llm.attempt"):
    route: str | None = None
    status_code: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    outcome: str | None = None  # "ok" or an error class
    ok: bool | None = None  # only consulted when `outcome` is absent
    kind: str | None = None  # "primary" | "retry" | "fallback"
    retry: bool | None = None
    stream: bool | None = None
    html: bool | None = None
    html_detected: bool | None = None
    attrs: _Attrs | None = None


class _Fallback(_Base, tag="fallback"):
    pass


class _PMSummary(msgspec.Struct):
    calls: int = 0
    success: int | None = None
    errors: int | None = None
    html_errors: int = 0
    circuit_skips: int | None = None
    stream_overrides: int | None = None
    tool_overrides: int | None = None


class _PMUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _PMRoute(msgspec.Struct):
    calls: int = 0
    success: int | None = None
    errors: int | None = None
    stream_calls: int = 0
    html_errors: int = 0
    retries: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    status_codes: dict[str, int] = {}
    usage: _PMUsage | None = None


class _Metrics(_Base, tag="provider_metrics"):
    summary: _PMSummary | None = None
    routes: dict[str, _PMRoute] = {}
    # Only counted, so left undecoded.
    fallbacks: list[msgspec.Raw] = []
    stream_overrides: list[msgspec.Raw] = []
    tool_overrides: list[msgspec.Raw] = []
    circuit_skips: list[msgspec.Raw] | int | None = None


# Types the exporter passes through without aggregating; declared so they decode on the
# fast path. Any other `event` value takes the slower envelope path below.
_PASSIVE = tuple(msgspec.defstruct(f"_Passive{i}", [], bases=(_Base,), tag=tag) for i, tag in enumerate(
    ("run.start", "run.end", "circuit.open", "circuit.half_open", "circuit.close", "probe")))
_AGGREGATED = frozenset({"llm.attempt", "fallback", "provider_metrics"})


class _Envelope(msgspec.Struct):
    event: str
    ts: datetime | float | None = None
    run_id: str | None = None


_EVENT_DECODER = msgspec.json.Decoder(Union[(_Attempt, _Fallback, _Metrics, *_PASSIVE)])  # noqa: UP007
_ENVELOPE_DECODER = msgspec.json.Decoder(_Envelope)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_ts(text: str) -> datetime:
    """ISO-8601 (naive means UTC) or Unix seconds → an aware datetime; ValueError otherwise."""
    try:
        seconds = float(text)
    except ValueError:
        dt = datetime.fromisoformat(text.strip())
        return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
    aware = _aware(seconds)
    if aware is None:
        raise ValueError(f"{text!r} is out of range")
    return aware


def _aware(ts: datetime | float) -> datetime | None:
    """Naive (meaning UTC) or Unix seconds → aware; None for seconds out of range."""
    if isinstance(ts, datetime):
        return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    try:
        return datetime.fromtimestamp(ts, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _unix_nano(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(microseconds=1) * 1000


@dataclass(frozen=True)
class Filters:
    run_id: str | None = None
    since: datetime | None = None  # aware, inclusive
    until: datetime | None = None  # aware, exclusive

    @property
    def active(self) -> bool:
        return self.run_id is not None or self.since is not None or self.until is not None

    def match(self, run_id: str | None, ts: datetime | None) -> bool:
        if self.run_id is not None and run_id != self.run_id:
            return False
        if self.since is None and self.until is None:
            return True
        if ts is None:
            return False
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)


# ---- aggregation ----------------------------------------------------------------------

def nearest_rank(ordered: list[float], q: float) -> float | None:
    """The smallest value with at least q% of the values at or below it; None for none."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), -(-q * len(ordered) // 100)))
    return ordered[int(rank) - 1]


def _reservoir(values: array, x: float, seen: int, rng: random.Random) -> None:
    """Algorithm R, once `values` is full: the `seen`-th value replaces a random slot with
    probability len(values)/seen, which keeps a uniform sample of everything seen."""
    j = int(rng.random() * seen)
    if j < len(values):
        values[j] = x


class _PerCall:
    """A route's figures from `llm.attempt` events (the hot path: keep it lean)."""

    __slots__ = ("calls", "success", "html_errors", "stream_calls", "retries", "status_codes", "input_tokens",
                 "output_tokens", "lat", "lat_n", "lat_sum", "lat_min", "lat_max", "buckets", "ttft", "ttft_n")

    def __init__(self) -> None:
        self.calls = self.success = self.html_errors = self.stream_calls = self.retries = 0
        self.input_tokens = self.output_tokens = self.lat_n = self.ttft_n = 0
        self.status_codes: dict[int | None, int] = {}
        self.lat = array("d")  # exact up to the cap, then a reservoir
        self.ttft = array("d")
        self.lat_sum = self.lat_max = 0.0
        self.lat_min = float("inf")
        self.buckets = [0] * (len(DURATION_BOUNDS) + 1)  # exact, for the histograms


class _FromMetrics:
    """A route's figures from `provider_metrics` events (runs without per-call events)."""

    __slots__ = ("calls", "success", "errors", "html_errors", "stream_calls", "retries", "latency_sum",
                 "latency_max", "status_codes", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.calls = self.success = self.errors = self.html_errors = self.stream_calls = self.retries = 0
        self.input_tokens = self.output_tokens = 0
        self.latency_sum = self.latency_max = 0.0
        self.status_codes: dict[str, int] = {}


class Aggregate:
    """Everything one pass keeps; `finish()` settles the held events, `summary()` reports."""

    def __init__(self, sample_cap: int = SAMPLE_CAP):
        self._cap = sample_cap
        self._rng = random.Random(0)  # seeded: the same file gives the same summary
        self.per_call: dict[str, _PerCall] = {}
        self.from_metrics: dict[str, _FromMetrics] = {}
        # Totals of the provider_metrics `summary` blocks (the original exporter summed those).
        self.pm_calls = self.pm_success = self.pm_errors = self.pm_html_errors = 0
        self.fallbacks = self.stream_overrides = self.tool_overrides = self.circuit_skips = 0
        self.events = self.skipped_lines = self.schema_mismatches = 0
        self.first_schema_error: str | None = None
        self.anonymous_runs = 0
        # Every run id seen → whether it has llm.attempt events (one dict: ~100 B per run).
        self.run_ids: dict[str, bool] = {}
        self._held_metrics: dict[str, list[_Metrics]] = {}
        self._held_fallbacks: dict[str, int] = {}
        self.first: datetime | None = None
        self.last: datetime | None = None

    def add(self, ev: _Base | _Envelope, ts: datetime | None) -> None:
        self.events += 1
        if ts is not None:
            if self.first is None or ts < self.first:
                self.first = ts
            if self.last is None or ts > self.last:
                self.last = ts
        run = ev.run_id
        if run is not None and run not in self.run_ids:
            self.run_ids[run] = False
        kind = type(ev)
        if kind is _Attempt:
            self._attempt(ev)  # type: ignore[arg-type]
        elif kind is _Metrics:
            self._metrics(ev)  # type: ignore[arg-type]
        elif kind is _Fallback:
            if run is None or self.run_ids[run]:
                self.fallbacks += 1
            else:
                self._held_fallbacks[run] = self._held_fallbacks.get(run, 0) + 1

    def _attempt(self, ev: _Attempt) -> None:
        run = ev.run_id
        if run is not None and not self.run_ids[run]:
            self.run_ids[run] = True
            self._held_metrics.pop(run, None)  # its per-call figures come from its events now
            self.fallbacks += self._held_fallbacks.pop(run, 0)
        name = ev.route or "unknown"
        r = self.per_call.get(name)
        if r is None:
            r = self.per_call[name] = _PerCall()
        r.calls += 1
        outcome = ev.outcome
        if outcome == "ok" or (outcome is None and (
                ev.ok if ev.ok is not None else ev.status_code is not None and 200 <= ev.status_code < 300)):
            r.success += 1
        if ev.html or ev.html_detected or outcome == "upstream_html":
            r.html_errors += 1
        if ev.stream:
            r.stream_calls += 1
        if ev.kind == "retry" or ev.retry:
            r.retries += 1
        codes = r.status_codes
        code = ev.status_code
        codes[code] = codes.get(code, 0) + 1
        lat = ev.latency_s
        if lat is not None:
            r.lat_n += 1
            if len(r.lat) < self._cap:
                r.lat.append(lat)
            else:
                _reservoir(r.lat, lat, r.lat_n, self._rng)
            r.buckets[bisect_left(DURATION_BOUNDS, lat)] += 1
            r.lat_sum += lat
            if lat > r.lat_max:
                r.lat_max = lat
            if lat < r.lat_min:
                r.lat_min = lat
        ttft = ev.ttft_s
        if ttft is not None:
            r.ttft_n += 1
            if len(r.ttft) < self._cap:
                r.ttft.append(ttft)
            else:
                _reservoir(r.ttft, ttft, r.ttft_n, self._rng)
        a = ev.attrs
        if a is not None:
            r.input_tokens += a.input_tokens or 0
            r.output_tokens += a.output_tokens or 0

    def _metrics(self, ev: _Metrics) -> None:
        s = ev.summary
        # Carried by nothing else, so counted for every run.
        self.stream_overrides += s.stream_overrides if s and s.stream_overrides is not None \
            else len(ev.stream_overrides)
        self.tool_overrides += s.tool_overrides if s and s.tool_overrides is not None else len(ev.tool_overrides)
        if s and s.circuit_skips is not None:
            self.circuit_skips += s.circuit_skips
        elif isinstance(ev.circuit_skips, int):
            self.circuit_skips += ev.circuit_skips
        elif ev.circuit_skips:
            self.circuit_skips += len(ev.circuit_skips)
        run = ev.run_id
        if run is None:
            self.anonymous_runs += 1
            self._metrics_calls(ev)
        elif not self.run_ids[run]:
            self._held_metrics.setdefault(run, []).append(ev)

    def _metrics_calls(self, ev: _Metrics) -> None:
        calls = success = errors = html = 0
        for name, pr in ev.routes.items():
            r = self.from_metrics.get(name)
            if r is None:
                r = self.from_metrics[name] = _FromMetrics()
            ok = pr.success if pr.success is not None else pr.calls - (pr.errors or 0)
            bad = pr.errors if pr.errors is not None else pr.calls - ok
            r.calls += pr.calls
            r.success += ok
            r.errors += bad
            r.html_errors += pr.html_errors
            r.stream_calls += pr.stream_calls
            r.retries += pr.retries
            r.latency_sum += pr.latency_sum
            r.latency_max = max(r.latency_max, pr.latency_max)
            for code, n in pr.status_codes.items():
                r.status_codes[code] = r.status_codes.get(code, 0) + n
            if pr.usage is not None:
                r.input_tokens += pr.usage.prompt_tokens or 0
                r.output_tokens += pr.usage.completion_tokens or 0
            calls, success, errors, html = calls + pr.calls, success + ok, errors + bad, html + pr.html_errors
        s = ev.summary
        if s is not None:  # the original exporter summed `summary`, so totals come from there
            success = s.success if s.success is not None else s.calls - (s.errors or 0)
            calls, errors, html = s.calls, s.errors if s.errors is not None else s.calls - success, s.html_errors
        self.pm_calls += calls
        self.pm_success += success
        self.pm_errors += errors
        self.pm_html_errors += html
        self.fallbacks += len(ev.fallbacks)

    def finish(self) -> None:
        """Settle held events: these runs never had an `llm.attempt` event."""
        for events in self._held_metrics.values():
            for ev in events:
                self._metrics_calls(ev)
        for run, n in self._held_fallbacks.items():
            if run not in self._held_metrics:  # else its provider_metrics listed them
                self.fallbacks += n
        self._held_metrics.clear()
        self._held_fallbacks.clear()

    @property
    def runs(self) -> int:
        return len(self.run_ids) + self.anonymous_runs

    def route_names(self) -> list[str]:
        return sorted(self.per_call.keys() | self.from_metrics.keys())

    def route(self, name: str) -> dict[str, Any]:
        """One route's figures, both sources merged."""
        c = self.per_call.get(name) or _PerCall()
        m = self.from_metrics.get(name) or _FromMetrics()
        calls = c.calls + m.calls
        codes: dict[str, int] = dict(m.status_codes)
        for code, n in c.status_codes.items():
            key = "none" if code is None else str(code)
            codes[key] = codes.get(key, 0) + n
        lat = sorted(c.lat)
        ttft = sorted(c.ttft)
        return {
            "calls": calls, "success": c.success + m.success, "errors": c.calls - c.success + m.errors,
            "html_errors": c.html_errors + m.html_errors, "stream_calls": c.stream_calls + m.stream_calls,
            "retries": c.retries + m.retries,
            "latency_avg": _r((c.lat_sum + m.latency_sum) / max(calls, 1)),
            "latency_max": _r(max(c.lat_max, m.latency_max)),
            "latency_p50": _r(nearest_rank(lat, 50)), "latency_p95": _r(nearest_rank(lat, 95)),
            "latency_p99": _r(nearest_rank(lat, 99)), "ttft_p50": _r(nearest_rank(ttft, 50)),
            "latency_samples": c.lat_n,
            "status_codes": dict(sorted(codes.items())),
            "input_tokens": c.input_tokens + m.input_tokens, "output_tokens": c.output_tokens + m.output_tokens,
        }

    def summary(self) -> dict[str, Any]:
        routes = {name: self.route(name) for name in self.route_names()}
        per_call = self.per_call.values()
        calls = sum(c.calls for c in per_call)
        success = sum(c.success for c in per_call)
        return {
            "calls": calls + self.pm_calls, "success": success + self.pm_success,
            "errors": calls - success + self.pm_errors,
            "html_errors": sum(c.html_errors for c in per_call) + self.pm_html_errors,
            "retries": sum(r["retries"] for r in routes.values()), "fallbacks": self.fallbacks,
            "stream_overrides": self.stream_overrides, "tool_overrides": self.tool_overrides,
            "circuit_skips": self.circuit_skips, "runs": self.runs, "events": self.events,
            "skipped_lines": self.skipped_lines, "schema_mismatches": self.schema_mismatches,
            "time_window": {"first_ts": _iso(self.first) if self.first else None,
                            "last_ts": _iso(self.last) if self.last else None},
            "routes": routes,
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


# ---- the pass ---------------------------------------------------------------------------

class ReadError(Exception):
    """The telemetry file could not be read to its end, so there is no summary."""


def _read(f: IO[bytes], size: int) -> bytes:
    try:
        return f.read(size)
    except OSError as exc:
        raise ReadError(f"cannot read {getattr(f, 'name', 'the telemetry file')}: {exc.strerror or exc}") from exc


def _lines(f: IO[bytes], chunk_size: int, agg: Aggregate) -> Iterator[list[bytes]]:
    """Complete lines, a chunk's worth at a time; an over-long line is dropped unbuffered.

    Each list is emptied once the caller asks for the next, so at most one chunk's lines
    are alive at a time (the peak is about two chunks, during the split).
    """
    tail = b""
    dropping = False
    while chunk := _read(f, chunk_size):
        parts = chunk.split(b"\n")
        del chunk
        last = parts.pop()
        if dropping:
            if not parts:  # still inside the over-long line
                continue
            parts.pop(0)
            dropping = False
        elif tail:
            if parts:
                parts[0] = tail + parts[0]
            else:
                last = tail + last
        tail = last
        if len(tail) > MAX_LINE:
            agg.skipped_lines += 1
            tail, dropping = b"", True
        if parts:
            yield parts
            parts.clear()
    if tail and not dropping:
        yield [tail]


def scan(path: Path | str, filters: Filters = Filters(), on_event: Callable[[bytes], None] | None = None, *,
         chunk_size: int = CHUNK_SIZE, sample_cap: int = SAMPLE_CAP) -> Aggregate:
    """One pass over `path`; `on_event` gets each kept event's line (stripped) as it is read.

    Raises ReadError if the file cannot be read, and whatever `on_event` raises
    (a failed delivery aborts the pass).
    """
    agg = Aggregate(sample_cap)
    decode = _EVENT_DECODER.decode
    active = filters.active
    add = agg.add
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with f:
        for lines in _lines(f, chunk_size, agg):
            for line in lines:
                if not line or line.isspace():
                    agg.skipped_lines += 1
                    continue
                try:
                    ev: Any = decode(line)
                except msgspec.ValidationError as exc:
                    ev = _envelope(line, exc, agg)
                    if ev is None:
                        continue
                except msgspec.DecodeError:
                    agg.skipped_lines += 1
                    continue
                ts = ev.ts
                if ts is not None and (type(ts) is not datetime or ts.tzinfo is None):
                    ts = _aware(ts)  # naive (UTC) or Unix seconds: rare
                    if ts is None:
                        agg.skipped_lines += 1
                        continue
                if active and not filters.match(ev.run_id, ts):
                    continue
                add(ev, ts)
                if on_event is not None:
                    on_event(line.strip())
    agg.finish()
    return agg


def _envelope(line: bytes, exc: msgspec.ValidationError, agg: Aggregate) -> _Envelope | None:
    """A line the typed decoder refused: an event type it does not aggregate, or junk."""
    try:
        env = _ENVELOPE_DECODER.decode(line)
    except msgspec.DecodeError:
        agg.skipped_lines += 1
        return None
    if env.event in _AGGREGATED:  # a type we sum, with a field of the wrong type: not guessed at
        agg.skipped_lines += 1
        agg.schema_mismatches += 1
        if agg.first_schema_error is None:
            agg.first_schema_error = f"{env.event}: {exc}"
        return None
    return env


# ---- documents -----------------------------------------------------------------------------

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
    start = str(_unix_nano(agg.first)) if agg.first else str(now)
    end = str(_unix_nano(agg.last)) if agg.last else str(now)
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
             "startTimeUnixNano": start, "timeUnixNano": end, "count": str(c.lat_n), "sum": c.lat_sum,
             "bucketCounts": [str(n) for n in c.buckets], "explicitBounds": list(DURATION_BOUNDS),
             "min": c.lat_min, "max": c.lat_max}
            for name, c in sorted(agg.per_call.items()) if c.lat_n]
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
        if not c.lat_n:
            continue
        lbl = _label(route)
        cum = 0
        for bound, n in zip((*map(repr, DURATION_BOUNDS), "+Inf"), c.buckets):
            cum += n
            out.append(f'{name}_bucket{{route="{lbl}",le="{bound}"}} {cum}')
        out.append(f'{name}_sum{{route="{lbl}"}} {c.lat_sum!r}')
        out.append(f'{name}_count{{route="{lbl}"}} {c.lat_n}')
    return "\n".join(out) + "\n"


# ---- delivery -----------------------------------------------------------------------------

class DeliveryFailed(Exception):
    def __init__(self, attempts: int, cause: str):
        super().__init__(f"delivery failed after {attempts} attempt{'s' if attempts != 1 else ''}: {cause}")
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # after the first attempt
    backoff: float = 0.5  # seconds: the first retry waits up to this, doubling each time
    backoff_max: float = 30.0  # cap on any wait, Retry-After included
    timeout: float = 10.0


def _retryable(status: int) -> bool:
    return status in (408, 429) or (status >= 500 and status != 501)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Poster:
    """POSTs bodies to one URL with retries; raises DeliveryFailed when it gives up."""

    def __init__(self, url: str, policy: RetryPolicy):
        import httpx  # only when delivering: it is the slowest import kcctl has

        self._httpx = httpx
        self.url = url
        self.policy = policy
        self._http = httpx.Client(timeout=policy.timeout)
        self._rng = random.Random()
        self._export_id = "%016x" % random.getrandbits(64)
        self.posts = 0

    def close(self) -> None:
        self._http.close()

    def post(self, body: bytes, content_type: str) -> None:
        self.posts += 1
        headers = {"content-type": content_type, "idempotency-key": f"{self._export_id}-{self.posts}"}
        p = self.policy
        attempt = 0
        while True:
            attempt += 1
            wait: float | None = None
            try:
                resp = self._http.post(self.url, content=body, headers=headers)
            except (self._httpx.UnsupportedProtocol, self._httpx.InvalidURL) as exc:
                raise DeliveryFailed(attempt, f"invalid URL {self.url!r}: {exc}") from None
            except self._httpx.TransportError as exc:  # connect errors, timeouts, resets
                cause = f"{type(exc).__name__}: {exc or 'no detail'}"
            else:
                if 200 <= resp.status_code < 300:
                    return
                cause = f"HTTP {resp.status_code} {resp.reason_phrase}".rstrip()
                excerpt = " ".join(resp.text[:200].split())
                if excerpt:
                    cause += f": {excerpt}"
                if not _retryable(resp.status_code):
                    raise DeliveryFailed(attempt, cause + " (permanent, not retried)")
                wait = _retry_after(resp.headers.get("retry-after"))
            if attempt > p.retries:
                raise DeliveryFailed(attempt, cause)
            if wait is None:  # full jitter: uniform over [0, min(cap, base * 2^k)]
                wait = self._rng.uniform(0.0, min(p.backoff_max, p.backoff * 2 ** (attempt - 1)))
            time.sleep(min(wait, p.backoff_max))


class Batcher:
    """Collects event lines into JSON-array bodies and posts each one when it is full."""

    def __init__(self, poster: Poster, batch_size: int, max_bytes: int = BATCH_MAX_BYTES):
        self.poster = poster
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self._lines: list[bytes] = []
        self._bytes = 0
        self.events = self.batches = 0

    def add(self, line: bytes) -> None:
        if self._lines and self._bytes + len(line) > self.max_bytes:
            self.flush()
        self._lines.append(line)
        self._bytes += len(line) + 1
        if len(self._lines) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        self.poster.post(b"[" + b",".join(self._lines) + b"]", "application/json")
        self.events += len(self._lines)
        self.batches += 1
        self._lines, self._bytes = [], 0


# ---- the command ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    fmt: Format = "summary"
    print_summary: bool = False
    endpoint: str | None = None
    filters: Filters = Filters()
    batch_size: int = 500
    policy: RetryPolicy = RetryPolicy()


def telemetry_path(target: Path) -> Path:
    """A run directory means its `meta/telemetry.jsonl`; anything else is the file itself."""
    return target / "meta" / "telemetry.jsonl" if target.is_dir() else target


def run_export(path: Path, opts: Options, *, out: IO[bytes] | None = None,
               err: Callable[[str], None] | None = None) -> int:
    """Export `path` as `opts` say; returns the exit code. Messages go to `err`."""
    stdout = out if out is not None else sys.stdout.buffer
    say = err if err is not None else (lambda m: print(m, file=sys.stderr))
    path = telemetry_path(path)
    if not path.is_file():
        say(f"{PREFIX} telemetry file not found: {path}")
        return EXIT_USAGE
    if opts.endpoint is not None and not opts.endpoint.startswith(("http://", "https://")):
        say(f"{PREFIX} --http-endpoint must be an http:// or https:// URL, not {opts.endpoint!r}")
        return EXIT_USAGE
    if opts.print_summary and opts.endpoint is None and opts.fmt != "summary":
        say(f"{PREFIX} --print-summary with --format {opts.fmt} would write two documents to stdout; "
            "drop one, or deliver with --http-endpoint")
        return EXIT_USAGE

    poster = Poster(opts.endpoint, opts.policy) if opts.endpoint else None
    batcher = Batcher(poster, opts.batch_size) if poster and opts.fmt in ("summary", "jsonl") else None
    try:
        _export(path, opts, poster, batcher, stdout, say)
    except ReadError as exc:
        say(f"{PREFIX} {exc}")
        return EXIT_FAILED
    except DeliveryFailed as exc:
        say(f"{PREFIX} {exc}")
        if batcher is not None and batcher.batches:
            say(f"{PREFIX} {batcher.events} events in {batcher.batches} batches were delivered before "
                "the failure; the rest were not")
        return EXIT_FAILED
    except BrokenPipeError:  # stdout's reader left (`| head`): stop quietly, as cat does
        _silence_stdout()
        return EXIT_FAILED
    finally:
        if poster is not None:
            poster.close()
    return EXIT_OK


def _export(path: Path, opts: Options, poster: Poster | None, batcher: Batcher | None, stdout: IO[bytes],
            say: Callable[[str], None]) -> None:
    sink: Callable[[bytes], None] | None = None
    if batcher is not None:
        sink = batcher.add
    elif poster is None and opts.fmt == "jsonl":
        sink = lambda line: stdout.write(line + b"\n")  # noqa: E731
    agg = scan(path, opts.filters, sink)
    if agg.schema_mismatches:
        say(f"{PREFIX} warning: {agg.schema_mismatches} lines of a known event type had unexpected field "
            f"types and were skipped (first: {agg.first_schema_error})")
    if batcher is not None:
        batcher.flush()
        say(f"{PREFIX} delivered {batcher.events} events in {batcher.batches} batches to {opts.endpoint}")
    elif poster is not None:
        if agg.events:  # OTLP receivers want no empty envelopes
            poster.post(*_document(agg, opts.fmt))
            say(f"{PREFIX} delivered the {opts.fmt} document to {opts.endpoint}")
        else:
            say(f"{PREFIX} no events in the export: nothing delivered")
    # Only now, with the delivery done, does anything but jsonl reach stdout.
    if poster is None and opts.fmt != "jsonl":
        stdout.write(_document(agg, opts.fmt)[0])
    elif opts.print_summary:
        stdout.write(summary_json(agg))
    stdout.flush()


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush cannot raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _document(agg: Aggregate, fmt: str) -> tuple[bytes, str]:
    if fmt == "otlp-json":
        return json.dumps(otlp_json(agg), separators=(",", ":")).encode() + b"\n", "application/json"
    if fmt == "prom":
        return prom_text(agg).encode(), "text/plain; version=0.0.4"
    return summary_json(agg), "application/json"
