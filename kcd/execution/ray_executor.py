"""Run tool calls as Ray tasks: a local instance started by kcd, or an existing cluster.

Ray is imported only inside methods, so importing this module stays cheap and
kcctl never pulls Ray in. Ray's connection is process-global: use one
RayExecutor per process.

Lifecycle (reference daemon-and-ops 3.4): stopped → start() → starting →
ready | degraded. For an explicit address a plain TCP connect (2 s) comes
first, because `ray.init` on a dead address hangs; the whole start-up is
bounded by `init_timeout`.

`ray.init` runs off the main thread, so Ray leaves the daemon's SIGTERM handler
alone, but NOT in an anyio worker thread: a local instance starts its GCS and
raylet with PR_SET_PDEATHSIG, which Linux fires when the *thread* that spawned
them exits, and anyio retires idle worker threads after 10 s. Measured: the
GCS and raylet were SIGKILLed as soon as that worker thread was pruned, and the
driver exited 60 s later ("Failed to connect to GCS"). So a dedicated owner
thread calls ray.init, stays parked for the executor's lifetime, and calls
ray.shutdown on aclose().
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.tools import execute_calls
from kcd.execution.base import ExecutorError, ExecutorState, ExecutorUnavailable

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["RayExecutor"]

_TCP_PROBE_TIMEOUT_S = 2.0
_AUTH_HINT = (
    "if the cluster uses token authentication, start kcd with RAY_AUTH_MODE=token and "
    "RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN); otherwise check that the address is the GCS port"
)


class RayExecutor:
    mode = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        temp_dir: str | None = None,
        init_timeout: float = 60,
        cancel_grace: float = 2.0,
        token_path: Path | None = None,
    ) -> None:
        """`address`: None or "local" starts a private local instance (with `num_cpus`,
        `temp_dir`); "host:port" connects to that cluster's GCS; "auto" uses Ray's own
        lookup. Ray Client (ray://) is not supported. `cancel_grace`: seconds a
        cancelled turn gets to stop cooperatively before its worker is killed.
        `token_path`: where a local instance keeps its auth token when the environment
        names none (see `local_auth_environment`)."""
        if address == "local":
            address = None
        if address is not None:
            if address.startswith("ray://"):
                raise ValueError("Ray Client addresses (ray://) are not supported; use the GCS address host:port")
            if address != "auto":
                _split_host_port(address)  # a malformed address is a config error, not a degraded executor
        self._address = address
        self._num_cpus = num_cpus
        self._temp_dir = temp_dir
        self._init_timeout = init_timeout
        self._cancel_grace = cancel_grace
        self._token_path = token_path
        self.state: ExecutorState = "stopped"
        self.detail: dict[str, Any] = {"address": address or "local", "error": "not started"}
        self._settled = anyio.Event()
        self._owner: _RayOwner | None = None
        self._remote: Any = None  # execute_calls as a Ray remote function, pinned to our node

    # ------------------------------------------------------------------ lifecycle

    async def start(self, task_group: TaskGroup | None = None) -> None:
        """Connect in `task_group` if given (returns at once), else await the connection.

        Calling start() again after a failure retries; while starting or ready it is a no-op.
        """
        if self.state in ("starting", "ready"):
            return
        self.state = "starting"
        self.detail = {"address": self._address or "local"}
        self._settled = anyio.Event()
        if task_group is not None:
            task_group.start_soon(self._connect, name="kcd-ray-connect")
        else:
            await self._connect()

    async def wait_ready(self, timeout: float | None = None) -> None:
        if self.state == "starting":
            with anyio.move_on_after(timeout) as scope:
                await self._settled.wait()
            if scope.cancelled_caught:
                raise ExecutorUnavailable(f"Ray is still starting after {timeout:g} s")
        if self.state != "ready":
            reason = self.detail.get("error", self.state)
            hint = self.detail.get("hint")
            raise ExecutorUnavailable(f"Ray executor {self.state}: {reason}" + (f" ({hint})" if hint else ""))

    async def aclose(self) -> None:
        """Stop the local instance (or disconnect from the cluster); idempotent."""
        self.state = "stopped"
        self.detail = {**self.detail, "error": "stopped"}
        self._remote = None
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.stop()
            with anyio.move_on_after(30, shield=True):  # ray.shutdown of a local instance: ~1.5 s
                while owner.is_alive():
                    await anyio.sleep(0.05)

    async def _connect(self) -> None:
        try:
            with anyio.fail_after(self._init_timeout):
                if self._address not in (None, "auto"):
                    await _probe_tcp(self._address)
                # A previous attempt that timed out may still be running ray.init: wait for it
                # rather than start a second, concurrent init.
                if self._owner is None or self._owner.failed():
                    self._owner = _RayOwner(self._init_ray)
                    self._owner.start()
                remote, info = await _wait_future(self._owner.result)
        except anyio.get_cancelled_exc_class():
            self.state = "stopped"
            self.detail["error"] = "start-up was cancelled"
            raise
        except TimeoutError:
            self._degrade(f"Ray did not start or connect within {self._init_timeout:g} s")
        except _Unreachable as exc:
            self._degrade(str(exc))
        except Exception as exc:
            hint = _AUTH_HINT if isinstance(exc, ConnectionError) and self._address else None
            self._degrade(f"{type(exc).__name__}: {exc}", hint)
        else:
            if self.state == "starting":  # aclose() may have run meanwhile
                self._remote = remote
                self.detail.update(info)
                self.state = "ready"
        finally:
            self._settled.set()

    def _degrade(self, error: str, hint: str | None = None) -> None:
        if self.state != "starting":
            return
        self.state = "degraded"
        self.detail["error"] = error
        if hint:
            self.detail["hint"] = hint

    def _init_ray(self) -> tuple[Any, dict[str, Any]]:
        """Runs in the owner thread."""
        if self._address is None:
            # Before `import ray`: the driver reads its auth mode once, at import.
            os.environ.update(local_auth_environment(os.environ, self._token_path))
            ensure_ray_token(os.environ)
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if self._address is None:
            options.update(address="local", include_dashboard=False, num_cpus=self._num_cpus)
            if self._temp_dir is not None:
                options["_temp_dir"] = self._temp_dir
        else:
            options["address"] = self._address
        ray.init(**options)
        context = ray.get_runtime_context()
        node_id = context.get_node_id()
        # Workspaces live on this host, so every turn runs on the driver's own node
        # (no shared filesystem needed); max_retries=0: tool calls are not idempotent.
        remote = ray.remote(max_retries=0)(execute_calls).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        )
        info = {
            "node_id": node_id,
            "gcs_address": context.gcs_address,
            "ray_version": ray.__version__,
            "local_instance": self._address is None,
            "auth": "token" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else "disabled",
        }
        return remote, info

    # ------------------------------------------------------------------ turns

    async def run_turn(
        self, workspace: str, calls: list[ToolInvocation], settings: ToolSettings
    ) -> list[ToolOutcome]:
        await self.wait_ready()
        import ray

        ref = self._remote.remote(workspace, calls, settings)
        try:
            return await ref
        except anyio.get_cancelled_exc_class():
            # Awaiting a ref does not cancel the task: stop it before propagating.
            with anyio.CancelScope(shield=True):
                await self._stop(ref)
            raise
        except ray.exceptions.RayError as exc:
            raise ExecutorError(f"tool execution failed in Ray: {type(exc).__name__}: {exc}") from exc

    async def _stop(self, ref: Any) -> None:
        """Cooperative cancel first (KeyboardInterrupt in the task, whose shell runner then
        kills its process group); force-kill the worker only if that does not end it in time,
        because a killed worker cannot clean up the shell's separate session."""
        import ray

        with contextlib.suppress(Exception):
            ray.cancel(ref)
        with anyio.move_on_after(self._cancel_grace) as scope:
            with contextlib.suppress(Exception):
                await ref
        if scope.cancelled_caught:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


class _RayOwner(threading.Thread):
    """Calls ray.init, then stays alive until stop(), then calls ray.shutdown (see module doc)."""

    def __init__(self, init: Any) -> None:
        super().__init__(name="kcd-ray-owner", daemon=True)
        self._init = init
        self.result: Future[Any] = Future()
        self._stop_requested = threading.Event()

    def failed(self) -> bool:
        return self.result.done() and self.result.exception() is not None

    def stop(self) -> None:
        self._stop_requested.set()

    def run(self) -> None:
        try:
            self.result.set_result(self._init())  # imports ray itself, after setting its env
        except BaseException as exc:
            self.result.set_exception(exc)
            return
        self._stop_requested.wait()
        import ray

        ray.shutdown()


async def _wait_future(future: Future[Any]) -> Any:
    # Polled rather than handed to a worker thread: a hung ray.init must not pin one.
    delay = 0.01
    while not future.done():
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.1)
    return future.result()


