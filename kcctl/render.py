"""Turning run events into readable progress lines."""

from __future__ import annotations

import json
from typing import Any


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_event(event: dict[str, Any]) -> str | None:
    """One event → one or more lines of progress, or None to show nothing."""
    kind = event.get("type")
    d = event.get("data") or {}
    if kind == "run.start":
        mode = "native tools" if d.get("native_tools") else "text tools"
        return (f"▶ run {event.get('run_id')}  route={d.get('route')}  executor={d.get('executor')}  "
                f"{mode}  max_steps={d.get('max_steps')}")
    if kind == "turn.start":
        return f"── turn {d.get('turn')} · {d.get('route')}"
    if kind == "llm.response":
        usage = d.get("usage") or {}
        tokens = f" tokens={usage.get('total_tokens')}" if usage.get("total_tokens") is not None else ""
        line = f"   model: finish={d.get('finish_reason')} {d.get('latency_s')}s{tokens}"
        text = d.get("text")
        return line + (f"\n   │ {_short(text)}" if text else "")
    if kind == "llm.attempt" and not d.get("ok"):
        return f"   ! attempt {d.get('attempt')} on {d.get('route')} failed: {d.get('error')} (HTTP {d.get('status')})"
    if kind == "tool.call":
        return f"   → {d.get('name')} {_short(d.get('args', ''), 100)}"
    if kind == "tool.result":
        mark = "ok" if d.get("ok") else "error"
        return f"   ← {d.get('name')}: {mark}"
    if kind == "policy":
        return f"   [{d.get('marker')}] {d.get('text')}"
    if kind == "warning":
        return f"   ! {d.get('message')}"
    if kind == "executor.wait":
        return f"   … waiting for the {d.get('mode')} executor ({d.get('state')})"
    if kind == "run.end":
        lines = [f"■ {d.get('exit_reason')}  completed={str(d.get('completed')).lower()}  "
                 f"steps={d.get('steps')}  status={d.get('status')}  {d.get('duration_s')}s"]
        if d.get("error"):
            lines.append(f"  error:   {d.get('error')}")
        lines.append(f"  run id:  {event.get('run_id')}")
        lines.append(f"  run dir: {d.get('run_dir')}")
        return "\n".join(lines)
    return None
