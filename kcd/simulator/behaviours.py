"""Scripted model behaviours: WHAT the simulated model answers.

A behaviour looks at the request (the decoded chat/completions body) and
returns a `Reply`. It knows nothing about HTTP: HOW the reply reaches the
client (well-formed, or with a fault injected) is the delivery layer's job
(`kcd.simulator.delivery`).

Registered here: `dev` (a competent agent for the enumerate-workspace task),
`shell` (runs the task text with run_shell, then completes; holds runs busy in
cancel tests) and `echo`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

__all__ = [
    "Behaviour",
    "CallSpec",
    "DevAgent",
    "Echo",
    "Reply",
    "ShellAgent",
    "default_behaviours",
    "message_text",
    "offers_tools",
    "render_text_call",
    "tool_results",
]


class CallSpec(msgspec.Struct, frozen=True):
    name: str
    arguments: dict[str, Any] = {}


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    content: str | None = None
    tool_calls: list[CallSpec] = []  # native calls; text-mode calls live in `content`
    finish_reason: str | None = None  # None: "tool_calls" if there are calls, else "stop"

    @property
    def finish(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


class Behaviour(Protocol):
    def reply(self, request: dict[str, Any]) -> Reply: ...


# ------------------------------------------------------------ reading requests

_RESULT_MARKERS = ("<TOOL_OUTPUT", "Tool execution results:")


def message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return ""


def offers_tools(request: Mapping[str, Any]) -> bool:
    return bool(request.get("tools"))


def tool_results(request: Mapping[str, Any]) -> list[str]:
    """Tool results already in the conversation, oldest first.

    Native relay: one `tool` message per call. Text relay: a user or assistant
    message carrying the original's result tags (one message per turn).
    """
    out: list[str] = []
    for m in request.get("messages") or ():
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role == "tool":
            out.append(message_text(m))
        elif role in ("user", "assistant"):
            text = message_text(m)
            if any(marker in text for marker in _RESULT_MARKERS):
                out.append(text)
    return out


def _turns_with_results(request: Mapping[str, Any]) -> int:
    """Completed tool turns: consecutive tool messages count once."""
    turns, prev_tool = 0, False
    for m in request.get("messages") or ():
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role == "tool":
            if not prev_tool:
                turns += 1
            prev_tool = True
            continue
        prev_tool = False
        if role in ("user", "assistant") and any(k in message_text(m) for k in _RESULT_MARKERS):
            turns += 1
    return turns


def _first_user_text(request: Mapping[str, Any]) -> str:
    for m in request.get("messages") or ():
        if isinstance(m, dict) and m.get("role") == "user":
            return message_text(m)
    return ""


# ------------------------------------------------------------ writing replies


def render_text_call(call: CallSpec) -> str:
    """The original's pythonic text form: ``<TOOL_CALL> fn(a="x", n=2) </TOOL_CALL>``."""
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in call.arguments.items())
    return f"<TOOL_CALL> {call.name}({args}) </TOOL_CALL>"


def calls_reply(request: Mapping[str, Any], calls: list[CallSpec], text: str | None = None) -> Reply:
    """Native tool calls when the request offers tools, else the text form."""
    if offers_tools(request):
        return Reply(content=text, tool_calls=calls)
    rendered = "\n".join(render_text_call(c) for c in calls)
    return Reply(content=f"{text}\n\n{rendered}" if text else rendered)


# ------------------------------------------------------------ listings


class _Entry(msgspec.Struct, frozen=True):
    path: str  # workspace-relative
    is_dir: bool
    level: int  # 0: top level


_TREE_CHARS = " \t│├└─┬┼┃┣┗━|`+-\u00a0"
_TAG = re.compile(r"<[^>\n]*>")
_LIST_BLOCK = re.compile(r'<TOOL_OUTPUT tool="list_dir"[^>]*>(.*?)(?:</TOOL_OUTPUT>|$)', re.DOTALL)


def parse_listing(text: str) -> list[_Entry]:
    """Entries of a list_dir result: plain names or a box-drawing tree.

    Tolerant by design: tags, notes ("(empty directory)", "[listing truncated")
    and blank lines are skipped; a name ending in "/" or followed by deeper
    lines is a directory.
    """
    block = _LIST_BLOCK.search(text)
    if block is not None:
        text = block.group(1)
    elif "<TOOL_ERROR" in text:
        return []  # the listing failed: nothing to read
    rows: list[tuple[int, str]] = []
    for raw in _TAG.sub("", text).splitlines():
        stripped = raw.lstrip(_TREE_CHARS)
        name = stripped.strip()
        if not name or name[0] in "([" or name in (".", "./") or name.endswith(":"):
            continue
        rows.append((len(raw) - len(stripped), name))
    entries: list[_Entry] = []
    stack: list[tuple[int, str]] = []  # (indent, dir name) of the open directories
    for i, (indent, name) in enumerate(rows):
        while stack and stack[-1][0] >= indent:
            stack.pop()
        deeper = i + 1 < len(rows) and rows[i + 1][0] > indent
        is_dir = name.endswith("/") or deeper
        clean = name.rstrip("/")
        path = "/".join([d for _, d in stack] + [clean])
        entries.append(_Entry(path=path, is_dir=is_dir, level=len(stack)))
        if is_dir:
            stack.append((indent, clean))
    return entries


