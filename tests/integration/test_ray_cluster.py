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
            head.kill()
            h = _wait_state(daemon, "degraded", 60)
            assert h["state"] == "degraded" and h["executor"]["detail"].get("error"), h
            outage = _run(daemon, "echo during")  # its tool call waits executor_wait_s, then fails typed
            assert outage["exit_reason"] == "executor_unavailable", outage
            result = json.loads((Path(outage["run_dir"]) / "result.json").read_text())
            assert result["error_type"] == "executor_unavailable" and "Ray" in result["error"]
            assert daemon.proc.poll() is None  # the daemon is still there

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
