"""Viewer sessions: one-time login tokens exchanged for session cookies.

`kcctl view` asks the daemon over the socket for a login token bound to the caller's uid and
operator flag; the browser trades it once at `/ui/login` for a session cookie. Both are 32
random bytes; only their SHA-256 digests are kept, so a leaked table (a core dump, a debug
print) grants nothing. Lookups are by digest; the stored digest is then compared in constant
time as well, so no path depends on how much of a guess matched.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import Counter
from collections.abc import Callable

import msgspec

__all__ = ["Grant", "SessionTable"]


class Grant(msgspec.Struct, frozen=True):
    """Who a token or session speaks for, and until when (the table's clock)."""

    uid: int | None
    operator: bool
    expires: float
    digest: bytes = b""  # of the token it was stored under


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class _Tokens:
    """Digest -> grant, bounded so that one local user asking for links in a loop evicts only
    their own: past `per_uid` a uid's oldest entry goes; past `limit` (many uids), the oldest
    entry of whichever uid holds the most. Expired entries go first."""

    def __init__(self, limit: int, per_uid: int, clock: Callable[[], float]):
        self.limit = limit
        self.per_uid = per_uid
        self.clock = clock
        self.entries: dict[bytes, Grant] = {}

    def _evict_oldest_of(self, uid: int | None) -> None:
        for digest, grant in self.entries.items():  # insertion order: the oldest first
            if grant.uid == uid:
                del self.entries[digest]
                return

    def add(self, grant: Grant) -> str:
        now = self.clock()
        self.entries = {d: g for d, g in self.entries.items() if g.expires > now}
        held = Counter(g.uid for g in self.entries.values())
        if held[grant.uid] >= self.per_uid:
            self._evict_oldest_of(grant.uid)
        elif len(self.entries) >= self.limit:
            self._evict_oldest_of(held.most_common(1)[0][0])
        token = secrets.token_urlsafe(32)
        digest = _digest(token)
        self.entries[digest] = msgspec.structs.replace(grant, digest=digest)
        return token

    def get(self, token: str | None, *, consume: bool) -> Grant | None:
        if not token or len(token) > 128:
            return None
        digest = _digest(token)
        found = self.entries.get(digest)
        if found is None or not hmac.compare_digest(found.digest, digest):
            return None
        if consume:
            del self.entries[digest]
        if found.expires <= self.clock():
            self.entries.pop(digest, None)
            return None
        return found


class SessionTable:
    """Login tokens (one use, `login_ttl_s`) and sessions (`session_ttl_s`), in memory only:
    a daemon restart logs every viewer out, which is the safe direction."""

    def __init__(self, *, session_ttl_s: float, login_ttl_s: float, limit: int = 4096, per_uid: int = 64,
                 clock: Callable[[], float] = time.monotonic):
        self.session_ttl_s = session_ttl_s
        self.login_ttl_s = login_ttl_s
        self.clock = clock
        self._logins = _Tokens(limit, per_uid, clock)
        self._sessions = _Tokens(limit, per_uid, clock)

    def issue_login(self, uid: int | None, operator: bool) -> str:
        return self._logins.add(Grant(uid=uid, operator=operator, expires=self.clock() + self.login_ttl_s))

    def redeem_login(self, token: str | None) -> tuple[str, Grant] | None:
        """A valid, unused, unexpired login token becomes a session (cookie value, grant); the
        token is spent either way once seen, so a replay fails."""
        grant = self._logins.get(token, consume=True)
        if grant is None:
            return None
        session = Grant(uid=grant.uid, operator=grant.operator, expires=self.clock() + self.session_ttl_s)
        return self._sessions.add(session), session

    def session(self, cookie: str | None) -> Grant | None:
        return self._sessions.get(cookie, consume=False)
