"""The viewer's TCP listener: its ASGI app.

Only `/ui/...` is served here, and only to requests whose Host header names this listener
(127.0.0.1, localhost or [::1] with its port): a page on another site that rebinds its DNS
name to 127.0.0.1 gets a refusal, not a run. When the viewer shares the gateway's port, the
gateway's own OpenAI routes (behind their bearer tokens) answer everything else; otherwise
everything else is 404. Nothing of the control API is reachable over TCP, and a TCP request
never carries a socket peer's identity: the viewer asks it for a session cookie instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kcd.viewer.markup import error_page

__all__ = ["ViewerListenerApp", "allowed_hosts"]

ASGIApp = Callable[[dict, Callable, Callable], object]


def allowed_hosts(port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host header values this listener answers to (lower case)."""
    names = ["127.0.0.1", "localhost", "[::1]", *extra]
    return frozenset(f"{n.lower()}:{port}" for n in names)


def _host(scope: dict) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"host":
            return value.decode("latin-1").strip().lower()
    return None


class ViewerListenerApp:
    """`/ui/` to the viewer's app after the Host check; the rest to the gateway or 404."""

    def __init__(self, viewer: ASGIApp, *, hosts: frozenset[str], gateway: ASGIApp | None = None):
        self.viewer = viewer
        self.hosts = hosts
        self.gateway = gateway

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        path = scope["path"]
        if path == "/ui" or path.startswith("/ui/"):
            if _host(scope) not in self.hosts:
                await error_page(403, "host_not_allowed", "this listener answers only to 127.0.0.1, localhost "
                                                          "and [::1] with its port").send(send)
                return
            scope = {**scope, "state": {**(scope.get("state") or {}), "peer": None}}
            await self.viewer(scope, receive, send)
        elif self.gateway is not None:
            await self.gateway(scope, receive, send)
        else:
            await error_page(404, "not_found", "only the run viewer (/ui/) is served on this port").send(send)
