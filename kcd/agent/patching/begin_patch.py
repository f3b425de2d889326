"""The `*** Begin Patch` format (Add/Delete/Update File, Move to, `@@` anchors, `*** End of File`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
    """Apply a `*** Begin Patch` ... `*** End Patch` block (OpenCode's format); all files or none.

    Update hunks are located by their context and removed lines (plus the optional
    `@@ <anchor>` line); context that is missing, or found in more than one place
    without an anchor to choose, is an error naming the hunk.
    """

    def apply(staging: Staging, notes: list[str]) -> list[FileChange]:
        return [_apply_op(staging, op, notes) for op in _parse_begin_patch(text)]

    return run_staged(root, apply)


def _parse_begin_patch(text: str) -> list[_Op]:
    lines = split_patch(text)
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


def _apply_op(staging: Staging, op: _Op, notes: list[str]) -> FileChange:
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
    text = Text.parse(entry.current, entry.shown)
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


def _apply_bhunk(text: Text, hunk: _BHunk, number: int, shown: str, notes: list[str]) -> Text:
    lines = text.lines
    old = [t for op, t in hunk.ops if op != "+"]
    label = f"{shown}: hunk #{number} ({hunk.header})"

    def fail(message: str) -> PatchError:
        return PatchError(f"{label} {message}", file=shown, hunk=hunk.header)

    start = 0
    if hunk.anchor:
        found = _find_anchor(lines, hunk.anchor)
        if found is None:
            raise fail(f"does not apply: no line matching the anchor {show_line(hunk.anchor)}")
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
        return Text(lines[:pos] + [t for _, t in hunk.ops] + lines[pos:], text.eol_at_eof)

    positions = _find_block(lines, old, start, hunk.at_eof, exact=True)
    if not positions:
        positions = _find_block(lines, old, start, hunk.at_eof, exact=False)
        if len(positions) == 1:
            notes.append(f"{label} matched ignoring trailing whitespace")
    if not positions:
        raise fail(
            f"does not apply: its context/removed lines were not found{' after the anchor' if hunk.anchor else ''}"
            f"{' at the end of the file' if hunk.at_eof else ''}; first expected line: {show_line(old[0])}"
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
    return Text(lines[:pos] + out + lines[k:], text.eol_at_eof)


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
