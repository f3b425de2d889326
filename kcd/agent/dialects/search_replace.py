"""`aider_diff`: SEARCH/REPLACE blocks, as aider writes them.

    path/to/file          (the file-name line; may sit before an optional ``` fence)
    <<<<<<< SEARCH
    exact old lines
    =======
    new lines
    >>>>>>> REPLACE

Markers start at column 0 and have 5-9 marker characters (as aider accepts).
The texts are byte-exact: every line keeps its own line ending, so "old\\n"
is searched for, never "old". A block with no file-name line reuses the file
of the previous block in the same reply (aider does the same).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from kcd.agent.dialects.base import Block, Call, Scan, line_end, line_number, problem

START = r"^<{5,9} SEARCH[ \t]*\r?$"
_SEARCH = re.compile(START, re.MULTILINE)
_DIVIDER = re.compile(r"^={5,9}[ \t]*\r?$", re.MULTILINE)
_REPLACE = re.compile(r"^>{5,9} REPLACE[ \t]*\r?$", re.MULTILINE)
_FENCE_LINE = re.compile(r"(?:`{3,}|~{3,})[\w.+-]*")
_FILE_NAME = re.compile(r"[^\s`*<>|\"']*\w[^\s`*<>|\"']*")  # one path token: no spaces, no quotes
TOOLS = ("apply_search_replace", "edit")  # in preference order


def parse(scan: Scan, start: re.Match[str]) -> Block:
    text = scan.text
    body = line_end(text, start.start())
    divider = _DIVIDER.search(text, body)
    closing = _REPLACE.search(text, line_end(text, divider.start())) if divider else None
    following = _SEARCH.search(text, body)
    if closing is None or (following is not None and following.start() < closing.start()):
        # Resume at the next block, if any: the text in between is this broken block's.
        resume = following.start() if following is not None else len(text)
        line = line_number(text, start.start())
        return Block(resume, (problem(None, f"unterminated SEARCH/REPLACE block at line {line}: it needs "
                                            "a ======= line, then a >>>>>>> REPLACE line. Nothing was applied."),))
    assert divider is not None
    end = line_end(text, closing.start())
    search = text[body : divider.start()]
    replace = text[line_end(text, divider.start()) : closing.start()]
    tool = scan.first_available(*TOOLS)
    if tool is None:
        return Block(end, (scan.unavailable("SEARCH/REPLACE blocks", *TOOLS),))
    name = _file_name(text, start.start()) or scan.last_file
    if name is None:
        line = line_number(text, start.start())
        return Block(end, (problem(tool, f"the SEARCH/REPLACE block at line {line} has no file-name line: "
                                         "put the file path alone on the line before <<<<<<< SEARCH "
                                         "(or before its ``` fence). Nothing was applied."),))
    scan.last_file = name
    if tool == "apply_search_replace":
        return Block(end, (Call(tool, {"file_name": name, "search": search, "replace": replace}),))
    return Block(end, (Call(tool, {"filePath": name, "oldString": search, "newString": replace}),))


def _file_name(text: str, marker: int) -> str | None:
    """The path on the nearest non-blank line above the marker, skipping one fence line."""
    fence_skipped = False
    for raw in _lines_before(text, marker):
        stripped = raw.strip()
        if not stripped:
            continue
        if _FENCE_LINE.fullmatch(stripped) and not fence_skipped:
            fence_skipped = True
            continue
        name = stripped.rstrip(":").strip("`*").strip()  # tolerate `path`, **path** and path:
        return name if _FILE_NAME.fullmatch(name) else None
    return None


def _lines_before(text: str, pos: int) -> Iterator[str]:
    """The lines above the line starting at `pos`, nearest first."""
    end = pos
    while end > 0:
        begin = text.rfind("\n", 0, end - 1) + 1
        yield text[begin:end]
        end = begin
