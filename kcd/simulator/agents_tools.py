"""Which tools a request offers, under which names, and how to call them.

Native mode: the names in the request's `tools`. Text mode: the names on the
signature lines of the ``<FUNCTIONS>`` block that kcd's text catalogue puts in
the system or user prompt (`kcd.agent.dialects.render_text_catalogue`), else
the original's internal tool names. Both name sets are known: internal
(`list_dir`, `read_file`, ...) and OpenCode (`list`, `read`, ...), each with
its own parameter names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from kcd.simulator.agents_common import CallSpec, message_text, offers_tools

__all__ = ["INTERNAL_TOOLS", "Toolbox", "catalogue_tools"]

INTERNAL_TOOLS = (
    "list_dir", "read_file", "create_file", "create_file_from_block", "apply_search_replace",
    "apply_unified_patch", "run_shell", "mark_task_complete",
)
_FUNCTIONS = re.compile(r"<FUNCTIONS>(.*?)</FUNCTIONS>", re.DOTALL)
_SIGNATURE = re.compile(r"^([A-Za-z_][\w-]*)\(", re.MULTILINE)  # descriptions are indented, signatures not


def catalogue_tools(request: Mapping[str, Any]) -> tuple[str, ...]:
    """Tool names of the latest ``<FUNCTIONS>`` block in a system or user message."""
    for m in reversed(request.get("messages") or ()):
        if isinstance(m, dict) and m.get("role") in ("system", "user"):
            blocks = _FUNCTIONS.findall(message_text(m))
            if blocks:
                return tuple(_SIGNATURE.findall(blocks[-1]))
    return ()


def _native_tools(request: Mapping[str, Any]) -> tuple[str, ...]:
    names = []
    for tool in request.get("tools") or ():
        if isinstance(tool, dict):
            fn = tool.get("function")
            name = fn.get("name") if isinstance(fn, dict) else tool.get("name")  # OpenAI, or a bare {name}
            if isinstance(name, str):
                names.append(name)
    return tuple(names)


class Toolbox(NamedTuple):
    names: tuple[str, ...]
    native: bool

    @classmethod
    def of(cls, request: Mapping[str, Any]) -> Toolbox:
        if offers_tools(request):
            return cls(_native_tools(request), True)
        return cls(catalogue_tools(request) or INTERNAL_TOOLS, False)

    def first(self, *candidates: str) -> str | None:
        return next((c for c in candidates if c in self.names), None)

    def list_call(self, path: str = ".") -> CallSpec:
        if self.first("list_dir", "list") == "list":
            return CallSpec("list", {"path": path})
        return CallSpec("list_dir", {"path": path, "depth": 2})

    def read_call(self, path: str) -> CallSpec:
        if self.first("read_file", "read") == "read":
            return CallSpec("read", {"filePath": path})
        return CallSpec("read_file", {"path": path})
