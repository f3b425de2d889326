"""Text tool-call dialects, for routes that do not use native tool calls.

Supported (reference 4.4): `pythonic02`, `<TOOL_CALL> fn(arg=value, ...) </TOOL_CALL>`,
and `bash_block`, `<BASH> command </BASH>`. Only these explicit tags count: a
tool named in prose or in a code fence is never a call (defect 47).
Arguments are parsed with `ast` and evaluated with `ast.literal_eval` per value,
so nothing the model writes is ever executed here.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from collections.abc import Collection, Iterable
from typing import Any

import msgspec

from kcd.agent.calls import ToolInvocation
from kcd.agent.tools import TOOL_SPECS

__all__ = ["ParsedCalls", "parse_text_calls", "render_text_catalogue"]

_OPEN_TAG = re.compile(r"<(TOOL_CALL|BASH)>", re.IGNORECASE)
_CLOSE_TAG = {
    "TOOL_CALL": re.compile(r"</TOOL_CALL>", re.IGNORECASE),
    "BASH": re.compile(r"</BASH>", re.IGNORECASE),
}
_FENCE = re.compile(r"\A```[\w+-]*[ \t]*\n(.*?)\n?```\s*\Z", re.DOTALL)
_SHELL_TOOLS = ("run_shell", "bash")  # a <BASH> block goes to the first one offered
_PY_TYPES = {"string": "str", "integer": "int", "number": "float"}


class ParsedCalls(msgspec.Struct):
    calls: list[ToolInvocation]
    # Ready-to-send <TOOL_ERROR ...> texts, one per block or call that could not be used.
    errors: list[str]


def parse_text_calls(text: str, tools: Collection[str], *, turn: int) -> ParsedCalls:
    """Extract the explicit tool calls of one assistant reply, in textual order.

    Calls to tools not in `tools` are reported in `errors`, never returned.
    Duplicates (same name and arguments) are dropped, as in the original.
    Call ids are `text_<turn>_<i>`, counting the returned calls from 0.
    """
    found: list[tuple[str, dict[str, Any]]] = []
    errors: list[str] = []
    pos = 0
    while (opening := _OPEN_TAG.search(text, pos)) is not None:
        kind = opening.group(1).upper()
        closing = _CLOSE_TAG[kind].search(text, opening.end())
        if closing is None:
            errors.append(_error(None, f"unterminated <{kind}> block: close it with </{kind}>"))
            break
        inner = text[opening.end() : closing.start()]
        pos = closing.end()
        if kind == "BASH":
            _parse_bash(inner, tools, found, errors)
        else:
            _parse_pythonic(inner, tools, found, errors)

    calls: list[ToolInvocation] = []
    seen: set[tuple[str, str]] = set()
    for name, args in found:
        key = (name, json.dumps(args, sort_keys=True, default=repr))
        if key in seen:
            continue
        seen.add(key)
        calls.append(ToolInvocation(call_id=f"text_{turn}_{len(calls)}", name=name, args=args, source="text"))
    return ParsedCalls(calls=calls, errors=errors)


def _parse_bash(
    inner: str, tools: Collection[str], found: list[tuple[str, dict[str, Any]]], errors: list[str]
) -> None:
    command = inner.strip()
    tool = next((t for t in _SHELL_TOOLS if t in tools), None)
    if tool is None:
        errors.append(_error("run_shell", "<BASH> blocks need the run_shell tool, which is not available here"))
    elif not command:
        errors.append(_error(tool, "empty <BASH> block"))
    else:
        found.append((tool, {"command": command}))


def _parse_pythonic(
    inner: str, tools: Collection[str], found: list[tuple[str, dict[str, Any]]], errors: list[str]
) -> None:
    source = inner.strip()
    fenced = _FENCE.match(source)
    if fenced:
        source = fenced.group(1).strip()
    if not source:
        errors.append(_error(None, "empty <TOOL_CALL> block"))
        return
    try:
        tree = _parse_module(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
        errors.append(
            _error(None, f"could not parse <TOOL_CALL> block as tool_name(arg=value, ...): {detail}: {_snippet(source)}")
        )
        return
    for stmt in tree.body:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            errors.append(_error(None, f"expected a call like tool_name(arg=value): {_snippet(ast.unparse(stmt))}"))
            continue
        name = call.func.id
        if name not in tools:
            available = ", ".join(sorted(tools)) or "none"
            errors.append(_error(name, f"unknown tool {name!r}; available tools: {available}"))
            continue
        try:
            found.append((name, _call_args(name, call)))
        except ValueError as exc:
            errors.append(_error(name, str(exc)))


def _parse_module(source: str) -> ast.Module:
    try:
        return ast.parse(source, mode="exec")
    except SyntaxError:
        fixed = _colon_keywords(source)
        if fixed == source:
            raise
        return ast.parse(fixed, mode="exec")


def _colon_keywords(source: str) -> str:
    """Rewrite `fn(key: value)` to `fn(key=value)` (tolerated by the original).

    Token-based, so colons inside strings, dict literals and slices are left alone:
    only a ':' directly inside the call's parentheses, right after `( name` or
    `, name`, is replaced.
    """
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return source
    line_starts = [0]  # split exactly as tokenize saw the lines (str.splitlines also splits on \u2028 ...)
    for line in io.StringIO(source):
        line_starts.append(line_starts[-1] + len(line))
    chars = list(source)
    stack: list[str] = []
    significant: list[tokenize.TokenInfo] = []
    for tok in tokens:
        if tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            continue
        if tok.type == tokenize.OP:
            if tok.string in "([{":
                stack.append(tok.string)
            elif tok.string in ")]}" and stack:
                stack.pop()
            elif (
                tok.string == ":"
                and stack == ["("]
                and len(significant) >= 2
                and significant[-1].type == tokenize.NAME
                and significant[-2].string in ("(", ",")
            ):
                row, col = tok.start
                chars[line_starts[row - 1] + col] = "="
        significant.append(tok)
    return "".join(chars)


def _call_args(name: str, call: ast.Call) -> dict[str, Any]:
    spec = TOOL_SPECS.get(name)
    order = [p.name for p in spec.params] if spec is not None else None
    args: dict[str, Any] = {}
    for i, node in enumerate(call.args):
        if isinstance(node, ast.Starred):
            raise ValueError("*args are not supported; pass literal arguments")
        if order is None:
            raise ValueError(f"{name} takes keyword arguments only (name=value)")
        if i >= len(order):
            raise ValueError(f"{name} takes at most {len(order)} positional argument(s), got {len(call.args)}")
        args[order[i]] = _literal(order[i], node)
    for kw in call.keywords:
        if kw.arg is None:
            raise ValueError("**kwargs are not supported; pass literal arguments")
        if kw.arg in args:
            raise ValueError(f"parameter {kw.arg!r} given more than once")
        args[kw.arg] = _literal(kw.arg, kw.value)
    return args


def _literal(param: str, node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise ValueError(
            f"parameter {param!r} must be a Python literal (a quoted string, number, list, ...), "
            f"got {_snippet(ast.unparse(node))}"
        ) from None


def _error(tool: str | None, message: str) -> str:
    attr = f' tool="{tool}"' if tool else ""
    return f"<TOOL_ERROR{attr}>{message}</TOOL_ERROR>"


def _snippet(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- catalogue


def render_text_catalogue(names: Iterable[str]) -> str:
    """The `system_once` tool directive for text mode (reference 4.8).

    An unknown name is a configuration error (ValueError), never silently dropped.
    """
    names = list(names)
    blocks = []
    for name in names:
        spec = TOOL_SPECS.get(name)
        if spec is None:
            raise ValueError(f"no text catalogue entry for tool {name!r}")
        params = []
        for p in spec.params:
            annotation = _PY_TYPES.get(p.type, "str")
            if p.required:
                params.append(f"{p.name}: {annotation}")
            elif p.default is None:
                params.append(f"{p.name}: {annotation} | None = None")
            else:
                params.append(f"{p.name}: {annotation} = {p.default!r}")
        docs = "\n".join(f"    {p.name}: {p.description}" for p in spec.params)
        blocks.append(f"{name}({', '.join(params)})\n    {spec.description}" + (f"\n{docs}" if docs else ""))
    lines = [
        "SYSTEM MESSAGE - AVAILABLE TOOLS",
        "<FUNCTIONS>",
        "\n\n".join(blocks),
        "</FUNCTIONS>",
        "Respond only with tool calls. Write each call in its own block:",
        "<TOOL_CALL> tool_name(arg=value, ...) </TOOL_CALL>",
        "Argument values are Python literals: quote strings, and use triple quotes for multi-line text.",
    ]
    shell = next((t for t in _SHELL_TOOLS if t in names), None)
    if shell is not None:
        lines.append("A shell command may also be written as <BASH> command </BASH>.")
    if "mark_task_complete" in names:
        lines.append(
            "When the task is complete, call mark_task_complete() alone, in a reply with no other tool calls."
        )
    lines.append("END SYSTEM MESSAGE")
    return "\n".join(lines)
