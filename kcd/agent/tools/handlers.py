"""Tool name -> implementation, for every tool in the catalogue."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from threading import Event
from types import MappingProxyType
from typing import Any

from kcd.agent.calls import ToolSettings
from kcd.agent.tools import edits, listing, reading, search, shell, writing
from kcd.agent.tools.results import Handler, Result, tool_output

__all__ = ["HANDLERS"]


def _mark_task_complete(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    output = tool_output("mark_task_complete", "Task marked as complete. Ending session.")
    return Result(output, {"action": "complete"}, completes=True)


HANDLERS: Mapping[str, Handler] = MappingProxyType(
    {
        "list_dir": listing.list_dir,
        "read_file": reading.read_file,
        "create_file": writing.create_file,
        "create_file_from_block": writing.create_file_from_block,
        "apply_search_replace": edits.apply_search_replace,
        "apply_unified_patch": edits.apply_unified_patch,
        "run_shell": shell.run_shell,
        "mark_task_complete": _mark_task_complete,
        "bash": shell.bash,
        "read": reading.read,
        "write": writing.write,
        "edit": edits.edit,
        "glob": search.glob,
        "grep": search.grep,
        "list": listing.list_tree,
        "patch": edits.patch,
    }
)
