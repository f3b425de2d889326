"""`opencode_patch`: a ``*** Begin Patch`` ... ``*** End Patch`` block → `patch(patchText)`.

Both marker lines start at column 0. `patchText` runs from the first character
of ``*** Begin Patch`` to the last of ``*** End Patch`` (the newline after it is
not part of the block); the lines between are passed byte-exact. The
grammar inside (Add/Delete/Update File sections, ``@@`` hunks) is the patch
tool's to enforce; here a block only has to name at least one file. A unified
diff tool is no substitute: without `patch`, the block is refused.
"""

from __future__ import annotations

import re

from kcd.agent.dialects.base import Block, Call, Scan, line_number, problem

START = r"^\*\*\* Begin Patch[ \t]*\r?$"
_END = re.compile(r"^\*\*\* End Patch(?=[ \t]*\r?$)", re.MULTILINE)
_SECTION = re.compile(r"^\*\*\* (?:Add|Delete|Update) File: \S", re.MULTILINE)
TOOL = "patch"


def parse(scan: Scan, start: re.Match[str]) -> Block:
    text = scan.text
    closing = _END.search(text, start.end())
    if closing is None:
        line = line_number(text, start.start())
        return Block(len(text), (problem(None, f"unterminated *** Begin Patch block at line {line}: close it "
                                               "with a line *** End Patch. Nothing was applied."),))
    end = closing.end()
    if TOOL not in scan.tools:
        return Block(end, (scan.unavailable("*** Begin Patch blocks", TOOL),))
    patch_text = text[start.start() : end]
    if _SECTION.search(patch_text) is None:
        return Block(end, (problem(TOOL, "empty *** Begin Patch block: it needs at least one *** Add File:, "
                                         "*** Update File: or *** Delete File: section. Nothing was applied."),))
    return Block(end, (Call(TOOL, {"patchText": patch_text}),))
