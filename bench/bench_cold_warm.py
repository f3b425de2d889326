"""What a `kcctl` call costs as a user sees it: start-up, a status call, a warm demo run,
and a cold run (kcctl had to start kcd and Ray).

Every figure is process start to exit of the installed `kcctl` script (as a shell or a CI
job runs it), against `python -c pass` on the same interpreter in the same run, so start-up
noise on these shared machines hits the baseline alike. Samples are interleaved: one pass,
one `--help`, one `status`, one warm `run`, repeated.

  pass      `python -c pass`: the interpreter's own floor
  click     `python -c "import click"`: what the chosen CLI library costs before any kcctl code
  help      `kcctl --help`: click and the command table, no command module, no client
  status    `kcctl status` against a warm daemon: one request over the socket
  run       `kcctl run configs/demo.yaml ... --workspace configs/workspaces/c_project`: the
            demo (pack and upload the workspace, 3 turns on the simulator, follow the events)
  cold      the same run with a fresh runtime directory: kcctl starts kcd, kcd starts Ray

    .venv/bin/python bench/bench_cold_warm.py [--samples 21] [--cold 3] [--executor ray|in-process]

Prints medians, the added time over `pass`, the start-up targets (`TARGETS`), and Markdown rows for
docs/benchmarks.md §1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KCCTL = str(Path(sys.executable).with_name("kcctl"))
RUN = ("run", str(REPO / "configs" / "demo.yaml"), "--task",
       "@" + str(REPO / "configs" / "tasks" / "enumerate_workspace.md"),
       "--workspace", str(REPO / "configs" / "workspaces" / "c_project"))
ORIGINAL_RAY_RUN_S = 9.1  # the original KyleCode, a 4-step mock run in Ray mode (docs/benchmarks.md §1)
TARGETS = {"help": ("added", 0.060), "status": ("added", 0.080), "run": ("wall", 0.200)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children, cumulative
    return usage.ru_utime + usage.ru_stime


def timed(env: dict, argv: list[str]) -> tuple[float, float]:
    """(wall seconds from start to exit, the process's own user + system CPU seconds)."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    _, err = proc.communicate(timeout=600)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{err.decode(errors='replace')}")
    return took, _children_cpu() - cpu0


class Sandbox:
    """A private runtime, state and home directory: its own user-mode kcd."""

    def __init__(self, executor: str):
        self.root = Path(tempfile.mkdtemp(prefix="kcb-", dir="/tmp"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KYLECODE_", "RAY_"))}
        env.update(XDG_RUNTIME_DIR=str(self.root / "rt"), XDG_STATE_HOME=str(self.root / "state"),
                   HOME=str(self.root), RAY_USAGE_STATS_ENABLED="0")
        if executor == "in-process":
            env["RAY_SCE_LOCAL_MODE"] = "1"
        (self.root / "rt").mkdir(mode=0o700)
        self.env = env

    def close(self) -> None:
        subprocess.run([KCCTL, "daemon", "stop"], env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)


def cold_runs(executor: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        box = Sandbox(executor)
        try:
            out.append(timed(box.env, [KCCTL, *RUN])[0])
        finally:
            box.close()
    return out


def warm_samples(executor: str, n: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall seconds, CPU seconds) per figure, interleaved; "inside" is the daemon's run time."""
    box = Sandbox(executor)
    cases = {"pass": [sys.executable, "-c", "pass"], "click": [sys.executable, "-c", "import click"],
             "help": [KCCTL, "--help"], "status": [KCCTL, "status"], "run": [KCCTL, *RUN]}
    samples: dict[str, list[float]] = {k: [] for k in cases}
    cpu_samples: dict[str, list[float]] = {}
    try:
        timed(box.env, [KCCTL, *RUN])  # starts the daemon (and Ray); not a sample
        timed(box.env, [KCCTL, *RUN])
        for _ in range(n):
            for name, argv in cases.items():
                wall, cpu = timed(box.env, argv)
                samples[name].append(wall)
                cpu_samples.setdefault(name, []).append(cpu)
        for _ in range(max(n // 3, 3)):  # the run's own time inside the daemon (run.end's duration_s)
            out = subprocess.run([KCCTL, *RUN, "--json"], env=box.env, capture_output=True, timeout=600, cwd=REPO)
            end = [json.loads(line) for line in out.stdout.splitlines() if b'"run.end"' in line]
            samples.setdefault("inside", []).append(end[-1]["data"]["duration_s"])
    finally:
        box.close()
    return samples, cpu_samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=21, help="interleaved samples of each warm figure")
    ap.add_argument("--cold", type=int, default=3, help="cold runs (each starts its own kcd and Ray)")
    ap.add_argument("--executor", choices=["ray", "in-process"], default="ray")
    args = ap.parse_args()

    samples, cpu_samples = warm_samples(args.executor, args.samples)
    colds = cold_runs(args.executor, args.cold) if args.cold else []
    med = {k: statistics.median(v) for k, v in samples.items()}
    floor = med["pass"]
    print(f"executor={args.executor}, {args.samples} interleaved samples each, kcctl = {KCCTL}\n")
    print(f"{'figure':<8} {'median':>9} {'over pass':>10} {'min':>8} {'max':>8} {'CPU':>7} {'CPU over pass':>14}  target")
    cpu = {k: statistics.median(v) for k, v in cpu_samples.items()}
    for name, values in samples.items():
        if name == "inside":
            continue
        added = med[name] - floor
        verdict = ""
        if name in TARGETS:
            kind, limit = TARGETS[name]
            value = added if kind == "added" else med[name]
            verdict = f"{kind} ≤ {limit * 1000:.0f} ms: {'met' if value <= limit else 'NOT met'}"
        print(f"{name:<8} {med[name] * 1000:7.1f}ms {added * 1000:+8.1f}ms {min(values) * 1000:6.1f}ms "
              f"{max(values) * 1000:6.1f}ms {cpu[name] * 1000:5.1f}ms {(cpu[name] - cpu['pass']) * 1000:+12.1f}ms  {verdict}")
    print(f"\nthe warm run inside the daemon (run.end duration_s): median {med['inside'] * 1000:.0f} ms "
          f"(n={len(samples['inside'])}); the kcctl process's own share of the warm run: "
          f"{(med['run'] - med['inside']) * 1000:.0f} ms")
    print(f"\nwarm run vs the original's {ORIGINAL_RAY_RUN_S} s Ray-mode run: {ORIGINAL_RAY_RUN_S / med['run']:.0f}x faster")
    if colds:
        cm = statistics.median(colds)
        print(f"cold run median {cm:.2f} s (n={len(colds)}, min {min(colds):.2f}, max {max(colds):.2f}); "
              f"cold / warm = {cm / med['run']:.1f}x")
    day = time.strftime("%Y-%m-%d")
    machine = f"Python {platform.python_version()}, {os.cpu_count()} cores"
    print("\n| date | executor | pass | `--help` (added) | `status` (added) | warm `run` (added) | cold `run` | samples | machine |")
    print(f"| {day} | {args.executor} | {floor * 1000:.0f} ms | {med['help'] * 1000:.0f} ms (+{(med['help'] - floor) * 1000:.0f}) | "
          f"{med['status'] * 1000:.0f} ms (+{(med['status'] - floor) * 1000:.0f}) | "
          f"{med['run'] * 1000:.0f} ms (+{(med['run'] - floor) * 1000:.0f}) | "
          f"{statistics.median(colds):.2f} s | {args.samples} warm, {len(colds)} cold | {machine} |"
          if colds else f"| {day} | {args.executor} | {floor * 1000:.0f} ms | {med['help'] * 1000:.0f} ms | "
          f"{med['status'] * 1000:.0f} ms | {med['run'] * 1000:.0f} ms | - | {args.samples} warm | {machine} |")


if __name__ == "__main__":
    main()
