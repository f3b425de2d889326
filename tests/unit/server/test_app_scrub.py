"""The ASGI app redacts every text body on its way out, and a big one off the event loop."""

from __future__ import annotations

import threading

import anyio

from kcd.observe.redact import Redactor
from kcd.server.http import SCRUB_INLINE_MAX, App, Response, Router

SECRET = "sk-canary-scrub-0123456789abcdef"


def _get(app: App, path: str) -> tuple[str, bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    anyio.run(app, {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""},
              receive, send)
    start, body = sent
    return dict(start["headers"])[b"content-type"].decode(), body["body"]


def test_small_and_big_bodies_are_redacted_and_the_big_one_in_a_worker_thread() -> None:
    redactor = Redactor([SECRET])
    threads: list[int] = []

    def scrub(data: bytes) -> bytes:
        threads.append(threading.get_ident())
        return redactor.bytes(data)

    big = b"x" * (SCRUB_INLINE_MAX * 3) + SECRET.encode()
    bodies = {"/small-json": (f'{{"k": "{SECRET}"}}'.encode(), "application/json"),
              "/big-json": (b'{"k": "' + big + b'"}', "application/json"),
              "/big-text": (big, "text/html; charset=utf-8"),
              "/binary": (big, "application/gzip"),
              "/made-here": (SECRET.encode(), "application/json")}
    r = Router()
    for path, (body, ctype) in bodies.items():
        async def handler(req, body=body, ctype=ctype, path=path) -> Response:
            return Response(body, content_type=ctype, scrub=path != "/made-here")
        r.add("GET", path, handler)
    app = App(r, max_body=100, scrub=scrub)
    loop_thread = threading.get_ident()  # anyio.run runs the loop in this thread

    for path in ("/small-json", "/big-json", "/big-text"):
        threads.clear()
        _, body = _get(app, path)
        assert SECRET.encode() not in body and b"***REDACTED***" in body, path
        assert len(threads) == 1
        assert (threads[0] == loop_thread) == (path == "/small-json"), path  # big ones off the loop
    threads.clear()
    assert _get(app, "/binary")[1] == big and threads == []  # archives are bytes, never rewritten
    assert _get(app, "/made-here")[1] == SECRET.encode() and threads == []  # scrub=False: left alone
