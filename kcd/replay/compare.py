"""Recorded tool results beside replayed ones: what differs, turn by turn, call by call.

Before comparing, only what changes from one run to the next with nothing else changed
is normalised, and nothing more:

- `data.node_id` (the Ray node a call ran on) and `data.worker_pid` (the process that
  ran a shell command) are dropped from a result's structured data (top level only);
- each run's own absolute workspace path (as given and resolved) becomes `<workspace>`
  in every string of the result (output, data, arguments).

Durations and timestamps are not in the recorded rows at all (a call's elapsed time is
not written to them). Everything else is compared exactly: output text, ok, arguments,
tool names, call ids and every data field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kcd.api.types import ReplayDivergence
from kcd.replay.results import ResultRow

__all__ = ["MAX_DIVERGENCES", "NORMALISED", "VOLATILE_DATA_KEYS", "compare_turns", "excerpts", "normalise"]

VOLATILE_DATA_KEYS = ("node_id", "worker_pid")
NORMALISED = [*(f"data.{k} (dropped)" for k in VOLATILE_DATA_KEYS),
              "the run's absolute workspace path (-> <workspace>)"]
WORKSPACE_TOKEN = "<workspace>"
MAX_DIVERGENCES = 200  # listed in the report; the total is counted past it
EXCERPT_CHARS = 160
_CALL_FIELDS = ("fn", "provider_fn", "call_id", "args")  # what the model asked for
_RESULT_FIELDS = ("ok", "out", "data")  # what the tool answered


def _paths(workspace: Path) -> list[str]:
    """The spellings of a workspace path to replace, longest first (a prefix never wins)."""
    spelled = {str(workspace)}
    try:
        spelled.add(os.path.realpath(workspace))
    except OSError:
        pass
    return sorted((p for p in spelled if len(p) > 1), key=len, reverse=True)


def _replace(value: Any, paths: list[str]) -> Any:
    if isinstance(value, str):
        for p in paths:
            value = value.replace(p, WORKSPACE_TOKEN)
        return value
    if isinstance(value, dict):
        return {k: _replace(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, paths) for v in value]
    return value


def normalise(row: ResultRow, workspace: Path) -> dict[str, Any]:
    """A result row as compared: volatile data keys dropped, the workspace path tokenised."""
    data = row.data
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in VOLATILE_DATA_KEYS}
    paths = _paths(workspace)
    return {"fn": row.fn, "provider_fn": row.provider_fn, "call_id": row.call_id,
            "args": _replace(row.args, paths), "ok": row.ok, "out": _replace(row.out, paths),
            "data": _replace(data, paths)}


def _show(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def excerpts(recorded: Any, replayed: Any, width: int = EXCERPT_CHARS) -> tuple[str, str]:
    """Both values as text, cut to a window around the first character that differs."""
    a, b = _show(recorded), _show(replayed)
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, start - width // 4)

    def cut(text: str) -> str:
        piece = text[lo:lo + width]
        return ("…" if lo > 0 else "") + piece + ("…" if lo + width < len(text) else "")
    return cut(a), cut(b)


def _diff(a: Any, b: Any, path: str, out: list[tuple[str, Any, Any]]) -> None:
    """Leaf paths where `a` and `b` differ (dict keys and list items recursed into)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                out.append((sub, a.get(key, _ABSENT), b.get(key, _ABSENT)))
            else:
                _diff(a[key], b[key], sub, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
    elif a != b or type(a) is not type(b):
        out.append((path, a, b))


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _text(value: Any) -> Any:
    return "(absent)" if value is _ABSENT else value


def _divergence(turn: int, kind: str, field: str, a: Any, b: Any, index: int | None,
                tool: str | None) -> ReplayDivergence:
    rec, rep = excerpts(_text(a), _text(b))
    return ReplayDivergence(turn=turn, kind=kind, field=field, recorded=rec, replayed=rep,
                            call_index=index, tool=tool)


def _compare_call(turn: int, index: int, a: ResultRow, b: ResultRow, rec_ws: Path, rep_ws: Path,
                  out: list[ReplayDivergence]) -> None:
    na, nb = normalise(a, rec_ws), normalise(b, rep_ws)
    tool = a.fn or b.fn
    for kind, fields in (("call", _CALL_FIELDS), ("result", _RESULT_FIELDS)):
        leaves: list[tuple[str, Any, Any]] = []
        for name in fields:
            _diff(na[name], nb[name], name, leaves)
        out.extend(_divergence(turn, kind, path, x, y, index, tool) for path, x, y in leaves)


def compare_turns(recorded: dict[int, list[ResultRow]], replayed: dict[int, list[ResultRow]], *,
                  recorded_turns: int, replayed_turns: int, recorded_workspace: Path,
                  replayed_workspace: Path) -> tuple[list[ReplayDivergence], int, int]:
    """(divergences in turn order, turns compared, calls compared).

    Turns both runs took are compared call by call; a call on one side only is a "call"
    divergence, and a different number of turns a "turns" divergence at the first turn
    only one run took."""
    divergences: list[ReplayDivergence] = []
    calls = 0
    both = min(recorded_turns, replayed_turns)
    for turn in range(1, both + 1):
        a, b = recorded.get(turn, []), replayed.get(turn, [])
        for index in range(max(len(a), len(b))):
            if index < len(a) and index < len(b):
                calls += 1
                _compare_call(turn, index, a[index], b[index], recorded_workspace, replayed_workspace,
                              divergences)
            else:
                row = a[index] if index < len(a) else b[index]
                present = f"{row.fn} call"
                divergences.append(_divergence(
                    turn, "call", "call", present if index < len(a) else _ABSENT,
                    present if index >= len(a) else _ABSENT, index, row.fn))
    if recorded_turns != replayed_turns:
        divergences.append(_divergence(both + 1, "turns", "turns", f"{recorded_turns} turn(s)",
                                       f"{replayed_turns} turn(s)", None, None))
    return divergences, both, calls
