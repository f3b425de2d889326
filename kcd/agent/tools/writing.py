"""create_file, create_file_from_block and write: whole-file writes.

`create_file` never overwrites a non-empty file (the original truncated it); the other two
replace the whole content, atomically (see `write_file_atomic`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from threading import Event
from typing import Any

from kcd.agent.calls import ToolSettings
from kcd.agent.tools.paths import resolve
from kcd.agent.tools.results import Result, ToolError, attr
from kcd.workspaces.confine import write_file_atomic

__all__ = ["create_file", "create_file_from_block", "patch_result", "replace_file", "write"]


def patch_result(shown: str, message: str) -> str:
    return f'<PATCH_RESULT file="{attr(shown)}">{message}</PATCH_RESULT>'


def create_file(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    target, shown = resolve(root, args["path"])
    if target == Path(os.path.realpath(root)):
        raise ToolError("path names the workspace root, not a file")
    data = (args["content"] or "").encode("utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: a symlink planted at the final component after the check is refused, not followed.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(target, flags | os.O_EXCL, 0o644)
    except FileExistsError:
        if target.is_dir():
            raise ToolError(f"{shown!r} is an existing directory") from None
        if not target.is_file():
            raise ToolError(f"{shown!r} exists and is not a regular file") from None
        fd = os.open(target, flags)
        size = os.fstat(fd).st_size
        if size > 0:
            os.close(fd)
            raise ToolError(
                f"refusing to overwrite {shown!r}: it already exists and is not empty ({size} bytes)"
            ) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    output = patch_result(shown, "File successfully created with 0 linter errors.")
    return Result(output, {"path": shown, "bytes": len(data)})


def create_file_from_block(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    return replace_file(root, args["file_name"], args["content"])


def write(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    return replace_file(root, args["filePath"], args["content"])


def replace_file(root: Path, user_path: str, content: str) -> Result:
    """Create `user_path` with `content`, or replace the whole content of the existing file."""
    target, shown = resolve(root, user_path)
    if target == Path(os.path.realpath(root)):
        raise ToolError("path names the workspace root, not a file")
    mode = existing_mode(target, shown)
    data = content.encode("utf-8")
    write_file_atomic(str(target), data, mode)
    verb = "created" if mode is None else "written"
    output = patch_result(shown, f"File successfully {verb} with 0 linter errors.")
    return Result(output, {"path": shown, "bytes": len(data), "created": mode is None})


def existing_mode(target: Path, shown: str) -> int | None:
    """The permission bits of an existing regular file, None if there is no file; refuses others."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise ToolError(f"{shown!r}: a parent of this path is a file, not a directory") from None
    if stat.S_ISDIR(st.st_mode):
        raise ToolError(f"{shown!r} is an existing directory")
    if not stat.S_ISREG(st.st_mode):
        raise ToolError(f"{shown!r} exists and is not a regular file")
    return stat.S_IMODE(st.st_mode)
