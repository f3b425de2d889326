"""Apply patches in pure Python: unified diffs and the `*** Begin Patch` format.

The original shelled out to `git apply` in a lazily created repository and ran
`git config --global safe.directory` on the host (defect 42); this module never
runs git and never reads or writes git configuration.

Both entry points are all-or-nothing: every file section and hunk is checked
against the current workspace first, in memory, and only then is anything
written; a failure leaves the workspace untouched and says which file and which
hunk failed, and why. Every path goes through `resolve_tool_path`, so patches
cannot reach outside the workspace.

Context is always matched exactly (the line terminator of a file's last line
aside, see `_UnifiedApplier`): a hunk may be found at another position than
its header says (as `patch` does with "offset"), never applied where its
context differs.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kcd.agent.workspace import WorkspaceEscape, relative_to_workspace, resolve_tool_path, write_file_atomic

__all__ = ["FileChange", "PatchError", "PatchReport", "apply_begin_patch", "apply_unified_diff"]

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
class _Text:
    """A text file as lines without terminators, plus whether the last line ends in '\\n'."""

    lines: list[str]
    eol_at_eof: bool = True

    @classmethod
    def parse(cls, data: bytes, shown: str) -> _Text:
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


def _split_patch(text: str) -> list[str]:
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
class _Staging:
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


def _run(root: Path, apply: Callable[[_Staging, list[str]], list[FileChange]]) -> PatchReport:
    staging = _Staging(Path(root))
    notes: list[str] = []
    try:
        changes = apply(staging, notes)
        staging.commit()
    except PatchError as exc:
        return PatchReport(False, error=str(exc), file=exc.file, hunk=exc.hunk, notes=tuple(notes))
    return PatchReport(True, tuple(changes), notes=tuple(notes))


# --------------------------------------------------------------------------- unified diff

_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass
class _Hunk:
    header: str
    old_start: int
    new_start: int
    ops: list[tuple[str, str]]  # (" " | "-" | "+", text)
    old_no_eol: bool = False
    new_no_eol: bool = False

    @property
    def old(self) -> list[str]:
        return [t for op, t in self.ops if op != "+"]

    @property
    def new(self) -> list[str]:
        return [t for op, t in self.ops if op != "-"]


@dataclass
class _FilePatch:
    old_path: str | None = None  # None: /dev/null
    new_path: str | None = None
    hunks: list[_Hunk] = field(default_factory=list)
    headers: bool = False  # saw ---/+++
    git_new: bool = False
    git_deleted: bool = False
    rename_from: str | None = None
    rename_to: str | None = None

    @property
    def label(self) -> str:
        return self.new_path or self.old_path or self.rename_to or "(unknown file)"


def apply_unified_diff(root: Path, patch_text: str) -> PatchReport:
    """Apply a (multi-file) unified diff under `root`; all files or none."""

    def apply(staging: _Staging, notes: list[str]) -> list[FileChange]:
        files = _parse_unified(patch_text, notes)
        return [_apply_file_patch(staging, fp, notes) for fp in files]

    return _run(root, apply)


def _parse_unified(text: str, notes: list[str]) -> list[_FilePatch]:
    lines = _split_patch(text)
    files: list[_FilePatch] = []
    current: _FilePatch | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            current = _FilePatch()
            files.append(current)
            old, new = _git_header_paths(line)
            current.old_path, current.new_path = old, new
            i += 1
            while i < len(lines) and not lines[i].startswith(("--- ", "diff --git ", "@@")):
                _git_extended_header(current, lines[i])
                i += 1
            continue
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            if current is None or current.headers or current.hunks:
                current = _FilePatch()
                files.append(current)
            current.headers = True
            current.old_path, current.new_path = _strip_prefixes(_header_path(line[4:]), _header_path(lines[i + 1][4:]))
            i += 2
            continue
        if line.startswith("@@"):
            if current is None or not current.headers:
                raise PatchError(f"patch line {i + 1}: hunk {line.strip()!r} comes before any ---/+++ file header")
            hunk, i = _parse_hunk(lines, i, current.label, len(current.hunks) + 1, notes)
            current.hunks.append(hunk)
            continue
        if line.startswith(("GIT binary patch", "Binary files ")):
            raise PatchError(
                f"binary patches are not supported ({line.strip()})", file=current.label if current else None
            )
        i += 1  # preamble, commit message, "index ..." or blank line between files
    files = [f for f in files if f.hunks or f.git_new or f.git_deleted or f.rename_to]
    if not files:
        raise PatchError("no file changes found: expected '--- a/<file>', '+++ b/<file>' and '@@ ... @@' hunks")
    return files


def _parse_hunk(lines: list[str], i: int, label: str, number: int, notes: list[str]) -> tuple[_Hunk, int]:
    header = lines[i].rstrip("\r")
    m = _HUNK_RE.match(header)
    if m is None:
        raise PatchError(f"{label}: malformed hunk header {header!r}", file=label, hunk=header)
    old_len = int(m.group(2)) if m.group(2) is not None else 1
    new_len = int(m.group(4)) if m.group(4) is not None else 1
    hunk = _Hunk(header[: m.end()], int(m.group(1)), int(m.group(3)), [])
    old_left, new_left = old_len, new_len
    i += 1
    while i < len(lines):
        line = lines[i]
        counted_out = old_left <= 0 and new_left <= 0
        if line.startswith("\\"):  # "\ No newline at end of file": about the line before
            if hunk.ops:
                op = hunk.ops[-1][0]
                hunk.old_no_eol |= op in " -"
                hunk.new_no_eol |= op in " +"
            i += 1
            continue
        if line == "" and not counted_out:
            op, body = " ", ""  # a blank context line whose leading space an editor stripped
        elif line[:1] in (" ", "-", "+") and not _ends_hunk(lines, i):
            op, body = line[0], line[1:]
        else:
            break
        hunk.ops.append((op, body))
        if op != "+":
            old_left -= 1
        if op != "-":
            new_left -= 1
        i += 1
    if old_left or new_left:
        # Models often miscount: the lines are authoritative, the context is still checked exactly.
        notes.append(
            f"{label}: hunk #{number} {hunk.header} has {len(hunk.old)}/{len(hunk.new)} old/new lines, "
            f"not the {old_len}/{new_len} its header says; used the lines"
        )
    if not hunk.ops:
        raise PatchError(f"{label}: hunk #{number} {hunk.header} is empty", file=label, hunk=hunk.header)
    return hunk, i


def _ends_hunk(lines: list[str], i: int) -> bool:
    """A '--- x' line followed by '+++ y' starts the next file; '-- ' alone is a mail signature."""
    line = lines[i]
    if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
        return True
    return line == "-- "


def _git_header_paths(line: str) -> tuple[str | None, str | None]:
    rest = line[len("diff --git ") :].rstrip("\r")
    m = re.match(r'^(?:"((?:[^"\\]|\\.)*)"|(\S+)) (?:"((?:[^"\\]|\\.)*)"|(\S+))$', rest)
    if m is None:
        return None, None
    old = _unquote(m.group(1)) if m.group(1) is not None else m.group(2)
    new = _unquote(m.group(3)) if m.group(3) is not None else m.group(4)
    return _strip_prefixes(old, new)


def _git_extended_header(fp: _FilePatch, line: str) -> None:
    line = line.rstrip("\r")
    if line.startswith("new file mode"):
        fp.git_new = True
        fp.old_path = None
    elif line.startswith("deleted file mode"):
        fp.git_deleted = True
        fp.new_path = None
    elif line.startswith("rename from "):
        fp.rename_from = _header_path(line[len("rename from ") :])
    elif line.startswith("rename to "):
        fp.rename_to = _header_path(line[len("rename to ") :])
    elif line.startswith(("GIT binary patch", "Binary files ")):
        raise PatchError(f"binary patches are not supported ({line.strip()})", file=fp.label)


def _header_path(raw: str) -> str | None:
    raw = raw.rstrip("\r")
    if raw.startswith('"'):
        end = raw.find('"', 1)
        while end != -1 and raw[end - 1] == "\\":
            end = raw.find('"', end + 1)
        path = _unquote(raw[1:end]) if end != -1 else raw
    else:
        path = raw.split("\t", 1)[0].rstrip()  # drop a "\t<timestamp>" suffix
    return None if path == "/dev/null" else path


def _unquote(quoted: str) -> str:
    """Undo git's C-style quoting of unusual file names."""
    try:
        return quoted.encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return quoted


