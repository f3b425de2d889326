"""Added wall time per tool call of each isolation mode, side by side in one run.

Calls go through `execute_calls` with one long-lived tool host, as the
in-process executor makes them. Rows, interleaved call by call so that machine
noise lands on every row alike:

- `none`: the pre-containment path: `bash -c` spawned straight from this
  process (its own session, a group kill at the end), no tool host, no caps,
  through the same `execute_calls` (a handler override);
- `process`, `namespaces`, `bwrap`: kcd's modes (those that work here).

Two workloads: `run_shell` of `true`, and a reply of 10 `read_file` calls
(file tools never spawn a process; the row shows they pay nothing).

A floor row, `bwrap alone`, spawns bubblewrap with kcd's exact command line
straight from this process (no tool host, no cgroup): what bubblewrap itself
costs on this machine, so the rest of the `bwrap` row is kcd's own share.

    python bench/bench_isolation.py [--calls 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import pct

from kcd.agent.calls import ToolInvocation, ToolSettings
from kcd.agent.tools import execute_calls, shell_environment
from kcd.agent.tools.results import Result
from kcd.sandbox.bwrap import bwrap_argv, find_bwrap
from kcd.sandbox.etcview import build_etc_view
from kcd.sandbox.host import ToolHost
from kcd.sandbox.modes import IsolationUnavailable, probe_isolation


def direct_shell(root, args, settings, cancel) -> Result:
    """The old run_shell: spawn from this process, wait, kill the group."""
    proc = subprocess.Popen(["/bin/bash", "-c", args["command"]], cwd=root, env=shell_environment(str(root)),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, close_fds=True)
    out, err = proc.communicate()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return Result("<BASH_RESULT>\n" + out.decode() + err.decode() + "</BASH_RESULT>", {"exit": proc.returncode},
                  ok=proc.returncode == 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with ToolHost() as host, tempfile.TemporaryDirectory() as tmp:
        ws = str(Path(tmp).resolve())
        for i in range(10):
            Path(ws, f"f{i}.txt").write_text("line\n" * 200)
        modes = []
        for mode in ("process", "namespaces", "bwrap"):
            try:
                probe_isolation(host, mode)
                modes.append(mode)
            except IsolationUnavailable as exc:
                print(f"# {mode}: not available here ({exc})")
        shell = [ToolInvocation("c", "run_shell", {"command": "true"})]
        reads = [ToolInvocation(f"r{i}", "read_file", {"path": f"f{i}.txt"}) for i in range(10)]
        rows: dict[str, dict[str, list[float]]] = {m: {"true": [], "read10": []} for m in ["none", *modes]}
        bwrap = find_bwrap()
        etc_view = build_etc_view()
        floor = (bwrap_argv(bwrap, ws, network=False, etc_view=etc_view) + ["/bin/bash", "-c", "true"]) if bwrap else None
        if floor:
            rows["bwrap alone"] = {"true": [], "read10": []}
        direct = {"run_shell": direct_shell}
        for _ in range(5):  # warm-up
            execute_calls(ws, shell, ToolSettings(), handlers=direct)
            for mode in modes:
                execute_calls(ws, shell, ToolSettings(isolation=mode), host=host)
        for _ in range(args.calls):
            started = time.perf_counter()
            execute_calls(ws, shell, ToolSettings(), handlers=direct)
            rows["none"]["true"].append(time.perf_counter() - started)
            started = time.perf_counter()
            execute_calls(ws, reads, ToolSettings(), host=host)
            rows["none"]["read10"].append(time.perf_counter() - started)
            if floor:
                started = time.perf_counter()
                subprocess.run(floor, stdin=subprocess.DEVNULL, capture_output=True, check=True)
                rows["bwrap alone"]["true"].append(time.perf_counter() - started)
                rows["bwrap alone"]["read10"].append(rows["none"]["read10"][-1])
            for mode in modes:
                settings = ToolSettings(isolation=mode)
                started = time.perf_counter()
                [out] = execute_calls(ws, shell, settings, host=host)
                rows[mode]["true"].append(time.perf_counter() - started)
                assert out.ok, out.output
                started = time.perf_counter()
                execute_calls(ws, reads, settings, host=host)
                rows[mode]["read10"].append(time.perf_counter() - started)
        shutil.rmtree(etc_view, ignore_errors=True)
    base = {w: pct(rows["none"][w], 50) for w in ("true", "read10")}
    print(f"{args.calls} calls each, interleaved; milliseconds (python {sys.version.split()[0]}, {os.cpu_count()} cores)")
    print(f"{'mode':<12} {'true p50':>9} {'true p99':>9} {'added p50':>10} {'read10 p50':>11} {'read10 p99':>11} {'added p50':>10}")
    for mode, by in rows.items():
        t50, t99 = pct(by["true"], 50) * 1e3, pct(by["true"], 99) * 1e3
        r50, r99 = pct(by["read10"], 50) * 1e3, pct(by["read10"], 99) * 1e3
        print(f"{mode:<12} {t50:9.2f} {t99:9.2f} {t50 - base['true'] * 1e3:+10.2f} "
              f"{r50:11.2f} {r99:11.2f} {r50 - base['read10'] * 1e3:+10.2f}")


if __name__ == "__main__":
    main()
