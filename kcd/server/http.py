"""A small ASGI layer: request/response objects and a path router.

The control API has a dozen routes; a framework would add more code on the
hot path than it saves here. uvicorn does all HTTP parsing.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import anyio
import msgspec

from kcd.api.types import ErrorBody, ErrorDetail
from kcd.errors import BadRequest, KcError, NotFound, TooLarge

_encoder = msgspec.json.Encoder()
# Bodies up to this are redacted on the event loop (under a millisecond); bigger ones in a
# worker thread, which costs a thread hop (~0.1 ms) but never stalls the loop.
SCRUB_INLINE_MAX = 64 * 1024


class HTTPError(KcError):
    """A `KcError` with its status given at the raise (the router's 405 with `allow`)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(code, message, status=status, headers=headers)


class BodyTooLarge(TooLarge):
    """A request body over the route's limit (413), raised while it is read."""

    def __init__(self, limit: int):
        super().__init__("body_too_large", f"request body exceeds the limit of {limit} bytes")


class SocketInUse(RuntimeError):
    """A listening address (the control socket, the gateway's TCP port) is taken."""


def bind_tcp_socket(host: str, port: int) -> socket.socket:
    """A listening, non-blocking, non-inheritable TCP socket (the gateway's port, the
    simulator's); SocketInUse if the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on accepted sockets that say so,
    # and without it small responses wait ~40 ms for delayed ACKs (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
        sock.setblocking(False)
        os.set_inheritable(sock.fileno(), False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SocketInUse(f"TCP address {host}:{port} is in use") from exc
        raise
    return sock


class Request:
    """One ASGI request: path parameters, query, headers, peer credentials, and a body
    read on demand within `max_body`."""

    __slots__ = ("scope", "receive", "path_params", "_body", "max_body")

    def __init__(self, scope: dict, receive: Callable, max_body: int):
        self.scope = scope
        self.receive = receive
        self.path_params: dict[str, str] = {}
        self._body: bytes | None = None
        self.max_body = max_body

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def path(self) -> str:
        return self.scope["path"]

    @property
    def query(self) -> dict[str, str]:
        raw = self.scope.get("query_string", b"").decode("latin-1")
        return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    @property
    def peer(self) -> Any:
        return (self.scope.get("state") or {}).get("peer")

    def header(self, name: str) -> str | None:
        key = name.lower().encode("latin-1")
        for k, v in self.scope.get("headers", ()):
            if k == key:
                return v.decode("latin-1")
        return None

    async def body(self) -> bytes:
        if self._body is None:
            declared = self.header("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_body:
                raise BodyTooLarge(self.max_body)
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    break
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    raise BodyTooLarge(self.max_body)
                chunks.append(chunk)
                if not message.get("more_body"):
                    break
            self._body = b"".join(chunks)
        return self._body

    async def save_to(self, fh: Any, limit: int) -> int:
        """Stream the body into a binary file object, enforcing `limit`; returns its size."""
        declared = self.header("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(limit)
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("incomplete_body", "the client disconnected during the upload")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            fh.write(chunk)
            if not message.get("more_body"):
                return size

    async def json(self, type_: Any) -> Any:
        raw = await self.body()
        if not raw:
            raise BadRequest("bad_request", "request body is empty; expected JSON")
        try:
            return msgspec.json.decode(raw, type=type_)
        except msgspec.ValidationError as exc:
            raise BadRequest("invalid_request", str(exc)) from None
        except msgspec.DecodeError as exc:
            raise BadRequest("malformed_json", f"malformed JSON: {exc}") from None


class Response:
    """A whole response: status, bytes and headers (streams use StreamResponse)."""

    __slots__ = ("status", "body", "headers", "scrub")

    def __init__(self, body: bytes = b"", status: int = 200, content_type: str = "application/json",
                 headers: dict[str, str] | None = None, *, scrub: bool = True):
        self.status = status
        self.body = body
        self.headers = {"content-type": content_type, **(headers or {})}
        self.scrub = scrub  # False only for a body the daemon made itself (a fresh login link)

    async def send(self, send: Callable) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        headers.append((b"content-length", str(len(self.body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


class StreamResponse(Response):
    """Chunked response fed by an async iterator of byte chunks (NDJSON, SSE)."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: AsyncIterator[bytes], content_type: str = "application/x-ndjson",
                 status: int = 200, headers: dict[str, str] | None = None):
        super().__init__(b"", status, content_type, headers)
        self.chunks = chunks

    async def send(self, send: Callable) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response from any msgspec-encodable object."""
    return Response(_encoder.encode(obj), status, headers=headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The API's one error shape: `{"error": {"code", "message"}}`."""
    return json_response(ErrorBody(ErrorDetail(code, message)), status, headers)


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Maps (method, path pattern) to handlers; `{name}` segments (and a trailing
    `{name:path}`) become path params."""

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        # `{name}` is one path segment; `{name:path}` is the rest of the path, slashes included.
        regex = re.compile("^" + re.sub(r"\{(\w+)(:path)?\}",
                                        lambda m: f"(?P<{m[1]}>{'.+' if m[2] else '[^/]+'})", pattern) + "$")
        for existing, methods in self._routes:
            if existing.pattern == regex.pattern:
                methods[method] = handler
                return
        self._routes.append((regex, {method: handler}))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        for regex, methods in self._routes:
            m = regex.match(path)
            if m:
                handler = methods.get(method)
                if handler is None:
                    raise HTTPError(405, "method_not_allowed", f"{method} is not allowed on {path}",
                                    {"allow": ", ".join(sorted(methods))})
                return handler, m.groupdict()
        raise NotFound("not_found", f"no such endpoint: {method} {path}")


class App:
    """The ASGI callable: routing, body limit, and errors that never escape."""

    def __init__(self, router: Router, *, max_body: int, on_error: Callable[[BaseException], None] | None = None,
                 scrub: Callable[[bytes], bytes] | None = None):
        self.router = router
        self.max_body = max_body
        self.on_error = on_error
        self.scrub = scrub  # applied to every non-streamed response body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        request = Request(scope, receive, self.max_body)
        try:
            handler, params = self.router.match(scope["method"], scope["path"])
            request.path_params = params
            response = await handler(request)
        except KcError as exc:  # the one place a request-facing error becomes a response
            response = error_response(exc.status, exc.code, str(exc), exc.headers)
        except Exception as exc:  # a bug must not take the daemon down
            if self.on_error:
                self.on_error(exc)
            response = error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")
        if self.scrub is not None and response.scrub and response.body and \
                response.headers["content-type"].startswith(("application/json", "text/")):
            # never binary bodies (workspace archives); a big one in a worker thread, since
            # redaction is ~10 ms a MB and every run streams on this loop
            if len(response.body) < SCRUB_INLINE_MAX:
                response.body = self.scrub(response.body)
            else:
                response.body = await anyio.to_thread.run_sync(self.scrub, response.body)
        await response.send(send)
