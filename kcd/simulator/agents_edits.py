"""Turning one file's old and new text into each edit format a model may use.

Pure functions of (path, before, after); `before` is None for a file that
does not exist yet. The changed lines are found once (`changed_lines`) and
rendered as a search/replace pair, a unified diff or a ``*** Begin Patch``
block. Lines keep their own endings throughout.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["begin_patch", "search_replace", "search_replace_block", "split_lines", "unified_diff"]

CONTEXT = 3  # lines of context in diffs and patches, as `diff -u`
_NO_EOL = "\\ No newline at end of file\n"


def split_lines(text: str) -> list[str]:
    """Lines with their "\\n" kept; only "\\n" splits (str.splitlines also splits on \\r, \\f, ...)."""
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


class Change(NamedTuple):
    """Lines [start, stop) of `old` become `new`; everything else is shared."""

    old: list[str]
    new: list[str]
    start: int
    stop: int  # in old
    new_stop: int  # in new


def changed_lines(before: str, after: str) -> Change:
    a, b = split_lines(before), split_lines(after)
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    tail = 0
    while tail < min(len(a), len(b)) - start and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return Change(a, b, start, len(a) - tail, len(b) - tail)


def search_replace(before: str | None, after: str) -> tuple[str, str]:
    """(search, replace) whose first and only match in `before` makes it `after`.

    Grows the changed lines by context lines until the search text is
    non-empty and unique (the OpenCode `edit` tool refuses ambiguous text).
    An empty search only for a missing file: that creates it.
    """
    if before is None:
        return "", after
    c = changed_lines(before, after)
    lo, hi = c.start, c.stop
    while True:
        search = "".join(c.old[lo:hi])
        if search and before.count(search) == 1:
            break
        if lo > 0:
            lo -= 1
        elif hi < len(c.old):
            hi += 1
        else:
            break  # the whole file: unique by definition, or empty
    replace = "".join(c.old[lo : c.start] + c.new[c.start : c.new_stop] + c.old[c.stop : hi])
    return search, replace


def search_replace_block(path: str, search: str, replace: str) -> str:
    """The aider text form. Line-based: a search text not ending in a newline
    (the last line of a file without one) cannot be written this way."""
    return f"{path}\n```\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n```\n"


def unified_diff(path: str, before: str | None, after: str) -> str:
    """A one-hunk `diff -u` of the change, with git's a/ b/ prefixes and
    "\\ No newline at end of file" markers where a last line has no newline."""
    if before is None:
        new = split_lines(after)
        return f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(new)} @@\n" + _prefixed("+", new)
    c = changed_lines(before, after)
    lo = max(0, c.start - CONTEXT)
    hi = min(len(c.old), c.stop + CONTEXT)
    new_hi = c.new_stop + (hi - c.stop)
    old_count, new_count = hi - lo, new_hi - lo
    header = f"@@ -{_range(lo, old_count)} +{_range(lo, new_count)} @@\n"
    body = (_prefixed(" ", c.old[lo : c.start]) + _prefixed("-", c.old[c.start : c.stop])
            + _prefixed("+", c.new[c.start : c.new_stop]) + _prefixed(" ", c.old[c.stop : hi]))
    return f"--- a/{path}\n+++ b/{path}\n{header}{body}"


def begin_patch(path: str, before: str | None, after: str) -> str:
    """A ``*** Begin Patch`` block: Add File for a new file, else one Update File hunk."""
    if before is None:
        lines = "".join(f"+{line.rstrip(chr(10))}\n" for line in split_lines(after))
        return f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n"
    c = changed_lines(before, after)
    lo = max(0, c.start - CONTEXT)
    hi = min(len(c.old), c.stop + CONTEXT)
    rows = ([" " + s for s in c.old[lo : c.start]] + ["-" + s for s in c.old[c.start : c.stop]]
            + ["+" + s for s in c.new[c.start : c.new_stop]] + [" " + s for s in c.old[c.stop : hi]])
    body = "".join(row.rstrip("\n") + "\n" for row in rows)
    return f"*** Begin Patch\n*** Update File: {path}\n@@\n{body}*** End Patch\n"


def _range(start: int, count: int) -> str:
    # diff -u numbers from 1; an empty range names the line before it.
    return f"{start + 1 if count else start},{count}"


def _prefixed(mark: str, lines: list[str]) -> str:
    return "".join(mark + line if line.endswith("\n") else f"{mark}{line}\n{_NO_EOL}" for line in lines)
