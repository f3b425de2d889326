"""Complete agent runs through the real daemon, socket and simulator."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from .conftest import CONFIGS, REPO

TASK = "@" + str(CONFIGS / "tasks" / "enumerate_workspace.md")
SEED = CONFIGS / "workspaces" / "c_project"
TEST_CONFIGS = Path(__file__).parent / "configs"


def _run_dir(stdout: str) -> Path:
    for line in stdout.splitlines():
        if "run dir:" in line:
            return Path(line.split("run dir:", 1)[1].strip())
    raise AssertionError(f"no run dir in output:\n{stdout}")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "meta" / "events.jsonl").read_text().splitlines()]


def assert_complete_run_dir(run_dir: Path, *, native: bool) -> None:
    assert run_dir.name.split("_", 1)[1].startswith("agent_ws_")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["exit_reason"] == "mark_task_complete" and result["completed"] is True
    steps = result["steps"]
    assert 2 <= steps <= 4
    for n in range(1, steps + 1):
        assert (run_dir / f"raw/requests/turn_{n}.request.json").is_file()
        assert (run_dir / f"raw/responses/turn_{n}.response.json").is_file()
    convo = (run_dir / "conversation/conversation.md").read_text()
    assert convo.startswith("# Conversation Transcript")
    for title in ("**System**", "**User**", "**Assistant**"):
        assert title in convo
    if native:
        assert "**Model Called Provider Schema-Native Tools**" in convo
        assert "**Provider Schema-Native Tool Call Results**" in convo
        first = json.loads((run_dir / "raw/requests/turn_1.request.json").read_text())
        assert first["tools"], "native mode sends tool schemas"
        second = json.loads((run_dir / "raw/requests/turn_2.request.json").read_text())
        tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
        assistant = [m for m in second["messages"] if m["role"] == "assistant"]
        assert tool_msgs and tool_msgs[0]["tool_call_id"] == assistant[0]["tool_calls"][0]["id"]
        provided = json.loads((run_dir / "provider_native/tools_provided/turn_1.json").read_text())
        assert [t["function"]["name"] for t in provided] == [t["name"] for t in first["tools"]]
        calls = json.loads((run_dir / "provider_native/tool_calls/turn_1.json").read_text())
        results = json.loads((run_dir / "provider_native/tool_results/turn_1.json").read_text())
        assert [r["call_id"] for r in results] == [c["id"] for c in calls]
        assert results[0]["fn"] == "list_dir" and results[0]["provider_fn"] == "list_dir"
        assert results[0]["args"] == json.loads(calls[0]["function"]["arguments"]) and results[0]["out"]
    else:
        assert not (run_dir / "provider_native").exists()
        assert "**Tool Results (Text-Based Execution)**" in convo
        first = json.loads((run_dir / "raw/requests/turn_1.request.json").read_text())
        assert not first["tools"]
        assert "<TOOL_CALL>" in first["messages"][0]["content"]
    meta = json.loads((run_dir / "meta/run.json").read_text())
    assert meta["config_digest"].startswith("sha256:")
    assert meta["route"] == "mock/dev"
    assert meta["peer"]["uid"] == os.getuid()
    assert meta["timings"]["duration_s"] >= 0
    events = _events(run_dir)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "run.end" and events[-1]["data"]["exit_reason"] == "mark_task_complete"
    assert any(e["type"] == "tool.call" and e["data"]["name"] == "list_dir" for e in events)
    assert (run_dir / "workspace").is_dir()
    assert (run_dir / "workspace.diff").is_file()
    index = json.loads((run_dir / "conversation/index.json").read_text())
    assert index["run_id"] == events[0]["run_id"] and index["run_dir"] == run_dir.name


def test_demo_run_completes_and_leaves_diagnostics(kcd):
    before = _snapshot(SEED)
    proc = kcd.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", TASK, "--workspace", str(SEED))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "turn 1" in out and "list_dir" in out and "mark_task_complete" in out
    run_dir = _run_dir(out)
    assert_complete_run_dir(run_dir, native=True)
    # The seed was copied into the run's own workspace; the user's directory is untouched.
    assert (run_dir / "workspace" / "README.md").read_bytes() == (SEED / "README.md").read_bytes()
    assert _snapshot(SEED) == before
    # The scripted agent read one file of the workspace.
    events = _events(run_dir)
    assert any(e["type"] == "tool.call" and e["data"]["name"] == "read_file" for e in events)


def test_text_mode_run_completes(kcd):
    proc = kcd.kcctl("run", str(CONFIGS / "demo_text.yaml"), "--task", TASK, "--workspace", str(SEED))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_complete_run_dir(_run_dir(proc.stdout), native=False)


def test_run_json_detach_events_replay_and_since(kcd):
    proc = kcd.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", "list the files", "--detach", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    run_id = info["id"]
    follow = kcd.kcctl("runs", "events", run_id, "--follow", "--json", check=True)
    lines = [json.loads(line) for line in follow.stdout.splitlines()]
    assert lines[-1]["type"] == "run.end"
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    # Replay of a finished run, and resumption from a seq, lose nothing.
    with kcd.http() as c:
        replay = c.get(f"/v1/runs/{run_id}/events").text.splitlines()
        assert [json.loads(x) for x in replay] == lines
        tail = c.get(f"/v1/runs/{run_id}/events", params={"since": 3}).text.splitlines()
        assert [json.loads(x)["seq"] for x in tail] == [e["seq"] for e in lines[3:]]
        run = c.get(f"/v1/runs/{run_id}").json()
        assert run["status"] == "completed" and run["exit_reason"] == "mark_task_complete"
        listed = c.get("/v1/runs").json()["runs"]
        assert run_id in [r["id"] for r in listed]
    shown = kcd.kcctl("runs", "show", run_id, check=True)
    assert json.loads(shown.stdout)["id"] == run_id
    table = kcd.kcctl("runs", "list", check=True)
    assert run_id in table.stdout


def test_config_check(kcd, tmp_path):
    ok = kcd.kcctl("config", "check", str(CONFIGS / "demo.yaml"))
    assert ok.returncode == 0 and "mock/dev" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\nworkspace: {}\nproviders:\n  default_model: foo/bar\n  models:\n"
                   "    - {id: foo/bar, adapter: openai}\nmodes: [{name: build}]\nloop: {sequence: [{mode: build}]}\n")
    res = kcd.kcctl("config", "check", str(bad))
    assert res.returncode == 2
    assert "bad.yaml" in res.stderr and "$.providers" in res.stderr
    run = kcd.kcctl("run", str(bad), "--task", "x")
    assert run.returncode == 2 and "bad.yaml" in run.stderr


def _wait_for_tool_call(c, run_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = [json.loads(x) for x in c.get(f"/v1/runs/{run_id}/events").text.splitlines()]
        if any(e["type"] == "tool.call" for e in events):
            return
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} made no tool call within 30 s")


def test_cancel_writes_final_artifacts(kcd):
    cfg = TEST_CONFIGS / "shell.yaml"
    proc = kcd.kcctl("run", str(cfg), "--task", "sleep 60", "--detach", "--json", check=True)
    run_id = json.loads(proc.stdout)["id"]
    with kcd.http() as c:
        _wait_for_tool_call(c, run_id)
        assert c.post(f"/v1/runs/{run_id}/cancel").status_code == 202
    started = time.monotonic()
    follow = kcd.kcctl("runs", "events", run_id, "--follow", "--json", check=True)
    assert time.monotonic() - started < 20
    end = json.loads(follow.stdout.splitlines()[-1])
    assert end["type"] == "run.end" and end["data"]["status"] == "cancelled"
    run_dir = Path(end["data"]["run_dir"])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["exit_reason"] == "cancelled" and result["completed"] is False
    assert (run_dir / "meta/run.json").is_file() and (run_dir / "workspace.diff").is_file()


def test_sigterm_cancels_running_runs_and_finalises_them(kcd):
    proc = kcd.kcctl("run", str(TEST_CONFIGS / "shell.yaml"), "--task", "sleep 60", "--detach", "--json",
                     check=True)
    run_id = json.loads(proc.stdout)["id"]
    info = json.loads(proc.stdout)
    time.sleep(1.0)
    assert kcd.stop(signal.SIGTERM, timeout=40) == 0
    run_dir = Path(info["run_dir"])
    events = _events(run_dir)
    assert events[-1]["type"] == "run.end" and events[-1]["data"]["status"] == "cancelled"
    assert json.loads((run_dir / "result.json").read_text())["exit_reason"] == "cancelled"
    assert run_id[:8] in run_dir.name


def test_twenty_concurrent_runs(kcd):
    def one(_):
        return kcd.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", TASK, "--workspace", str(SEED),
                         timeout=300)

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    failures = [r.stdout + r.stderr for r in results if r.returncode != 0]
    assert not failures, failures[:2]
    dirs = {_run_dir(r.stdout) for r in results}
    assert len(dirs) == 20
    for d in dirs:
        assert json.loads((d / "result.json").read_text())["completed"] is True
    with kcd.http() as c:
        h = c.get("/v1/health").json()
    assert h["state"] == "ok" and h["runs_active"] == 0


def test_runs_survive_in_the_index_across_a_restart(make_kcd, kcd_root):
    first = make_kcd("--executor", "in-process")
    proc = first.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", "list", "--json", check=True)
    run_id = json.loads(proc.stdout.splitlines()[-1])["run_id"]
    assert first.stop() == 0
    second = make_kcd("--executor", "in-process")
    with second.http() as c:
        assert c.get(f"/v1/runs/{run_id}").json()["status"] == "completed"
        replay = c.get(f"/v1/runs/{run_id}/events").text.splitlines()
        assert json.loads(replay[-1])["type"] == "run.end"


def _ray_ready(daemon) -> dict:
    """The daemon's health once its Ray executor is ready (or after 90 s)."""
    with daemon.http() as c:
        deadline = time.monotonic() + 90
        while (h := c.get("/v1/health").json())["executor"]["state"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.2)
    return h


