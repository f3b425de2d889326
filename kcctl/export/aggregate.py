"""What one pass keeps: per-route figures from both sources, runs, the time window.

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
held per run until `finish()`, which costs memory only for such runs (in kcd's files the
run's summary event comes last, so normally nothing is held). Partial aggregates of byte
ranges of one file `merge()` (in file order) before `finish()`, and every figure merges
exactly (see `stats`), so a parallel pass reports what a single pass would.

Lines without `ts` and `run_id` (the original's) are added in bulk (`add_untimed`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from kcctl.export.schema import Attempt, Base, Envelope, Fallback, Metrics, PMSummary, iso
from kcctl.export.stats import SAMPLE_CAP, ExactSum, Series

# gen_ai.client.operation.duration's advisory buckets (seconds, doubling from 10 ms).
DURATION_BOUNDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_METRICS_BATCH = 4096


class PerCall:
    """A route's figures from `llm.attempt` events (the hot path: keep it lean)."""

    __slots__ = ("calls", "success", "html_errors", "stream_calls", "retries", "status_codes", "input_tokens",
                 "output_tokens", "lat", "lat_sum", "buckets", "ttft")

    def __init__(self, cap: int) -> None:
        self.calls = self.success = self.html_errors = self.stream_calls = self.retries = 0
        self.input_tokens = self.output_tokens = 0
        self.status_codes: dict[int | None, int] = {}
        self.lat = Series(cap)
        self.ttft = Series(cap)
        self.lat_sum = ExactSum()
        self.buckets = [0] * (len(DURATION_BOUNDS) + 1)  # exact, for the histograms

    def merge(self, o: PerCall) -> None:
        self.calls += o.calls
        self.success += o.success
        self.html_errors += o.html_errors
        self.stream_calls += o.stream_calls
        self.retries += o.retries
        self.input_tokens += o.input_tokens
        self.output_tokens += o.output_tokens
        _add_counts(self.status_codes, o.status_codes)
        self.lat.merge(o.lat)
        self.ttft.merge(o.ttft)
        self.lat_sum.merge(o.lat_sum)
        self.buckets = [a + b for a, b in zip(self.buckets, o.buckets)]


