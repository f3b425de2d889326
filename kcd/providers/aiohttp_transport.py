"""An httpx transport that sends requests with aiohttp.

Why: httpx's own transport (httpcore + h11, pure Python) costs about 0.8 ms of CPU
per call on these machines, aiohttp (C HTTP parser) about 0.25 ms (measured on
2-core CI machines; see docs/benchmarks.md §5); for the OpenAI-compatible endpoint,
where every client call is one upstream call, that is most of what the daemon adds.
The rest of the provider code keeps httpx's API (`client.stream`, `httpx.Timeout`,
`httpx.Response`, its exception types), so this module is the only place that knows
about aiohttp, and `upstream_client: httpx` in the daemon config switches it off.

Contract kept for `openai_compat.AttemptRun`:
- connect and pool timeouts from `httpx.Timeout` apply (`ConnectTimeout`); read timeouts
  are the caller's own (anyio scopes), so none is armed here unless one is given;
- a failure before the response headers is `ConnectError` only when no connection
  was made (refused, DNS, TLS); once connected the request is on its way, so a reset
  is `ReadError` (as httpcore says it) and a close or garbage `RemoteProtocolError`;
  a body cut off is `RemoteProtocolError`; other socket errors while reading are `ReadError`;
- bodies arrive as the server sends them (`iter_any`), so SSE events are not held back;
- no decompression here (httpx decodes `content-encoding` itself), no redirects.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import certifi
import httpx
from aiohttp.helpers import get_env_proxy_for_url
from aiohttp.http_exceptions import ContentEncodingError
from yarl import URL


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    return client_timeout(request.extensions.get("timeout") or {})


def client_timeout(t: dict[str, float | None]) -> aiohttp.ClientTimeout:
    """httpx's timeout dict as aiohttp's: connect and pool bound the connection, read only if set."""
    connect = t.get("connect")
    pool = t.get("pool")
    return aiohttp.ClientTimeout(total=None, connect=pool if pool is not None else connect,
                                 sock_connect=connect, sock_read=t.get("read"))


async def iter_body(response: aiohttp.ClientResponse,
                    request: httpx.Request | None = None) -> AsyncIterator[bytes]:
    """The body as it arrives, aiohttp's failures raised as httpx's."""
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except aiohttp.ClientPayloadError as exc:
        if isinstance(exc.__cause__, ContentEncodingError) or "ContentEncodingError" in str(exc):
            raise httpx.DecodingError(f"body could not be decoded: {exc}", request=request) from exc
        raise httpx.RemoteProtocolError(f"response body incomplete: {exc}", request=request) from exc
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise httpx.ReadTimeout(f"read timed out: {exc}", request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(f"server disconnected: {exc}", request=request) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request):
        self._response = response
        self._request = request

    def __aiter__(self) -> AsyncIterator[bytes]:
        return iter_body(self._response, self._request)

    async def aclose(self) -> None:
        self._response.release()  # back to the pool if read to the end, else the socket is closed


class AiohttpSession:
    """One aiohttp session (one connection pool), made on first use inside the running
    event loop, and requests on it with aiohttp's failures raised as httpx's.

    `decompress`: whether aiohttp decodes `content-encoding` (off when httpx does it)."""

    def __init__(self, limits: httpx.Limits, *, trust_env: bool = False, decompress: bool = False):
        self._limits = limits
        self._trust_env = trust_env
        self._decompress = decompress
        self._session: aiohttp.ClientSession | None = None
        # (scheme, host) -> the proxy from the environment, looked up once: aiohttp's own
        # trust_env reads the environment and ~/.netrc on every request (~0.1 ms each).
        self._proxies: dict[tuple[str, str], tuple[URL | None, aiohttp.BasicAuth | None]] = {}

    def _proxy_for(self, url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        if not self._trust_env:
            return None, None
        key = (url.scheme, url.host or "")
        found = self._proxies.get(key)
        if found is None:
            try:
                found = get_env_proxy_for_url(url)
            except LookupError:
                found = (None, None)
            self._proxies[key] = found
        return found

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            limits = self._limits
            connector = aiohttp.TCPConnector(
                limit=limits.max_connections or 0, limit_per_host=0,
                keepalive_timeout=limits.keepalive_expiry or 15.0,
                ssl=ssl.create_default_context(cafile=certifi.where()),  # httpx's trust store
                enable_cleanup_closed=False)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=self._decompress,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def request(self, method: str, url: URL, body: bytes | None, headers: Any,
                      timeout: aiohttp.ClientTimeout,
                      request: httpx.Request | None = None) -> aiohttp.ClientResponse:
        session = self._get_session()
        proxy, proxy_auth = self._proxy_for(url)
        try:
            return await session.request(
                method, url, data=body or None, headers=headers, proxy=proxy,
                proxy_auth=proxy_auth, allow_redirects=False, timeout=timeout, compress=None)
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect timed out: {exc}", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout(f"no response headers in time: {exc}", request=request) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError) as exc:
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}", request=request) from exc
        except (aiohttp.ClientOSError, OSError) as exc:
            # Not a ClientConnectorError: the socket was connected, so this is a reset
            # after (or while) sending, and "cannot connect" would be wrong (and not retried).
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc
        except aiohttp.ClientError as exc:  # e.g. an invalid URL: nothing was sent
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncClient` transport on one `AiohttpSession`."""

    def __init__(self, limits: httpx.Limits, *, trust_env: bool = False):
        self._session = AiohttpSession(limits, trust_env=trust_env)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                   if k.lower() not in (b"host", b"content-length", b"transfer-encoding")]
        response = await self._session.request(request.method, URL(str(request.url)), body, headers,
                                               _timeout(request), request)
        return httpx.Response(
            response.status, headers=[(k, v) for k, v in response.raw_headers],
            stream=_Body(response, request), request=request,
            extensions={"http_version": b"HTTP/1.1",
                        "reason_phrase": (response.reason or "").encode("latin-1", "replace")})

    async def aclose(self) -> None:
        await self._session.aclose()
