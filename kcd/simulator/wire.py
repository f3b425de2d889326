"""OpenAI chat/completions wire shapes for a simulator `Reply`.

Pure functions: a reply becomes a `chat.completion` object or the list of
`chat.completion.chunk` objects a real server would stream. Fault deliveries
reuse them and then cut, stall or corrupt the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from kcd.simulator.behaviours import Reply, message_text

__all__ = ["DONE", "call_ids", "chunks", "completion", "error_body", "sse", "usage_for"]

DONE = b"data: [DONE]\n\n"
PIECE_CHARS = 12  # content and arguments are streamed in pieces of this many characters

_ENCODER = msgspec.json.Encoder()


def sse(obj: Any) -> bytes:
    return b"data: " + _ENCODER.encode(obj) + b"\n\n"


def error_body(message: str, type_: str, code: str | int | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def call_ids(request: Mapping[str, Any], count: int) -> list[str]:
    """`call_<n>` ids, numbered after the calls already in the conversation."""
    prior = 0
    for m in request.get("messages") or ():
        if isinstance(m, dict) and m.get("role") == "assistant":
            prior += len(m.get("tool_calls") or ())
    return [f"call_{prior + i + 1}" for i in range(count)]


def _tokens(chars: int) -> int:
    return chars // 4 + 1  # about four characters per token


def usage_for(request: Mapping[str, Any], reply: Reply) -> dict[str, int]:
    prompt = sum(len(message_text(m)) for m in request.get("messages") or () if isinstance(m, dict))
    out = len(reply.content or "") + sum(
        len(c.name) + len(_ENCODER.encode(c.arguments)) for c in reply.tool_calls
    )
    p, c = _tokens(prompt), _tokens(out)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _arguments(reply: Reply) -> list[str]:
    return [_ENCODER.encode(c.arguments).decode() for c in reply.tool_calls]


def completion(
    reply: Reply,
    *,
    model: str,
    completion_id: str,
    created: int,
    ids: list[str],
    usage: dict[str, int] | None,
    arguments: list[str] | None = None,
) -> dict[str, Any]:
    """A `chat.completion` object. `usage` None: no usage key (a server that omits it);
    `arguments`: raw argument strings instead of the encoded ones (faults send broken JSON)."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": c.name, "arguments": a}}
            for i, c, a in zip(ids, reply.tool_calls, arguments or _arguments(reply))
        ]
    out = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def _pieces(text: str) -> list[str]:
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)] or [""]


def chunks(
    reply: Reply,
    *,
    model: str,
    completion_id: str,
    created: int,
    ids: list[str],
    usage: dict[str, int] | None,
    arguments: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The chunk objects of a streamed reply, in order (without the [DONE] line).

    `usage` set: a final usage chunk with empty choices, as OpenAI sends when
    `stream_options.include_usage` is requested. `arguments`: as for `completion`.
    """
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    if reply.content:
        out.extend(chunk({"content": piece}) for piece in _pieces(reply.content))
    calls = zip(ids, reply.tool_calls, arguments or _arguments(reply))
    for index, (call_id, call, args) in enumerate(calls):
        out.append(chunk({"tool_calls": [{
            "index": index, "id": call_id, "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }]}))
        out.extend(
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in _pieces(args)
        )
    out.append(chunk({}, reply.finish))
    if usage is not None:
        out.append({**head, "choices": [], "usage": usage})
    return out
