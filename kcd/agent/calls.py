"""What the loop hands to an executor, and what comes back.

These cross the process boundary to Ray workers, so they are plain msgspec
Structs with no references to daemon objects.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

# Reference 2.3 `concurrency.nonblocking_tools` default, also the config's default
# (kcd.config.agent_schema imports it; this module, which Ray workers import, must
# not pull in the config code).
DEFAULT_NONBLOCKING_TOOLS: tuple[str, ...] = (
    "apply_unified_patch",
    "apply_search_replace",
    "create_file_from_block",
    "read",
    "read_file",
    "glob",
    "grep",
    "list",
    "list_dir",
    "patch",
)

# How a shell command is contained (kcd.sandbox): bubblewrap, kcd's own namespaces, or
# process containment only (no filesystem or network isolation).
Isolation = Literal["bwrap", "namespaces", "process"]


class ToolInvocation(msgspec.Struct, omit_defaults=True):
    """One tool call for an executor: id, canonical name, arguments, native or text."""

    call_id: str  # native: the provider's tool_call id; text: "text_<turn>_<i>"
    name: str  # canonical tool name
    args: dict[str, Any] = {}
    source: Literal["native", "text"] = "native"


class ToolOutcome(msgspec.Struct, omit_defaults=True):
    """What one tool call returned: the text the model sees, success, and artifacts."""

    call_id: str
    name: str
    ok: bool
    output: str  # what the model sees, with the original's tags (<TOOL_OUTPUT ...>)
    completes: bool = False  # mark_task_complete succeeded
    data: dict[str, Any] | None = None  # structured result for artifacts
    elapsed_s: float = 0.0


class GroupRule(msgspec.Struct, frozen=True, omit_defaults=True):
    """A `concurrency.groups[]` entry: calls of `match_tools` share `max_parallel` slots.

    `match_tools` entries are tool names or fnmatch patterns ("*" = every tool). A
    matching group with max_parallel <= 1, or `barrier_after` naming a tool of the
    reply, makes the whole reply run sequentially.
    """

    name: str
    match_tools: tuple[str, ...] = ()
    max_parallel: int = 1
    barrier_after: str | None = None


class ToolLimit(msgspec.Struct, frozen=True, omit_defaults=True):
    """`execution.max_per_turn` of a tool definition: more calls in one reply are refused."""

    name: str
    max_per_turn: int


class ToolSettings(msgspec.Struct, frozen=True, omit_defaults=True):
    """Limits and policy applied when executing a turn's calls."""

    shell_timeout_s: float = 30.0
    output_limit_bytes: int = 64 * 1024
    read_limit_lines: int = 2000
    # -- per-reply policy (see `tools.policy`); the loop fills these from `concurrency` and the defs
    nonblocking_tools: tuple[str, ...] = DEFAULT_NONBLOCKING_TOOLS
    groups: tuple[GroupRule, ...] = ()
    at_most_one_of: tuple[str, ...] = ()
    max_per_turn: tuple[ToolLimit, ...] = ()  # added to the built-in limits (one shell, one completion)
    max_parallel_calls: int = 8  # worker threads for one reply's parallel reads
    # -- glob / grep / list
    search_max_results: int = 200
    grep_timeout_s: float = 10.0  # one grep call's whole budget, regex matching included
    # -- shell sandbox (see kcd.sandbox)
    isolation: Isolation = "process"
    isolation_network: bool = False  # bwrap/namespaces: keep the host network (default: none)
    scope: str = ""  # the run: its calls share the per-run caps
    max_processes: int = 256  # processes and threads of one call (cgroup pids.max or RLIMIT_NPROC)
    max_processes_per_run: int = 512  # of all of a run's calls together (cgroup)
    memory_max_bytes: int = 4 * 1024**3  # one call's memory (cgroup); 0 = none
    run_memory_max_bytes: int = 8 * 1024**3  # a run's calls together (cgroup)
    file_size_limit_bytes: int = 256 * 1024 * 1024  # RLIMIT_FSIZE for shell commands; 0 = none
    memory_limit_bytes: int = 0  # RLIMIT_AS for shell commands; 0 = none (breaks JVMs, Go, ASan)
