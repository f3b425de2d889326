"""A bounded process burst inside a tool call: capped, cleaned up, daemon responsive.

Never an unbounded bomb: the test first checks that the run's process cap is in
force (run.start names what enforces it), then forks at most 2,000 `sleep`s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import health_watch

CONFIG = Path(__file__).parent / "configs" / "script.yaml"
MARK = "97531"


def _leftovers() -> set[int]:
    out = subprocess.run(["pgrep", "-f", f"sleep {MARK}"], capture_output=True, text=True).stdout.split()
    return {int(p) for p in out}


def test_bounded_burst_is_capped_and_cleaned_up_while_the_daemon_answers(kcd) -> None:
    with kcd.http() as c:
        sandbox = c.get("/v1/health").json()["sandbox"]
    if not sandbox.get("processes_capped_by"):
        pytest.skip(f"no process cap can be enforced on this host ({sandbox}); not forking a burst")
    burst = (f"for i in $(seq 2000); do sleep {MARK}$i 2>/dev/null & done 2>/dev/null; "
             "echo forked; wait")
    task = json.dumps([{"name": "run_shell", "arguments": {"command": burst, "timeout": 8}}])
    before = _leftovers()
    with health_watch(kcd, every=0.1) as latencies:
        _burst(kcd, task, before)
    assert latencies and max(latencies) < 1.0, f"health took up to {max(latencies):.2f} s"


def _burst(kcd, task: str, before: set[int]) -> None:
    try:
        proc = kcd.kcctl("run", str(CONFIG), "--task", task, "--detach", "--json", check=True)
        info = json.loads(proc.stdout)
        peak = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            peak = max(peak, len(_leftovers() - before))
            text = (Path(info["run_dir"]) / "meta" / "events.jsonl").read_text()
            if '"run.end"' in text:
                break
            time.sleep(0.2)
        events = [json.loads(x) for x in (Path(info["run_dir"]) / "meta" / "events.jsonl").read_text().splitlines()]
        start = next(e for e in events if e["type"] == "run.start")
        cap = start["data"]["isolation"]["max_processes"]
        assert start["data"]["isolation"]["processes_capped_by"] in ("cgroup", "rlimit_nproc")
        # The cgroup also holds bubblewrap's two wrapper processes, which `pgrep -f` counts too.
        assert 0 < peak <= cap + 2, f"peak {peak} processes against a cap of {cap}"
        result = next(e for e in events if e["type"] == "tool.result")
        assert "Process limit reached" in result["data"]["output"] or "timed out" in result["data"]["output"]
        assert _leftovers() - before == set(), "burst processes outlived the call"
    finally:
        for pid in _leftovers() - before:
            os.kill(pid, signal.SIGKILL)
