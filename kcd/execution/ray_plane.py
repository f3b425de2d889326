"""Run tool calls as Ray tasks through a supervised driver process.

kcd never imports Ray: `kcd.rayplane.driver` does, in a child process that
owns the Ray connection (a local instance it starts, or an existing cluster).
This side spawns it over a socketpair, reads its `Status` reports and turn
results, and restarts it with backoff whenever it exits: a cluster outage,
Ray's own fatal paths and a driver crash all become "degraded, retrying",
never a dead daemon.

State is what the driver last saw when it checked the cluster, and goes stale:
no report for `stale_after_s` makes the executor degraded too. Every turn has
a deadline from its calls' own timeouts, so a hung cluster fails a call with
`ExecutorUnavailable` instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.execution.base import ExecutorError, ExecutorState, ExecutorUnavailable
from kcd.execution.ray_auth import ensure_ray_token, local_auth_environment, split_host_port
from kcd.rayplane.messages import Cancel, FrameBuffer, Release, Shutdown, Status, Turn, TurnDone, encode

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["ExecutorError", "RayPlaneExecutor", "turn_deadline_s"]

log = logging.getLogger("kcd.ray")

_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
_HEALTHY_RESET_S = 60.0  # a driver ready this long resets the backoff
_CANCEL_WAIT_S = 5.0  # after a cancel, how long the driver gets to report the turn's end


class _Waiter:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: TurnDone | None = None


class RayPlaneExecutor:
    """Runs a turn's tool calls as Ray tasks through the supervised driver process."""

    mode = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        temp_dir: str | None = None,
        init_timeout: float = 120.0,
        token_path: Path | None = None,
        log_path: Path | None = None,
        wait_ready_s: float = 30.0,
        check_s: float = 2.0,
        check_timeout_s: float = 5.0,
        stale_after_s: float = 15.0,
        environ: Mapping[str, str] | None = None,
        turn_cpus: float = 1.0,
        turn_resources: Mapping[str, float] | None = None,
    ) -> None:
        """`address`: None/"local" starts a private local instance in the driver; "host:port"
        joins that cluster's GCS; "auto" uses Ray's own lookup. `wait_ready_s`: how long a
        turn waits for a degraded or starting executor before failing `executor_unavailable`.
        `turn_cpus`, `turn_resources`: what one turn needs of a node (where it may run)."""
        if address == "local":
            address = None
        if address is not None:
            if address.startswith("ray://"):
                raise ValueError("Ray Client addresses (ray://) are not supported; use the GCS address host:port")
            if address != "auto":
                split_host_port(address)  # a malformed address is a config error, not a degraded executor
        self._address = address
        self._num_cpus = num_cpus
        self._temp_dir = temp_dir
        self._init_timeout = init_timeout
        self._token_path = token_path
        self._log_path = log_path
        self._wait_ready_s = wait_ready_s
        self._check_s = check_s
        self._check_timeout_s = check_timeout_s
        self._stale_after_s = stale_after_s
        self._environ = dict(os.environ if environ is None else environ)
        self._turn_cpus = turn_cpus
        self._turn_resources = dict(turn_resources or {})
        self.state: ExecutorState = "stopped"
        self.detail: dict[str, Any] = {"address": address or "local", "error": "not started"}
        self.nodes: list[dict[str, Any]] = []
        self._changed = anyio.Event()
        self._stream: anyio.abc.SocketStream | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._waiters: dict[int, _Waiter] = {}
        self._next_id = 0
        self._last_report = 0.0
        self._restarts = 0
        self._closing = False
        self._scope: anyio.CancelScope | None = None
        self._send_lock = anyio.Lock()
        self._retry = anyio.Event()

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self, task_group: TaskGroup | None = None) -> None:
        """Start supervising the driver in `task_group` (returns at once; the supervisor lives
        as long as the group). Again while supervising: retry a failed driver now."""
        if task_group is None:
            raise ValueError("RayPlaneExecutor.start needs the daemon's task group")
        if self._scope is not None:
            self._retry.set()  # supervising already: cut a backoff wait short (SIGHUP, reload)
            return
        self._closing = False
        self._set("starting", {"address": self._address or "local"})
        await task_group.start(self._supervise)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait (up to `timeout`, default `wait_ready_s`) for a ready driver."""
        limit = self._wait_ready_s if timeout is None else timeout
        with anyio.move_on_after(limit):
            while self.state != "ready":
                if self.state == "stopped":
                    break
                changed = self._changed
                await changed.wait()
        if self.state != "ready":
            reason = self.detail.get("error", self.state)
            hint = self.detail.get("hint")
            raise ExecutorUnavailable(f"Ray executor {self.state} after waiting {limit:g} s: {reason}"
                                      + (f" ({hint})" if hint else ""))

    async def aclose(self) -> None:
        """Ask the driver to shut Ray down and exit; kill it if it does not in time."""
        self._closing = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                await self._send(Shutdown())
            with anyio.move_on_after(20, shield=True):
                while proc.poll() is None:
                    await anyio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
        if self._scope is not None:
            self._scope.cancel()
        self._fail_waiters("the Ray executor stopped")
        self._set("stopped", {**self.detail, "error": "stopped"})

    # ---- turns --------------------------------------------------------------------

    async def run_turn(self, workspace: str, calls: list[ToolInvocation],
                       settings: ToolSettings) -> list[ToolOutcome]:
        await self.wait_ready()
        self._next_id += 1
        turn_id = self._next_id
        waiter = self._waiters[turn_id] = _Waiter()
        deadline = turn_deadline_s(calls, settings)
        try:
            await self._send(Turn(id=turn_id, workspace=workspace, calls=calls, settings=settings))
            with anyio.move_on_after(deadline) as scope:
                await waiter.done.wait()
            if scope.cancelled_caught:
                await self._cancel(turn_id, waiter)
                raise ExecutorUnavailable(f"the Ray cluster did not finish the tool calls within {deadline:g} s "
                                          f"(executor {self.state}: {self.detail.get('error', 'no error reported')})")
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._cancel(turn_id, waiter)
            raise
        finally:
            self._waiters.pop(turn_id, None)
        done = waiter.result
        if done is None or done.outcomes is None:
            raise ExecutorUnavailable(done.error if done and done.error else "the turn ended with no result")
        return done.outcomes

    async def release(self, workspace: str) -> None:
        with contextlib.suppress(Exception):
            await self._send(Release(workspace=workspace))

    async def _cancel(self, turn_id: int, waiter: _Waiter) -> None:
        with contextlib.suppress(Exception):
            await self._send(Cancel(id=turn_id))
        with anyio.move_on_after(_CANCEL_WAIT_S):
            await waiter.done.wait()

    # ---- the driver ---------------------------------------------------------------

    async def _supervise(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            task_status.started()
            attempt = 0
            while not self._closing:
                started = anyio.current_time()
                rc = await self._run_driver()
                if self._closing:
                    break
                if anyio.current_time() - started >= _HEALTHY_RESET_S:
                    attempt = 0
                delay = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                attempt += 1
                self._restarts += 1
                error = self.detail.get("error") or f"the Ray driver exited (code {rc})"
                self._set("degraded", {**self.detail, "error": error, "restarts": self._restarts,
                                       "next_attempt_in_s": delay})
                self._fail_waiters(f"the Ray driver exited (code {rc}) while the turn ran; "
                                   "the calls' effects are unknown")
                log.warning("Ray driver exited (code %s): %s; restarting in %g s", rc, error, delay)
                self._retry = anyio.Event()
                with anyio.move_on_after(delay):
                    await self._retry.wait()
                self._set("starting", {**self.detail, "error": None, "last_error": error})
        self._scope = None

    async def _run_driver(self) -> int | None:
        parent, child = socket.socketpair()
        try:
            self._proc = await anyio.to_thread.run_sync(self._spawn, child)
        except OSError as exc:
            parent.close()
            child.close()
            self.detail["error"] = f"cannot start the Ray driver: {exc}"
            return None
        child.close()
        self._stream = await anyio.abc.UNIXSocketStream.from_socket(parent)
        self._last_report = anyio.current_time()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_process, tg.cancel_scope)
                await self._read(self._stream)
                tg.cancel_scope.cancel()
        finally:
            stream, self._stream = self._stream, None
            with anyio.CancelScope(shield=True):
                await stream.aclose()
                proc = self._proc
                if proc is not None and proc.poll() is None:
                    proc.kill()
                if proc is not None:
                    await anyio.to_thread.run_sync(proc.wait)
        return self._proc.returncode if self._proc else None

    def _spawn(self, child: socket.socket) -> subprocess.Popen[bytes]:
        env = dict(self._environ)
        if self._address is None:
            env.update(local_auth_environment(env, self._token_path))
            ensure_ray_token(env)
        cmd = [sys.executable, "-m", "kcd.rayplane.driver", "--fd", str(child.fileno()),
               "--check-s", str(self._check_s), "--check-timeout", str(self._check_timeout_s),
               "--turn-cpus", str(self._turn_cpus), "--turn-resources", json.dumps(self._turn_resources)]
        if self._address is not None:
            cmd += ["--address", self._address]
        if self._num_cpus is not None:
            cmd += ["--num-cpus", str(self._num_cpus)]
        if self._temp_dir:
            cmd += ["--temp-dir", self._temp_dir]
        # Ray's own output (and its native stack dumps) go to the driver's log, not kcd's.
        out: Any = subprocess.DEVNULL
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self._log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen(cmd, env=env, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, start_new_session=True, close_fds=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    async def _watch_process(self, scope: anyio.CancelScope) -> None:
        """The driver exited, or stopped reporting: end this driver's life (it is restarted)."""
        init_deadline = anyio.current_time() + self._init_timeout
        degraded_since: float | None = None
        while True:
            await anyio.sleep(0.25)
            proc = self._proc
            if proc is None or proc.poll() is not None:
                scope.cancel()
                return
            now = anyio.current_time()
            if self.state == "starting" and now > init_deadline:
                self.detail["error"] = f"Ray did not start or connect within {self._init_timeout:g} s"
                proc.kill()
                continue
            if self.state == "ready" and now - self._last_report > self._stale_after_s:
                self._set("degraded", {**self.detail, "error": f"the Ray driver has not reported for "
                                                               f"{now - self._last_report:.0f} s"})
            if self.state == "degraded" and degraded_since is None:
                degraded_since = now
            elif self.state != "degraded":
                degraded_since = None
            if degraded_since is not None and now - degraded_since > self._stale_after_s:
                # A head restarted on the same port is a new cluster this driver cannot rejoin
                # (WrongClusterID): a fresh driver can. Ray would end it only after 60 s.
                log.warning("Ray driver degraded for %.0f s (%s); restarting it", now - degraded_since,
                            self.detail.get("error"))
                proc.kill()
                degraded_since = None

    async def _read(self, stream: anyio.abc.SocketStream) -> None:
        frames = FrameBuffer()
        while True:
            try:
                chunk = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return
            for message in frames.feed(chunk):
                if isinstance(message, Status):
                    self._last_report = anyio.current_time()
                    self.nodes = [_node_dict(n) for n in message.nodes]
                    detail = dict(message.detail)
                    if message.state == "ready":
                        detail.pop("error", None)
                    self._set(message.state, {**detail, "restarts": self._restarts})
                elif isinstance(message, TurnDone):
                    waiter = self._waiters.get(message.id)
                    if waiter is not None:
                        waiter.result = message
                        waiter.done.set()

    async def _send(self, message: Any) -> None:
        stream = self._stream
        if stream is None:
            raise ExecutorUnavailable(f"the Ray driver is not running ({self.detail.get('error', self.state)})")
        async with self._send_lock:
            try:
                await stream.send(encode(message))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise ExecutorUnavailable(f"the Ray driver went away: {exc}") from None

    def _fail_waiters(self, why: str) -> None:
        for turn_id, waiter in list(self._waiters.items()):
            if not waiter.done.is_set():
                waiter.result = TurnDone(id=turn_id, error=why)
                waiter.done.set()

    def _set(self, state: ExecutorState, detail: dict[str, Any]) -> None:
        self.state = state
        self.detail = {k: v for k, v in detail.items() if v is not None}
        changed, self._changed = self._changed, anyio.Event()
        changed.set()


def turn_deadline_s(calls: list[ToolInvocation], settings: ToolSettings) -> float:
    """Longest a turn may take before the cluster is presumed hung: every call at its own
    timeout one after another, plus room for scheduling and a worker start."""
    per_call = max(settings.shell_timeout_s, settings.grep_timeout_s) + 5.0
    return 60.0 + per_call * max(1, len(calls))


def _node_dict(n: Any) -> dict[str, Any]:
    return {"node_id": n.node_id, "address": n.address, "alive": n.alive, "cpus_total": n.cpus_total,
            "cpus_free": n.cpus_free, "resources": dict(n.resources), "runs": n.runs, "local": n.local}

