"""Workspace confinement: every path a file tool touches stays inside the run's workspace.

Every path a tool receives goes through `resolve_in_workspace`: the real path
(symlinks resolved, including dangling ones, which `os.path.realpath` follows
through `readlink`) must stay inside the real workspace root. The original
checked a string prefix (so symlinks escaped) and silently re-rooted absolute paths.

This guards the file tools only, which also refuse files with several hard
links (a shell may have linked a file from outside). Shell commands are
confined by the OS sandbox (`kcd.sandbox`), not by path checks.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = [
    "WorkspaceEscape",
    "relative_to_workspace",
    "resolve_in_workspace",
    "resolve_tool_path",
    "write_file_atomic",
]

class WorkspaceEscape(ValueError):
    """A tool path that is not allowed to leave (or name) anything outside the workspace."""


def resolve_in_workspace(root: Path, user_path: str) -> Path:
    """Return the real path of `user_path` inside `root`, or raise `WorkspaceEscape`.

    Works for targets that do not exist yet: the existing part of the chain is
    resolved (symlinks included) and the rest is appended lexically, so a later
    create cannot land outside the workspace either.
    """
    if not isinstance(user_path, str):
        raise WorkspaceEscape(f"path must be a string, got {type(user_path).__name__}")
    shown = repr(user_path)
    if "\x00" in user_path:
        raise WorkspaceEscape(f"path {shown} contains a NUL byte")
    if os.path.isabs(user_path):
        raise WorkspaceEscape(
            f"path {shown} is absolute; use a path relative to the workspace root"
        )
    if user_path.startswith("~"):
        # Never expanded: refuse rather than create a literal '~' directory the model did not mean.
        raise WorkspaceEscape(
            f"path {shown} refers to a home directory; use a path relative to the workspace root"
        )
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, user_path or "."))
    if os.path.commonpath([real_root, candidate]) != real_root:
        raise WorkspaceEscape(
            f"path {shown} resolves outside the workspace (via '..' or a symlink); "
            "use a path inside the workspace root"
        )
    if _is_hard_linked(candidate):
        raise WorkspaceEscape(
            f"path {shown} is a file with several hard links; its other names may be outside the "
            "workspace, so the file tools do not touch it (copy it instead of linking it)"
        )
    return Path(candidate)


def _is_hard_linked(path: str) -> bool:
    """A regular file with more than one name: a shell could have linked a file from outside."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink > 1


def resolve_tool_path(root: Path, user_path: str) -> Path:
    """Like `resolve_in_workspace`, but an absolute path naming something inside the
    workspace is accepted (OpenCode's tools ask models for absolute paths).

    The absolute path must start with the workspace root as given or as resolved;
    the remainder then goes through `resolve_in_workspace`, so `..` and symlinks
    are still resolved for real and escapes refused.
    """
    if isinstance(user_path, str) and os.path.isabs(user_path) and "\x00" not in user_path:
        for base in (os.path.realpath(root), os.path.abspath(root)):
            if user_path == base or user_path.startswith(base.rstrip("/") + "/"):
                rest = user_path[len(base):].lstrip("/") or "."
                try:
                    return resolve_in_workspace(root, rest)
                except WorkspaceEscape:
                    raise WorkspaceEscape(
                        f"path {user_path!r} resolves outside the workspace (via '..' or a symlink); "
                        "use a path inside the workspace root"
                    ) from None
        raise WorkspaceEscape(
            f"path {user_path!r} is absolute and outside the workspace; "
            "use a path relative to the workspace root"
        )
    return resolve_in_workspace(root, user_path)


def relative_to_workspace(root: Path, resolved: Path) -> str:
    """Workspace-relative display form of a path returned by `resolve_in_workspace`."""
    return os.path.relpath(resolved, os.path.realpath(root))


def write_file_atomic(path: str, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` (a path already confined) through a sibling temp file and a rename.

    A hard link planted in the workspace is replaced, never written through (path
    checks cannot see hard links), and readers never see half a file. `mode`
    defaults to 0o644; pass the old file's mode to keep it.
    """
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".kcd-write-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644 if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
