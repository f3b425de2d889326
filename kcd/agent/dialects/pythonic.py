"""`pythonic02`: ``<TOOL_CALL> fn(arg=value, ...) </TOOL_CALL>``.

Arguments are parsed with `ast` and each value with `ast.literal_eval`, so
nothing the model writes is ever executed here. Positional arguments follow
the tool's declared parameter order; `key: value` is tolerated.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from typing import Any

from kcd.agent.dialects.base import Block, Call, Item, Problem, Scan, problem, snippet
from kcd.agent.tools import TOOL_SPECS

START = r"(?i:<TOOL_CALL>)"
_CLOSE = re.compile(r"</TOOL_CALL>", re.IGNORECASE)
_FENCE = re.compile(r"\A```[\w+-]*[ \t]*\n(.*?)\n?```\s*\Z", re.DOTALL)


def parse(scan: Scan, start: re.Match[str]) -> Block:
    closing = _CLOSE.search(scan.text, start.end())
    if closing is None:
        # Everything after the tag belongs to the block, so nothing after it runs.
        return Block(len(scan.text), (problem(None, "unterminated <TOOL_CALL> block: close it with </TOOL_CALL>"),))
    return Block(closing.end(), tuple(_calls(scan, scan.text[start.end() : closing.start()])))


def _calls(scan: Scan, inner: str) -> list[Item]:
    source = inner.strip()
    fenced = _FENCE.match(source)
    if fenced:
        source = fenced.group(1).strip()
    if not source:
        return [problem(None, "empty <TOOL_CALL> block")]
    try:
        tree = _parse_module(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
        return [problem(None, f"could not parse <TOOL_CALL> block as tool_name(arg=value, ...): "
                              f"{detail}: {snippet(source)}")]
    items: list[Item] = []
    for stmt in tree.body:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            items.append(problem(None, f"expected a call like tool_name(arg=value): {snippet(ast.unparse(stmt))}"))
            continue
        items.append(_one(scan, call.func.id, call))
    return items


def _one(scan: Scan, name: str, call: ast.Call) -> Call | Problem:
    if name not in scan.tools:
        why = "is not available in this mode" if name in TOOL_SPECS else "is unknown"
        return problem(name, f"tool {name!r} {why}; available tools: {scan.available()}. Nothing was executed.")
    try:
        return Call(name, _call_args(name, call))
    except ValueError as exc:
        return problem(name, str(exc))


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
            f"got {snippet(ast.unparse(node))}"
        ) from None
