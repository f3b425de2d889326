"""OpenAI chat/completions wire format: the request we send, typed shapes of the answer.

Request side: `build_body` and `request_headers`. Response side: msgspec Structs
for a completion and a stream chunk (one shape serves both: `message` in a
completion, `delta` in a chunk), their decoders, and the conversions of wire
values to the provider-neutral types. The Structs are loose where providers
disagree (content parts, object arguments) and typed elsewhere, so the stream
hot path decodes straight into them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kcd.providers.endpoints import Endpoint
from kcd.providers.routes import Route, is_openai_reasoning
from kcd.providers.types import ChatMessage, ChatRequest, ChatResponse, Usage

__all__ = [
    "CHUNK_DECODER",
    "ENCODER",
    "JSON_DECODER",
    "Choice",
    "Completion",
    "Delta",
    "Fn",
    "MessageIn",
    "ToolCallIn",
    "UsageIn",
    "arguments_text",
    "build_body",
    "completion_object",
    "content_text",
    "request_headers",
    "to_usage",
]

_RESERVED = frozenset({"model", "messages", "tools", "stream", "stream_options"})


# ---------------------------------------------------------------- request side


def _message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        # OpenAI wants content null (not absent) next to tool_calls when there is no text
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    elif m.content is None:
        out["content"] = ""
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None and m.role == "tool":
        out["name"] = m.name
    return out


def build_body(route: Route, request: ChatRequest) -> dict[str, Any]:
    """The chat/completions JSON body. Never mutates `request`.

    `params` are sent as given except the keys this function owns (model,
    messages, tools, stream, stream_options), which would otherwise silently
    change what the adapter believes it sent.
    """
    body: dict[str, Any] = {
        "model": route.model,
        "messages": [_message(m) for m in request.messages],
    }
    for key, value in request.params.items():
        if key not in _RESERVED:
            body[key] = value
    if "max_tokens" in body and is_openai_reasoning(route):
        # The same limit under the name these models accept (they refuse `max_tokens`).
        body.setdefault("max_completion_tokens", body["max_tokens"])
        del body["max_tokens"]
    if request.tools:  # never `tools: null` or `[]`
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in request.tools
        ]
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def request_headers(endpoint: Endpoint, *, stream: bool) -> dict[str, str]:
    """Headers to send, the endpoint's extras and its bearer key included (unredacted)."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if stream else "application/json",
    }
    headers.update(endpoint.headers)
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key.reveal()}"
    return headers


# --------------------------------------------------------------- response side


class Fn(msgspec.Struct):
    name: str | None = None
    arguments: Any = None  # a JSON string, or an object from some servers


class ToolCallIn(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    type: str | None = None
    function: Fn | None = None


class Delta(msgspec.Struct):
    content: Any = None  # a string or a list of content parts
    reasoning: Any = None
    reasoning_content: Any = None
    tool_calls: list[ToolCallIn] | None = None


class MessageIn(msgspec.Struct):
    content: Any = None
    tool_calls: list[ToolCallIn] | None = None


class Choice(msgspec.Struct):
    index: int | None = 0
    delta: Delta | None = None  # stream chunks
    message: MessageIn | None = None  # whole completions
    finish_reason: str | None = None


class UsageIn(msgspec.Struct):
    prompt_tokens: int | float | None = None
    completion_tokens: int | float | None = None
    total_tokens: int | float | None = None


class Completion(msgspec.Struct):
    """A chat.completion or a chat.completion.chunk; `error` is an in-band error envelope."""

    id: str | None = None
    model: str | None = None
    choices: list[Choice] | None = None
    usage: UsageIn | None = None
    error: Any = None


ENCODER = msgspec.json.Encoder()
CHUNK_DECODER = msgspec.json.Decoder(Completion)
JSON_DECODER = msgspec.json.Decoder()


def content_text(value: Any) -> str:
    """Content as text: a string as is, content parts joined, anything else empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text") or "" for p in value if isinstance(p, dict))
    return ""


def arguments_text(value: Any) -> str:
    """Tool-call arguments as JSON text (some servers send an object, not a string)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return ENCODER.encode(value).decode()


def to_usage(u: UsageIn | None) -> Usage | None:
    if u is None:
        return None

    def n(v: int | float | None) -> int | None:
        return None if v is None else int(v)

    return Usage(prompt_tokens=n(u.prompt_tokens), completion_tokens=n(u.completion_tokens),
                 total_tokens=n(u.total_tokens))


def completion_object(resp: ChatResponse, completion_id: str | None) -> dict[str, Any]:
    """The chat.completion object an assembled stream stands for (`ChatResponse.raw`)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "model": resp.model,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": resp.content or None,
                "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments}}
                    for c in resp.tool_calls
                ] or None,
            },
            "finish_reason": resp.finish_reason,
        }],
        "usage": msgspec.to_builtins(resp.usage) if resp.usage is not None else None,
    }
