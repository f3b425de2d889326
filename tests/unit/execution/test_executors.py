from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import pytest

from kcd.agent.calls import ToolInvocation, ToolSettings
from kcd.execution.base import Executor, ExecutorUnavailable
from kcd.execution.inprocess import InProcessExecutor
from kcd.execution.ray_plane import RayPlaneExecutor

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
    # Outside the workspace: under Ray the calls run in a node's copy of it, never synced back
    # from a cancelled turn (the default process isolation lets the shell write there).
    pid_file = Path(tempfile.mkdtemp(prefix="kcpid")) / "shell.pid"
    started = time.monotonic()
    with anyio.move_on_after(after) as scope:
        await executor.run_turn(str(ws), [call("run_shell", command=f"echo $$ > {pid_file}; exec sleep 30")],
                                SETTINGS)
    assert scope.cancelled_caught
    elapsed = time.monotonic() - started
    return elapsed, int(pid_file.read_text())


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
        RayPlaneExecutor("ray://10.0.0.1:10001")
    with pytest.raises(ValueError, match="host:port"):
        RayPlaneExecutor("not-an-address")
    assert RayPlaneExecutor("local").detail["address"] == "local"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **extra}


async def test_ray_dead_address_degrades_quickly_and_keeps_retrying(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    executor = RayPlaneExecutor(f"127.0.0.1:{port}", init_timeout=30, wait_ready_s=0.5,
                                log_path=tmp_path / "driver.log", environ=_env(tmp_path))
    async with anyio.create_task_group() as tg:
        await executor.start(tg)
        with anyio.fail_after(20):
            while "no Ray GCS answering" not in str(executor.detail.get("error")):
                await anyio.sleep(0.05)
        assert executor.state in ("degraded", "starting")
        assert f"127.0.0.1:{port}" in executor.detail["error"]
        with pytest.raises(ExecutorUnavailable, match="no Ray GCS answering|starting"):
            await executor.run_turn("/tmp", [call("list_dir", path=".")], SETTINGS)
        with anyio.fail_after(20):  # the supervisor tries again (backoff 1 s, 2 s, ...)
            while executor.detail.get("restarts", 0) < 2:
                await anyio.sleep(0.05)
        await executor.aclose()
    assert executor.state == "stopped"


def test_kcd_side_modules_never_import_ray() -> None:
    code = ("import sys, kcd.execution.ray_plane, kcd.execution.inprocess, kcd.rayplane.messages, "
            "kcd.daemon, kcd.agent.dialects; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- Ray (session cluster)


@pytest.mark.ray
async def test_ray_runs_a_turn_in_a_worker(ray_cluster: str, ray_client_env: dict[str, str],
                                           tmp_path: Path) -> None:
    executor = RayPlaneExecutor(ray_cluster, init_timeout=60, log_path=tmp_path / "driver.log",
                                environ=_env(tmp_path, **ray_client_env))
    async with anyio.create_task_group() as tg:
        await executor.start(tg)  # background start: returns at once
        assert executor.state == "starting"
        await executor.wait_ready(timeout=60)
        assert executor.detail["address"] == ray_cluster and executor.detail["node_id"]
        assert executor.nodes and any(n["local"] and n["alive"] for n in executor.nodes)
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
        assert data["worker_pid"] not in (os.getpid(), executor.detail["driver_pid"])  # a Ray worker...
        # ...but not the shell's parent: a tool host that never held a key forks commands
        assert int(stdout_lines[1]) != data["worker_pid"]
        await executor.aclose()
    assert executor.state == "stopped"


@pytest.mark.ray
async def test_ray_cancellation_is_prompt(ray_cluster: str, ray_client_env: dict[str, str], tmp_path: Path) -> None:
    executor = RayPlaneExecutor(ray_cluster, init_timeout=60, log_path=tmp_path / "driver.log",
                                environ=_env(tmp_path, **ray_client_env))
    async with anyio.create_task_group() as tg:
        await executor.start(tg)
        await executor.wait_ready(60)
        # Warm a worker first so the timing measures cancellation, not worker start-up.
        await executor.run_turn(str(tmp_path), [call("list_dir", path=".")], SETTINGS)
        elapsed, pid = await _cancel_sleeping_turn(executor, tmp_path, after=1.0)
        assert elapsed < 1.0 + 6.0, elapsed  # cancel delay + at most the driver's report wait
        assert await _gone(pid, within=5), "the shell's process group survived the cancel"
        [ok] = await executor.run_turn(str(tmp_path), [call("run_shell", command="echo still-ok")], SETTINGS)
        assert ok.ok and "still-ok" in ok.output
        await executor.aclose()


@pytest.mark.ray
async def test_ray_local_instance_lifecycle(tmp_path: Path) -> None:
    """Default mode (address=None): the driver starts a private local instance with token auth;
    aclose() stops it and leaves no Ray process behind."""
    temp_dir = tempfile.mkdtemp(prefix="kcrl", dir="/tmp")
    ws = tmp_path / "ws"
    ws.mkdir()
    token = tmp_path / "state" / "ray_auth_token"
    executor = RayPlaneExecutor(None, num_cpus=1, temp_dir=temp_dir, init_timeout=90, token_path=token,
                                log_path=tmp_path / "driver.log", environ=_env(tmp_path))
    try:
        async with anyio.create_task_group() as tg:
            await executor.start(tg)
            await executor.wait_ready(90)
            assert executor.detail["local_instance"] is True and executor.detail["auth"] == "token"
            assert token.stat().st_mode & 0o777 == 0o600
            [out] = await executor.run_turn(str(ws), [call("run_shell", command="echo $PPID")], ToolSettings())
            assert out.ok and out.data and out.data["worker_pid"] != os.getpid()
            await executor.aclose()
        assert executor.state == "stopped"
        deadline = time.monotonic() + 15
        leftovers = ["?"]
        while leftovers and time.monotonic() < deadline:
            leftovers = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
            time.sleep(0.2)
        assert leftovers == [], f"Ray processes outlived aclose(): {leftovers}"
    finally:
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_local_instance_gets_a_token_file_when_token_auth_is_on(tmp_path) -> None:
    from kcd.execution.ray_auth import ensure_ray_token

    path = tmp_path / "state" / "ray_auth_token"
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}
    assert ensure_ray_token(env) == path
    assert (path.stat().st_mode & 0o777) == 0o600 and len(path.read_text()) == 64
    token = path.read_text()
    assert ensure_ray_token(env) is None and path.read_text() == token  # never replaced
    assert ensure_ray_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "x")}) is None
    assert not (tmp_path / "x").exists()


def test_a_local_instance_uses_token_auth_unless_the_environment_turns_it_off(tmp_path) -> None:
    from kcd.execution.ray_auth import local_auth_environment

    token = tmp_path / "ray_auth_token"
    assert local_auth_environment({}, token) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    # An operator's own token (file or value) wins over kcd's file.
    assert local_auth_environment({"RAY_AUTH_TOKEN_PATH": "/etc/t"}, token) == {"RAY_AUTH_MODE": "token"}
    assert local_auth_environment({"RAY_AUTH_TOKEN": "x" * 32}, token) == {"RAY_AUTH_MODE": "token"}
    assert local_auth_environment({"RAY_AUTH_MODE": "DISABLED"}, token) == {}
