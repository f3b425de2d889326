"""The dispatcher: one pass over an assistant reply, one parser per format.

All block starts are alternatives of one regex, so the reply is scanned once
and blocks come out in textual order. Each parser consumes its whole block
(the scan resumes after it), so text inside a block, such as a tag inside a
shell command or a marker inside an added file, is never read as another call.
Only these explicit forms count: a tool named in prose or in a code fence is
never a call (the original KyleCode ran `tool(...)` mentions found in prose).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Collection
from typing import NamedTuple

import msgspec

from kcd.agent.calls import ToolInvocation
from kcd.agent.dialects import bash_block, begin_patch, pythonic, search_replace, unified_diff
from kcd.agent.dialects.base import Block, Call, Scan


class Format(NamedTuple):
    name: str  # also the regex group name, so a valid identifier
    start: str  # regex source (MULTILINE) of the block start; no named groups
    parse: Callable[[Scan, re.Match[str]], Block]


FORMATS: tuple[Format, ...] = (
    Format("pythonic02", pythonic.START, pythonic.parse),
    Format("bash_block", bash_block.START, bash_block.parse),
    Format("aider_diff", search_replace.START, search_replace.parse),
    Format("unified_diff_fenced", unified_diff.FENCE_START, unified_diff.parse_fenced),
    Format("unified_diff_git", unified_diff.GIT_START, unified_diff.parse_git),
    Format("opencode_patch", begin_patch.START, begin_patch.parse),
)
_PARSERS = {f.name: f.parse for f in FORMATS}
FORMAT_NAMES = frozenset(_PARSERS)


@functools.lru_cache(maxsize=16)  # one regex per distinct format set (a config has one or two)
def _starts(formats: frozenset[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?P<{f.name}>{f.start})" for f in FORMATS if f.name in formats), re.MULTILINE)


class ParsedCalls(msgspec.Struct):
    calls: list[ToolInvocation]
    # Ready-to-send <TOOL_ERROR ...> texts, one per block or call that could not be used.
    errors: list[str]


def parse_text_calls(text: str, tools: Collection[str], *, turn: int,
                     formats: frozenset[str] = FORMAT_NAMES) -> ParsedCalls:
    """Extract the explicit tool calls of one assistant reply, in textual order.

    A format whose tool is not in `tools` is reported in `errors`, never returned.
    Duplicates (same name and arguments) are dropped, as in the original.
    Call ids are `text_<turn>_<i>`, counting the returned calls from 0.
    `mark_task_complete` is returned next to other calls as written: the
    executor rejects that combination with <CONSTRAINT_ERROR>.
    Only blocks of `formats` are read (`dialect_profiles` can narrow them); others are text.
    """
    if not formats:
        return ParsedCalls(calls=[], errors=[])
    starts = _starts(formats)
    scan = Scan(text, tools)
    calls: list[ToolInvocation] = []
    errors: list[str] = []
    seen: set[tuple[str, str]] = set()
    pos = 0
    while (start := starts.search(text, pos)) is not None:
        assert start.lastgroup is not None  # the outer group of the alternative that matched
        block = _PARSERS[start.lastgroup](scan, start)
        pos = max(block.end, start.end())  # always make progress
        for item in block.items:
            if not isinstance(item, Call):
                errors.append(item.text)
                continue
            key = (item.name, json.dumps(item.args, sort_keys=True, default=repr))
            if key not in seen:
                seen.add(key)
                calls.append(ToolInvocation(call_id=f"text_{turn}_{len(calls)}", name=item.name,
                                            args=item.args, source="text"))
    return ParsedCalls(calls=calls, errors=errors)
