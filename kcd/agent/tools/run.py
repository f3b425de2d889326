"""execute_calls: run one reply's tool calls under the per-reply policy.

A pure function of its inputs, so it can run in a Ray worker or a daemon thread:
no daemon objects, no module-level mutable state, no Ray import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.tools.catalogue import REFUSED_TOOLS, TOOL_SPECS
from kcd.agent.tools.handlers import HANDLERS
from kcd.agent.tools.policy import can_run_parallel, group_matches, policy_error, run_order
from kcd.agent.tools.results import Handler, Result, ToolError, shown_path, tool_error
from kcd.agent.tools.spec import check_args
from kcd.workspaces.confine import WorkspaceEscape
from kcd.sandbox.host import ToolHost

__all__ = ["execute_calls"]

_CANCELLED = "the turn was cancelled."
_SHELL_TOOLS = ("run_shell", "bash")  # the tools that need a tool host


def execute_calls(
    workspace: str,
    calls: list[ToolInvocation],
    settings: ToolSettings,
    cancel: threading.Event | None = None,
    *,
    handlers: Mapping[str, Handler] | None = None,
    host: ToolHost | None = None,
) -> list[ToolOutcome]:
    """Run one reply's tool calls in `workspace`; one outcome per call, in the calls' order.

    Policy (see `policy`): a policy error refuses the whole reply
    and nothing runs. Otherwise file-changing calls run first. Independent
    read-only calls run in parallel threads, each failure attributed to its own
    call; any other reply runs one call at a time, and the first failure (a tool
    error, or a shell command that exits non-zero or times out) cancels the
    calls after it, each reported as not executed. Setting `cancel` kills a
    running shell command and skips the calls not yet started.

    `handlers` replaces implementations by name (tests inject slow or failing
    tools); arguments are still checked against the catalogue. `host` runs shell
    commands (see kcd.sandbox: kcd's own, or a Ray worker's); without one, a host
    is started for this reply's shell calls and closed after them (~130 ms).
    """
    if not calls:
        return []
    refused = policy_error(calls, settings)
    if refused is not None:
        return [
            ToolOutcome(
                call_id=c.call_id, name=c.name, ok=False, output=refused.text, data={"policy_error": refused.tag}
            )
            for c in calls
        ]
    root = Path(workspace)
    if not root.is_dir():
        text = "<EXECUTION_ERROR>The workspace directory is missing; nothing ran.</EXECUTION_ERROR>"
        return [
            ToolOutcome(call_id=c.call_id, name=c.name, ok=False, output=text, data={"error": "workspace missing"})
            for c in calls
        ]
    with ExitStack() as owned:
        if host is None and any(c.name in _SHELL_TOOLS for c in calls):
            host = owned.enter_context(ToolHost())
        table = {**HANDLERS, **{name: partial(HANDLERS[name], host=host) for name in _SHELL_TOOLS}}
        table.update(handlers or {})
        workers = can_run_parallel(calls, settings)
        if workers > 1:
            return _parallel(root, calls, settings, cancel, table, workers)
        return _sequential(root, calls, settings, cancel, table)


def _sequential(
    root: Path,
    calls: Sequence[ToolInvocation],
    settings: ToolSettings,
    cancel: threading.Event | None,
    table: Mapping[str, Handler],
) -> list[ToolOutcome]:
    order = run_order(calls)
    outcomes: dict[int, ToolOutcome] = {}
    stop_reason: str | None = None
    for position, index in enumerate(order):
        call = calls[index]
        if stop_reason is None and cancel is not None and cancel.is_set():
            stop_reason = _CANCELLED
        if stop_reason is not None:
            outcomes[index] = _cancelled(call, stop_reason)
            continue
        outcome = _run_one(root, call, settings, cancel, table)
        outcomes[index] = outcome
        if cancel is not None and cancel.is_set():
            stop_reason = _CANCELLED
        elif not outcome.ok:
            remaining = len(order) - position - 1
            stop_reason = (
                f"the earlier call {call.name} (call_id {call.call_id}) failed, so the "
                f"remaining {remaining} tool call(s) were cancelled."
            )
    return [outcomes[i] for i in range(len(calls))]


def _parallel(
    root: Path,
    calls: Sequence[ToolInvocation],
    settings: ToolSettings,
    cancel: threading.Event | None,
    table: Mapping[str, Handler],
    workers: int,
) -> list[ToolOutcome]:
    # One semaphore per group, always acquired in group order, so calls matching
    # several groups cannot deadlock.
    slots = [(g, threading.BoundedSemaphore(g.max_parallel)) for g in settings.groups]

    def job(call: ToolInvocation) -> ToolOutcome:
        with ExitStack() as held:
            for group, semaphore in slots:
                if group_matches(group, call.name):
                    held.enter_context(semaphore)
            if cancel is not None and cancel.is_set():
                return _cancelled(call, _CANCELLED)
            return _run_one(root, call, settings, cancel, table)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kcd-tool") as pool:
        return list(pool.map(job, calls))


def _cancelled(call: ToolInvocation, reason: str) -> ToolOutcome:
    return ToolOutcome(
        call_id=call.call_id,
        name=call.name,
        ok=False,
        output=tool_error(call.name, f"Not executed: {reason}"),
        data={"cancelled": True},
    )


def _run_one(
    root: Path,
    call: ToolInvocation,
    settings: ToolSettings,
    cancel: threading.Event | None,
    table: Mapping[str, Handler],
) -> ToolOutcome:
    started = time.monotonic()
    try:
        spec = TOOL_SPECS.get(call.name)
        if call.name in REFUSED_TOOLS:
            raise ToolError(f"tool {call.name!r} is not supported by kcd; use the file and shell tools instead")
        if spec is None or call.name not in table:
            raise ToolError(f"unknown tool {call.name!r}; available tools: {', '.join(TOOL_SPECS)}")
        args = check_args(spec, call.args)
        result = table[call.name](root, args, settings, cancel)
    except (ToolError, WorkspaceEscape) as exc:
        data = {"error": str(exc), **(getattr(exc, "data", None) or {})}
        result = Result(tool_error(call.name, str(exc)), data, ok=False)
    except OSError as exc:
        message = f"{exc.strerror or type(exc).__name__}: {shown_path(root, exc.filename)}"
        result = Result(tool_error(call.name, message), {"error": message}, ok=False)
    except Exception as exc:  # a tool bug must not take the whole batch (or the worker) down
        message = f"internal error: {type(exc).__name__}: {exc}"
        result = Result(tool_error(call.name, message), {"error": message}, ok=False)
    return ToolOutcome(
        call_id=call.call_id,
        name=call.name,
        ok=result.ok,
        output=result.output,
        completes=result.completes,
        data=result.data,
        elapsed_s=round(time.monotonic() - started, 6),
    )
