"""Scripted model behaviours: WHAT the simulated model answers.

A behaviour looks at the request (the decoded chat/completions body) and
returns a `Reply`. It knows nothing about HTTP: HOW the reply reaches the
client (well-formed, or with a fault injected) is the delivery layer's job
(`kcd.simulator.delivery`).

Registered here: `dev` (a competent agent for the enumerate-workspace task,
`agents_dev`), `editor` (reads a file, edits it in the best format on offer,
completes; `agents_editor`), `shell` (runs the task text with run_shell, then
completes; holds runs busy in cancel tests) and `echo`. The scripted agents
speak both tool name sets, natively or in the text form (`agents_tools`).
Every registered agent answers kcd's capability probes first (`agents_probe`),
so the simulator passes them for any model name unless a fault intervenes.
"""

from __future__ import annotations

from typing import Any

from kcd.simulator.agents_common import (
    Behaviour,
    CallSpec,
    Reply,
    calls_reply,
    first_user_text,
    message_text,
    offers_tools,
    render_text_call,
    tool_results,
    turns_with_results,
)
from kcd.simulator.agents_dev import DevAgent, parse_listing, pick_file, summarise
from kcd.simulator.agents_editor import EditorAgent
from kcd.simulator.agents_probe import AnswersProbes

__all__ = [
    "Behaviour",
    "CallSpec",
    "DevAgent",
    "Echo",
    "EditorAgent",
    "Reply",
    "ScriptAgent",
    "ShellAgent",
    "calls_reply",
    "default_behaviours",
    "message_text",
    "offers_tools",
    "parse_listing",
    "pick_file",
    "render_text_call",
    "summarise",
    "tool_results",
]


class ShellAgent:
    """Runs the task text (the first paragraph of the first user message) with
    run_shell, then completes."""

    def reply(self, request: dict[str, Any]) -> Reply:
        if turns_with_results(request) == 0:
            command = first_user_text(request).strip().split("\n\n", 1)[0].strip()
            return calls_reply(request, [CallSpec("run_shell", {"command": command or "true"})])
        return calls_reply(request, [CallSpec("mark_task_complete")], "Done.")


class ScriptAgent:
    """Makes the calls the task lists, one per turn, then completes.

    The task text is a JSON array of `{"name": tool, "arguments": {...}}`
    (escape and containment tests drive many tool calls through one run).
    """

    def reply(self, request: dict[str, Any]) -> Reply:
        import json

        try:
            script = json.loads(first_user_text(request).strip().split("\n\n", 1)[0])
        except ValueError:
            script = []
        done = turns_with_results(request)
        if done < len(script):
            step = script[done]
            return calls_reply(request, [CallSpec(step["name"], dict(step.get("arguments") or {}))])
        return calls_reply(request, [CallSpec("mark_task_complete")], "Done.")


class Echo:
    """Replies with the last user message."""

    def reply(self, request: dict[str, Any]) -> Reply:
        last = ""
        for m in request.get("messages") or ():
            if isinstance(m, dict) and m.get("role") == "user":
                last = message_text(m)
        return Reply(content=last, finish_reason="stop")


# The registered agents: each its own class with the probe responder in front.
class _Dev(AnswersProbes, DevAgent): ...
class _Editor(AnswersProbes, EditorAgent): ...
class _Shell(AnswersProbes, ShellAgent): ...
class _Echo(AnswersProbes, Echo): ...
class _Script(AnswersProbes, ScriptAgent): ...


def default_behaviours() -> dict[str, Behaviour]:
    """A fresh registry (callers may add to it; what they add does not answer probes)."""
    return {"dev": _Dev(), "editor": _Editor(), "shell": _Shell(), "echo": _Echo(), "script": _Script()}
