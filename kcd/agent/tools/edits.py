"""In-place edits: exact text replacement (apply_search_replace, edit) and patches
(apply_unified_patch, patch). Every result states what really happened: a
PATCH_RESULT only when the file changed, otherwise a TOOL_ERROR with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from threading import Event
from typing import Any

from kcd.agent.calls import ToolSettings
from kcd.agent.patching import PatchReport, apply_begin_patch, apply_unified_diff
from kcd.agent.tools.paths import resolve
from kcd.agent.tools.results import Result, ToolError
from kcd.agent.tools.writing import existing_mode, patch_result, replace_file
from kcd.workspaces.confine import write_file_atomic

__all__ = ["apply_search_replace", "apply_unified_patch", "edit", "patch"]


def apply_search_replace(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    return _replace(
        root,
        args["file_name"],
        args["search"],
        args["replace"],
        replace_all=False,
        unique=False,
        names=("SEARCH", "REPLACE"),
    )


def edit(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    return _replace(
        root,
        args["filePath"],
        args["oldString"],
        args["newString"],
        replace_all=bool(args["replaceAll"]),
        unique=True,
        names=("oldString", "newString"),
    )


def _replace(
    root: Path, user_path: str, old: str, new: str, *, replace_all: bool, unique: bool, names: tuple[str, str]
) -> Result:
    """Replace `old` by `new`: the first match, or every match with `replace_all`.

    With `unique` (OpenCode's edit), several matches without `replace_all` are an
    error rather than a guess. An empty `old` creates a missing or empty file; it
    never overwrites content (an empty SEARCH once silently replaced a whole file).
    """
    target, shown = resolve(root, user_path)
    mode = existing_mode(target, shown)
    old_name, new_name = names
    if old == "":
        if mode is not None and target.stat().st_size > 0:
            raise ToolError(
                f"an empty {old_name} would overwrite all of {shown!r}, which is not empty; quote the exact "
                f"text to replace in {old_name}, or write the whole file with a write tool"
            )
        return replace_file(root, user_path, new)
    if mode is None:
        raise ToolError(f"no such file: {shown!r} (to create a file, use an empty {old_name})")
    try:
        text = target.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{shown!r} is not UTF-8 text; it cannot be edited by text replacement") from None
    if old == new:
        raise ToolError(f"{old_name} and {new_name} are identical, so there is nothing to change")
    count = text.count(old)
    if count == 0 and "\r\n" in text and "\r\n" not in old and "\n" in old:
        # An LF edit of a CRLF file: match and write in the file's own line endings.
        old, new = old.replace("\n", "\r\n"), new.replace("\r\n", "\n").replace("\n", "\r\n")
        count = text.count(old)
    if count == 0:
        raise ToolError(
            f"{old_name} text not found in {shown!r}; it must match the file exactly, whitespace and "
            f"indentation included{_no_match_hint(text, old)}. No change was made"
        )
    if unique and count > 1 and not replace_all:
        raise ToolError(
            f"{old_name} matches {count} places in {shown!r}; include more surrounding lines to make it "
            "unique, or set replaceAll to replace every occurrence. No change was made"
        )
    replaced = count if replace_all else 1
    write_file_atomic(str(target), text.replace(old, new, -1 if replace_all else 1).encode("utf-8"), mode)
    output = patch_result(shown, "File successfully patched with 0 linter errors.")
    return Result(output, {"path": shown, "matches": count, "replaced": replaced})


def _no_match_hint(text: str, old: str) -> str:
    def squash(s: str) -> str:
        return re.sub(r"\s+", " ", s).strip()

    if squash(old) and squash(old) in squash(text):
        return " (the text is there with different whitespace or indentation: copy it exactly from a fresh read)"
    first = next((line.strip() for line in old.split("\n") if line.strip()), "")
    if first:
        for number, line in enumerate(text.split("\n"), 1):
            if first in line:
                return (
                    f" (its first line {first[:80]!r} is at line {number}, but the lines after it differ: "
                    "read the file again)"
                )
    return " (read the file again to see its current content)"


def apply_unified_patch(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    return _patch_result(apply_unified_diff(root, args["patch"]))


def patch(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    return _patch_result(apply_begin_patch(root, args["patchText"]))


_MESSAGES = {
    "added": "File successfully created with 0 linter errors.",
    "modified": "File successfully patched with 0 linter errors.",
    "deleted": "File successfully deleted.",
}


def _patch_result(report: PatchReport) -> Result:
    status: dict[str, list[str]] = {"added": [], "modified": [], "deleted": [], "moved": []}
    for change in report.changes:
        status[change.action].append(change.path)
    data: dict[str, Any] = {"ok": report.ok, "action": "patch", "status": status, "notes": list(report.notes)}
    if not report.ok:
        data.update(error=report.error, file=report.file, hunk=report.hunk)
        raise ToolError(f"The patch was not applied, and no file was changed: {report.error}", data)
    lines = []
    for change in report.changes:
        if change.action == "moved":
            message = f"File successfully moved from {change.source} and patched with 0 linter errors."
        else:
            message = _MESSAGES[change.action]
        lines.append(patch_result(change.path, message))
    return Result("\n".join(lines), data)
