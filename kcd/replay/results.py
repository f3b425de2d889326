"""A run's tool results per turn, read back from its run directory.

Native tool calls: `provider_native/tool_results/turn_N.json` (tool, provider name, call
id, arguments, ok, the output relayed to the model, the structured data). Text-mode
calls: `artifacts/tool_results/turn_N/NN_<tool>.txt` (the output relayed), with `ok`
from the turn's `tool.result` events in order. A turn with no file made no calls.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from kcd.observe.eventlog import read_event_lines

__all__ = ["ResultRow", "UnreadableResults", "read_results"]

_NATIVE = re.compile(r"turn_(\d+)\.json\Z")
_TEXT_FILE = re.compile(r"(\d+)_(.+)\.txt\Z")


class UnreadableResults(ValueError):
    """A results file that is not what the agent loop writes; the message names it."""


class ResultRow(msgspec.Struct, kw_only=True):
    """One call's result as recorded; fields a mode does not record stay None."""

    fn: str | None
    out: str | None
    provider_fn: str | None = None
    call_id: str | None = None
    args: Any = None
    ok: bool | None = None
    data: Any = None


def _native(run_dir: Path) -> dict[int, list[ResultRow]]:
    turns: dict[int, list[ResultRow]] = {}
    folder = run_dir / "provider_native" / "tool_results"
    for path in sorted(folder.glob("turn_*.json")) if folder.is_dir() else ():
        m = _NATIVE.match(path.name)
        if not m:
            continue
        try:
            rows = msgspec.json.decode(path.read_bytes(), type=list[dict[str, Any]])
        except (OSError, msgspec.DecodeError) as exc:
            raise UnreadableResults(f"{path}: {exc}") from None
        turns[int(m.group(1))] = [ResultRow(
            fn=r.get("fn"), provider_fn=r.get("provider_fn"), call_id=r.get("call_id"), args=r.get("args"),
            ok=r.get("ok"), out=r.get("out"), data=r.get("data")) for r in rows]
    return turns


def _text_ok(run_dir: Path) -> dict[int, list[bool | None]]:
    oks: dict[int, list[bool | None]] = {}
    for line in read_event_lines(run_dir / "meta" / "events.jsonl", 0):
        try:
            event = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue  # a torn last line of a killed daemon
        if isinstance(event, dict) and event.get("type") == "tool.result":
            data = event.get("data") or {}
            if isinstance(data.get("turn"), int):
                oks.setdefault(data["turn"], []).append(data.get("ok"))
    return oks


def _text(run_dir: Path) -> dict[int, list[ResultRow]]:
    turns: dict[int, list[ResultRow]] = {}
    folder = run_dir / "artifacts" / "tool_results"
    if not folder.is_dir():
        return turns
    oks = _text_ok(run_dir)
    for turn_dir in folder.glob("turn_*"):
        if not turn_dir.name[5:].isdigit():
            continue
        turn = int(turn_dir.name[5:])
        rows = []
        for path in sorted(turn_dir.iterdir()):
            m = _TEXT_FILE.match(path.name)
            if not m:
                continue
            try:
                out = path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise UnreadableResults(f"{path}: {exc}") from None
            ok_list = oks.get(turn, [])
            ok = ok_list[len(rows)] if len(rows) < len(ok_list) else None
            rows.append(ResultRow(fn=m.group(2), out=out, ok=ok))
        turns[turn] = rows
    return turns


def read_results(run_dir: Path) -> dict[int, list[ResultRow]]:
    """Turn number -> that turn's results in call order (native and text-mode turns)."""
    turns = _text(run_dir)
    turns.update(_native(run_dir))
    return turns
