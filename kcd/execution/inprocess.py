"""Run tool calls in a worker thread of the daemon itself (no Ray).

The fast path for unit tests and small hosts (`RAY_SCE_LOCAL_MODE=1`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.tools import execute_calls
from kcd.execution.base import ExecutorState, ExecutorUnavailable
from kcd.sandbox.host import ToolHost

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["InProcessExecutor"]

# After cancellation, how long to wait for the worker thread to wind down (the shell is
# SIGKILLed at once, so this only bounds a pathological tool).
_STOP_GRACE_S = 5.0


class InProcessExecutor:
    """Runs a turn's tool calls in worker threads of the daemon (no Ray)."""

    mode = "in-process"

    def __init__(self, max_concurrency: int = 16) -> None:
        self.state: ExecutorState = "ready"
        self.detail: dict[str, Any] = {"max_concurrency": max_concurrency}
        # Own limiter: long shell commands must not starve the daemon's other to_thread users.
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        # Shell commands are forked by this helper process, never by the daemon (kcd.sandbox).
        self.host = ToolHost()

    async def start(self, task_group: TaskGroup | None = None) -> None:
        self.state = "ready"

    async def wait_ready(self, timeout: float | None = None) -> None:
        if self.state != "ready":
            raise ExecutorUnavailable("the in-process executor is stopped")

    async def run_turn(
        self, workspace: str, calls: list[ToolInvocation], settings: ToolSettings
    ) -> list[ToolOutcome]:
        await self.wait_ready()
        cancel = threading.Event()
        started = threading.Event()
        finished = threading.Event()

        def work() -> list[ToolOutcome]:
            started.set()
            try:
                return execute_calls(workspace, calls, settings, cancel, host=self.host)
            finally:
                finished.set()

        try:
            # abandon_on_cancel: the cancellation reaches us at once, so we can set `cancel`,
            # which kills the running shell's process group; then we wait for the thread.
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=self._limiter)
        except anyio.get_cancelled_exc_class():
            cancel.set()
            with anyio.move_on_after(_STOP_GRACE_S, shield=True):
                while started.is_set() and not finished.is_set():
                    await anyio.sleep(0.01)
            raise

    async def release(self, workspace: str) -> None:
        """Nothing to drop: the calls ran in the workspace itself."""

    async def aclose(self) -> None:
        self.state = "stopped"
        await anyio.to_thread.run_sync(self.host.close)
