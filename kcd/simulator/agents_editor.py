"""`editor`: reads one file, edits it with the best edit tool or text format on
offer, then calls mark_task_complete alone.

Task grammar (searched for in the first user message; case-insensitive keywords):

    edit <path>: replace "<old>" with "<new>"
    edit <path>: append "<line>"
    format=search_replace | begin_patch | unified_diff | whole_file      (optional, anywhere)

`<path>` has no spaces or colons; the quoted texts are JSON strings (so \\n,
\\" and \\\\ escapes work). Without an ``edit`` instruction the task is
``edit README.md: append "Edited by kcd."``. `replace` changes the first
occurrence; `append` adds the line at the end (after a newline if the file
lacks one) and creates a missing file.

Steps: 0 reads the file (`read_file` or `read`); 1 sends the edit; 2 calls
mark_task_complete alone with a one-line summary. If the edit cannot be made
(the old text is missing) or its result is an error, the agent says so in a
plain reply with no tool call and does not claim completion.

Edit forms, by format, in preference order (a `format=` hint whose tools are
on offer goes first):

- search_replace: native `apply_search_replace` or `edit`; text: a SEARCH/REPLACE block
- begin_patch: native `patch`; text: a ``*** Begin Patch`` block
- unified_diff: native `apply_unified_patch`; text: a ```diff fence
- whole_file: native `create_file_from_block` or `write`; text: a <TOOL_CALL> of either

Native mode uses the tools in the request; text mode those of the prompt's
``<FUNCTIONS>`` block (else the internal names, see `Toolbox`).
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from kcd.simulator import agents_edits as edits
from kcd.simulator.agents_common import (
    CallSpec,
    Reply,
    calls_reply,
    first_user_text,
    tool_results,
    turns_with_results,
)
from kcd.simulator.agents_tools import Toolbox

__all__ = ["FORMAT_TOOLS", "EditTask", "EditorAgent", "choose_format", "edit_reply", "read_content"]

_QUOTED = r'"(?:[^"\\]|\\.)*"'
_EDIT = re.compile(
    rf"\bedit\s+(?P<path>[^\s:]+)\s*:\s*(?:replace\s+(?P<old>{_QUOTED})\s+with\s+(?P<new>{_QUOTED})"
    rf"|append\s+(?P<line>{_QUOTED}))",
    re.IGNORECASE,
)
_HINT = re.compile(r"\bformat=(search_replace|begin_patch|unified_diff|whole_file)\b")
# Which tools carry each format, in preference order.
FORMAT_TOOLS: dict[str, tuple[str, ...]] = {
    "search_replace": ("apply_search_replace", "edit"),
    "begin_patch": ("patch",),
    "unified_diff": ("apply_unified_patch",),
    "whole_file": ("create_file_from_block", "write"),
}
_READ_BLOCK = re.compile(r'<TOOL_OUTPUT tool="(?:read_file|read)"[^>]*>(.*)</TOOL_OUTPUT>', re.DOTALL)
_READ_NOTE = re.compile(r"\[(?:showing lines|output cut|offset) [^\]\n]*\]\Z")
_FAILED = re.compile(r"<(?:TOOL|VALIDATION|CONSTRAINT|EXECUTION)_ERROR\b")


class EditTask(NamedTuple):
    path: str
    old: str | None  # replace: the text to find
    new: str  # replace: its replacement; append: the line
    hint: str | None

    @classmethod
    def parse(cls, task: str) -> EditTask:
        hint = _HINT.search(task)
        fmt = hint.group(1) if hint else None
        m = _EDIT.search(task)
        if m is None:
            return cls("README.md", None, "Edited by kcd.", fmt)
        if m.group("line") is not None:
            return cls(m.group("path"), None, json.loads(m.group("line")), fmt)
        return cls(m.group("path"), json.loads(m.group("old")), json.loads(m.group("new")), fmt)

    def apply(self, before: str | None) -> str | None:
        """The new content, or None if the edit does not apply."""
        if self.old is None:
            if not before:
                return self.new + "\n"
            return before + ("" if before.endswith("\n") else "\n") + self.new + "\n"
        if before is None or self.old not in before:
            return None
        return before.replace(self.old, self.new, 1)

    def describe(self) -> str:
        if self.old is None:
            return f"append {json.dumps(self.new)}"
        return f"replace {json.dumps(self.old)} with {json.dumps(self.new)}"


def read_content(result: str) -> str | None:
    """The file text of a read_file/read result; None if the read failed."""
    m = _READ_BLOCK.search(result)
    if m is None:
        return None
    return _READ_NOTE.sub("", m.group(1))


def choose_format(box: Toolbox, hint: str | None) -> tuple[str, str] | None:
    """(format, tool) to edit with: the hinted format if its tool is on offer, else the first on offer."""
    order = [hint] if hint else []
    order += [f for f in FORMAT_TOOLS if f != hint]
    for fmt in order:
        tool = box.first(*FORMAT_TOOLS[fmt])
        if tool is not None:
            return fmt, tool
    return None


def edit_reply(request: dict[str, Any], box: Toolbox, fmt: str, tool: str, path: str,
               before: str | None, after: str) -> Reply:
    """The edit as a native call, or in the text format the format names."""
    search, replace = edits.search_replace(before, after)
    if box.native or fmt == "whole_file":
        args: dict[str, Any] = {
            "apply_search_replace": {"file_name": path, "search": search, "replace": replace},
            "edit": {"filePath": path, "oldString": search, "newString": replace},
            "patch": {"patchText": edits.begin_patch(path, before, after).rstrip("\n")},
            "apply_unified_patch": {"patch": edits.unified_diff(path, before, after)},
            "create_file_from_block": {"file_name": path, "content": after},
            "write": {"filePath": path, "content": after},
        }[tool]
        return calls_reply(request, [CallSpec(tool, args)])
    if fmt == "search_replace":
        body = edits.search_replace_block(path, search, replace)
    elif fmt == "begin_patch":
        body = edits.begin_patch(path, before, after)
    else:
        body = f"```diff\n{edits.unified_diff(path, before, after)}```\n"
    return Reply(content=f"Editing `{path}`:\n\n{body}")


class EditorAgent:
    """See the module docstring for the task grammar and the formats."""

    def reply(self, request: dict[str, Any]) -> Reply:
        task = EditTask.parse(first_user_text(request))
        box = Toolbox.of(request)
        step = turns_with_results(request)
        results = tool_results(request)
        if step == 0:
            return calls_reply(request, [box.read_call(task.path)])
        if step == 1:
            before = read_content(results[0])
            after = task.apply(before)
            if after is None:
                return Reply(content=f"EDIT FAILED: cannot {task.describe()} in `{task.path}`: "
                                     "the text is not in the file.")
            chosen = choose_format(box, task.hint)
            if chosen is None:
                return Reply(content=f"EDIT FAILED: no edit tool is available (tools: {', '.join(box.names)}).")
            return edit_reply(request, box, *chosen, task.path, before, after)
        if _FAILED.search(results[-1]):
            return Reply(content=f"EDIT FAILED: the edit of `{task.path}` was refused:\n\n{results[-1]}")
        return calls_reply(request, [CallSpec("mark_task_complete")], f"Edited `{task.path}`: {task.describe()}.")