@pytest.mark.ray
def test_demo_run_on_ray(ray_kcd):
    h = _ray_ready(ray_kcd)
    assert h["executor"]["mode"] == "ray" and h["executor"]["state"] == "ready", h
    proc = ray_kcd.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", TASK, "--workspace", str(SEED))
    assert proc.returncode == 0, proc.stdout + proc.stderr + ray_kcd.log()
    assert_complete_run_dir(_run_dir(proc.stdout), native=True)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


@pytest.mark.ray
def test_a_ray_worker_keeps_its_tool_host_between_turns(ray_kcd):
    # Started and stopped per turn, a tool host was ~130 ms of every shell turn on Ray.
    assert _ray_ready(ray_kcd)["executor"]["state"] == "ready"
    steps = [{"name": "run_shell", "arguments": {"command": f"echo turn{i}"}} for i in range(4)]
    proc = ray_kcd.kcctl("run", str(TEST_CONFIGS / "script.yaml"), "--task", json.dumps(steps),
                         "--workspace", str(SEED))
    assert proc.returncode == 0, proc.stdout + proc.stderr + ray_kcd.log()[-3000:]
    run_dir = _run_dir(proc.stdout)
    rows = [row for turn in range(1, 5)
            for row in json.loads((run_dir / f"provider_native/tool_results/turn_{turn}.json").read_text())]
    assert [row["out"].split("\n")[1] for row in rows] == ["turn0", "turn1", "turn2", "turn3"], rows
    workers = {row["data"]["worker_pid"] for row in rows}
    assert os.getpid() not in workers and ray_kcd.proc.pid not in workers  # they ran in Ray workers
    for pid in workers:  # each worker's host is still up after its turns, ready for the next
        hosts = [c for c in _children(pid)
                 if b"kcd.sandbox.helper" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(hosts) == 1, (pid, hosts)
        environ = Path(f"/proc/{hosts[0]}/environ").read_bytes().split(b"\0")
        assert not any(b"KEY" in v or b"TOKEN" in v for v in environ), environ  # still keyless


def test_autostart_user_daemon(kcd_root):
    from .conftest import base_env

    env = base_env(kcd_root / "home")
    runtime = kcd_root / "xdg"
    runtime.mkdir(mode=0o700)
    env.update(XDG_RUNTIME_DIR=str(runtime), XDG_STATE_HOME=str(kcd_root / "state"),
               RAY_SCE_LOCAL_MODE="1")
    kcctl = [sys.executable, "-m", "kcctl.cli"]
    try:
        status = subprocess.run([*kcctl, "status", "--json"], env=env, capture_output=True, text=True,
                                timeout=120, cwd=REPO)
        assert status.returncode == 0, status.stderr
        health = json.loads(status.stdout)
        assert health["socket"] == str(runtime / "kylecode" / "kcd.sock")
        assert "starting kcd" in status.stderr
        again = subprocess.run([*kcctl, "status", "--json"], env=env, capture_output=True, text=True,
                               timeout=60, cwd=REPO)
        assert json.loads(again.stdout)["pid"] == health["pid"]  # reused, not restarted
    finally:
        stop = subprocess.run([*kcctl, "daemon", "stop"], env=env, capture_output=True, text=True,
                              timeout=90, cwd=REPO)
    assert stop.returncode == 0, stop.stderr
    assert not (runtime / "kylecode" / "kcd.sock").exists()


def test_kcctl_never_imports_ray():
    # Nor httpx: the socket client is the standard library's http.client (start-up time).
    code = "import sys, kcctl.cli; assert 'ray' not in sys.modules and 'httpx' not in sys.modules; " \
           "assert not [m for m in sys.modules if m.startswith(('kcd.runs','kcd.daemon','kcd.providers'))]"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_event_lines_are_valid_structs(kcd):
    from kcd.api.types import Event

    proc = kcd.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", "list", "--json", check=True)
    for line in proc.stdout.splitlines():
        msgspec.json.decode(line, type=Event)


def test_heartbeats_and_closing_the_stream_detaches(make_kcd):
    daemon = make_kcd("--executor", "in-process", "--heartbeat", "0.3")
    proc = daemon.kcctl("run", str(TEST_CONFIGS / "shell.yaml"), "--task", "sleep 2", "--detach", "--json",
                        check=True)
    run_id = json.loads(proc.stdout)["id"]
    seen = []
    with daemon.http() as c:
        with c.stream("GET", f"/v1/runs/{run_id}/events", params={"follow": "1"}) as resp:
            assert resp.headers["content-type"].startswith("application/x-ndjson")
            for line in resp.iter_lines():
                seen.append(json.loads(line)["type"])
                if "heartbeat" in seen:
                    break  # closing the stream here must not cancel the run
        deadline = time.monotonic() + 30
        while c.get(f"/v1/runs/{run_id}").json()["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert c.get(f"/v1/runs/{run_id}").json()["status"] == "completed"
    assert "heartbeat" in seen and "run.end" not in seen


def test_a_run_whose_directory_was_replaced_ends_failed_and_the_daemon_keeps_serving(kcd):
    # Finalisation cannot write where a file took the run directory's place; that must fail
    # the run, not the daemon.
    proc = kcd.kcctl("run", str(TEST_CONFIGS / "shell.yaml"), "--task", "sleep 60", "--detach", "--json",
                     check=True)
    info = json.loads(proc.stdout)
    with kcd.http() as c:
        _wait_for_tool_call(c, info["id"])
        # A follower attached before the end still gets run.end (the file copy is gone).
        follower = subprocess.Popen(
            [sys.executable, "-m", "kcctl.cli", "--socket", str(kcd.socket), "--no-autostart", "runs", "events",
             info["id"], "--follow", "--json"], env=kcd.env, cwd=REPO, stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        shutil.rmtree(info["run_dir"])
        Path(info["run_dir"]).write_text("not a directory")
        assert c.post(f"/v1/runs/{info['id']}/cancel").status_code == 202
        out, _ = follower.communicate(timeout=60)
        end = json.loads(out.splitlines()[-1])
        assert end["type"] == "run.end" and end["data"]["status"] == "failed", end
        assert "finalisation failed" in end["data"]["error"]
        run = c.get(f"/v1/runs/{info['id']}").json()
        assert run["status"] == "failed" and run["exit_reason"] == "finalise_error"
        assert c.get("/v1/health").status_code == 200
    assert kcd.proc.poll() is None
    again = kcd.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", TASK, "--workspace", str(SEED), "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "finalisation failed" in kcd.log()


def test_the_httpx_upstream_client_serves_runs_too(make_kcd, kcd_root):
    # `upstream_client: httpx` puts httpx's own transport back (the default is aiohttp).
    config = kcd_root / "kcd.yaml"
    config.write_text("upstream_client: httpx\nexecutor: in-process\n")
    daemon = make_kcd("--config", str(config), env_extra={"KC_EVENT_LOOP": "asyncio"})
    with daemon.http() as c:
        health = c.get("/v1/health").json()
    assert health["upstream_client"] == "httpx" and health["event_loop"] == "asyncio"
    proc = daemon.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", TASK, "--workspace", str(SEED))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mark_task_complete" in proc.stdout
    status = daemon.kcctl("status", check=True)
    assert "upstream via httpx, event loop asyncio" in status.stdout


def test_the_default_daemon_runs_on_uvloop_with_aiohttp_upstream(kcd):
    with kcd.http() as c:
        health = c.get("/v1/health").json()
    assert health["upstream_client"] == "aiohttp" and health["event_loop"] == "uvloop"
