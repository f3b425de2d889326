"""The telemetry exporter's summary pass vs a plain `json.loads`-per-line loop.

Generates a telemetry JSONL of the given size (kcd's events: run.start, llm.attempt,
fallback, circuit.*, probe, run.end and provider_metrics per run, plus 10% of runs as the
original's bare `provider_metrics` lines), in /tmp, reused when present. Then, in fresh
child processes interleaved A, B, A, B, A, B:

  A  `kcctl.export.scan()` + `summary()`: msgspec, 8 MiB chunks, the full summary;
  B  `for line in f: json.loads(line)` computing only the original's minimal summary
     (calls, errors, html_errors, per route), with the same no-double-counting rule.

Prints the median MB/s of each, the ratio, each variant's peak RSS (and growth over the
interpreter's baseline), checks that both computed the same minimal figures, and a
Markdown row for docs/benchmarks.md.

    .venv/bin/python bench/bench_exporter.py [--size-mb 1024] [--rounds 3]
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


def generate(path: Path, size: int, seed: int = 1) -> None:
    """Write whole runs until `path` holds at least `size` bytes."""
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    written = 0
    t0 = 1_760_000_000.0
    n = 0
    with open(tmp, "w", encoding="utf-8", buffering=1 << 20) as f:
        while written < size:
            n += 1
            lines: list[str] = []
            if n % 10 == 0:  # the original's line: no ts, no run id, no other events
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


def minimal(path: Path) -> dict:
    """Variant B: the original's minimal summary with json.loads, same counting rule."""
    totals = {"calls": 0, "errors": 0, "html_errors": 0, "routes": {}}
    attempt_runs: set[str] = set()
    held: dict[str, list[dict]] = {}

    def route(name: str) -> dict:
        return totals["routes"].setdefault(name, {"calls": 0, "errors": 0, "html_errors": 0})

    def add_pm(ev: dict) -> None:
        s = ev.get("summary") or {}
        totals["calls"] += s.get("calls", 0)
        totals["errors"] += s.get("errors", 0)
        totals["html_errors"] += s.get("html_errors", 0)
        for name, st in (ev.get("routes") or {}).items():
            r = route(name)
            r["calls"] += st.get("calls", 0)
            r["errors"] += st.get("errors", 0)
            r["html_errors"] += st.get("html_errors", 0)

    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            kind, run = ev.get("event"), ev.get("run_id")
            if kind == "llm.attempt":
                if run is not None and run not in attempt_runs:
                    attempt_runs.add(run)
                    held.pop(run, None)
                ok = ev.get("outcome") == "ok"
                html = ev.get("outcome") == "upstream_html"
                r = route(ev.get("route") or "unknown")
                r["calls"] += 1
                r["errors"] += not ok
                r["html_errors"] += html
                totals["calls"] += 1
                totals["errors"] += not ok
                totals["html_errors"] += html
            elif kind == "provider_metrics":
                if run is None:
                    add_pm(ev)
                elif run not in attempt_runs:
                    held.setdefault(run, []).append(ev)
    for evs in held.values():
        for ev in evs:
            add_pm(ev)
    totals["routes"] = dict(sorted(totals["routes"].items()))
    return totals


def child(variant: str, path: Path) -> None:
    from kcctl.export import scan  # both variants pay the import before the clock starts

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if variant == "exporter":
        s = scan(path).summary()
        result = {"calls": s["calls"], "errors": s["errors"], "html_errors": s["html_errors"],
                  "routes": {k: {f: v[f] for f in ("calls", "errors", "html_errors")} for k, v in s["routes"].items()}}
    else:
        result = minimal(path)
    elapsed = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": elapsed, "rss_before_kb": before, "rss_peak_kb": peak, "result": result}))


def run_child(variant: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], Path(a.child[1]))
        return
    path = Path(f"/tmp/kylecode_bench_telemetry_{a.size_mb}mb.jsonl")
    size = a.size_mb << 20
    if not path.exists() or path.stat().st_size < size:
        print(f"generating {path} ({a.size_mb} MiB)…", flush=True)
        t = time.perf_counter()
        generate(path, size)
        print(f"  {time.perf_counter() - t:.1f}s", flush=True)
    mb = path.stat().st_size / 1e6
    with open(path, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(8 << 20), b""))
    print(f"file: {path} {mb:.0f} MB, {lines:,} lines; python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs", flush=True)
    runs: dict[str, list[dict]] = {"exporter": [], "json": []}
    for i in range(a.rounds):
        for variant in ("exporter", "json"):
            r = run_child(variant, path)
            runs[variant].append(r)
            print(f"  round {i + 1} {variant:<8} {r['seconds']:6.2f}s  {mb / r['seconds']:6.1f} MB/s  "
                  f"peak RSS {r['rss_peak_kb'] / 1024:.0f} MiB", flush=True)
    same = all(r["result"] == runs["json"][0]["result"] for rs in runs.values() for r in rs)
    med = {v: statistics.median(r["seconds"] for r in rs) for v, rs in runs.items()}
    peak = {v: max(r["rss_peak_kb"] for r in rs) / 1024 for v, rs in runs.items()}
    grow = {v: max(r["rss_peak_kb"] - r["rss_before_kb"] for r in rs) / 1024 for v, rs in runs.items()}
    spread = {v: (min(r["seconds"] for r in rs), max(r["seconds"] for r in rs)) for v, rs in runs.items()}
    print()
    for v, label in (("exporter", "kcctl exporter (msgspec, streaming)"), ("json", "json.loads per line")):
        print(f"{label:<38} median {med[v]:6.2f}s ({spread[v][0]:.2f}–{spread[v][1]:.2f})  "
              f"{mb / med[v]:6.1f} MB/s  {lines / med[v] / 1e3:6.0f}k lines/s  peak RSS {peak[v]:.0f} MiB "
              f"(+{grow[v]:.0f} MiB over start-up)")
    print(f"ratio (exporter speed / json.loads speed): {med['json'] / med['exporter']:.2f}x")
    print(f"minimal summaries identical: {same}")
    print()
    print("| file | lines | exporter MB/s | json.loads MB/s | ratio | exporter peak RSS | json.loads peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {mb:.0f} MB | {lines / 1e6:.2f} M | {mb / med['exporter']:.1f} | {mb / med['json']:.1f} | "
          f"{med['json'] / med['exporter']:.2f}x | {peak['exporter']:.0f} MiB | {peak['json']:.0f} MiB |")
    if not same:
        sys.exit("the two variants disagree on the minimal summary")


if __name__ == "__main__":
    main()