def pick_file(entries: list[_Entry]) -> str | None:
    """The file a careful agent reads first: README.md, then any file with an extension."""
    files = [e for e in entries if not e.is_dir]
    for e in sorted(files, key=lambda e: e.level):
        if e.path.rsplit("/", 1)[-1].lower() == "readme.md":
            return e.path
    for e in sorted(files, key=lambda e: e.level):
        name = e.path.rsplit("/", 1)[-1]
        if "." in name.strip("."):
            return e.path
    return files[0].path if files else None


_SOURCE_EXT = (".c", ".h", ".py", ".rs", ".go", ".ts", ".js", ".java", ".cpp", ".hpp")
_BUILD_NAMES = ("makefile", "cmakelists.txt", "pyproject.toml", "package.json", "cargo.toml", "go.mod")


def summarise(entries: list[_Entry], read: str | None) -> str:
    top = [e for e in entries if e.level == 0]
    if not top:
        return "## Workspace summary\n\n- The workspace is empty: no files or directories yet."
    dirs = [e.path + "/" for e in top if e.is_dir]
    files = [e.path for e in top if not e.is_dir]
    shown = ", ".join(f"`{n}`" for n in (dirs + files)[:8])
    more = "" if len(top) <= 8 else f" and {len(top) - 8} more"
    bullets = [f"- Top level: {len(dirs)} director{'y' if len(dirs) == 1 else 'ies'} and "
               f"{len(files)} file{'' if len(files) == 1 else 's'}: {shown}{more}."]
    names = [e.path for e in entries if not e.is_dir]
    build = [p for p in names if p.rsplit("/", 1)[-1].lower() in _BUILD_NAMES]
    sources = [p for p in names if p.endswith(_SOURCE_EXT)]
    if build or sources:
        parts = []
        if build:
            parts.append("build entry points " + ", ".join(f"`{p}`" for p in build[:4]))
        if sources:
            parts.append("sources " + ", ".join(f"`{p}`" for p in sources[:6]))
        bullets.append("- Important: " + "; ".join(parts) + ".")
    if read:
        bullets.append(f"- Read `{read}` for an overview of the project.")
    return "## Workspace summary\n\n" + "\n".join(bullets)


# ------------------------------------------------------------ behaviours


class DevAgent:
    """A competent agent on the enumerate-workspace task, in three steps:
    list the workspace, read one file, then summarise and call mark_task_complete alone."""

    def reply(self, request: dict[str, Any]) -> Reply:
        step = _turns_with_results(request)
        results = tool_results(request)
        listing = parse_listing(results[0]) if results else []
        if step == 0:
            return calls_reply(request, [CallSpec("list_dir", {"path": ".", "depth": 2})])
        if step == 1:
            target = pick_file(listing)
            if target is not None:
                return calls_reply(request, [CallSpec("read_file", {"path": target})])
            read = None
        else:
            read = pick_file(listing)
        return calls_reply(request, [CallSpec("mark_task_complete")], summarise(listing, read))


class ShellAgent:
    """Runs the task text (the first paragraph of the first user message) with
    run_shell, then completes."""

    def reply(self, request: dict[str, Any]) -> Reply:
        if _turns_with_results(request) == 0:
            command = _first_user_text(request).strip().split("\n\n", 1)[0].strip()
            return calls_reply(request, [CallSpec("run_shell", {"command": command or "true"})])
        return calls_reply(request, [CallSpec("mark_task_complete")], "Done.")


class Echo:
    """Replies with the last user message."""

    def reply(self, request: dict[str, Any]) -> Reply:
        last = ""
        for m in request.get("messages") or ():
            if isinstance(m, dict) and m.get("role") == "user":
                last = message_text(m)
        return Reply(content=last, finish_reason="stop")


def default_behaviours() -> dict[str, Behaviour]:
    """A fresh registry (callers may add to it)."""
    return {"dev": DevAgent(), "shell": ShellAgent(), "echo": Echo()}
