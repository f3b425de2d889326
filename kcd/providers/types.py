"""Provider-neutral chat types: what the agent loop sends and gets back.

Adapters translate these to and from each provider's wire format. Tool-call
arguments stay the exact JSON string the model produced; they are parsed
(and rejected if malformed) by the agent loop, not here.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class ToolCall(msgspec.Struct, omit_defaults=True):
    """A native tool call: id, name and the raw JSON arguments."""

    id: str
    name: str
    arguments: str = "{}"  # raw JSON text exactly as the model sent it


class ChatMessage(msgspec.Struct, omit_defaults=True):
    """One chat message as the agent loop keeps it (OpenAI roles)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant messages with native calls
    tool_call_id: str | None = None  # tool messages
    name: str | None = None  # tool messages: the tool's name


class ToolSchema(msgspec.Struct):
    """A tool offered natively; `parameters` is a JSON Schema object."""

    name: str
    description: str
    parameters: dict[str, Any]


class ChatRequest(msgspec.Struct, omit_defaults=True):
    messages: list[ChatMessage]
    tools: list[ToolSchema] = []  # empty: the field is omitted on the wire
    stream: bool = False
    params: dict[str, Any] = {}  # temperature, top_p, max_tokens: sent as given


class Usage(msgspec.Struct, omit_defaults=True):
    """Token counts as the provider reported them; None where it did not."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class ChatResponse(msgspec.Struct, omit_defaults=True):
    """One complete answer from a provider: text, tool calls, finish reason, usage."""

    content: str = ""
    tool_calls: list[ToolCall] = []
    finish_reason: str | None = None
    usage: Usage | None = None  # None: the provider did not report usage
    model: str | None = None  # the model the provider says answered
    request_id: str | None = None  # upstream id (x-request-id, generation id)
    raw: dict[str, Any] | None = None  # provider response object (assembled for streams)