def _strip_prefixes(old: str | None, new: str | None) -> tuple[str | None, str | None]:
    """Drop git's a/ and b/ prefixes when the headers use them (like `patch -p1`)."""
    old_ok = old is None or old.startswith("a/")
    new_ok = new is None or new.startswith("b/")
    if old_ok and new_ok and (old is not None or new is not None):
        return (old[2:] if old else None), (new[2:] if new else None)
    return old, new


def _apply_file_patch(staging: _Staging, fp: _FilePatch, notes: list[str]) -> FileChange:
    deleting = fp.git_deleted or (fp.headers and fp.new_path is None)
    adding = fp.git_new or (fp.headers and fp.old_path is None)
    if adding and deleting:
        raise PatchError(f"{fp.label}: both sides are /dev/null", file=fp.label)
    if fp.rename_from and fp.rename_to:
        source = staging.entry(fp.rename_from)
        target = staging.entry(fp.rename_to)
        if source.current is None:
            raise PatchError(f"cannot rename {fp.rename_from}: it does not exist", file=fp.rename_from)
        if target.current is not None and target.real != source.real:
            raise PatchError(f"cannot rename {fp.rename_from} to {fp.rename_to}: the target exists", file=fp.rename_to)
        text = _UnifiedApplier(source.shown, _Text.parse(source.current, source.shown), notes).apply(fp.hunks)
        data, mode = text.dump(), source.mode
        source.current = None
        target.current, target.mode = data, mode
        return FileChange(target.shown, "moved", source=source.shown, hunks=len(fp.hunks))
    if adding:
        assert fp.new_path is not None
        entry = staging.entry(fp.new_path)
        if entry.current:  # an existing empty file may receive content: nothing is lost
            raise PatchError(
                f"cannot add {entry.shown}: it already exists (patch it with a/ and b/ headers instead)",
                file=fp.new_path,
            )
        text = _UnifiedApplier(entry.shown, _Text([], True), notes).apply(fp.hunks)
        entry.current = text.dump()
        return FileChange(entry.shown, "added", hunks=len(fp.hunks))
    path = fp.old_path if deleting else fp.new_path
    if not deleting and fp.old_path and fp.old_path != fp.new_path:
        # Differing names without a rename header: patch the one that exists (as `patch` does).
        new_entry = staging.entry(fp.new_path) if fp.new_path else None
        path = fp.new_path if new_entry is not None and new_entry.current is not None else fp.old_path
    assert path is not None
    entry = staging.entry(path)
    if entry.current is None:
        verb = "delete" if deleting else "patch"
        raise PatchError(f"cannot {verb} {entry.shown}: no such file", file=path)
    text = _UnifiedApplier(entry.shown, _Text.parse(entry.current, entry.shown), notes).apply(fp.hunks)
    if deleting:
        if text.lines:
            raise PatchError(
                f"cannot delete {entry.shown}: the patch does not remove all of its lines "
                f"({len(text.lines)} would remain)",
                file=path,
            )
        entry.current = None
        return FileChange(entry.shown, "deleted", hunks=len(fp.hunks))
    entry.current = text.dump()
    return FileChange(entry.shown, "modified", hunks=len(fp.hunks))


