"""What the loop hands to an executor, and what comes back.

These cross the process boundary to Ray workers, so they are plain msgspec
Structs with no references to daemon objects.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class ToolInvocation(msgspec.Struct, omit_defaults=True):
    call_id: str  # native: the provider's tool_call id; text: "text_<turn>_<i>"
    name: str  # canonical tool name
    args: dict[str, Any] = {}
    source: Literal["native", "text"] = "native"


class ToolOutcome(msgspec.Struct, omit_defaults=True):
    call_id: str
    name: str
    ok: bool
    output: str  # what the model sees, with the original's tags (<TOOL_OUTPUT ...>)
    completes: bool = False  # mark_task_complete succeeded
    data: dict[str, Any] | None = None  # structured result for artifacts
    elapsed_s: float = 0.0


class ToolSettings(msgspec.Struct, frozen=True, omit_defaults=True):
    """Limits applied when executing a turn's calls."""

    shell_timeout_s: float = 30.0
    output_limit_bytes: int = 64 * 1024
    read_limit_lines: int = 2000
