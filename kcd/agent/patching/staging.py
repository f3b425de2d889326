"""The shared ground of both patch formats: the text model of a file, the report types,
and all-or-nothing staging (every change checked in memory, then written).

Every path goes through `resolve_tool_path`, so patches cannot reach outside the workspace.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kcd.workspaces.confine import WorkspaceEscape, relative_to_workspace, resolve_tool_path, write_file_atomic

Action = Literal["added", "modified", "deleted", "moved"]


@dataclass(frozen=True)
class FileChange:
    path: str  # workspace-relative
    action: Action
    source: str | None = None  # for "moved": where the file was
    hunks: int = 0


@dataclass(frozen=True)
class PatchReport:
    """What a patch did. `ok` is False when nothing was changed; `error` says why."""

    ok: bool
    changes: tuple[FileChange, ...] = ()
    error: str | None = None
    file: str | None = None  # the file the error concerns, as written in the patch
    hunk: str | None = None  # the failing hunk's header (`@@ -12,4 +12,5 @@` or `@@ anchor`)
    notes: tuple[str, ...] = ()  # tolerated irregularities (offsets, wrong hunk counts)


class PatchError(Exception):
    def __init__(self, message: str, *, file: str | None = None, hunk: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.hunk = hunk


# --------------------------------------------------------------------------- text model


@dataclass
class Text:
    """A text file as lines without terminators, plus whether the last line ends in '\\n'."""

    lines: list[str]
    eol_at_eof: bool = True

    @classmethod
    def parse(cls, data: bytes, shown: str) -> Text:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PatchError(f"{shown} is not UTF-8 text; patches apply to text files only", file=shown) from None
        if not text:
            return cls([], True)
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
            return cls(lines, True)
        return cls(lines, False)

    def dump(self) -> bytes:
        if not self.lines:
            return b""
        return ("\n".join(self.lines) + ("\n" if self.eol_at_eof else "")).encode("utf-8")


def split_patch(text: str) -> list[str]:
    """Split patch text on '\\n' only ('\\r' inside a line is content); no trailing empty piece."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# --------------------------------------------------------------------------- staging


@dataclass
class _Entry:
    real: str
    shown: str
    original: bytes | None  # None: did not exist
    current: bytes | None
    mode: int | None


@dataclass
class Staging:
    """In-memory view of the files a patch touches; `commit` writes them all or none."""

    root: Path
    entries: dict[str, _Entry] = field(default_factory=dict)

    def entry(self, user_path: str) -> _Entry:
        try:
            real = str(resolve_tool_path(self.root, user_path))
        except WorkspaceEscape as exc:
            raise PatchError(str(exc), file=user_path) from None
        if real in self.entries:
            return self.entries[real]
        shown = relative_to_workspace(self.root, Path(real))
        if real == os.path.realpath(self.root):
            raise PatchError(f"{user_path!r} names the workspace root, not a file", file=user_path)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            data, mode = None, None
        except NotADirectoryError:
            raise PatchError(f"{shown}: a parent of this path is a file", file=shown) from None
        else:
            if stat.S_ISDIR(st.st_mode):
                raise PatchError(f"{shown} is a directory", file=shown)
            if not stat.S_ISREG(st.st_mode):
                raise PatchError(f"{shown} is not a regular file", file=shown)
            with open(real, "rb") as fh:
                data = fh.read()
            mode = stat.S_IMODE(st.st_mode)
        entry = _Entry(real, shown, data, data, mode)
        self.entries[real] = entry
        return entry

    def commit(self) -> None:
        done: list[_Entry] = []
        try:
            for e in self.entries.values():
                if e.current == e.original:
                    continue
                _write_or_delete(e.real, e.current, e.mode)
                done.append(e)
        except OSError as exc:
            for e in reversed(done):  # best effort: put back what was already changed
                try:
                    _write_or_delete(e.real, e.original, e.mode)
                except OSError:
                    pass
            raise PatchError(f"writing the patched files failed ({exc.strerror or exc}); no file was changed") from exc


def _write_or_delete(real: str, data: bytes | None, mode: int | None) -> None:
    if data is None:
        try:
            os.unlink(real)
        except FileNotFoundError:
            pass
    else:
        write_file_atomic(real, data, mode)


def run_staged(root: Path, apply: Callable[[Staging, list[str]], list[FileChange]]) -> PatchReport:
    staging = Staging(Path(root))
    notes: list[str] = []
    try:
        changes = apply(staging, notes)
        staging.commit()
    except PatchError as exc:
        return PatchReport(False, error=str(exc), file=exc.file, hunk=exc.hunk, notes=tuple(notes))
    return PatchReport(True, tuple(changes), notes=tuple(notes))


def show_line(line: str, limit: int = 120) -> str:
    text = line if len(line) <= limit else line[: limit - 3] + "..."
    return repr(text)
