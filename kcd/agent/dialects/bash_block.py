"""`bash_block`: ``<BASH> command </BASH>`` → `run_shell(command)`, or `bash(command)`
when only the OpenCode name is offered."""

from __future__ import annotations

import re

from kcd.agent.dialects.base import Block, Call, Scan, problem

START = r"(?i:<BASH>)"
_CLOSE = re.compile(r"</BASH>", re.IGNORECASE)
SHELL_TOOLS = ("run_shell", "bash")  # in preference order


def parse(scan: Scan, start: re.Match[str]) -> Block:
    closing = _CLOSE.search(scan.text, start.end())
    if closing is None:
        return Block(len(scan.text), (problem(None, "unterminated <BASH> block: close it with </BASH>"),))
    end = closing.end()
    tool = scan.first_available(*SHELL_TOOLS)
    if tool is None:
        return Block(end, (scan.unavailable("<BASH> blocks", *SHELL_TOOLS),))
    command = scan.text[start.end() : closing.start()].strip()
    if not command:
        return Block(end, (problem(tool, "empty <BASH> block"),))
    return Block(end, (Call(tool, {"command": command}),))
