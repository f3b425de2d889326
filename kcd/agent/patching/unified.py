"""Unified diffs (`--- a/x`, `+++ b/x`, `@@` hunks; git's extended headers), applied with exact
context: a hunk may be found at another position than its header says (as `patch` does
with "offset"), never where its context differs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kcd.agent.patching.staging import (
    FileChange,
    PatchError,
    PatchReport,
    Staging,
    Text,
    run_staged,
    show_line,
    split_patch,
)

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

    def apply(staging: Staging, notes: list[str]) -> list[FileChange]:
        files = _parse_unified(patch_text, notes)
        return [_apply_file_patch(staging, fp, notes) for fp in files]

    return run_staged(root, apply)


def _parse_unified(text: str, notes: list[str]) -> list[_FilePatch]:
    lines = split_patch(text)
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


def _apply_file_patch(staging: Staging, fp: _FilePatch, notes: list[str]) -> FileChange:
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
        text = _UnifiedApplier(source.shown, Text.parse(source.current, source.shown), notes).apply(fp.hunks)
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
        text = _UnifiedApplier(entry.shown, Text([], True), notes).apply(fp.hunks)
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
    text = _UnifiedApplier(entry.shown, Text.parse(entry.current, entry.shown), notes).apply(fp.hunks)
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

    def __init__(self, shown: str, text: Text, notes: list[str]) -> None:
        self.shown = shown
        self.text = text
        self.notes = notes

    def apply(self, hunks: list[_Hunk]) -> Text:
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
        return Text(lines, eol if lines else True)

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
                    f"to be {show_line(want)}; the hunk's context was not found elsewhere either"
                )
            if lines[at] != want:
                return (
                    f"{head}: line {at + 1} should be {show_line(want)} but the file has {show_line(lines[at])}; "
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