class FromMetrics:
    """A route's figures from `provider_metrics` events (runs without per-call events)."""

    __slots__ = ("calls", "success", "errors", "html_errors", "stream_calls", "retries", "latency_sum",
                 "latency_max", "status_codes", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.calls = self.success = self.errors = self.html_errors = self.stream_calls = self.retries = 0
        self.input_tokens = self.output_tokens = 0
        self.latency_sum = ExactSum()
        self.latency_max = 0.0
        self.status_codes: dict[str, int] = {}

    def merge(self, o: FromMetrics) -> None:
        for key in ("calls", "success", "errors", "html_errors", "stream_calls", "retries", "input_tokens",
                    "output_tokens"):
            setattr(self, key, getattr(self, key) + getattr(o, key))
        self.latency_sum.merge(o.latency_sum)
        self.latency_max = max(self.latency_max, o.latency_max)
        _add_counts(self.status_codes, o.status_codes)


def _merge_routes(into: dict[str, Any], other: dict[str, Any]) -> None:
    for name, figures in other.items():
        mine = into.get(name)
        if mine is None:
            into[name] = figures
        else:
            mine.merge(figures)


def _add_counts(into: dict, other: dict) -> None:
    for k, n in other.items():
        into[k] = into.get(k, 0) + n


def _outcomes(ok: int | None, bad: int | None, calls: int) -> tuple[int, int]:
    """(success, errors) of a figure that may give only one of them (errors = calls - success)."""
    if ok is None:
        ok = calls - (bad or 0)
    return ok, calls - ok if bad is None else bad


def _route_total(ev: Metrics) -> PMSummary:
    """A summary block for an event without one: its routes' figures added up."""
    calls = ok = bad = html = 0
    for pr in (ev.routes or {}).values():
        pok, pbad = _outcomes(pr.success, pr.errors, pr.calls)
        calls, ok, bad, html = calls + pr.calls, ok + pok, bad + pbad, html + pr.html_errors
    return PMSummary(calls=calls, success=ok, errors=bad, html_errors=html)


def _override_count(ev: Metrics, key: str) -> int:
    """An event's stream/tool overrides or circuit skips: its summary's count, else its list."""
    n = getattr(ev.summary, key, None)
    if n is not None:
        return n
    listed = getattr(ev, key)
    return listed if isinstance(listed, int) else len(listed or ())


class Aggregate:
    """Everything one pass keeps; `finish()` settles the held events, `summary()` reports."""

    def __init__(self, sample_cap: int = SAMPLE_CAP):
        self._cap = sample_cap
        self.per_call: dict[str, PerCall] = {}
        self.from_metrics: dict[str, FromMetrics] = {}
        # Totals of the provider_metrics `summary` blocks (the original exporter summed those).
        self.pm_calls = self.pm_success = self.pm_errors = self.pm_html_errors = 0
        self.fallbacks = self.stream_overrides = self.tool_overrides = self.circuit_skips = 0
        self.events = self.skipped_lines = self.schema_mismatches = 0
        self.first_schema_error: str | None = None
        self.anonymous_runs = 0
        # Every run id seen → whether it has llm.attempt events (one dict: ~100 B per run).
        self.run_ids: dict[str, bool] = {}
        self._held_metrics: dict[str, list[Metrics]] = {}
        self._held_fallbacks: dict[str, int] = {}
        self._metrics_batch: list[Metrics] = []  # anonymous provider_metrics not yet added up
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.worker_peaks: dict[int, int] = {}  # pid → peak RSS (KiB) of a parallel pass's workers

    # ---- adding events ----

    def add(self, ev: Base | Envelope, ts: datetime | None) -> None:
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
        if kind is Attempt:
            self._attempt(ev)  # type: ignore[arg-type]
        elif kind is Metrics:
            self._metrics(ev)  # type: ignore[arg-type]
        elif kind is Fallback:
            if run is None or self.run_ids[run]:
                self.fallbacks += 1
            else:
                self._held_fallbacks[run] = self._held_fallbacks.get(run, 0) + 1

    def add_untimed(self, events: list[Base]) -> None:
        """Add events without `ts` or `run_id` (the original's lines), in bulk when all are
        provider_metrics: no per-event dispatch, and no run to settle."""
        if set(map(type, events)) == {Metrics}:
            self.events += len(events)
            self.anonymous_runs += len(events)
            self._add_overrides(events)
            self._add_calls(events)
        else:
            for ev in events:
                self.add(ev, None)

    def schema_mismatch(self, message: str) -> None:
        self.skipped_lines += 1
        self.schema_mismatches += 1
        if self.first_schema_error is None:
            self.first_schema_error = message

    def _attempt(self, ev: Attempt) -> None:
        run = ev.run_id
        if run is not None and not self.run_ids[run]:
            self.run_ids[run] = True
            self._held_metrics.pop(run, None)  # its per-call figures come from its events now
            self.fallbacks += self._held_fallbacks.pop(run, 0)
        name = ev.route or "unknown"
        r = self.per_call.get(name)
        if r is None:
            r = self.per_call[name] = PerCall(self._cap)
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
            r.lat.add(lat)
            r.lat_sum.add(lat)
            r.buckets[bisect_left(DURATION_BOUNDS, lat)] += 1
        if ev.ttft_s is not None:
            r.ttft.add(ev.ttft_s)
        a = ev.attrs
        if a is not None:
            r.input_tokens += a.input_tokens or 0
            r.output_tokens += a.output_tokens or 0

    def _metrics(self, ev: Metrics) -> None:
        self._add_overrides((ev,))  # what nothing else carries counts for every run
        run = ev.run_id
        if run is None:
            self.anonymous_runs += 1
            self._metrics_batch.append(ev)
            if len(self._metrics_batch) >= _METRICS_BATCH:
                self._flush_metrics()
        elif not self.run_ids[run]:
            self._held_metrics.setdefault(run, []).append(ev)

    def _flush_metrics(self) -> None:
        batch, self._metrics_batch = self._metrics_batch, []
        self._add_calls(batch)

    def _add_overrides(self, events: Iterable[Metrics]) -> None:
        """Stream/tool overrides and circuit skips: the summary's counts, else the lists' lengths."""
        stream = tool = skips = 0
        for ev in events:
            s = ev.summary
            if s is not None and s.stream_overrides is not None and s.tool_overrides is not None \
                    and s.circuit_skips is not None:
                stream += s.stream_overrides
                tool += s.tool_overrides
                skips += s.circuit_skips
            else:
                stream += _override_count(ev, "stream_overrides")
                tool += _override_count(ev, "tool_overrides")
                skips += _override_count(ev, "circuit_skips")
        self.stream_overrides += stream
        self.tool_overrides += tool
        self.circuit_skips += skips

    def _add_calls(self, events: Iterable[Metrics]) -> None:
        """Call figures of provider_metrics events, per route and in total. A plain loop over
        slot attributes: in CPython the cheapest way to add up struct fields."""
        table = self.from_metrics
        calls = ok = bad = html = fallbacks = 0
        for ev in events:
            # The original exporter summed the `summary` blocks, so the totals come from there.
            s = ev.summary
            if s is None:
                s = _route_total(ev)
            c, o, b = s.calls, s.success, s.errors
            if o is None or b is None:
                o, b = _outcomes(o, b, c)
            calls += c
            ok += o
            bad += b
            html += s.html_errors
            if ev.fallbacks:
                fallbacks += len(ev.fallbacks)
            if not ev.routes:
                continue
            for name, pr in ev.routes.items():
                r = table.get(name)
                if r is None:
                    r = table[name] = FromMetrics()
                c, o, b = pr.calls, pr.success, pr.errors
                if o is None or b is None:
                    o, b = _outcomes(o, b, c)
                r.calls += c
                r.success += o
                r.errors += b
                r.html_errors += pr.html_errors
                r.stream_calls += pr.stream_calls
                r.retries += pr.retries
                r.latency_sum.terms.append(pr.latency_sum)
                if pr.latency_max > r.latency_max:
                    r.latency_max = pr.latency_max
                if pr.status_codes:
                    _add_counts(r.status_codes, pr.status_codes)
                if pr.usage is not None:
                    r.input_tokens += pr.usage.prompt_tokens or 0
                    r.output_tokens += pr.usage.completion_tokens or 0
        for r in table.values():
            r.latency_sum.tidy()
        self.pm_calls += calls
        self.pm_success += ok
        self.pm_errors += bad
        self.pm_html_errors += html
        self.fallbacks += fallbacks

    # ---- combining and settling ----

    def merge(self, o: Aggregate) -> None:
        """Add `o`, the aggregate of the byte range that follows this one's (not finished)."""
        self._flush_metrics()
        o._flush_metrics()
        _merge_routes(self.per_call, o.per_call)
        _merge_routes(self.from_metrics, o.from_metrics)
        for key in ("pm_calls", "pm_success", "pm_errors", "pm_html_errors", "fallbacks", "stream_overrides",
                    "tool_overrides", "circuit_skips", "events", "skipped_lines", "schema_mismatches",
                    "anonymous_runs"):
            setattr(self, key, getattr(self, key) + getattr(o, key))
        if self.first_schema_error is None:
            self.first_schema_error = o.first_schema_error
        for stamp in (o.first, o.last):
            if stamp is not None:
                self.first = stamp if self.first is None else min(self.first, stamp)
                self.last = stamp if self.last is None else max(self.last, stamp)
        runs = self.run_ids
        for run, attempted in o.run_ids.items():
            if attempted and not runs.get(run):
                runs[run] = True  # its held events from earlier ranges no longer count
                self._held_metrics.pop(run, None)
                self.fallbacks += self._held_fallbacks.pop(run, 0)
            elif run not in runs:
                runs[run] = False
        for run, held in o._held_metrics.items():
            if not runs[run]:
                self._held_metrics.setdefault(run, []).extend(held)
        for run, n in o._held_fallbacks.items():
            if runs[run]:
                self.fallbacks += n
            else:
                self._held_fallbacks[run] = self._held_fallbacks.get(run, 0) + n

    def finish(self) -> None:
        """Settle held events: these runs never had an `llm.attempt` event."""
        self._flush_metrics()
        for events in self._held_metrics.values():
            self._add_calls(events)
        for run, n in self._held_fallbacks.items():
            if run not in self._held_metrics:  # else its provider_metrics listed them
                self.fallbacks += n
        self._held_metrics.clear()
        self._held_fallbacks.clear()

    def __getstate__(self) -> dict[str, Any]:
        self._flush_metrics()
        return self.__dict__

    # ---- reporting ----

    @property
    def runs(self) -> int:
        return len(self.run_ids) + self.anonymous_runs

    def route_names(self) -> list[str]:
        return sorted(self.per_call.keys() | self.from_metrics.keys())

    def route(self, name: str) -> dict[str, Any]:
        """One route's figures, both sources merged."""
        c = self.per_call.get(name) or PerCall(self._cap)
        m = self.from_metrics.get(name) or FromMetrics()
        calls = c.calls + m.calls
        codes: dict[str, int] = dict(m.status_codes)
        for code, n in c.status_codes.items():
            key = "none" if code is None else str(code)
            codes[key] = codes.get(key, 0) + n
        return {
            "calls": calls, "success": c.success + m.success, "errors": c.calls - c.success + m.errors,
            "html_errors": c.html_errors + m.html_errors, "stream_calls": c.stream_calls + m.stream_calls,
            "retries": c.retries + m.retries,
            "latency_avg": _r((c.lat_sum.value + m.latency_sum.value) / max(calls, 1)),
            "latency_max": _r(max(c.lat.hi if c.lat.n else 0.0, m.latency_max)),
            "latency_p50": _r(c.lat.percentile(50)), "latency_p95": _r(c.lat.percentile(95)),
            "latency_p99": _r(c.lat.percentile(99)), "ttft_p50": _r(c.ttft.percentile(50)),
            "latency_samples": c.lat.n,
            "status_codes": dict(sorted(codes.items())),
            "input_tokens": c.input_tokens + m.input_tokens, "output_tokens": c.output_tokens + m.output_tokens,
        }

    def summary(self) -> dict[str, Any]:
        self._flush_metrics()
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
            "time_window": {"first_ts": iso(self.first) if self.first else None,
                            "last_ts": iso(self.last) if self.last else None},
            "routes": routes,
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 6)
