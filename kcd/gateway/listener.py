"""The gateway's optional TCP listener: its socket, and the ASGI app served on it.

For tools that cannot speak HTTP over a Unix socket. Loopback unless the
operator set `gateway.tcp.allow_remote` (checked in `kcd.config.daemon`). The
socket is bound by the daemon before it reports READY and served by a second
uvicorn server (`kcd.server.listener.make_server`) on the daemon's event loop;
`TCPGatewayApp` asks every request for a bearer token before anything else.
"""

from __future__ import annotations

from collections.abc import Callable

from kcd.gateway.errors import OpenAIError
from kcd.gateway.handlers import OpenAIEndpoint
from kcd.gateway.responses import error_response
from kcd.server.http import Request, Response, bind_tcp_socket

__all__ = ["TCPGatewayApp"]


class TCPGatewayApp:
    """The TCP listener's ASGI app: only the OpenAI routes, each behind a bearer token.

    Errors of every kind (401, 404, 405, 500) keep OpenAI's shape here, since only
    OpenAI clients talk to this port.
    """

    def __init__(self, endpoint: OpenAIEndpoint):
        self.endpoint = endpoint

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        endpoint = self.endpoint
        request = Request(scope, receive, endpoint.max_body)
        path = scope["path"].rstrip("/")
        client = endpoint.tokens.identify(request.header("authorization"))
        if client is None:  # before anything else: no route list, no body read for strangers
            response: Response = error_response(OpenAIError(
                401, "missing or invalid bearer token (Authorization: Bearer <token>)",
                code="invalid_api_key", headers={"www-authenticate": "Bearer"}))
        elif path == "/v1/chat/completions":
            response = await endpoint.serve_chat(request, client) if scope["method"] == "POST" else \
                _method_not_allowed("POST")
        elif path == "/v1/models":
            response = await endpoint.list_models(request) if scope["method"] == "GET" else \
                _method_not_allowed("GET")
        else:
            response = error_response(OpenAIError(404, f"no such endpoint: {scope['method']} {scope['path']}",
                                                  code="not_found"))
        await response.send(send)


def _method_not_allowed(allowed: str) -> Response:
    return error_response(OpenAIError(405, f"use {allowed}", code="method_not_allowed",
                                      headers={"allow": allowed}))
