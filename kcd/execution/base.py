"""The Executor interface: where a turn's tool calls run.

The run loop keeps the LLM call in the daemon and hands each turn's calls to an
executor: a Ray task (default) or a thread of the daemon (in-process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["Executor", "ExecutorError", "ExecutorState", "ExecutorUnavailable"]

ExecutorState = Literal["starting", "ready", "degraded", "stopped"]


class ExecutorError(RuntimeError):
    """A turn could not be executed (e.g. the Ray worker died); the calls' effects are unknown."""


class ExecutorUnavailable(ExecutorError):
    """The executor cannot run turns: start failed for good, it is still starting past the
    caller's timeout, or it was stopped."""


@runtime_checkable
class Executor(Protocol):
    """Where a turn's tool calls run: in the daemon or on Ray."""

    mode: str  # "ray" | "in-process"
    state: ExecutorState
    detail: dict[str, Any]  # for /v1/health: address, error, hint, ...

    async def start(self, task_group: TaskGroup | None = None) -> None:
        """Begin becoming ready.

        With `task_group` (the daemon's long-lived one) any slow start-up runs there and
        start() returns at once; without it, start() awaits the start-up itself (still
        bounded by the executor's own timeout). Failure never raises here: it shows as
        state "degraded" with the error in `detail`.
        """

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until ready; raise ExecutorUnavailable if start failed or `timeout` passed."""

    async def run_turn(
        self, workspace: str, calls: list[ToolInvocation], settings: ToolSettings
    ) -> list[ToolOutcome]:
        """Run one reply's calls (see kcd.agent.tools.execute_calls), waiting for readiness first.

        If the awaiting scope is cancelled, the running work is stopped (shell
        process groups killed) before the cancellation propagates.
        """

    async def release(self, workspace: str) -> None:
        """The run using `workspace` is over: drop whatever the executor kept for it
        (a Ray node's copy of the workspace). Never raises."""

    async def aclose(self) -> None:
        """Stop; idempotent. Later run_turn calls raise ExecutorUnavailable."""
