"""`AiohttpClient` sends what httpx's client sent and reads bodies as httpx read them.

The provider must not be able to tell the daemon's default client from httpx's: the same
default headers (under the caller's), and gzip bodies decoded before the attempt reads
them; an undecodable body is the same `non_json` failure.
"""

from __future__ import annotations

import gzip
import json

import anyio
import httpx
import pytest

from kcd.providers.aiohttp_client import AiohttpClient
from kcd.providers.dispatcher import POOL_LIMITS
from kcd.providers.endpoints import resolve_endpoint
from kcd.providers.openai_compat import send_chat
from kcd.providers.routes import parse_route
from kcd.providers.types import ChatMessage, ChatRequest

pytestmark = pytest.mark.anyio

ANSWER = json.dumps({"id": "x", "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hi there"}}]}).encode()


async def _serve(body: bytes, seen: list[dict[str, str]], task_status) -> None:  # noqa: ANN001
    async def handle(stream: anyio.abc.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        seen.append(headers)
        while len(rest) < int(headers.get("content-length", "0")):
            rest += await stream.receive()
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                          b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
    await listener.serve(handle)


async def _call(client, body: bytes) -> tuple:  # noqa: ANN001
    seen: list[dict[str, str]] = []
    async with anyio.create_task_group() as tg:
        port = await tg.start(_serve, body, seen)
        route = parse_route("openai/m")
        endpoint = resolve_endpoint(route, {"OPENAI_API_KEY": "sk-test-000000000000000000000000",
                                            "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"})
        att = await send_chat(client, endpoint, route, ChatRequest(messages=[ChatMessage("user", "hi")]))
        tg.cancel_scope.cancel()
    return att, seen[0]


@pytest.fixture(params=["httpx", "aiohttp-client"])
async def client(request):  # noqa: ANN001
    if request.param == "httpx":
        async with httpx.AsyncClient(trust_env=False) as c:
            yield c
        return
    direct = AiohttpClient(POOL_LIMITS)
    yield direct
    await direct.aclose()


async def test_gzip_answer_is_decoded_and_headers_match_httpx(client):
    att, headers = await _call(client, gzip.compress(ANSWER))
    assert att.ok, att.failure
    assert att.response.content == "hi there"
    assert headers["accept-encoding"] == "gzip, deflate"
    assert headers["user-agent"] == f"python-httpx/{httpx.__version__}"
    assert headers["accept"] == "application/json" and headers["content-type"] == "application/json"
    assert headers["authorization"].startswith("Bearer sk-test-")


async def test_a_body_that_is_not_gzip_is_non_json(client):
    att, _ = await _call(client, b"this is not gzip at all")
    assert att.failure is not None and att.failure.classification == "non_json", att.failure
