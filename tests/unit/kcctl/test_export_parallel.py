"""The exporter's parallel pass: byte ranges on several processes merge to a single pass's output."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from kcctl import export
from kcctl.cli import main
from kcctl.export import parallel
from kcctl.export import read as export_read
from kcctl.export.stats import ExactSum, Series

from .test_exporter import T0, build

RANGE = 997  # bytes: a prime, so nominal range ends fall mid-line


@pytest.fixture
def big(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """40 copies of test_exporter's file (its runs renamed per copy, timestamps shifted), so
    runs, held provider_metrics and fallbacks straddle ranges; plus an over-long line."""
    monkeypatch.setattr(export_read, "MAX_LINE", 2_000)
    base = build()[0].lines
    out: list[str] = []
    for k in range(40):
        for line in base:
            line = line.replace('"r-', f'"c{k}-')
            if '"ts": "' in line:  # keep the copies' time windows apart
                ev = json.loads(line)
                ts = export.parse_ts(ev["ts"]) + timedelta(hours=k)
                line = json.dumps({**ev, "ts": ts.isoformat().replace("+00:00", "Z")})
            out.append(line)
        if k == 20:
            out.append("x" * 5_000)  # dropped: longer than MAX_LINE
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(out) + "\n")
    return path


def outputs(agg: export.Aggregate) -> tuple[bytes, ...]:
    return (export.summary_json(agg), export.document(agg, "prom")[0],
            json.dumps(export.otlp_json(agg, now_ns=1)).encode())


FILTERS = [export.Filters(), export.Filters(run_id="c7-a"),
           export.Filters(since=T0 + timedelta(hours=3, seconds=5), until=T0 + timedelta(hours=29, seconds=20)),
           export.Filters(since=T0 + timedelta(hours=11))]


@pytest.mark.parametrize("filters", FILTERS, ids=["none", "run-id", "window", "since"])
@pytest.mark.parametrize("cap", [3, 100_000], ids=["histogram", "exact"])
def test_parallel_equals_single_pass(big: Path, filters: export.Filters, cap: int) -> None:
    single = export.scan(big, filters, sample_cap=cap, workers=1)
    par = export.scan(big, filters, sample_cap=cap, workers=2, parallel_min=0, range_size=RANGE, chunk_size=64)
    assert par.worker_peaks and not single.worker_peaks  # it did run on worker processes
    assert outputs(par) == outputs(single)
    s = json.loads(outputs(single)[0])
    if filters == export.Filters():
        assert s["skipped_lines"] == 40 * 6 + 1 and s["schema_mismatches"] == 40
        assert (s["calls"], s["runs"], s["fallbacks"]) == (40 * 34, 40 * 7, 40 * 6)


def test_ranges_start_at_lines_and_some_nominal_ends_fall_mid_line(big: Path) -> None:
    data = big.read_bytes()
    bounds = parallel.line_starts(big, len(data), RANGE)
    assert bounds[0] == 0 and bounds[-1] == len(data) and bounds == sorted(set(bounds))
    assert len(bounds) > 20
    assert all(data[b - 1:b] == b"\n" for b in bounds[1:-1])
    assert any(data[n - 1:n] != b"\n" for n in range(RANGE, len(data), RANGE))


def test_streaming_pass_stays_single_and_in_file_order(big: Path) -> None:
    seen: list[bytes] = []
    agg = export.scan(big, on_event=seen.append, workers=2, parallel_min=0, range_size=RANGE)
    assert not agg.worker_peaks
    assert len(seen) == agg.events and seen[0].startswith(b'{"event": "provider_metrics"')


def test_cli_output_is_the_same_above_the_threshold(big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    single = CliRunner().invoke(main, ["metrics", "export", str(big), "--print-summary"])
    monkeypatch.setattr(parallel, "PARALLEL_MIN", 0)
    monkeypatch.setattr(parallel, "RANGE_SIZE", RANGE)
    par = CliRunner().invoke(main, ["metrics", "export", str(big), "--print-summary"])
    assert single.exit_code == par.exit_code == 0, par.output
    assert par.stdout == single.stdout


def test_exact_sum_ignores_order_and_grouping() -> None:
    rng = random.Random(3)
    xs = [rng.lognormvariate(0, 3) * rng.choice((1, -1, 1e-9, 1e12)) for _ in range(20_000)]
    whole = ExactSum()
    for x in xs:
        whole.add(x)
    parts = [ExactSum() for _ in range(7)]
    for i, x in enumerate(reversed(xs)):
        parts[i % 7].add(x)
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    import math

    assert whole.value == merged.value == math.fsum(xs)


def test_series_merges_to_the_single_series() -> None:
    rng = random.Random(5)
    xs = [rng.expovariate(1.0) for _ in range(5_000)] + [0.0, -1.0]
    for cap in (10, 4_000, 10_000):
        one = Series(cap)
        for x in xs:
            one.add(x)
        a, b = Series(cap), Series(cap)
        for x in xs[::2]:
            a.add(x)
        for x in xs[1::2]:
            b.add(x)
        a.merge(b)
        assert [a.percentile(q) for q in (0, 50, 95, 99, 100)] == [one.percentile(q) for q in (0, 50, 95, 99, 100)]
        assert (a.n, a.lo, a.hi) == (one.n, one.lo, one.hi) == (len(xs), -1.0, max(xs))
