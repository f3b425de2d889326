from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from kcd.agent.calls import ToolInvocation, ToolSettings
from kcd.execution.base import Executor, ExecutorUnavailable
from kcd.execution.inprocess import InProcessExecutor
from kcd.execution.ray_executor import RayExecutor

pytestmark = pytest.mark.anyio

SETTINGS = ToolSettings(shell_timeout_s=60)


def call(name: str, call_id: str = "c1", **args: object) -> ToolInvocation:
    return ToolInvocation(call_id=call_id, name=name, args=dict(args))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


async def _gone(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    return not _alive(pid)


async def _cancel_sleeping_turn(executor: Executor, ws: Path, after: float) -> tuple[float, int]:
    """Cancel a `sleep 30` turn after `after` s: (seconds until run_turn gave up, shell pid)."""
    started = time.monotonic()
    with anyio.move_on_after(after) as scope:
        await executor.run_turn(str(ws), [call("run_shell", command="echo $$ > shell.pid; exec sleep 30")], SETTINGS)
    assert scope.cancelled_caught
    elapsed = time.monotonic() - started
    return elapsed, int((ws / "shell.pid").read_text())


# --------------------------------------------------------------------------- in-process


async def test_inprocess_runs_a_turn(tmp_path: Path) -> None:
    executor = InProcessExecutor()
    assert isinstance(executor, Executor)
    await executor.start()
    await executor.wait_ready()
    assert (executor.mode, executor.state) == ("in-process", "ready")
    outcomes = await executor.run_turn(
        str(tmp_path),
        [call("create_file", "a", path="f.txt", content="hi\n"), call("run_shell", "b", command="cat f.txt")],
        SETTINGS,
    )
    assert [o.ok for o in outcomes] == [True, True]
    assert outcomes[1].data is not None and outcomes[1].data["stdout"] == "hi\n"
    assert outcomes[1].data["worker_pid"] == os.getpid()
    await executor.aclose()
    assert executor.state == "stopped"
    with pytest.raises(ExecutorUnavailable):
        await executor.run_turn(str(tmp_path), [call("list_dir", path=".")], SETTINGS)


async def test_inprocess_cancellation_kills_the_shell(tmp_path: Path) -> None:
    executor = InProcessExecutor()
    elapsed, pid = await _cancel_sleeping_turn(executor, tmp_path, after=0.5)
    assert elapsed < 2, elapsed
    assert await _gone(pid, within=0.5)
    # The executor is still usable afterwards.
    [ok] = await executor.run_turn(str(tmp_path), [call("run_shell", command="echo ok")], SETTINGS)
    assert ok.ok


# --------------------------------------------------------------------------- Ray (no cluster needed)


def test_ray_address_validation() -> None:
    with pytest.raises(ValueError, match="ray://"):
        RayExecutor("ray://10.0.0.1:10001")
    with pytest.raises(ValueError, match="host:port"):
        RayExecutor("not-an-address")
    assert RayExecutor("local").detail["address"] == "local"


async def test_ray_dead_address_degrades_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    executor = RayExecutor(f"127.0.0.1:{port}", init_timeout=30)
    with pytest.raises(ExecutorUnavailable, match="not started"):
        await executor.wait_ready()
    started = time.monotonic()
    await executor.start()
    assert time.monotonic() - started < 3
    assert executor.state == "degraded"
    assert f"no Ray GCS answering at 127.0.0.1:{port}" in executor.detail["error"]
    with pytest.raises(ExecutorUnavailable, match="degraded"):
        await executor.run_turn("/tmp", [call("list_dir", path=".")], SETTINGS)


def test_ray_is_not_imported_by_the_executor_modules() -> None:
    code = "import sys, kcd.execution.ray_executor, kcd.execution.inprocess, kcd.agent.dialects; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- Ray (session cluster)


@pytest.fixture
def ray_env(monkeypatch: pytest.MonkeyPatch, ray_client_env: dict[str, str]) -> None:
    for key, value in ray_client_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.mark.ray
async def test_ray_runs_a_turn_in_a_worker(ray_cluster: str, ray_env: None, tmp_path: Path) -> None:
    executor = RayExecutor(ray_cluster, init_timeout=60)
    try:
        async with anyio.create_task_group() as tg:
            await executor.start(tg)  # background start: returns at once
            assert executor.state == "starting"
            await executor.wait_ready(timeout=60)
        assert executor.state == "ready"
        assert executor.detail["address"] == ray_cluster and executor.detail["node_id"]
        outcomes = await executor.run_turn(
            str(tmp_path),
            [call("create_file", "a", path="f.txt", content="from ray\n"), call("run_shell", "b", command="cat f.txt; echo $PPID")],
            SETTINGS,
        )
        assert [o.call_id for o in outcomes] == ["a", "b"] and all(o.ok for o in outcomes)
        data = outcomes[1].data
        assert data is not None
        stdout_lines = data["stdout"].splitlines()
        assert stdout_lines[0] == "from ray"
        assert data["worker_pid"] != os.getpid()  # ran in a Ray worker process...
        # ...but is not the shell's parent: a tool host that never held a key forks commands
        assert int(stdout_lines[1]) != data["worker_pid"]
    finally:
        await executor.aclose()
    assert executor.state == "stopped"


@pytest.mark.ray
async def test_ray_cancellation_is_prompt(ray_cluster: str, ray_env: None, tmp_path: Path) -> None:
    executor = RayExecutor(ray_cluster, init_timeout=60)
    try:
        await executor.start()
        await executor.wait_ready()
        # Warm a worker first so the timing measures cancellation, not worker start-up.
        await executor.run_turn(str(tmp_path), [call("list_dir", path=".")], SETTINGS)
        elapsed, pid = await _cancel_sleeping_turn(executor, tmp_path, after=1.0)
        assert elapsed < 1.0 + 2.5, elapsed  # cancel delay + at most the cancel grace
        assert await _gone(pid), "the shell's process group survived the cancel"
        [ok] = await executor.run_turn(str(tmp_path), [call("run_shell", command="echo still-ok")], SETTINGS)
        assert ok.ok and "still-ok" in ok.output
    finally:
        await executor.aclose()


_LOCAL_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import anyio
    from anyio._backends import _asyncio as anyio_asyncio
    from kcd.agent.calls import ToolInvocation, ToolSettings
    from kcd.execution.ray_executor import RayExecutor

    # Retire idle anyio worker threads quickly: a Ray instance whose start-up thread
    # is retired must survive (its GCS/raylet use PR_SET_PDEATHSIG).
    anyio_asyncio.WorkerThread.MAX_IDLE_TIME = 0.2

    async def main():
        ex = RayExecutor(None, num_cpus=1, temp_dir=sys.argv[1], init_timeout=60)
        t0 = time.monotonic()
        await ex.start()
        startup = time.monotonic() - t0
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(anyio.to_thread.run_sync, time.sleep, 0.1)
        await anyio.sleep(0.5)
        await anyio.to_thread.run_sync(time.sleep, 0.01)  # prunes the idle worker threads
        await anyio.sleep(1.0)
        call = ToolInvocation("c1", "run_shell", {"command": "echo $PPID"})
        with anyio.fail_after(20):
            [out] = await ex.run_turn(sys.argv[2], [call], ToolSettings())
        await ex.aclose()
        print(json.dumps({"state": ex.state, "local": ex.detail.get("local_instance"), "ok": out.ok,
                          "worker_pid": out.data["worker_pid"], "pid": os.getpid(), "startup": startup}))

    anyio.run(main)
    """
)


@pytest.mark.ray
def test_ray_local_instance_lifecycle(tmp_path: Path) -> None:
    """Default mode (address=None): a private local instance, in a child process because Ray's
    connection is process-global. It must survive anyio retiring the thread that started it."""
    temp_dir = tempfile.mkdtemp(prefix="kcrl", dir="/tmp")
    home = tmp_path / "home"
    home.mkdir()
    ws = tmp_path / "ws"
    ws.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _LOCAL_SCRIPT, temp_dir, str(ws)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["ok"] and result["local"] is True and result["state"] == "stopped"
        assert result["worker_pid"] != result["pid"]
        leftovers = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
        assert leftovers == [], f"Ray processes outlived aclose(): {leftovers}"
    finally:
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_local_instance_gets_a_token_file_when_token_auth_is_on(tmp_path) -> None:
    from kcd.execution.ray_executor import ensure_ray_token

    path = tmp_path / "state" / "ray_auth_token"
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}
    assert ensure_ray_token(env) == path
    assert (path.stat().st_mode & 0o777) == 0o600 and len(path.read_text()) == 64
    token = path.read_text()
    assert ensure_ray_token(env) is None and path.read_text() == token  # never replaced
    assert ensure_ray_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "x")}) is None
    assert not (tmp_path / "x").exists()


def test_a_local_instance_uses_token_auth_unless_the_environment_turns_it_off(tmp_path) -> None:
    from kcd.execution.ray_executor import local_auth_environment

    token = tmp_path / "ray_auth_token"
    assert local_auth_environment({}, token) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    # An operator's own token (file or value) wins over kcd's file.
    assert local_auth_environment({"RAY_AUTH_TOKEN_PATH": "/etc/t"}, token) == {"RAY_AUTH_MODE": "token"}
    assert local_auth_environment({"RAY_AUTH_TOKEN": "x" * 32}, token) == {"RAY_AUTH_MODE": "token"}
    assert local_auth_environment({"RAY_AUTH_MODE": "DISABLED"}, token) == {}