class _UnifiedApplier:
    """Applies one file's hunks in order, locating each by its exact old-side lines.

    The search prefers the header's position (shifted by earlier hunks) and then the
    nearest exact match at or after the end of the previous hunk, like `patch`.
    The one tolerance: the '\\n' of a file's last line. Without "\\ No newline"
    markers a hunk keeps the file's own state; with them, the patch decides.
    """

    def __init__(self, shown: str, text: _Text, notes: list[str]) -> None:
        self.shown = shown
        self.text = text
        self.notes = notes

    def apply(self, hunks: list[_Hunk]) -> _Text:
        lines, eol = list(self.text.lines), self.text.eol_at_eof
        crlf = bool(lines) and all(line.endswith("\r") for line in lines[:-1] or lines)
        shift, floor = 0, 0
        for number, hunk in enumerate(hunks, 1):
            old, new = hunk.old, hunk.new
            if crlf and not any(t.endswith("\r") for _, t in hunk.ops):
                old, new = [t + "\r" for t in old], [t + "\r" for t in new]  # LF patch for a CRLF file
            base = hunk.old_start if not old else hunk.old_start - 1
            expected = max(base + shift, 0)
            pos = self._locate(lines, old, expected, floor, hunk, eol)
            if pos is None:
                raise PatchError(self._mismatch(lines, old, expected, hunk, number), file=self.shown, hunk=hunk.header)
            if pos != expected:
                self.notes.append(
                    f"{self.shown}: hunk #{number} {hunk.header} applied at offset {pos - expected:+d} lines"
                )
            at_eof = pos + len(old) == len(lines)
            lines[pos : pos + len(old)] = new
            if at_eof and (hunk.old_no_eol or hunk.new_no_eol):
                eol = not hunk.new_no_eol
            shift += (pos - expected) + len(new) - len(old)
            floor = pos + len(new)
        return _Text(lines, eol if lines else True)

    def _locate(
        self, lines: list[str], old: list[str], expected: int, floor: int, hunk: _Hunk, eol: bool
    ) -> int | None:
        if not old:  # pure insertion: no context to check, so only the stated position will do
            return expected if floor <= expected <= len(lines) else None
        for p in _nearest_first(expected, floor, len(lines) - len(old)):
            if lines[p : p + len(old)] != old:
                continue
            if hunk.old_no_eol and (p + len(old) != len(lines) or eol):
                continue  # the patch says this is the file's unterminated last line
            return p
        return None

    def _mismatch(self, lines: list[str], old: list[str], expected: int, hunk: _Hunk, number: int) -> str:
        head = f"{self.shown}: hunk #{number} {hunk.header} does not apply"
        if not old:
            return f"{head}: line {expected} is past the end of the file ({len(lines)} lines)"
        start = min(expected, max(len(lines) - 1, 0))
        for k, want in enumerate(old):
            at = start + k
            if at >= len(lines):
                return (
                    f"{head}: the file ends at line {len(lines)}, but the hunk expects line {at + 1} "
                    f"to be {_show(want)}; the hunk's context was not found elsewhere either"
                )
            if lines[at] != want:
                return (
                    f"{head}: line {at + 1} should be {_show(want)} but the file has {_show(lines[at])}; "
                    "the hunk's context was not found elsewhere in the file either"
                )
        return (
            f"{head}: the file's last line ends differently than the hunk's \"No newline at end of file\" marker says"
        )


