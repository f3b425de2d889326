"""list_dir and list: directory listings that stay inside the workspace.

Symlinked directories are shown but never entered, so a listing cannot leave the
workspace or loop; both tools stop at LIST_DIR_MAX_ENTRIES entries.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from threading import Event
from typing import Any

from kcd.agent.calls import ToolSettings
from kcd.agent.tools.paths import VCS_DIRS, compile_glob, resolve
from kcd.agent.tools.results import Result, ToolError, tool_output

__all__ = ["LIST_DIR_MAX_ENTRIES", "list_dir", "list_tree"]

LIST_DIR_MAX_ENTRIES = 1000
_LIST_MAX_DEPTH = 32  # `list` is recursive; this only bounds pathological nesting
# Skipped by `list` (as OpenCode's list does): never the agent's work product, often huge.
_LIST_SKIP_DIRS = VCS_DIRS | frozenset(
    {"node_modules", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox", ".cache"}
)


def list_dir(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    target, shown = _directory(root, args["path"], "read_file")
    depth: int = args["depth"]
    budget = [LIST_DIR_MAX_ENTRIES]
    items = _scan(target, depth, 1, budget, lambda rel, is_dir: True, "")
    truncated = budget[0] < 0
    lines = [it["name"] + ("/" if it["is_dir"] else "") for it in items] if depth == 1 else _tree_lines(items, "")
    if truncated:
        lines.append(
            f"[listing truncated at {LIST_DIR_MAX_ENTRIES} entries; list a subdirectory or use a smaller depth]"
        )
    body = "\n".join(lines) if lines else "(empty directory)"
    data = {"path": shown, "items": items, "depth": depth, "tree_format": depth > 1, "truncated": truncated}
    return Result(tool_output("list_dir", f"\n{body}\n", path=shown), data)


def list_tree(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    """The OpenCode `list` tool: the whole tree under `path`, indented two spaces a level."""
    target, shown = _directory(root, args["path"] or ".", "read")
    ignores = [_ignore_rule(p) for p in args["ignore"] or []]

    def keep(rel: str, is_dir: bool) -> bool:
        name = rel.rsplit("/", 1)[-1]
        if is_dir and name in _LIST_SKIP_DIRS:
            return False
        return not any(_ignored(rule, rel, name, is_dir) for rule in ignores)

    budget = [LIST_DIR_MAX_ENTRIES]
    items = _scan(target, _LIST_MAX_DEPTH, 1, budget, keep, "")
    truncated = budget[0] < 0
    lines = _indented(items, "  ")
    if truncated:
        lines.append(
            f"[listing truncated at {LIST_DIR_MAX_ENTRIES} entries; list a subdirectory or add ignore patterns]"
        )
    body = "\n".join(lines) if lines else "(empty directory)"
    data = {"path": shown, "items": items, "truncated": truncated}
    return Result(tool_output("list", f"\n{shown.rstrip('/')}/\n{body}\n", path=shown), data)


def _directory(root: Path, path: str, reader: str) -> tuple[Path, str]:
    target, shown = resolve(root, path)
    if not target.exists():
        raise ToolError(f"no such directory: {shown!r}")
    if not target.is_dir():
        raise ToolError(f"not a directory: {shown!r} (use {reader} for files)")
    return target, shown


def _scan(directory: Path, depth: int, level: int, budget: list[int], keep: Any, rel: str) -> list[dict[str, Any]]:
    """Entries of `directory` (directories first, then by name), descending `depth` levels.

    `budget` counts down the entries left to show (set to -1 when it ran out);
    `keep(relative path, is_dir)` filters entries.
    """
    try:
        with os.scandir(directory) as it:
            entries = [(e.name, _is_dir(e), e.is_symlink()) for e in it]
    except OSError:
        return []  # unreadable subdirectory: show it, without children
    entries.sort(key=lambda e: (not e[1], e[0]))
    items: list[dict[str, Any]] = []
    for name, is_dir, is_link in entries:
        child_rel = f"{rel}{name}"
        if not keep(child_rel, is_dir):
            continue
        if budget[0] <= 0:
            budget[0] = -1
            break
        budget[0] -= 1
        item: dict[str, Any] = {"name": name, "is_dir": is_dir, "level": level}
        if is_dir and level < depth and not is_link:
            item["children"] = _scan(directory / name, depth, level + 1, budget, keep, child_rel + "/")
        items.append(item)
    return items


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _tree_lines(items: list[dict[str, Any]], prefix: str) -> list[str]:
    lines: list[str] = []
    for i, item in enumerate(items):
        last = i == len(items) - 1
        lines.append(f"{prefix}{'└── ' if last else '├── '}{item['name']}{'/' if item['is_dir'] else ''}")
        if item.get("children"):
            lines += _tree_lines(item["children"], prefix + ("    " if last else "│   "))
    return lines


def _indented(items: list[dict[str, Any]], indent: str) -> list[str]:
    lines: list[str] = []
    for item in items:
        lines.append(f"{indent}{item['name']}{'/' if item['is_dir'] else ''}")
        if item.get("children"):
            lines += _indented(item["children"], indent + "  ")
    return lines


def _ignore_rule(pattern: str) -> tuple[re.Pattern[str], bool, bool]:
    """(regex, matches whole relative paths, directories only) for an `ignore` entry."""
    dir_only = pattern.endswith("/")
    regex, by_path = compile_glob(pattern.rstrip("/") or pattern)
    return regex, by_path, dir_only


def _ignored(rule: tuple[re.Pattern[str], bool, bool], rel: str, name: str, is_dir: bool) -> bool:
    regex, by_path, dir_only = rule
    if dir_only and not is_dir:
        return False
    return regex.match(rel if by_path else name) is not None
