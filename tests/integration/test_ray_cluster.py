"""kcd against a real Ray cluster that goes away and comes back.

The test starts its own head (its own process group and temp dir; never `ray stop`),
points a real kcd at it, kills the head mid-life and restarts it on the same port. kcd
must keep serving its socket throughout, report the outage truthfully (`degraded`, top-line
too), fail tool calls in the outage with a typed `executor_unavailable`, and come back to
`ready` on its own when the cluster does. kcd itself never loads Ray.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ..raynodes import RayNode
from .conftest import health_watch

pytestmark = pytest.mark.ray

SHELL = Path(__file__).parent / "configs" / "shell.yaml"


def _health(daemon) -> dict:
    with daemon.http(timeout=5) as c:
        return c.get("/v1/health").json()


def _wait_state(daemon, want: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    h = _health(daemon)
    while h["executor"]["state"] != want and time.monotonic() < deadline:
        time.sleep(0.2)
        h = _health(daemon)
    assert h["executor"]["state"] == want, (want, h["executor"])
    return h


def _run(daemon, task: str) -> dict:
    proc = daemon.kcctl("run", str(SHELL), "--task", task, "--json", timeout=240)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    assert lines and lines[-1]["type"] == "run.end", proc.stdout + proc.stderr + daemon.log()[-3000:]
    return lines[-1]["data"]


def test_kcd_survives_its_cluster_going_away_and_recovers_with_it(make_kcd, kcd_root, ray_client_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | ray_client_env
    head = RayNode(env, head=True, num_cpus=2).start()
    try:
        head.wait_driver()
        config = kcd_root / "kcd.yaml"
        config.write_text("executor_wait_s: 5\nray_init_timeout_s: 60\n")
        daemon = make_kcd("--executor", "ray", "--ray-address", head.address, "--config", str(config))
        h = _wait_state(daemon, "ready", 90)
        assert h["state"] == "ok" and [n["local"] for n in h["executor"]["nodes"]] == [True]
        assert h["executor"]["nodes"][0]["cpus_total"] == 2
        status = daemon.kcctl("status", check=True).stdout
        assert "cpus 2/2 free" in status or "cpus" in status, status
        first = _run(daemon, "echo before")
        assert first["status"] == "completed", first
        # The Ray driver is a child process: kcd never loads Ray itself.
        maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
        assert "_raylet" not in maps and "libray" not in maps

        with health_watch(daemon, every=0.1) as latencies:
            busy = daemon.kcctl("run", str(SHELL), "--task", "sleep 30", "--detach", "--json", check=True)
            busy_id = json.loads(busy.stdout)["id"]
            time.sleep(3)  # its turn is running on the cluster when the head dies
            head.kill()
            h = _wait_state(daemon, "degraded", 60)
            assert h["state"] == "degraded" and h["executor"]["detail"].get("error"), h
            outage = _run(daemon, "echo during")  # its tool call waits executor_wait_s, then fails typed
            assert outage["exit_reason"] == "executor_unavailable", outage
            result = json.loads((Path(outage["run_dir"]) / "result.json").read_text())
            assert result["error_type"] == "executor_unavailable" and "Ray" in result["error"]
            assert daemon.proc.poll() is None  # the daemon is still there
            mid = json.loads(daemon.kcctl("runs", "events", busy_id, "--follow", "--json",
                                          timeout=240).stdout.splitlines()[-1])["data"]
            assert mid["exit_reason"] == "executor_unavailable", mid  # the turn the head took down
            assert (Path(mid["run_dir"]) / "result.json").exists() and (Path(mid["run_dir"]) / "workspace.diff").exists()

            head = RayNode(env, head=True, port=head.port).start()  # a new cluster on the same port
            _wait_state(daemon, "ready", 120)
            after = _run(daemon, "echo after")
            assert after["status"] == "completed", after
        assert latencies, "health was polled"
        assert _health(daemon)["state"] == "ok"
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.log() and "SIGABRT" not in daemon.log()
    finally:
        head.stop()


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "meta" / "events.jsonl").read_text().splitlines()]


def _node_with(daemon, resource: str) -> str:
    nodes = _health(daemon)["executor"]["nodes"]
    return next(n["node_id"] for n in nodes if n["alive"] and resource in n["resources"])


def _cache_dirs() -> set[str]:
    root = Path(f"/tmp/kylecode-ws-{os.getuid()}")
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def test_turns_run_on_worker_nodes_and_a_dead_node_is_resumed_or_reported(make_kcd, kcd_root, ray_client_env):
    """Head without CPUs (common practice): every turn runs on a worker, in the worker's own
    copy of the workspace, and the results come back to kcd's copy. A worker that dies
    mid-turn: the turn starts again on another worker from the last completed turn; with no
    worker left, the run ends with a typed error and all its artifacts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | ray_client_env
    head = RayNode(env, head=True, num_cpus=0).start()
    workers: list[RayNode] = []
    try:
        workers.append(RayNode(env, head=False, address=head.address, num_cpus=2, resources={"w1": 1}).start())
        head.wait_driver()
        daemon = make_kcd("--executor", "ray", "--ray-address", head.address)
        _wait_state(daemon, "ready", 90)
        deadline = time.monotonic() + 30
        while len([n for n in _health(daemon)["executor"]["nodes"] if n["alive"]]) < 2:
            assert time.monotonic() < deadline, _health(daemon)["executor"]
            time.sleep(0.2)
        w1 = _node_with(daemon, "w1")

        # 1. Placement: the head has no CPU, so the worker runs the turn, in its own copy.
        done = _run(daemon, "echo made-on-a-worker > made.txt; pwd")
        assert done["status"] == "completed", done
        run_dir = Path(done["run_dir"])
        results = [e["data"] for e in _events(run_dir) if e["type"] == "tool.result"]
        assert results and {r.get("node") for r in results if r["name"] == "run_shell"} == {w1}
        assert (run_dir / "workspace" / "made.txt").read_text() == "made-on-a-worker\n"  # came back
        assert "made.txt" in (run_dir / "workspace.diff").read_text()
        shown = next(r["output"] for r in results if r["name"] == "run_shell")
        assert "kylecode-ws" in shown and str(run_dir) not in shown  # not kcd's path
        assert json.loads((run_dir / "meta" / "run.json").read_text())["nodes"] == [w1]

        # 2. The worker dies mid-turn; a second worker takes the turn from the last snapshot.
        workers.append(RayNode(env, head=False, address=head.address, num_cpus=2, resources={"w2": 1}).start())
        while len([n for n in _health(daemon)["executor"]["nodes"] if n["alive"]]) < 3:
            time.sleep(0.2)
        w2 = _node_with(daemon, "w2")
        before = _cache_dirs()
        started = daemon.kcctl("run", str(SHELL), "--task", "sleep 8; echo survived > out.txt", "--detach",
                               "--json", check=True)
        run_id = json.loads(started.stdout)["id"]
        deadline = time.monotonic() + 60
        while not (_cache_dirs() - before):
            assert time.monotonic() < deadline, "the turn never reached a node"
            time.sleep(0.1)
        placed = next(iter(_cache_dirs() - before))[:16]
        victim = next(w for w, node in zip(workers, (w1, w2)) if node.startswith(placed))
        survivor = w2 if victim is workers[0] else w1
        victim.kill()
        end = json.loads(daemon.kcctl("runs", "events", run_id, "--follow", "--json",
                                      timeout=240).stdout.splitlines()[-1])["data"]
        assert end["status"] == "completed", end
        run_dir = Path(end["run_dir"])
        assert (run_dir / "workspace" / "out.txt").read_text() == "survived\n"
        shell = [e["data"] for e in _events(run_dir) if e["type"] == "tool.result" and e["data"]["name"] == "run_shell"]
        assert shell[-1]["node"] == survivor, shell

        # 3. The last worker dies mid-turn: no node has room, so the run ends typed, artifacts whole.
        assert _health(daemon)["state"] == "ok"
        last = next(w for w in workers if w is not victim)
        started = daemon.kcctl("run", str(SHELL), "--task", "sleep 30", "--detach", "--json", check=True)
        run_id = json.loads(started.stdout)["id"]
        time.sleep(3)
        last.kill()
        end = json.loads(daemon.kcctl("runs", "events", run_id, "--follow", "--json",
                                      timeout=240).stdout.splitlines()[-1])["data"]
        assert end["exit_reason"] == "executor_unavailable", end
        run_dir = Path(end["run_dir"])
        result = json.loads((run_dir / "result.json").read_text())
        assert "node_lost" in result["error"] and (run_dir / "workspace.diff").exists()
        assert _health(daemon)["state"] in ("ok", "degraded")  # the daemon answers throughout
        assert daemon.stop() == 0
    finally:
        for node in workers:
            node.stop()
        head.stop()