def _nearest_first(expected: int, lo: int, hi: int) -> Iterator[int]:
    """Positions lo..hi ordered by distance from `expected` (ties: the earlier one)."""
    if hi < lo:
        return
    expected = min(max(expected, lo), hi)
    yield expected
    for d in range(1, hi - lo + 1):
        if expected - d >= lo:
            yield expected - d
        if expected + d <= hi:
            yield expected + d
        if expected - d < lo and expected + d > hi:
            return


def _show(line: str, limit: int = 120) -> str:
    text = line if len(line) <= limit else line[: limit - 3] + "..."
    return repr(text)


# --------------------------------------------------------------------------- *** Begin Patch


@dataclass
class _BHunk:
    anchor: str  # text after "@@", may be empty
    ops: list[tuple[str, str]] = field(default_factory=list)
    at_eof: bool = False

    @property
    def header(self) -> str:
        return f"@@ {self.anchor}".rstrip()


@dataclass
class _Op:
    kind: Literal["add", "delete", "update"]
    path: str
    lines: list[str] = field(default_factory=list)  # add: content lines
    hunks: list[_BHunk] = field(default_factory=list)
    move_to: str | None = None


def apply_begin_patch(root: Path, text: str) -> PatchReport:
    """Apply a `*** Begin Patch` ... `*** End Patch` block (reference 4.4); all files or none.

    Update hunks are located by their context and removed lines (plus the optional
    `@@ <anchor>` line); context that is missing, or found in more than one place
    without an anchor to choose, is an error naming the hunk.
    """

    def apply(staging: _Staging, notes: list[str]) -> list[FileChange]:
        return [_apply_op(staging, op, notes) for op in _parse_begin_patch(text)]

    return _run(root, apply)


