"""What a tool handler returns, and the result tags the model sees (the original's tags)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from threading import Event
from typing import Any, NamedTuple

from kcd.agent.calls import ToolSettings
from kcd.workspaces.confine import relative_to_workspace

__all__ = ["Handler", "Result", "ToolError", "attr", "shown_path", "tool_error", "tool_output"]


class ToolError(Exception):
    """A failure reported to the model as <TOOL_ERROR tool="...">message</TOOL_ERROR>.

    `data` (optional) becomes the outcome's structured data, next to the error text.
    """

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data = data


class Result(NamedTuple):
    output: str
    data: dict[str, Any]
    ok: bool = True
    completes: bool = False


# (workspace root, checked args, settings, cancel event) -> Result; raises ToolError/OSError.
Handler = Callable[[Path, dict[str, Any], ToolSettings, "Event | None"], Result]


def attr(value: str) -> str:
    """Escape a value for a tag attribute."""
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def tool_error(name: str, message: str) -> str:
    return f'<TOOL_ERROR tool="{attr(name)}">{message}</TOOL_ERROR>'


def tool_output(name: str, body: str, **attrs: str) -> str:
    """<TOOL_OUTPUT tool="name" k="v">body</TOOL_OUTPUT>; `body` is emitted verbatim."""
    extra = "".join(f' {k}="{attr(v)}"' for k, v in attrs.items())
    return f'<TOOL_OUTPUT tool="{attr(name)}"{extra}>{body}</TOOL_OUTPUT>'


def shown_path(root: Path, filename: Any) -> str:
    """Workspace-relative form of an OSError's filename, for messages."""
    if not isinstance(filename, str):
        return "(unknown path)"
    try:
        return relative_to_workspace(root, Path(filename))
    except ValueError:
        return filename
