"""`dev`: a competent agent on the enumerate-workspace task, in three steps:
list the workspace, read one file, then summarise and call mark_task_complete alone.

It speaks whichever tool names the request offers (`Toolbox`), and reads
both listing shapes: `list_dir` (names, or a box-drawing tree) and `list`
(an indented tree, possibly under a root path line).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from kcd.simulator.agents_common import CallSpec, Reply, calls_reply, tool_results, turns_with_results
from kcd.simulator.agents_tools import Toolbox

__all__ = ["DevAgent", "parse_listing", "pick_file", "summarise"]


class _Entry(msgspec.Struct, frozen=True):
    path: str  # workspace-relative
    is_dir: bool
    level: int  # 0: top level


_TREE_CHARS = " \t│├└─┬┼┃┣┗━|`+-\u00a0"
_TAG = re.compile(r"<[^>\n]*>")
_LIST_BLOCK = re.compile(r'<TOOL_OUTPUT tool="(?:list_dir|list)"[^>]*>(.*?)(?:</TOOL_OUTPUT>|$)', re.DOTALL)


def parse_listing(text: str) -> list[_Entry]:
    """Entries of a list_dir or list result: plain names, a box-drawing tree or an indented tree.

    Tolerant by design: tags, notes ("(empty directory)", "[listing truncated"),
    blank lines and a root line ("./", or an absolute path as OpenCode prints
    it) are skipped; a name ending in "/" or followed by deeper lines is a directory.
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
        if not name or name[0] in "([/" or name in (".", "./") or name.endswith(":"):
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


class DevAgent:
    """Step 0: list "." (`list_dir` depth 2, or `list`); step 1: read the file
    `pick_file` chooses (`read_file` or `read`), skipped when there is none;
    then the summary with mark_task_complete alone."""

    def reply(self, request: dict[str, Any]) -> Reply:
        box = Toolbox.of(request)
        step = turns_with_results(request)
        results = tool_results(request)
        listing = parse_listing(results[0]) if results else []
        if step == 0:
            return calls_reply(request, [box.list_call(".")])
        if step == 1:
            target = pick_file(listing)
            if target is not None:
                return calls_reply(request, [box.read_call(target)])
            read = None
        else:
            read = pick_file(listing)
        return calls_reply(request, [CallSpec("mark_task_complete")], summarise(listing, read))
