"""`unified_diff`: a ```diff / ```patch fenced block, or a raw ``diff --git`` block,
→ `apply_unified_patch(patch)`.

The patch is byte-exact (dropping the final newline makes git report "corrupt
patch", which the original KyleCode did): a fenced block's body is everything
between the fence lines, including the newline that ends its last line; a
raw block runs from ``diff --git`` to the last line its hunks account for (the
``@@ -a,b +c,d @@`` counts say where it stops, so prose after it is left
alone; a hunk whose counts do not match its lines is refused, not cut), and
only gets a final newline added if the reply ends without one.
"""

from __future__ import annotations

import re

from kcd.agent.dialects.base import Block, Call, Scan, line_end, line_number, problem

FENCE_START = r"^[ \t]{0,3}(?:`{3,}|~{3,})[ \t]*(?i:diff|patch)[ \t]*\r?$"
GIT_START = r"^diff --git \S"
TOOL = "apply_unified_patch"

_OPENER = re.compile(r"([ \t]*)(`+|~+)[ \t]*(\w+)")
# A diff fence around a SEARCH/REPLACE or Begin Patch block is only a wrapper: those parse themselves.
_WRAPPED = re.compile(r"^(?:<{5,9} SEARCH|\*\*\* Begin Patch)[ \t]*\r?$", re.MULTILINE)
_DIFF_HEADERS = re.compile(r"^(?:diff --git \S|--- [^\n]*\n\+\+\+ )", re.MULTILINE)
_HUNK = re.compile(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_GIT_HEADERS = (
    "index ", "old mode ", "new mode ", "deleted file mode ", "new file mode ", "similarity index ",
    "dissimilarity index ", "rename from ", "rename to ", "copy from ", "copy to ", "Binary files ",
    "--- ", "+++ ",
)


def parse_fenced(scan: Scan, start: re.Match[str]) -> Block:
    text = scan.text
    opener = _OPENER.match(text, start.start())
    assert opener is not None  # START guarantees the shape
    indent, run, lang = opener.groups()
    body = line_end(text, start.start())
    closing = re.compile(
        rf"^{re.escape(indent)}{re.escape(run[0])}{{{len(run)},}}[ \t]*\r?$", re.MULTILINE
    ).search(text, body)
    content = text[body : closing.start() if closing else len(text)]
    if _WRAPPED.search(content):
        return Block(body)  # resume inside the fence
    if closing is None:
        line = line_number(text, start.start())
        return Block(len(text), (problem(None, f"unterminated ```{lang} block at line {line}: close it with "
                                               f"a {run} line. Nothing was applied."),))
    end = line_end(text, closing.start())
    if TOOL not in scan.tools:
        return Block(end, (scan.unavailable("unified diffs", TOOL),))
    if _DIFF_HEADERS.search(content) is None:
        line = line_number(text, start.start())
        return Block(end, (problem(TOOL, f"the ```{lang} block at line {line} is not a unified diff: it needs "
                                         "'--- a/<file>' and '+++ b/<file>' header lines before its @@ hunks. "
                                         "Nothing was applied."),))
    return Block(end, (Call(TOOL, {"patch": content}),))


def parse_git(scan: Scan, start: re.Match[str]) -> Block:
    text = scan.text
    end, fault = _git_extent(text, start.start())
    if fault is not None:
        line = line_number(text, start.start())
        return Block(end, (problem(None, f"malformed diff --git block at line {line}: {fault}. "
                                         "Nothing was applied."),))
    if end == line_end(text, start.start()):
        line = line_number(text, start.start())
        return Block(end, (problem(None, f"the diff --git line at line {line} has no diff after it. "
                                         "Nothing was applied."),))
    if TOOL not in scan.tools:
        return Block(end, (scan.unavailable("unified diffs", TOOL),))
    patch = text[start.start() : end]
    if not patch.endswith("\n"):
        patch += "\n"  # git apply calls a patch without its final newline corrupt
    return Block(end, (Call(TOOL, {"patch": patch}),))


def _git_extent(text: str, pos: int) -> tuple[int, str | None]:
    """Where a raw git diff starting at `pos` ends, and what is wrong with it, if anything.

    Hunk lengths come from the @@ counts; a hunk that stops early, or that is
    followed directly by more +/- lines, has wrong counts and is refused rather
    than cut short.
    """
    old = new = 0  # lines the current hunk still owes, per its @@ header
    in_headers = False  # inside a file section, before its first hunk
    hunk = None  # the current hunk's header: its position is only turned into a line number for errors
    while pos < len(text):
        nxt = line_end(text, pos)
        line = text[pos:nxt]
        if old > 0 or new > 0:
            kind = line[:1]
            if kind == " " or not line.strip("\r\n"):  # a bare newline is an empty context line to git
                old, new = old - 1, new - 1
            elif kind == "-":
                old -= 1
            elif kind == "+":
                new -= 1
            elif kind != "\\":
                break
        elif line.startswith("diff --git "):
            in_headers = True
        elif line.startswith("@@"):
            hunk = _HUNK.match(text, pos, nxt)
            if hunk is None:
                return nxt, f"bad hunk header {line.strip()!r} (expected @@ -a,b +c,d @@)"
            old, new = int(hunk.group(1) or 1), int(hunk.group(2) or 1)
            in_headers = False
        elif line.startswith(("-", "+")) and not in_headers and hunk is not None:
            where = line_number(text, hunk.start())
            return nxt, f"the hunk at line {where} has more lines than its @@ header counts"
        elif not line.startswith("\\") and not (in_headers and line.startswith(_GIT_HEADERS)):
            break
        pos = nxt
    if hunk is not None and (old > 0 or new > 0):
        where = line_number(text, hunk.start())
        return pos, (f"the hunk at line {where} stops {max(old, 0)} old / {max(new, 0)} new line(s) short of "
                     "what its @@ header counts")
    return pos, None
