"""The per-reply policy (the original KyleCode's rules): what may run together, in which order, and how.

Names arrive canonical (the loop resolves `tools.aliases`). Checks, in order,
each refusing the whole reply (nothing runs): more than one shell call, or a
tool over its `max_per_turn` → <VALIDATION_ERROR>; `mark_task_complete` next
to other calls, or more than one call of the `at_most_one_of` set →
<CONSTRAINT_ERROR>.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from fnmatch import fnmatchcase

from kcd.agent.calls import GroupRule, ToolInvocation, ToolSettings
from kcd.agent.tools.catalogue import SHELL_TOOLS, TOOL_SPECS

__all__ = ["PolicyError", "can_run_parallel", "group_matches", "policy_error", "run_order"]

_MAX_WORKERS = 8


class PolicyError:
    __slots__ = ("tag", "text")

    def __init__(self, tag: str, message: str) -> None:
        self.tag = tag
        self.text = f"<{tag}>{message}</{tag}>"


def policy_error(calls: Sequence[ToolInvocation], settings: ToolSettings) -> PolicyError | None:
    counts = Counter(c.name for c in calls)
    shells = sum(counts[s] for s in SHELL_TOOLS)
    if shells > 1:
        used = "/".join(s for s in SHELL_TOOLS if counts[s])
        return PolicyError(
            "VALIDATION_ERROR",
            (
                f"At most one {used} call is allowed per reply; this reply had {shells}, so nothing ran. "
                "Combine the commands into one (for example with &&) or send them in separate replies."
            ),
        )
    limits = {name: spec.max_per_turn for name, spec in TOOL_SPECS.items() if spec.max_per_turn}
    limits.update({lim.name: lim.max_per_turn for lim in settings.max_per_turn})
    for name, count in counts.items():
        limit = limits.get(name)
        if limit is not None and count > limit:
            return PolicyError(
                "VALIDATION_ERROR",
                (
                    f"{name} may be called at most {limit} time(s) per reply; this reply had {count}, "
                    "so nothing ran. Send the remaining calls in a later reply."
                ),
            )
    if counts["mark_task_complete"] and len(calls) > 1:
        return PolicyError(
            "CONSTRAINT_ERROR",
            (
                f"mark_task_complete must be the only tool call in its reply; this reply had {len(calls) - 1} "
                "other call(s), so nothing ran. Finish the remaining work first, then call mark_task_complete() alone."
            ),
        )
    exclusive = [name for name in counts if name in settings.at_most_one_of]
    if sum(counts[name] for name in exclusive) > 1:
        return PolicyError(
            "CONSTRAINT_ERROR",
            (
                f"At most one call of {', '.join(settings.at_most_one_of)} is allowed per reply; this reply had "
                f"{sum(counts[n] for n in exclusive)} ({', '.join(exclusive)}), so nothing ran. "
                "Send them in separate replies."
            ),
        )
    return None


def run_order(calls: Sequence[ToolInvocation]) -> list[int]:
    """Indices of `calls` in execution order: file-changing calls first, otherwise as sent."""

    def changes_files(i: int) -> bool:
        spec = TOOL_SPECS.get(calls[i].name)
        return spec is not None and spec.file_changing

    return sorted(range(len(calls)), key=lambda i: (not changes_files(i), i))


def group_matches(group: GroupRule, name: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in group.match_tools)


def can_run_parallel(calls: Sequence[ToolInvocation], settings: ToolSettings) -> int:
    """Worker threads for this reply: 0 or 1 means run sequentially.

    Parallel only when every call is a read-only tool listed in `nonblocking_tools`
    (writes are serialised whatever the list says: two edits of one reply may touch
    the same file), no matching group has max_parallel <= 1 and no group's barrier
    tool is in the reply.
    """
    if len(calls) < 2:
        return 0
    names = {c.name for c in calls}
    for name in names:
        spec = TOOL_SPECS.get(name)
        if spec is None or not spec.read_only or name not in settings.nonblocking_tools:
            return 0
    for group in settings.groups:
        if group.barrier_after is not None and group.barrier_after in names:
            return 0
        if group.max_parallel <= 1 and any(group_matches(group, n) for n in names):
            return 0
    return min(len(calls), max(settings.max_parallel_calls, 1), _MAX_WORKERS)