def _parse_begin_patch(text: str) -> list[_Op]:
    lines = _split_patch(text)
    stripped = [line.strip() for line in lines]
    if "*** Begin Patch" not in stripped:
        raise PatchError("the patch must start with a '*** Begin Patch' line")
    start = stripped.index("*** Begin Patch") + 1
    try:
        end = stripped.index("*** End Patch", start)
    except ValueError:
        raise PatchError("the patch has no '*** End Patch' line (was it cut off?)") from None
    ops: list[_Op] = []
    op: _Op | None = None
    for n in range(start, end):
        raw = lines[n].rstrip("\r")
        directive = raw.strip()
        where = f"patch line {n + 1}"
        if raw.startswith("*** "):  # an indented "***" is content: directives start the line
            op = _directive(directive, op, ops, where)
            continue
        if op is None:
            if directive:
                raise PatchError(
                    f"{where}: expected '*** Add File:', '*** Update File:' or '*** Delete File:', got {raw!r}"
                )
            continue
        if op.kind == "add":
            op.lines.append(raw[1:] if raw.startswith("+") else raw)
        elif op.kind == "delete":
            if directive:
                raise PatchError(f"{where}: unexpected {raw!r} after '*** Delete File: {op.path}'", file=op.path)
        elif raw.startswith("@@"):
            op.hunks.append(_BHunk(raw[2:].strip()))
        else:
            if not op.hunks:
                op.hunks.append(_BHunk(""))  # the first hunk may omit its @@ line
            if raw[:1] in (" ", "-", "+"):
                op.hunks[-1].ops.append((raw[0], raw[1:]))
            else:  # blank or unprefixed: context (it must still match the file exactly)
                op.hunks[-1].ops.append((" ", raw))
    for o in ops:
        if o.kind == "add":
            while o.lines and o.lines[-1] == "":
                o.lines.pop()  # blank lines before the next directive separate sections
        if o.kind == "update":
            o.hunks = [h for h in o.hunks if h.ops or h.at_eof]
            if not o.hunks and o.move_to is None:
                raise PatchError(f"'*** Update File: {o.path}' has no hunks", file=o.path)
    if not ops:
        raise PatchError("the patch contains no file sections")
    return ops


def _directive(directive: str, op: _Op | None, ops: list[_Op], where: str) -> _Op | None:
    for prefix, kind in (("*** Add File:", "add"), ("*** Delete File:", "delete"), ("*** Update File:", "update")):
        if directive.startswith(prefix):
            path = directive[len(prefix) :].strip()
            if not path:
                raise PatchError(f"{where}: {prefix} needs a path")
            new = _Op(kind, path)  # type: ignore[arg-type]
            ops.append(new)
            return new
    if directive.startswith("*** Move to:"):
        if op is None or op.kind != "update" or op.hunks:
            raise PatchError(f"{where}: '*** Move to:' must directly follow '*** Update File:'")
        op.move_to = directive[len("*** Move to:") :].strip()
        if not op.move_to:
            raise PatchError(f"{where}: '*** Move to:' needs a path", file=op.path)
        return op
    if directive == "*** End of File":
        if op is None or op.kind != "update" or not op.hunks:
            raise PatchError(f"{where}: '*** End of File' must end an update hunk")
        op.hunks[-1].at_eof = True
        return op
    raise PatchError(f"{where}: unknown directive {directive!r}")


