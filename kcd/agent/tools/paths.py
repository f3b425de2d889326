"""Path handling shared by the file tools: confinement, safe tree walks, glob patterns.

Walks never follow a symlinked directory (a link may point out of the
workspace, or loop) and never yield a file whose real path is outside the
workspace, so glob, grep and list cannot show or read anything outside it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from threading import Event

from kcd.agent.tools.results import ToolError
from kcd.workspaces.confine import relative_to_workspace, resolve_tool_path

__all__ = ["VCS_DIRS", "compile_glob", "inside", "resolve", "walk_files"]

VCS_DIRS = frozenset({".git", ".hg", ".svn"})


def resolve(root: Path, user_path: str) -> tuple[Path, str]:
    """(real path, workspace-relative display path); raises WorkspaceEscape."""
    target = resolve_tool_path(root, user_path)
    return target, relative_to_workspace(root, target)


def inside(real_root: str, path: str) -> bool:
    """Whether `path`'s real location (symlinks resolved) is inside `real_root`."""
    real = os.path.realpath(path)
    return os.path.commonpath([real_root, real]) == real_root


def walk_files(base: Path, root: Path, cancel: Event | None = None) -> list[tuple[str, str]]:
    """(real path, workspace-relative path) of every regular file under `base`, sorted by path.

    Symlinked directories are not entered; symlinked files are included (under the
    link's own name) only when their target is a regular file inside the workspace.
    VCS internals are skipped. `base` may also be a single file. A set `cancel`
    ends the walk early.
    """
    real_root = os.path.realpath(root)
    if base.is_file():
        return [(str(base), relative_to_workspace(root, base))]
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        if cancel is not None and cancel.is_set():
            break
        dirnames[:] = [d for d in dirnames if d not in VCS_DIRS]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    if not inside(real_root, path):
                        continue
                    st = os.stat(path)
            except OSError:
                continue  # dangling link, or vanished meanwhile
            if stat.S_ISREG(st.st_mode):
                found.append((path, os.path.relpath(path, real_root)))
    found.sort(key=lambda item: item[1])
    return found


def compile_glob(pattern: str) -> tuple[re.Pattern[str], bool]:
    """A regex for a glob, and whether it matches whole relative paths (it contains '/').

    `*` and `?` stay within one path segment, `**` crosses segments (`**/` also
    matches no directory at all), `[...]`/`[!...]` are character classes and
    `{a,b}` alternatives. A pattern without '/' is matched against file names at
    any depth, as ripgrep's --glob (which OpenCode uses) does.
    """
    if not pattern:
        raise ToolError("the glob pattern is empty")
    if pattern.startswith("/") or "\x00" in pattern:
        raise ToolError(f"glob pattern {pattern!r} must be relative to the search directory")
    while pattern.startswith("./"):
        pattern = pattern[2:]
    try:
        regex = re.compile(_translate(pattern) + r"\Z", re.DOTALL)
    except re.error as exc:
        raise ToolError(f"invalid glob pattern {pattern!r}: {exc}") from None
    return regex, "/" in pattern


def _translate(p: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(p):
        c = p[i]
        if c == "*":
            if p.startswith("**", i):
                if p.startswith("**/", i):
                    out.append("(?:.*/)?")
                    i += 3
                else:
                    out.append(".*")
                    i += 2
            else:
                out.append("[^/]*")
                i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := p.find("]", i + 2)) != -1:
            body = p[i + 1 : end]
            negate = body.startswith("!")
            body = re.sub(r"([\\^\[])", r"\\\1", body[1:] if negate else body)
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end + 1
        elif c == "{" and (end := p.find("}", i)) != -1:
            out.append("(?:" + "|".join(_translate(alt) for alt in p[i + 1 : end].split(",")) + ")")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)
