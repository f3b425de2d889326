"""Who is calling: the peer's uid on the socket, a named bearer token on TCP.

Tokens are kept only as SHA-256 digests and a presented token is compared
with `hmac.compare_digest` against every one of them, without stopping at a
match: the time taken says neither which token matched nor how much of a
wrong one was right (digests have one length). Tokens never appear in logs,
errors or telemetry; only their names do.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["Client", "TokenTable", "socket_client"]


class Client(msgspec.Struct, frozen=True):
    label: str  # "uid:1000" or "token:<name>": attribution in telemetry and metrics
    uid: int | None = None  # the peer's uid (socket only)


def socket_client(peer: Any) -> Client:
    uid = getattr(peer, "uid", None)
    return Client(f"uid:{uid}" if uid is not None else "uid:unknown", uid)


class TokenTable:
    """The gateway's named bearer tokens, kept as digests and compared in constant time."""

    def __init__(self, tokens: Mapping[str, str]):
        self._digests = tuple((name, hashlib.sha256(token.encode()).digest()) for name, token in tokens.items())
        self._clients = {name: Client(f"token:{name}") for name in tokens}

    def __bool__(self) -> bool:
        return bool(self._digests)

    def identify(self, authorization: str | None) -> Client | None:
        """The client a `Bearer` header belongs to, or None (missing or wrong token)."""
        if not authorization or not self._digests:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for name, digest in self._digests:  # no early exit: same work whichever matches
            if hmac.compare_digest(presented, digest):
                found = name
        return None if found is None else self._clients[found]
