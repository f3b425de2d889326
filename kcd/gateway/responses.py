"""What goes back to the client, when it goes back whole: an answer, an error, or nothing.

`VerbatimResponse`: a body the App's pattern scrubber must not touch. Answers
are model output the client asked for (code full of `api_key=` and `sk-`
examples); the endpoint removes the daemon's own secrets by exact value
before it builds one. Error bodies (provider messages, echoes of the request)
get the full redactor (`error_response`). `NoAnswer`: the client has gone.

Streamed answers whose status waits for the first text are `streaming.PassthroughResponse`.
"""

from __future__ import annotations

from collections.abc import Callable

from kcd.gateway.errors import OpenAIError
from kcd.server.http import Response

__all__ = ["NoAnswer", "SSE_HEADERS", "VerbatimResponse", "error_response", "start_message"]

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def start_message(status: int, content_type: str, headers: dict[str, str], length: int | None = None) -> dict:
    """The ASGI `http.response.start` message."""
    raw = [(b"content-type", content_type.encode("latin-1"))]
    raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": status, "headers": raw}


class VerbatimResponse(Response):
    __slots__ = ("payload",)

    def __init__(self, payload: bytes, status: int = 200, content_type: str = "application/json",
                 headers: dict[str, str] | None = None):
        super().__init__(b"", status, content_type, headers)
        self.payload = payload

    async def send(self, send: Callable) -> None:
        headers = dict(self.headers)
        content_type = headers.pop("content-type")
        await send(start_message(self.status, content_type, headers, len(self.payload)))
        await send({"type": "http.response.body", "body": self.payload})


def error_response(err: OpenAIError, request_id: str | None = None,
                   redact: Callable[[bytes], bytes] | None = None) -> VerbatimResponse:
    headers = dict(err.headers)
    if request_id:
        headers["x-request-id"] = request_id
    body = err.body()
    return VerbatimResponse(redact(body) if redact is not None else body, err.status, headers=headers)


class NoAnswer(Response):
    """The client has gone: there is no one to send a response to."""

    async def send(self, send: Callable) -> None:
        pass
