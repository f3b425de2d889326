"""read_file and read: windowed reads of a text file, bounded in lines and bytes."""

from __future__ import annotations

from pathlib import Path
from threading import Event
from typing import IO, Any

from kcd.agent.calls import ToolSettings
from kcd.agent.tools.paths import resolve
from kcd.agent.tools.results import Result, ToolError, tool_output

__all__ = ["read", "read_file"]

_READ_CHUNK = 64 * 1024


def read_file(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    return _read(root, "read_file", "list_dir", args["path"], args["offset"], args["limit"], settings)


def read(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    return _read(root, "read", "list", args["filePath"], args["offset"], args["limit"], settings)


def _read(
    root: Path, tool: str, lister: str, path: str, offset: int, limit: int | None, settings: ToolSettings
) -> Result:
    target, shown = resolve(root, path)
    if target.is_dir():
        raise ToolError(f"{shown!r} is a directory (use {lister})")
    if not target.exists():
        raise ToolError(f"no such file: {shown!r}")
    if not target.is_file():  # a FIFO would block the worker forever
        raise ToolError(f"{shown!r} is not a regular file")
    limit = min(limit or settings.read_limit_lines, settings.read_limit_lines)
    cap = settings.output_limit_bytes
    with open(target, "rb") as fh:
        skipped = _skip_lines(fh, offset)
        raw, lines, cut, more = _take_lines(fh, limit, cap)
    content = raw.decode("utf-8", errors="replace")
    note = ""
    if skipped < offset:
        note = f"[offset {offset} is past the end of the file, which has {skipped} line(s)]"
    elif cut:
        note = f"[output cut at {cap} bytes; continue with offset={offset + lines}]"
    elif more:
        note = (
            f"[showing lines {offset + 1}-{offset + lines}; more lines follow: read again with offset={offset + lines}]"
        )
    text = content if not note else content + ("" if content.endswith("\n") or not content else "\n") + note
    data = {"path": shown, "content": content, "offset": offset, "lines": lines, "truncated": cut or more}
    return Result(tool_output(tool, text, file=shown), data)


def _skip_lines(fh: IO[bytes], count: int) -> int:
    skipped = 0
    while skipped < count:
        chunk = fh.readline(_READ_CHUNK)  # bounded: a huge single line never sits in memory
        if not chunk:
            break
        if chunk.endswith(b"\n") or len(chunk) < _READ_CHUNK:  # a full line, or the unterminated last one
            skipped += 1
    return skipped


def _take_lines(fh: IO[bytes], limit: int, cap: int) -> tuple[bytes, int, bool, bool]:
    """Read up to `limit` lines and `cap` bytes: (bytes, complete lines, cut by cap, more lines exist)."""
    out = bytearray()
    lines = 0
    while lines < limit:
        line = fh.readline(cap - len(out) + 1)
        if not line:
            return bytes(out), lines, False, False
        if len(out) + len(line) > cap:
            out += line[: cap - len(out)]
            return bytes(out), lines, True, True
        out += line
        lines += 1
        if not line.endswith(b"\n"):
            return bytes(out), lines, False, False
    return bytes(out), lines, False, bool(fh.read(1))
