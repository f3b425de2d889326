"""Shared fixtures: the anyio backend, and one private Ray head per test session.

Never run `ray stop` anywhere in the tests: it kills every Ray process on the
host, other users' clusters included. The head started here lives in its own
process group, which teardown terminates.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_VENV_BIN = Path(sys.executable).parent
_START_TIMEOUT_S = 60.0
# `ray start` launched from a non-interactive shell's background job inherits SIGINT=SIG_IGN,
# which makes Ray's cooperative cancel a no-op (reference 3.3). SIG_IGN survives exec, so
# reset it in a tiny exec wrapper (preexec_fn is not thread-safe).
_EXEC_WITH_SIGINT_DEFAULT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    # anyio 4.16's own fixture is module-scoped and parametrised over every installed
    # backend; pin asyncio (Ray ObjectRefs are asyncio awaitables). Scope must match.
    return "asyncio"


@pytest.fixture(scope="session")
def ray_client_env() -> dict[str, str]:
    """Environment a Ray client (a test, or a kcd process) needs to join `ray_cluster`."""
    return {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="session")
def ray_cluster(ray_client_env: dict[str, str]) -> Iterator[str]:
    """A private Ray head for the whole session; yields its GCS address "127.0.0.1:<port>".

    Every port is chosen free (not Ray's fixed defaults), so parallel sessions on one
    host do not collide. Clients must use `ray_client_env` (auth disabled).
    """
    ray_bin = _VENV_BIN / "ray"
    if not ray_bin.exists():
        pytest.skip(f"no ray executable next to {sys.executable}")
    base = tempfile.mkdtemp(prefix="kcray", dir="/tmp")  # short: AF_UNIX paths max 108 bytes
    home = os.path.join(base, "h")
    os.mkdir(home)
    log_path = os.path.join(base, "head.log")
    port, *other_ports = _free_ports(7)
    args = [
        str(ray_bin), "start", "--head", "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--include-dashboard=false",
        f"--temp-dir={os.path.join(base, 'r')}",
        "--disable-usage-stats",
        f"--dashboard-agent-listen-port={other_ports[0]}",
        f"--dashboard-agent-grpc-port={other_ports[1]}",
        f"--metrics-export-port={other_ports[2]}",
        f"--runtime-env-agent-port={other_ports[3]}",
        f"--node-manager-port={other_ports[4]}",
        f"--object-manager-port={other_ports[5]}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(ray_client_env, HOME=home)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _EXEC_WITH_SIGINT_DEFAULT, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    address = f"127.0.0.1:{port}"
    try:
        _wait_for_head(proc, address, log_path, env)
        yield address
    finally:
        _stop_group(proc)
        shutil.rmtree(base, ignore_errors=True)


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):  # hold them all open so the kernel hands out distinct ports
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_for_head(proc: subprocess.Popen[bytes], address: str, log_path: str, env: dict[str, str]) -> None:
    """Wait for "Ray runtime started", then prove a driver can connect (from a throwaway
    process, so this test process holds no Ray state)."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while b"Ray runtime started" not in Path(log_path).read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_group(proc)
            raise RuntimeError(f"ray head did not start:\n{_tail(log_path)}")
        time.sleep(0.1)
    probe = f"import ray; ray.init(address={address!r}, log_to_driver=False); ray.shutdown()"
    try:
        subprocess.run(
            [sys.executable, "-c", probe],
            env=env,
            check=True,
            capture_output=True,
            timeout=max(5.0, deadline - time.monotonic()),
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        _stop_group(proc)
        output = getattr(exc, "stderr", b"") or b""
        raise RuntimeError(
            f"ray head at {address} does not accept drivers: {exc}\n{output.decode(errors='replace')[-2000:]}"
            f"\n{_tail(log_path)}"
        ) from exc


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the head and everything in its process group.

    SIGTERM goes to `ray start` alone first: it shuts its processes down in order
    (about 2 s). Signalling the whole group at once races that shutdown and was
    measured to hang for more than 20 s. Whatever is left after that is SIGKILLed
    as a group.
    """
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    proc.terminate()
    for sig, wait_s in ((None, 15.0), (signal.SIGKILL, 5.0)):
        if sig is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader
            if not _group_alive(pgid):
                return
            time.sleep(0.1)
    proc.poll()


def _group_alive(pgid: int) -> bool:
    """Any non-zombie process left in the group? (Zombies wait on a reaper, not on us.)"""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _tail(path: str, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