def _apply_op(staging: _Staging, op: _Op, notes: list[str]) -> FileChange:
    entry = staging.entry(op.path)
    if op.kind == "add":
        if entry.current:
            raise PatchError(f"cannot add {entry.shown}: it already exists (use '*** Update File:')", file=op.path)
        entry.current = ("\n".join(op.lines) + "\n").encode("utf-8") if op.lines else b""
        return FileChange(entry.shown, "added")
    if entry.current is None:
        verb = "delete" if op.kind == "delete" else "update"
        raise PatchError(f"cannot {verb} {entry.shown}: no such file", file=op.path)
    if op.kind == "delete":
        entry.current = None
        return FileChange(entry.shown, "deleted")
    text = _Text.parse(entry.current, entry.shown)
    for number, hunk in enumerate(op.hunks, 1):
        text = _apply_bhunk(text, hunk, number, entry.shown, notes)
    data = text.dump()
    if op.move_to is None:
        entry.current = data
        return FileChange(entry.shown, "modified", hunks=len(op.hunks))
    target = staging.entry(op.move_to)
    if target.current is not None and target.real != entry.real:
        raise PatchError(f"cannot move {entry.shown} to {target.shown}: the target exists", file=op.move_to)
    mode = entry.mode
    entry.current = None
    target.current, target.mode = data, mode
    return FileChange(target.shown, "moved", source=entry.shown, hunks=len(op.hunks))


def _apply_bhunk(text: _Text, hunk: _BHunk, number: int, shown: str, notes: list[str]) -> _Text:
    lines = text.lines
    old = [t for op, t in hunk.ops if op != "+"]
    label = f"{shown}: hunk #{number} ({hunk.header})"

    def fail(message: str) -> PatchError:
        return PatchError(f"{label} {message}", file=shown, hunk=hunk.header)

    start = 0
    if hunk.anchor:
        found = _find_anchor(lines, hunk.anchor)
        if found is None:
            raise fail(f"does not apply: no line matching the anchor {_show(hunk.anchor)}")
        start = found if old and lines[found : found + 1] == old[:1] else found + 1
    if not old:
        if hunk.at_eof or not lines:
            pos = len(lines)
        elif hunk.anchor:
            pos = start
        else:
            raise fail(
                "has no context or removed lines, so where to insert is unknown; "
                "add a few unchanged lines around the change, or an '@@ <line>' anchor"
            )
        return _Text(lines[:pos] + [t for _, t in hunk.ops] + lines[pos:], text.eol_at_eof)

    positions = _find_block(lines, old, start, hunk.at_eof, exact=True)
    if not positions:
        positions = _find_block(lines, old, start, hunk.at_eof, exact=False)
        if len(positions) == 1:
            notes.append(f"{label} matched ignoring trailing whitespace")
    if not positions:
        raise fail(
            f"does not apply: its context/removed lines were not found{' after the anchor' if hunk.anchor else ''}"
            f"{' at the end of the file' if hunk.at_eof else ''}; first expected line: {_show(old[0])}"
            f"{_nearest_hint(lines, old[0])}. Read the file again and copy the lines exactly"
        )
    if len(positions) > 1 and not hunk.anchor:
        where = ", ".join(str(p + 1) for p in positions[:5])
        raise fail(
            f"is ambiguous: its context matches {len(positions)} places (starting at lines {where}); "
            "add more unchanged context lines, or an '@@ <line>' anchor naming a line just before it"
        )
    pos = positions[0]
    out: list[str] = []
    k = pos
    for op, t in hunk.ops:
        if op == " ":
            out.append(lines[k])  # the file's own line (it may differ in trailing whitespace)
            k += 1
        elif op == "-":
            k += 1
        else:
            out.append(t)
    return _Text(lines[:pos] + out + lines[k:], text.eol_at_eof)


def _find_anchor(lines: list[str], anchor: str) -> int | None:
    want = anchor.strip()
    for i, line in enumerate(lines):
        if line.strip() == want:
            return i
    for i, line in enumerate(lines):
        if want in line:
            return i
    return None


def _find_block(lines: list[str], block: list[str], start: int, at_eof: bool, *, exact: bool) -> list[int]:
    def norm(s: str) -> str:
        return s if exact else s.rstrip()

    want = [norm(b) for b in block]
    if at_eof:
        p = len(lines) - len(block)
        return [p] if p >= start and [norm(x) for x in lines[p:]] == want else []
    return [
        p
        for p in range(start, len(lines) - len(block) + 1)
        if all(norm(lines[p + k]) == want[k] for k in range(len(block)))
    ]


def _nearest_hint(lines: list[str], first: str) -> str:
    key = first.strip()
    if not key:
        return ""
    for i, line in enumerate(lines):
        if line.strip() == key:
            return f" (a line like it is at line {i + 1}, but the lines around it differ)"
    return ""
