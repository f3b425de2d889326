"""The small grammar of matrix expectations: value paths and comparisons.

Paths name a value inside a JSON document (e.g. `meta/provider_metrics.json`):
dotted keys, with brackets for list indexes and for keys that contain dots or
slashes, such as route ids::

    summary.errors
    routes[openrouter/x-ai/grok-4-fast].calls
    fallbacks[0].to

Comparisons are a literal (equality) or a string with an operator::

    0, 2.5, true, "openai/gpt-4o-mini"     equal to
    ">0"  ">=1"  "<3"  "<=3"  "==0"  "!=0"  numeric (a list or map compares its length)
    "~text"                                  a string containing `text`

Pure functions; the loader calls `parse_path`/`parse_comparison` so a bad path
or operator is a load error with a key path, not a failure at run time.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["MISSING", "Comparison", "GrammarError", "compare", "lookup", "parse_comparison", "parse_path"]

Literal_ = int | float | bool | str
PathPart = str | int

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
    ">": operator.gt, "<": operator.lt,
}
_NUMERIC = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*\Z")
_SEGMENT = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]|(\.)")


class GrammarError(ValueError):
    """A path or comparison that does not parse."""


class Missing:
    """Marker for a path that names nothing."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = Missing()


class Comparison(msgspec.Struct, frozen=True):
    """A parsed comparison: `op` is "=" (literal), "~" (substring) or a numeric operator."""

    op: str
    value: Literal_

    def describe(self) -> str:
        if self.op == "=":
            return f"== {self.value!r}"
        if self.op == "~":
            return f"contains {self.value!r}"
        return f"{self.op} {self.value:g}"


def parse_comparison(spec: Literal_) -> Comparison:
    if isinstance(spec, bool) or isinstance(spec, int | float):
        return Comparison("=", spec)
    if not isinstance(spec, str):
        raise GrammarError(f"expected a number, a boolean or a string, got {type(spec).__name__}")
    m = _NUMERIC.match(spec)
    if m:
        number = float(m.group(2))
        return Comparison(m.group(1), int(number) if number.is_integer() else number)
    if spec[:1] in "<>=!":
        raise GrammarError(f"{spec!r}: an operator needs a number (e.g. \">0\", \"<=3\")")
    if spec.startswith("~"):
        if len(spec) == 1:
            raise GrammarError("'~' needs the text to look for")
        return Comparison("~", spec[1:])
    return Comparison("=", spec)


def parse_path(text: str) -> tuple[PathPart, ...]:
    """`a.b[0][x/y].c` -> ("a", "b", 0, "x/y", "c")."""
    if not text or text.strip() != text:
        raise GrammarError(f"path {text!r} is empty or has surrounding spaces")
    parts: list[PathPart] = []
    pos = 0
    expect_name = True
    while pos < len(text):
        m = _SEGMENT.match(text, pos)
        if m is None:
            raise GrammarError(f"path {text!r}: cannot read from {text[pos:]!r}")
        name, key, dot = m.groups()
        if dot is not None:
            if expect_name:
                raise GrammarError(f"path {text!r}: empty segment")
            expect_name = True
        elif key is not None:
            if key == "":
                raise GrammarError(f"path {text!r}: empty brackets")
            parts.append(int(key) if key.isdigit() else key)
            expect_name = False
        else:
            if not expect_name:
                raise GrammarError(f"path {text!r}: missing '.' before {name!r}")
            parts.append(name)
            expect_name = False
        pos = m.end()
    if expect_name:
        raise GrammarError(f"path {text!r} ends with '.'")
    return tuple(parts)


def lookup(doc: Any, path: tuple[PathPart, ...]) -> Any:
    """The value at `path`, or MISSING."""
    here = doc
    for part in path:
        if isinstance(part, int) and isinstance(here, list):
            if not -len(here) <= part < len(here):
                return MISSING
            here = here[part]
        elif isinstance(here, dict) and str(part) in here:
            here = here[str(part)]
        else:
            return MISSING
    return here


def compare(actual: Any, expected: Comparison) -> str | None:
    """None when `actual` satisfies `expected`, else why not."""
    if actual is MISSING:
        return "missing"
    if expected.op == "=":
        value = expected.value
        if isinstance(value, bool) or isinstance(actual, bool):
            ok = actual is value
        elif isinstance(value, int | float) and isinstance(actual, int | float):
            ok = actual == value
        elif isinstance(value, int | float) and isinstance(actual, list | dict):
            ok = len(actual) == value
        else:
            ok = actual == value
        return None if ok else f"is {_show(actual)}, expected {expected.describe()}"
    if expected.op == "~":
        if not isinstance(actual, str):
            return f"is {_show(actual)}, not text"
        return None if str(expected.value) in actual else f"is {_show(actual)}, expected {expected.describe()}"
    number: float
    if isinstance(actual, bool) or actual is None:
        return f"is {_show(actual)}, not a number"
    if isinstance(actual, int | float):
        number = actual
    elif isinstance(actual, list | dict):
        number = len(actual)
    else:
        return f"is {_show(actual)}, not a number"
    assert isinstance(expected.value, int | float)
    return None if _OPS[expected.op](number, expected.value) else f"is {_show(actual)}, expected {expected.describe()}"


def _show(value: Any) -> str:
    if isinstance(value, list | dict):
        text = msgspec.json.encode(value).decode()
        return text if len(text) <= 80 else f"{text[:77]}… ({len(value)} items)"
    return repr(value)
