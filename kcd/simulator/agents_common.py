"""What every scripted agent shares: the reply type, reading a request, and
writing calls natively or in the text form (re-exported by `behaviours`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

__all__ = [
    "Behaviour",
    "CallSpec",
    "Reply",
    "calls_reply",
    "first_user_text",
    "message_text",
    "offers_tools",
    "render_text_call",
    "tool_results",
    "turns_with_results",
]


class CallSpec(msgspec.Struct, frozen=True):
    name: str
    arguments: dict[str, Any] = {}


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    content: str | None = None
    tool_calls: list[CallSpec] = []  # native calls; text-mode calls live in `content`
    finish_reason: str | None = None  # None: "tool_calls" if there are calls, else "stop"
    # A recorded reply (kcd.simulator.recorded) keeps the ids and argument text the model sent,
    # even arguments that are not JSON; empty: ids are numbered, arguments encoded.
    call_ids: list[str] = []
    raw_arguments: list[str] = []

    @property
    def finish(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


class Behaviour(Protocol):
    def reply(self, request: dict[str, Any]) -> Reply: ...


# ------------------------------------------------------------ reading requests

_RESULT_MARKERS = ("<TOOL_OUTPUT", "Tool execution results:")


def message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return ""


def offers_tools(request: Mapping[str, Any]) -> bool:
    return bool(request.get("tools"))


def tool_results(request: Mapping[str, Any]) -> list[str]:
    """Tool results already in the conversation, oldest first.

    Native relay: one `tool` message per call. Text relay: a user or assistant
    message carrying the original's result tags (one message per turn).
    """
    out: list[str] = []
    for m in request.get("messages") or ():
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role == "tool":
            out.append(message_text(m))
        elif role in ("user", "assistant"):
            text = message_text(m)
            if any(marker in text for marker in _RESULT_MARKERS):
                out.append(text)
    return out


def turns_with_results(request: Mapping[str, Any]) -> int:
    """Completed tool turns: consecutive tool messages count once."""
    turns, prev_tool = 0, False
    for m in request.get("messages") or ():
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role == "tool":
            if not prev_tool:
                turns += 1
            prev_tool = True
            continue
        prev_tool = False
        if role in ("user", "assistant") and any(k in message_text(m) for k in _RESULT_MARKERS):
            turns += 1
    return turns


def first_user_text(request: Mapping[str, Any]) -> str:
    for m in request.get("messages") or ():
        if isinstance(m, dict) and m.get("role") == "user":
            return message_text(m)
    return ""


# ------------------------------------------------------------ writing replies


def render_text_call(call: CallSpec) -> str:
    """The original's pythonic text form: ``<TOOL_CALL> fn(a="x", n=2) </TOOL_CALL>``.

    Strings are written as JSON strings (also valid Python literals); other
    values as Python literals, so True/None parse where JSON's true/null would not.
    """
    args = ", ".join(f"{k}={json.dumps(v) if isinstance(v, str) else repr(v)}" for k, v in call.arguments.items())
    return f"<TOOL_CALL> {call.name}({args}) </TOOL_CALL>"


def calls_reply(request: Mapping[str, Any], calls: list[CallSpec], text: str | None = None) -> Reply:
    """Native tool calls when the request offers tools, else the text form."""
    if offers_tools(request):
        return Reply(content=text, tool_calls=calls)
    rendered = "\n".join(render_text_call(c) for c in calls)
    return Reply(content=f"{text}\n\n{rendered}" if text else rendered)
