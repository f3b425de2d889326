"""Which endpoint requests the breaker counts as one: a client's immediate repeats."""

from __future__ import annotations

from kcd.gateway.logical import LogicalRequests


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_clients_repeats_of_one_body_share_a_key_within_the_window():
    clock = Clock()
    lr = LogicalRequests(window_s=10, clock=clock)
    first = lr.key("uid:1000", b'{"a":1}', None, fresh="k1")
    clock.t = 0.4
    assert lr.key("uid:1000", b'{"a":1}', None, fresh="k2") == first == "k1"
    clock.t = 0.8
    assert lr.key("uid:1000", b'{"a":1}', None, fresh="k3") == "k1"  # each repeat extends the window


def test_other_clients_other_bodies_and_late_repeats_are_new_requests():
    clock = Clock()
    lr = LogicalRequests(window_s=10, clock=clock)
    assert lr.key("uid:1000", b"x", None, fresh="a") == "a"
    assert lr.key("uid:1001", b"x", None, fresh="b") == "b"  # another client
    assert lr.key("uid:1000", b"y", None, fresh="c") == "c"  # another body
    clock.t = 10.5
    assert lr.key("uid:1000", b"x", None, fresh="d") == "d"  # after a quiet spell


def test_an_idempotency_key_decides_and_the_table_is_bounded():
    lr = LogicalRequests(window_s=10, limit=3, clock=Clock())
    assert lr.key("token:ci", b"x", "abc", fresh="a") == "idem:token:ci:abc"
    assert lr.key("token:ci", b"other body", "abc", fresh="b") == "idem:token:ci:abc"
    for i in range(10):
        lr.key("uid:1", str(i).encode(), None, fresh=str(i))
    assert len(lr._seen) == 3
