"""Tool calls through the Ray plane: a short turn alone, and beside a long one.

One `kcd serve --executor ray` on a private one-node cluster (2 CPUs). A run of the simulator's
`script` agent makes `--calls` quick `run_shell` calls (`true`), one per turn; each call's
time is its `tool.call` to its `tool.result` event (the whole trip: kcd, the Ray driver, a
Ray task on the node, the workspace there and back). Measured twice, median of the calls:

  alone       nothing else in flight;
  beside      while another run's turn is in flight on the same driver (`sleep 600`), as on
              any daemon with more than one run: the driver must notice the short turn's end
              while it also waits on the long one.

    flock /tmp/kc-bench.lock .venv/bin/python bench/bench_ray_turns.py [--calls 20] [--source DIR]

`--source DIR` runs the kcd of another checkout (e.g. a `git archive` of an older commit).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from _common import REPO
from bench_scale import Cluster, Daemon, parse_ts

SCRIPT = REPO / "tests" / "integration" / "configs" / "script.yaml"


def submit(daemon: Daemon, workspace: Path, steps: list[dict]) -> dict:
    body = {"config_text": SCRIPT.read_text(), "config_path": str(SCRIPT), "task": json.dumps(steps),
            "workspace": str(workspace)}
    with daemon.http() as c:
        r = c.post("/v1/runs", json=body)
        r.raise_for_status()
        return r.json()


def wait_end(daemon: Daemon, run_id: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with daemon.http() as c:
        while time.monotonic() < deadline:
            if c.get(f"/v1/runs/{run_id}").json()["status"] not in ("queued", "running"):
                return
            time.sleep(0.1)
    raise SystemExit(f"run {run_id} did not end")


def call_times(run_dir: Path) -> list[float]:
    """tool.call to tool.result, per call, from the run's events."""
    started: dict[str, float] = {}
    out = []
    for line in (run_dir / "meta" / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        key = e["data"].get("call_id") or str(e["data"].get("turn"))
        if e["type"] == "tool.call" and e["data"].get("name") == "run_shell":
            started[key] = parse_ts(e["ts"])
        elif e["type"] == "tool.result" and key in started:
            out.append(parse_ts(e["ts"]) - started.pop(key))
    return out


def wait_tool_call(daemon: Daemon, info: dict, timeout: float = 120) -> None:
    events = Path(info["run_dir"]) / "meta" / "events.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events.is_file() and '"type":"tool.call"' in events.read_text():
            return
        time.sleep(0.05)
    raise SystemExit("the long run's tool call did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--source", type=Path, default=REPO)
    ap.add_argument("--executor", choices=["ray", "in-process"], default="ray",
                    help="in-process: the same calls without Ray, the floor")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kcr-", dir="/tmp"))
    workspace = root / "seed"
    workspace.mkdir()
    (workspace / "README.md").write_text("a small workspace\n")
    cluster = Cluster(1) if args.executor == "ray" else None
    daemon = None
    try:
        daemon = Daemon(root, args.executor, cluster and cluster.address, args.source.resolve())
        quick = [{"name": "run_shell", "arguments": {"command": "true"}}] * args.calls
        wait_end(daemon, submit(daemon, workspace, quick[:2])["id"])  # warm: workers, the route
        figures = {}
        alone = submit(daemon, workspace, quick)
        wait_end(daemon, alone["id"])
        figures["alone"] = call_times(Path(alone["run_dir"]))
        long = submit(daemon, workspace, [{"name": "run_shell", "arguments": {"command": "sleep 600"}}])
        wait_tool_call(daemon, long)
        beside = submit(daemon, workspace, quick)
        wait_end(daemon, beside["id"])
        figures["beside"] = call_times(Path(beside["run_dir"]))
        with daemon.http() as c:
            c.post(f"/v1/runs/{long['id']}/cancel")
        wait_end(daemon, long["id"], timeout=60)
        where = "one Ray node, 2 CPUs" if cluster else "in-process executor"
        print(f"kcd from {args.source}; {args.calls} run_shell calls per run; {where}")
        print("| case | calls | median ms | min ms | max ms |")
        print("| --- | --- | --- | --- | --- |")
        for name, times in figures.items():
            ms = [t * 1000 for t in times]
            print(f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |")
    except httpx.HTTPError as exc:
        raise SystemExit(f"kcd answered badly: {exc}") from exc
    finally:
        if daemon is not None:
            daemon.stop()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