def local_auth_environment(environ: Mapping[str, str], token_path: Path | None) -> dict[str, str]:
    """The RAY_AUTH_* settings for a local instance kcd starts. Ray 2.60's GCS, raylet and
    workers listen on every interface whatever the node address says, so token auth is
    what keeps other hosts (and other local users) out: on unless the environment turns it
    off explicitly (RAY_AUTH_MODE=disabled), with the token in kcd's state directory."""
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    settings = {"RAY_AUTH_MODE": "token"}
    if not environ.get("RAY_AUTH_TOKEN") and not environ.get("RAY_AUTH_TOKEN_PATH") and token_path is not None:
        settings["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    return settings


def ensure_ray_token(environ: Mapping[str, str]) -> Path | None:
    """With RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH naming a file that does not exist yet,
    create it (0600, random) before a local instance starts: the system unit turns token auth
    on, and nothing else makes the token. Returns the path created, if any."""
    if environ.get("RAY_AUTH_MODE", "").lower() != "token" or environ.get("RAY_AUTH_TOKEN"):
        return None
    raw = environ.get("RAY_AUTH_TOKEN_PATH")
    if not raw:
        return None
    path = Path(raw)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


class _Unreachable(Exception):
    pass


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} must be 'host:port' (the GCS address)")
    return host.strip("[]"), int(port)


async def _probe_tcp(address: str) -> None:
    host, port = _split_host_port(address)
    try:
        with anyio.fail_after(_TCP_PROBE_TIMEOUT_S):
            stream = await anyio.connect_tcp(host, port)
    except TimeoutError:
        raise _Unreachable(f"no Ray GCS answering at {address} (no answer within {_TCP_PROBE_TIMEOUT_S:g} s)") from None
    except OSError as exc:
        raise _Unreachable(f"no Ray GCS answering at {address}: {exc.strerror or exc}") from None
    await stream.aclose()
