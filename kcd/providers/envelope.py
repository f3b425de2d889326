"""Provider error envelopes and the evidence a `ProviderFailure` carries.

`error_fields` reads an error envelope in any of the shapes providers send
(`{"error": {...}}`, `{"error": "..."}`, `{"message": ...}`, `{"detail": ...}`);
`code_retryable` honours an HTTP-like code inside one. `Evidence` is what is
known about the response so far (status, headers, the head of a stream) and
builds every failure of an attempt, so all of them carry the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from kcd.providers import errors as E
from kcd.providers.errors import ProviderFailure, body_details, default_retryable
from kcd.providers.openai_wire import JSON_DECODER

__all__ = ["RAW_HEAD_BYTES", "Evidence", "code_retryable", "decode_or_wrap", "error_fields", "mime_of"]

RAW_HEAD_BYTES = 2048  # how much of a failed stream, or of a non-JSON body, is kept


def mime_of(content_type: str | None) -> str:
    """`text/event-stream; charset=utf-8` -> `text/event-stream`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def error_fields(obj: Any) -> tuple[str | None, Any, dict[str, Any]]:
    """(message, code, record) of a provider error envelope in any common shape."""
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        return (str(message) if message else None), err.get("code"), err
    if isinstance(err, str):
        return err, None, {"message": err}
    if isinstance(obj, dict):
        for key in ("message", "detail"):
            if isinstance(obj.get(key), str):
                return obj[key], None, {"message": obj[key]}
    return None, None, {}


def code_retryable(code: Any) -> bool | None:
    """Error envelopes often carry an HTTP-like code; honour it when they do."""
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, int) and 100 <= code < 600:
        return default_retryable(E.HTTP_ERROR, code)
    return None


def decode_or_wrap(data: str) -> Any:
    """A data line as JSON, or (not JSON) wrapped as an error envelope quoting it."""
    try:
        return JSON_DECODER.decode(data)
    except msgspec.DecodeError:
        return {"error": {"message": data[:E.SNIPPET_CHARS]}}


@dataclass(slots=True)
class Evidence:
    """The response as far as it is known; empty until the headers arrive."""

    route: str
    status_code: int | None = None
    content_type: str | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    request_id: str | None = None
    raw_head: bytearray = field(default_factory=bytearray)  # first bytes of a stream

    def failure(
        self,
        classification: str,
        message: str,
        *,
        body: bytes | None = None,
        hint: str | None = None,
        retryable: bool | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ProviderFailure:
        """A failure whose details quote `body` if given, else the headers and stream head."""
        if body is not None:
            details = body_details(
                body,
                status_code=self.status_code,
                content_type=self.content_type or "",
                headers=self.response_headers,
                hint=hint,
            )
        else:
            details = {
                "status_code": self.status_code,
                "content_type": self.content_type,
                "response_headers": self.response_headers,
                "request_id": self.request_id,
            }
            if hint:
                details["hint"] = hint
            if self.raw_head:
                details["raw_excerpt"] = self.raw_head.decode("utf-8", "replace")
        if extra:
            details.update(extra)
        return ProviderFailure(
            self.route,
            classification,
            message,
            status_code=self.status_code,
            retryable=retryable,
            details=details,
        )
