"""Ray nodes started by tests: a head or a worker, each in its own process group and temp dir.

Never `ray stop` (it kills every Ray process on the host): a node is stopped, or killed
to simulate a crash, through its own process group. Ports are chosen free, so tests and
parallel sessions never collide.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60.0
# `ray start` launched from a non-interactive shell's background job inherits SIGINT=SIG_IGN,
# which makes Ray's cooperative cancel a no-op. SIG_IGN survives exec, so reset it in a tiny
# exec wrapper (preexec_fn is not thread-safe).
_EXEC_WITH_SIGINT_DEFAULT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


def free_ports(count: int) -> list[int]:
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


class RayNode:
    """One `ray start --block` process (head, or a worker joining `address`)."""

    def __init__(self, env: dict[str, str], *, head: bool, port: int | None = None, address: str | None = None,
                 num_cpus: int = 2, resources: dict[str, float] | None = None, base: str | None = None) -> None:
        self.head = head
        self.port = port if port is not None else (free_ports(1)[0] if head else None)
        self.address = f"127.0.0.1:{self.port}" if head else address
        self.num_cpus = num_cpus
        self.resources = resources or {}
        self.base = base or tempfile.mkdtemp(prefix="kcray", dir="/tmp")  # short: AF_UNIX paths max 108 bytes
        self.env = {**env, "HOME": os.path.join(self.base, "h")}  # a private home: nothing of the user's
        os.makedirs(self.env["HOME"], exist_ok=True)
        self.log_path = os.path.join(self.base, "node.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        ports = free_ports(6)
        args = [str(_VENV_BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
                f"--num-cpus={self.num_cpus}", f"--temp-dir={os.path.join(self.base, 'r')}",
                "--disable-usage-stats",
                f"--dashboard-agent-listen-port={ports[0]}", f"--dashboard-agent-grpc-port={ports[1]}",
                f"--metrics-export-port={ports[2]}", f"--runtime-env-agent-port={ports[3]}",
                f"--node-manager-port={ports[4]}", f"--object-manager-port={ports[5]}"]
        if self.head:
            args += ["--head", f"--port={self.port}", "--include-dashboard=false"]
        else:
            args += [f"--address={self.address}"]
        if self.resources:
            args.append(f"--resources={json.dumps(self.resources)}")
        return args

    def start(self) -> RayNode:
        if not (_VENV_BIN / "ray").exists():
            raise RuntimeError(f"no ray executable next to {sys.executable}")
        start_size = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0  # a restart appends
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", _EXEC_WITH_SIGINT_DEFAULT, *self.args()],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"Ray runtime started" not in Path(self.log_path).read_bytes()[start_size:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray node did not start:\n{self.tail()}")
            time.sleep(0.1)
        return self

    def wait_driver(self, timeout: float = START_TIMEOUT_S) -> None:
        """Prove a driver can connect (from a throwaway process: the test holds no Ray state)."""
        probe = f"import ray; ray.init(address={self.address!r}, log_to_driver=False); ray.shutdown()"
        try:
            subprocess.run([sys.executable, "-c", probe], env=self.env, check=True, capture_output=True,
                           timeout=timeout)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = getattr(exc, "stderr", b"") or b""
            raise RuntimeError(f"ray head at {self.address} does not accept drivers: {exc}\n"
                               f"{output.decode(errors='replace')[-2000:]}\n{self.tail()}") from exc

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """A crash: SIGKILL to the node's whole process group at once."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            self.proc.poll()
            time.sleep(0.05)
        self.proc.poll()

    def stop(self) -> None:
        """SIGTERM to `ray start` alone first (it shuts its processes down in order, ~2 s;
        signalling the group at once races that), then SIGKILL whatever is left."""
        proc = self.proc
        if proc is None:
            return
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
                proc.poll()
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
