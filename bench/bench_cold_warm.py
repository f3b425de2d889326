"""Wall time of a `kcctl run` demo: cold (kcctl had to start kcd and Ray) vs warm.

Each cold sample uses a fresh runtime directory, so kcctl auto-starts a new
user-mode daemon which starts a local Ray instance; the run then waits for
Ray. Warm samples reuse the last daemon. Cold and warm samples are
interleaved (cold, warm×k, stop) so machine noise hits both alike.

    .venv/bin/python bench/bench_cold_warm.py [--rounds 3] [--warm 5] [--executor ray|in-process]

Prints medians, the ratio, and a Markdown row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo.yaml"
TASK = "@" + str(REPO / "configs" / "tasks" / "enumerate_workspace.md")
SEED = REPO / "configs" / "workspaces" / "c_project"


def kcctl(env: dict, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kcctl.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    return time.perf_counter() - t0, proc


def one_round(executor: str, warm_n: int) -> tuple[float, list[float]]:
    root = Path(tempfile.mkdtemp(prefix="kcb-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KYLECODE_", "RAY_"))}
    env.update(XDG_RUNTIME_DIR=str(root / "rt"), XDG_STATE_HOME=str(root / "state"),
               HOME=str(root), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    if executor == "in-process":
        env["RAY_SCE_LOCAL_MODE"] = "1"
    (root / "rt").mkdir(mode=0o700)
    run_args = ("run", str(CONFIG), "--task", TASK, "--workspace", str(SEED))
    try:
        cold, proc = kcctl(env, *run_args)
        if proc.returncode != 0:
            raise SystemExit(f"cold run failed:\n{proc.stdout}\n{proc.stderr}")
        warm = []
        for _ in range(warm_n):
            t, proc = kcctl(env, *run_args)
            if proc.returncode != 0:
                raise SystemExit(f"warm run failed:\n{proc.stdout}\n{proc.stderr}")
            warm.append(t)
        return cold, warm
    finally:
        kcctl(env, "daemon", "stop")
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--executor", choices=["ray", "in-process"], default="ray")
    args = ap.parse_args()
    colds, warms = [], []
    for i in range(args.rounds):
        cold, warm = one_round(args.executor, args.warm)
        colds.append(cold)
        warms.extend(warm)
        print(f"round {i + 1}: cold {cold:.2f}s, warm median {statistics.median(warm):.3f}s", flush=True)
    cm, wm = statistics.median(colds), statistics.median(warms)
    print(f"\nexecutor={args.executor}  cold median {cm:.2f}s (n={len(colds)}, "
          f"min {min(colds):.2f}, max {max(colds):.2f})  warm median {wm:.3f}s (n={len(warms)}, "
          f"min {min(warms):.3f}, max {max(warms):.3f})  cold/warm = {cm / wm:.1f}x")
    print(f"\n| {time.strftime('%Y-%m-%d')} | {args.executor} | {cm:.2f} s | {wm:.3f} s | {cm / wm:.1f}× | "
          f"{len(colds)} cold, {len(warms)} warm | Python {platform.python_version()}, {os.cpu_count()} cores |")


if __name__ == "__main__":
    main()
