"""The session table: one-time login tokens, session expiry, digests only."""

from __future__ import annotations

from kcd.viewer.sessions import SessionTable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(clock: Clock, limit: int = 4096) -> SessionTable:
    return SessionTable(session_ttl_s=600, login_ttl_s=60, limit=limit, clock=clock)


def test_a_login_token_is_exchanged_once_for_a_session_bound_to_its_uid() -> None:
    clock = Clock()
    t = table(clock)
    token = t.issue_login(1234, False)
    redeemed = t.redeem_login(token)
    assert redeemed is not None
    cookie, grant = redeemed
    assert (grant.uid, grant.operator) == (1234, False)
    assert t.session(cookie).uid == 1234
    assert t.redeem_login(token) is None  # reused: refused
    assert t.session(token) is None  # a login token is not a session


def test_forged_and_expired_tokens_are_refused() -> None:
    clock = Clock()
    t = table(clock)
    assert t.redeem_login("forged") is None
    assert t.redeem_login("") is None and t.redeem_login(None) is None
    assert t.redeem_login("x" * 10_000) is None
    token = t.issue_login(1, True)
    clock.now += 61
    assert t.redeem_login(token) is None
    cookie, _ = t.redeem_login(t.issue_login(1, True))
    clock.now += 599
    assert t.session(cookie) is not None
    clock.now += 2
    assert t.session(cookie) is None


def test_tokens_are_32_random_bytes_and_only_their_digests_are_kept() -> None:
    clock = Clock()
    t = table(clock)
    tokens = {t.issue_login(1, False) for _ in range(50)}
    assert len(tokens) == 50 and all(len(tok) >= 43 for tok in tokens)  # 32 bytes, base64url
    cookie, _ = t.redeem_login(next(iter(tokens)))
    stored = repr(t.__dict__) + repr(t._logins.entries) + repr(t._sessions.entries)
    assert not any(tok in stored for tok in tokens) and cookie not in stored


def test_the_table_is_bounded() -> None:
    clock = Clock()
    t = table(clock, limit=8)
    first = t.issue_login(1, False)
    for _ in range(20):
        t.issue_login(1, False)
    assert len(t._logins.entries) <= 8
    assert t.redeem_login(first) is None  # the oldest went first


def test_one_user_asking_in_a_loop_evicts_only_their_own_links_and_sessions() -> None:
    # A local user flooding `kcctl view` (POST /v1/viewer/sessions) must not log others out.
    clock = Clock()
    t = SessionTable(session_ttl_s=600, login_ttl_s=60, limit=16, per_uid=4, clock=clock)
    victim_login = t.issue_login(1000, False)
    victim_cookie, _ = t.redeem_login(t.issue_login(1000, False))
    for _ in range(100):
        t.issue_login(2000, False)
        redeemed = t.redeem_login(t.issue_login(2000, False))
        assert redeemed is not None
    assert t.session(victim_cookie) is not None and t.redeem_login(victim_login) is not None
    assert sum(g.uid == 2000 for g in t._sessions.entries.values()) == 4


def test_many_flooding_users_evict_the_biggest_holder_not_a_quiet_one() -> None:
    clock = Clock()
    t = SessionTable(session_ttl_s=600, login_ttl_s=60, limit=8, per_uid=4, clock=clock)
    quiet = t.issue_login(1000, False)
    for uid in (2001, 2002, 2003):
        for _ in range(4):
            t.issue_login(uid, False)
    assert len(t._logins.entries) <= 8
    assert t.redeem_login(quiet) is not None
