"""What every text-format parser shares: its result types and the per-reply scan state."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, NamedTuple


class Call(NamedTuple):
    name: str
    args: dict[str, Any]


class Problem(NamedTuple):
    text: str  # a ready-to-send <TOOL_ERROR ...> block


Item = Call | Problem


class Block(NamedTuple):
    """One parsed block: where scanning resumes, and what the block yielded, in order."""

    end: int
    items: tuple[Item, ...] = ()


@dataclass
class Scan:
    """State of one `parse_text_calls` call, handed to every format parser.

    Built per reply, so parsers share nothing across replies.
    """

    text: str
    tools: Collection[str]
    last_file: str | None = None  # a SEARCH/REPLACE block with no file-name line reuses the previous one

    def first_available(self, *candidates: str) -> str | None:
        return next((t for t in candidates if t in self.tools), None)

    def available(self) -> str:
        return ", ".join(sorted(self.tools)) or "none"

    def unavailable(self, what: str, *candidates: str) -> Problem:
        """`what` (a format, plural) needs one of `candidates`; the mode offers none of them."""
        if len(candidates) == 1:
            needs = f"need the {candidates[0]} tool, which is not available in this mode"
        else:
            needs = f"need the {' or '.join(candidates)} tool, and none of them is available in this mode"
        return problem(candidates[0], f"{what} {needs}; available tools: {self.available()}. Nothing was executed.")


def problem(tool: str | None, message: str) -> Problem:
    attr = f' tool="{tool}"' if tool else ""
    return Problem(f"<TOOL_ERROR{attr}>{message}</TOOL_ERROR>")


def snippet(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def line_end(text: str, pos: int) -> int:
    """Index just past the line containing `pos` (past its newline, if it has one)."""
    nl = text.find("\n", pos)
    return len(text) if nl < 0 else nl + 1


def line_number(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1

