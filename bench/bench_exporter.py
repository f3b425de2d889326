"""The telemetry exporter against the bare-decode floor and the original's exporter.

Generates a telemetry JSONL of the given size and shape in /tmp (reused when present):
`original` holds only the original's bare `provider_metrics` lines (one per run, no ts, no
run id: its only telemetry event); `mixed` holds kcd's events (run.start, llm.attempt, fallback,
circuit.*, probe, run.end and provider_metrics per run) with every tenth run the original's
line. Then, in fresh child processes interleaved over the rounds:

  parallel  `kcctl.export.scan()` + the summary JSON, as `kcctl metrics export FILE
            --print-summary` does it: byte ranges on os.cpu_count() forked workers;
  single    the same in one process (`workers=1`);
  floor     a bare `msgspec.json.decode(line)` loop over the lines, computing nothing;
  floor2    (optional) the same loop on every core, one byte range per CPU: what the
            machine's cores can give any decode-per-line design, the parallel ceiling;
  original  the original's exporter (`scripts/export_provider_metrics.py`), reimplemented from
            its documented behaviour (the code is not available): `json.loads` every line into a list, then sum `summary` and `routes`
            of every `provider_metrics` event (calls, errors, html_errors).

Prints each variant's median MB/s and spread, its peak RSS (for `parallel`: the parent's
plus every worker's peak, which counts pages the forked workers share with the parent
twice, so it overstates), ratios, whether the exporter's calls/errors/html_errors per route
equal the original's, and a Markdown row for docs/benchmarks.md §3.

    .venv/bin/python bench/bench_exporter.py [--shape original|mixed] [--size-mb 1024] [--rounds 3]
        [--variants parallel,single,floor,original[,floor2]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROUTES = ("openrouter/openai/gpt-4o-mini", "openrouter/x-ai/grok-4-fast", "openai/gpt-4o-mini",
          "anthropic/claude-3-5-haiku")


def generate(path: Path, size: int, shape: str, seed: int = 1) -> None:
    """Write whole runs until `path` holds at least `size` bytes: kcd's events with every
    tenth run the original's line (`mixed`), or only the original's lines (`original`)."""
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    written = 0
    t0 = 1_760_000_000.0
    n = 0
    with open(tmp, "w", encoding="utf-8", buffering=1 << 20) as f:
        while written < size:
            n += 1
            lines: list[str] = []
            if shape == "original" or n % 10 == 0:  # the original's line: no ts, no run id, nothing else
                calls = rng.randint(5, 40)
                errs = rng.randint(0, 3)
                route = rng.choice(ROUTES)
                lines.append(json.dumps({
                    "event": "provider_metrics",
                    "summary": {"calls": calls, "success": calls - errs, "errors": errs, "html_errors": errs // 2,
                                "circuit_skips": 0, "stream_overrides": 1, "tool_overrides": 0},
                    "routes": {route: {"calls": calls, "success": calls - errs, "errors": errs, "stream_calls": calls,
                                       "html_errors": errs // 2, "latency_sum": calls * 1.2, "latency_max": 4.2,
                                       "latency_avg": 1.2}},
                    "fallbacks": [], "stream_overrides": [{"route": route, "reason": "openrouter_tool_turn_policy"}],
                    "tool_overrides": []}, separators=(",", ":")))
            else:
                run = "%012x" % rng.getrandbits(48)
                route = rng.choice(ROUTES)
                seq = 0
                t = t0 + n * 30

                def env(event: str, **fields) -> str:
                    nonlocal seq, t
                    seq += 1
                    t += rng.random() * 2
                    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
                    return json.dumps({"schema_version": 1, "ts": ts, "seq": seq, "host": "bench", "pid": 4242,
                                       "event": event, "run_id": run, "route": route, **fields},
                                      separators=(",", ":"))

                lines.append(env("run.start", config="configs/demo.yaml"))
                lines.append(env("probe", stream_success=True, tool_stream_success=True, elapsed=0.4))
                per: dict[str, list[int]] = {}
                for turn in range(1, rng.randint(5, 30)):
                    r = route
                    for attempt in range(1, 4):
                        ok = rng.random() > 0.08
                        html = not ok and rng.random() < 0.5
                        code = 200 if ok else (502 if html else rng.choice((429, 500, 503)))
                        lat = rng.lognormvariate(0.0, 0.8)
                        st = per.setdefault(r, [0, 0, 0])
                        st[0] += 1
                        st[1] += not ok
                        st[2] += html
                        lines.append(env(
                            "llm.attempt", turn=turn, attempt=attempt, kind="primary" if attempt == 1 else "retry",
                            status_code=code, latency_s=round(lat, 4), ttft_s=round(lat / 4, 4), stream=True,
                            outcome="ok" if ok else ("upstream_html" if html else "http_error"),
                            attrs={"gen_ai.operation.name": "chat", "gen_ai.provider.name": r.split("/")[0],
                                   "gen_ai.request.model": r.split("/", 1)[1],
                                   "gen_ai.usage.input_tokens": rng.randint(500, 9000) if ok else None,
                                   "gen_ai.usage.output_tokens": rng.randint(10, 900) if ok else None}))
                        if ok:
                            break
                    else:
                        lines.append(env("circuit.open", reason="3 transient failures"))
                        nxt = rng.choice([x for x in ROUTES if x != r])
                        lines.append(env("fallback", **{"from": r, "to": nxt, "reason": "http_error"}))
                        route = nxt
                lines.append(env("run.end", status="ok", completed=True))
                calls = sum(v[0] for v in per.values())
                errors = sum(v[1] for v in per.values())
                lines.append(env(
                    "provider_metrics", route_id=route, circuit_skips=[],
                    summary={"calls": calls, "success": calls - errors, "errors": errors,
                             "html_errors": sum(v[2] for v in per.values()), "circuit_skips": 0,
                             "stream_overrides": 0, "tool_overrides": 0},
                    routes={k: {"calls": v[0], "success": v[0] - v[1], "errors": v[1], "stream_calls": v[0],
                                "html_errors": v[2], "latency_sum": 1.0, "latency_max": 1.0, "latency_avg": 1.0}
                            for k, v in per.items()},
                    fallbacks=[], stream_overrides=[], tool_overrides=[]))
            block = "\n".join(lines) + "\n"
            f.write(block)
            written += len(block)
    os.replace(tmp, path)


def original(path: Path) -> dict:
    """The original's exporter: every line json.loads'ed into a list, then summed."""
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    totals: dict = {"calls": 0, "errors": 0, "html_errors": 0, "routes": {}}
    for ev in events:
        if not isinstance(ev, dict) or ev.get("event") != "provider_metrics":
            continue
        s = ev.get("summary") or {}
        for key in ("calls", "errors", "html_errors"):
            totals[key] += s.get(key, 0)
        for name, st in (ev.get("routes") or {}).items():
            r = totals["routes"].setdefault(name, {"calls": 0, "errors": 0, "html_errors": 0})
            for key in ("calls", "errors", "html_errors"):
                r[key] += st.get(key, 0)
    totals["routes"] = dict(sorted(totals["routes"].items()))
    return totals


def floor(path: Path) -> dict:
    """The bare-decode floor: decode every line, keep nothing."""
    import msgspec

    decode = msgspec.json.decode
    n = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                decode(line)
            except msgspec.DecodeError:
                continue
            n += 1
    return {"decoded": n}


def _floor_range(task: tuple[str, int, int]) -> tuple[int, int]:
    """floor() over one byte range (it starts at a line start); returns lines and peak RSS."""
    import msgspec

    path, start, end = task
    decode = msgspec.json.decode
    n = 0
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        for line in f:
            if pos >= end:
                break
            pos += len(line)
            try:
                decode(line)
            except msgspec.DecodeError:
                continue
            n += 1
    return n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def floor_parallel(path: Path) -> tuple[dict, list[int]]:
    """The floor on every core: one line-aligned byte range per CPU, in forked processes."""
    import multiprocessing

    from kcctl.export.parallel import line_starts

    cpus = os.cpu_count() or 1
    size = path.stat().st_size
    bounds = line_starts(path, size, -(-size // cpus))
    with multiprocessing.get_context("fork").Pool(cpus) as pool:
        parts = pool.map(_floor_range, [(str(path), a, b) for a, b in zip(bounds, bounds[1:])])
    return {"decoded": sum(n for n, _ in parts)}, [kb for _, kb in parts]


def child(variant: str, path: Path) -> None:
    from kcctl.export import scan, summary_json  # every variant pays the import before the clock

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers: dict[int, int] = {}
    t = time.perf_counter()
    if variant in ("parallel", "single"):
        agg = scan(path, workers=1 if variant == "single" else None)
        s = json.loads(summary_json(agg))
        workers = agg.worker_peaks
        result = {"calls": s["calls"], "errors": s["errors"], "html_errors": s["html_errors"],
                  "routes": {k: {f: v[f] for f in ("calls", "errors", "html_errors")} for k, v in s["routes"].items()}}
    elif variant == "floor":
        result = floor(path)
    elif variant == "floor2":
        result, worker_kb = floor_parallel(path)
        workers = dict(enumerate(worker_kb))
    else:
        result = original(path)
    elapsed = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": elapsed, "rss_before_kb": before, "rss_peak_kb": peak,
                      "workers_peak_kb": sorted(workers.values()), "result": result}))


def run_child(variant: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, str(path)], check=True,
                         capture_output=True, text=True).stdout
    r = json.loads(out)
    r["total_kb"] = r["rss_peak_kb"] + sum(r["workers_peak_kb"])
    return r


LABELS = {"parallel": "exporter, parallel", "single": "exporter, one process",
          "floor": "bare msgspec.json.decode loop", "floor2": "bare decode loop on every core",
          "original": "original's exporter (json.loads, list)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=("original", "mixed"), default="original")
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="parallel,single,floor,original")
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], Path(a.child[1]))
        return
    variants = a.variants.split(",")
    path = Path(f"/tmp/kylecode_bench_telemetry_{a.shape}_{a.size_mb}mb.jsonl")
    size = a.size_mb << 20
    if not path.exists() or path.stat().st_size < size:
        print(f"generating {path} ({a.size_mb} MiB, {a.shape})…", flush=True)
        t = time.perf_counter()
        generate(path, size, a.shape)
        print(f"  {time.perf_counter() - t:.1f}s", flush=True)
    mb = path.stat().st_size / 1e6
    with open(path, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(8 << 20), b""))
    print(f"file: {path} {mb:.0f} MB, {lines:,} lines ({a.shape}); python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for i in range(a.rounds):
        for v in variants:
            r = run_child(v, path)
            runs[v].append(r)
            workers = f" + workers {'+'.join(str(k // 1024) for k in r['workers_peak_kb'])}" \
                if r["workers_peak_kb"] else ""
            print(f"  round {i + 1} {v:<8} {r['seconds']:6.2f}s  {mb / r['seconds']:6.1f} MB/s  "
                  f"peak RSS {r['rss_peak_kb'] // 1024}{workers} MiB", flush=True)
    med = {v: statistics.median(r["seconds"] for r in rs) for v, rs in runs.items()}
    spread = {v: (min(r["seconds"] for r in rs), max(r["seconds"] for r in rs)) for v, rs in runs.items()}
    peak = {v: max(r["total_kb"] for r in rs) / 1024 for v, rs in runs.items()}
    print()
    for v in variants:
        print(f"{LABELS[v]:<40} median {med[v]:6.2f}s ({spread[v][0]:.2f}–{spread[v][1]:.2f})  "
              f"{mb / med[v]:6.1f} MB/s  {lines / med[v] / 1e3:6.0f}k lines/s  peak RSS {peak[v]:.0f} MiB")
    for v in variants:
        for base in ("floor", "original"):
            if base in med and v not in ("floor", "floor2", "original"):
                print(f"{v} speed / {base} speed: {med[base] / med[v]:.2f}x")
    same = None
    if "original" in runs:
        ref = runs["original"][0]["result"]
        same = all(r["result"] == ref for v in ("parallel", "single") for r in runs.get(v, []))
        print(f"calls/errors/html_errors per route identical to the original's exporter: {same}")
    print()
    cells = " | ".join(f"{mb / med[v]:.1f} MB/s, {peak[v]:.0f} MiB" for v in variants)
    print(f"| {a.shape} | {mb:.0f} MB | {lines / 1e6:.2f} M | {cells} |")
    if same is False:
        sys.exit("the exporter and the original's exporter disagree on the minimal summary")


if __name__ == "__main__":
    main()
