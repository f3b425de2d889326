"""Per-route circuit breakers: every transition on a fake clock, and persistence
through a real StateStore."""

from __future__ import annotations

import random

import pytest

from kcd.providers.breaker import Admission, BreakerBoard, BreakerConfig, Transition
from kcd.state import StateStore

R = "openrouter/x-ai/grok-4-fast"
R2 = "openai/gpt-4o-mini"
EPOCH = 1_800_000_000.0  # wall clock at the fake monotonic 0


class Clock:
    """Monotonic and wall clocks that advance together; `mono0` differs per "process"."""

    def __init__(self, mono0: float = 100.0, wall0: float = EPOCH) -> None:
        self.mono, self.wall_t = mono0, wall0

    def __call__(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_t

    def advance(self, dt: float) -> None:
        self.mono += dt
        self.wall_t += dt


# The mechanics below are checked on long, round timings (the defaults are a shared
# daemon's short ones; `test_defaults_*` check those).
MECHANICS = {"window_s": 600.0, "window_size": 100, "cooldown_s": 900.0, "cap_s": 3600.0}


def board(clock: Clock, *, rng=lambda: 0.0, events: list | None = None, store=None,
          **cfg) -> BreakerBoard:
    return BreakerBoard(BreakerConfig(**{**MECHANICS, **cfg}), clock=clock, wall=clock.wall, rng=rng,
                        on_transition=None if events is None else events.append, store=store)


def fail(b: BreakerBoard, turn: str, route: str = R, **kw) -> None:
    b.record_failure(route, turn_key=turn, error=f"{route}: http_error (HTTP 503): down", **kw)


def trip(b: BreakerBoard, route: str = R, prefix: str = "t") -> None:
    for i in range(3):
        fail(b, f"{prefix}{i}", route)


def state(b: BreakerBoard, route: str = R) -> dict:
    return b.snapshot(route)[route]


# ------------------------------------------------------------------ closed → open


def test_threshold_counted_failures_in_window_open_the_route():
    clock, events = Clock(), []
    b = board(clock, events=events, rng=lambda: 0.5)
    fail(b, "t0")
    fail(b, "t1")
    assert b.admit(R) == Admission(True, state="closed")
    fail(b, "t2")
    [ev] = events
    assert isinstance(ev, Transition)
    assert (ev.route, ev.from_state, ev.to_state, ev.reason, ev.k) == (R, "closed", "open", "failure_rate", 1)
    assert ev.at == clock.wall_t
    assert ev.reopens_at == pytest.approx(clock.wall_t + 900 * 1.1)  # jitter 0.2 × rng 0.5
    assert ev.last_error and "HTTP 503" in ev.last_error
    assert ev.trigger["turn_key"] == "t2" and ev.trigger["window_failures"] == 3

    adm = b.admit(R)
    assert not adm.allowed and adm.state == "open" and adm.reason == "failure_rate"
    assert adm.reopens_in_s == pytest.approx(990)
    assert state(b)["counts"] == {"opened": 1, "closed": 0, "rejected": 1}


def test_one_bad_turn_cannot_open_the_route_alone():
    clock = Clock()
    b = board(clock)
    for _ in range(5):  # stream, non-stream, retries: all the same turn
        fail(b, "turn-1")
    s = state(b)
    assert s["state"] == "closed" and s["window_failures"] == 1
    assert len(s["failures"]) == 5  # still visible, just not counted twice
    fail(b, "turn-2")
    fail(b, "turn-3")
    assert state(b)["state"] == "open"


def test_failures_age_out_of_the_window():
    clock = Clock()
    b = board(clock)
    fail(b, "t0")
    fail(b, "t1")
    clock.advance(601)
    fail(b, "t2")
    s = state(b)
    assert s["state"] == "closed" and s["window_failures"] == 1
    assert len(s["failures"]) == 1  # snapshot lists the window only, as the original did


def test_not_counted_failures_never_open():
    clock, events = Clock(), []
    b = board(clock, events=events)
    for i in range(10):
        fail(b, f"t{i}", counted=False)
    s = state(b)
    assert s["state"] == "closed" and s["window_failures"] == 0 and events == []
    assert s["last_error"] is not None and s["last_failure_ts"] == clock.wall_t


def test_counted_retry_after_opens_at_once_without_growing_k():
    clock, events = Clock(), []
    b = board(clock, events=events)
    fail(b, "t0", retry_after_s=30)
    [ev] = events
    assert (ev.to_state, ev.reason, ev.k) == ("open", "retry_after", 0)
    assert ev.reopens_at == clock.wall_t + 30 and ev.trigger["retry_after_s"] == 30
    assert b.admit(R).reopens_in_s == pytest.approx(30)
    clock.advance(30)
    assert b.admit(R).trial


def test_not_counted_retry_after_still_opens():
    # OpenRouter's 402 with an in-flight budget (simulator fault F29): honour its Retry-After.
    clock, events = Clock(), []
    b = board(clock, events=events)
    fail(b, "t0", counted=False, retry_after_s=5)
    assert [(e.to_state, e.reason, e.k) for e in events] == [("open", "retry_after", 0)]
    assert state(b)["window_failures"] == 0


# ------------------------------------------------------------------ lockout


def test_lockout_doubles_per_reopen_up_to_the_cap():
    clock, events = Clock(), []
    b = board(clock, events=events)  # rng 0: no jitter
    trip(b)
    lockouts = []
    for i in range(4):
        ev = events[-1]
        lockouts.append((ev.k, ev.reopens_at - ev.at))
        clock.advance(ev.reopens_at - ev.at)
        assert b.admit(R).trial
        fail(b, f"trial{i}", trial=True)
    assert lockouts == [(1, 900), (2, 1800), (3, 3600), (4, 3600)]
    assert events[-1].reason == "trial_failed" and events[-1].from_state == "half_open"


def test_jitter_only_adds_and_stays_within_bounds():
    rng = random.Random(1234)
    for _ in range(200):
        clock, events = Clock(), []
        b = board(clock, events=events, rng=rng.random)
        trip(b)
        lockout = events[-1].reopens_at - events[-1].at
        assert 900 <= lockout <= 900 * 1.2


def test_k_decays_after_cap_spent_closed():
    clock, events = Clock(), []
    b = board(clock, events=events)
    trip(b)
    clock.advance(900)
    assert b.admit(R).trial
    b.record_success(R, trial=True)
    assert state(b)["state"] == "closed" and state(b)["k"] == 1  # kept after closing
    clock.advance(3599)
    assert state(b)["k"] == 1
    clock.advance(1)
    assert state(b)["k"] == 0
    trip(b, prefix="u")
    assert (events[-1].k, events[-1].reopens_at - events[-1].at) == (1, 900)


def test_flapping_route_keeps_growing_its_lockout():
    clock, events = Clock(), []
    b = board(clock, events=events)
    trip(b)
    clock.advance(900)
    b.admit(R)
    b.record_success(R, trial=True)
    clock.advance(60)  # back in trouble well before k decays
    trip(b, prefix="u")
    assert (events[-1].k, events[-1].reopens_at - events[-1].at) == (2, 1800)


# ------------------------------------------------------------------ Retry-After


def test_retry_after_extends_but_never_shortens_and_is_clamped():
    clock, events = Clock(), []
    b = board(clock, events=events)
    trip(b)  # open for 900 s
    until = state(b)["circuit_open_until"]
    fail(b, "late-1", retry_after_s=10)  # shorter: ignored
    assert state(b)["circuit_open_until"] == until
    fail(b, "late-2", retry_after_s=2000)  # longer: extends
    assert state(b)["circuit_open_until"] == clock.wall_t + 2000
    fail(b, "late-3", retry_after_s=86_400)  # clamped to an hour
    assert state(b)["circuit_open_until"] == clock.wall_t + 3600
    assert [e.to_state for e in events] == ["open"]  # extensions are not transitions


def test_trip_deadline_is_raised_to_retry_after_if_later():
    clock, events = Clock(), []
    b = board(clock, events=events)
    fail(b, "t0")
    fail(b, "t1")
    fail(b, "t2", retry_after_s=2500)
    ev = events[-1]
    assert (ev.reason, ev.k, ev.reopens_at - ev.at) == ("failure_rate", 1, 2500)
    clock2, events2 = Clock(), []
    b2 = board(clock2, events=events2)
    fail(b2, "t0")
    fail(b2, "t1")
    fail(b2, "t2", retry_after_s=5)  # never shortens the lockout
    assert events2[-1].reopens_at - events2[-1].at == 900


# ------------------------------------------------------------------ half-open


def test_half_open_hands_out_a_single_permit():
    clock, events = Clock(), []
    b = board(clock, events=events)
    trip(b)
    clock.advance(899.9)
    assert not b.admit(R).allowed  # no state change before the deadline
    assert state(b)["state"] == "open"
    clock.advance(0.1)
    admissions = [b.admit(R) for _ in range(5)]  # "concurrent" requests on the loop
    assert admissions[0] == Admission(True, trial=True, state="half_open", reason="trial")
    assert all(not a.allowed and a.state == "half_open" and a.reason == "half_open_busy"
               for a in admissions[1:])
    assert [(e.from_state, e.to_state, e.reason) for e in events[1:]] == [
        ("open", "half_open", "cooldown_elapsed")]
    assert state(b)["trials_in_flight"] == 1


def test_trial_success_closes_and_clears_the_window():
    clock, events = Clock(), []
    b = board(clock, events=events)
    trip(b)
    clock.advance(900)
    b.admit(R)
    b.record_success(R, trial=False)  # a request admitted before the trip: decides nothing
    assert state(b)["state"] == "half_open"
    b.record_success(R, trial=True)
    s = state(b)
    assert (s["state"], s["window_failures"], s["k"], s["reason"]) == ("closed", 0, 1, None)
    assert (events[-1].from_state, events[-1].to_state, events[-1].reason) == (
        "half_open", "closed", "trial_succeeded")
    assert s["counts"]["closed"] == 1
    assert b.admit(R) == Admission(True, state="closed")


def test_trial_failure_reopens_with_k_plus_one():
    clock, events = Clock(), []
    b = board(clock, events=events)
    trip(b)
    clock.advance(900)
    b.admit(R)
    fail(b, "trial", trial=True)
    ev = events[-1]
    assert (ev.from_state, ev.to_state, ev.reason, ev.k) == ("half_open", "open", "trial_failed", 2)
    assert ev.reopens_at - ev.at == 1800


def test_slow_trial_counts_as_failed():
    clock, events = Clock(), []
    b = board(clock, events=events)
    trip(b)
    clock.advance(900)
    b.admit(R)
    b.record_success(R, trial=True, slow=True)
    assert (events[-1].to_state, events[-1].reason, events[-1].k) == ("open", "trial_slow", 2)


def test_slow_success_while_closed_is_a_success():
    clock = Clock()
    b = board(clock)
    b.record_success(R, trial=False, slow=True)
    assert state(b)["state"] == "closed" and len(state(b)["successes"]) == 1


def test_stale_trial_fails_on_the_next_admit_and_its_late_report_is_ordinary():
    clock, events = Clock(), []
    b = board(clock, events=events, half_open_max_wait_s=600)
    trip(b)
    clock.advance(900)
    assert b.admit(R).trial
    clock.advance(599)
    assert b.admit(R).reason == "half_open_busy"
    clock.advance(1)
    adm = b.admit(R)
    assert not adm.allowed and adm.state == "open" and adm.reason == "trial_timeout"
    assert (events[-1].from_state, events[-1].to_state, events[-1].k) == ("half_open", "open", 2)
    b.record_success(R, trial=True)  # the lost trial finally reports: too late to close
    assert state(b)["state"] == "open"


def test_ignored_trial_returns_the_permit():
    clock = Clock()
    b = board(clock)
    trip(b)
    clock.advance(900)
    assert b.admit(R).trial
    assert not b.admit(R).allowed
    b.record_ignored(R, trial=True)  # context-length 400, client cancel
    assert state(b)["state"] == "half_open" and state(b)["trials_in_flight"] == 0
    assert b.admit(R).trial


def test_not_counted_trial_failure_returns_the_permit():
    clock, events = Clock(), []
    b = board(clock, events=events)
    trip(b)
    clock.advance(900)
    b.admit(R)
    fail(b, "trial", counted=False, trial=True)  # e.g. a 401: says nothing about recovery
    assert state(b)["state"] == "half_open" and b.admit(R).trial
    assert events[-1].to_state == "half_open"


def test_non_trial_retry_after_reopens_a_half_open_route_without_k():
    clock, events = Clock(), []
    b = board(clock, events=events)
    trip(b)
    clock.advance(900)
    b.admit(R)
    fail(b, "old-turn", retry_after_s=20)
    ev = events[-1]
    assert (ev.from_state, ev.to_state, ev.reason, ev.k) == ("half_open", "open", "retry_after", 1)
    assert ev.reopens_at - ev.at == 20


def test_two_permits_need_two_successes():
    clock = Clock()
    b = board(clock, half_open_permits=2)
    trip(b)
    clock.advance(900)
    assert b.admit(R).trial and b.admit(R).trial and not b.admit(R).allowed
    b.record_success(R, trial=True)
    assert state(b)["state"] == "half_open"
    b.record_success(R, trial=True)
    assert state(b)["state"] == "closed"


# ------------------------------------------------------------------ operator states


def test_force_open_rejects_until_reset_with_audit():
    clock, events = Clock(), []
    b = board(clock, events=events)
    b.force_open(R, by_uid=1000)
    ev = events[-1]
    assert (ev.from_state, ev.to_state, ev.reason, ev.trigger) == (
        "closed", "forced_open", "operator_open", {"by_uid": 1000})
    clock.advance(10 * 3600)
    adm = b.admit(R)
    assert not adm.allowed and adm.state == "forced_open" and adm.reason == "forced"
    b.record_success(R, trial=False)
    assert state(b)["state"] == "forced_open"
    assert b.earliest_reopen([R]) is None  # no deadline to wait for
    b.reset(R, by_uid=0)
    assert (events[-1].to_state, events[-1].reason, events[-1].trigger) == (
        "closed", "operator_reset", {"by_uid": 0})
    assert b.admit(R).allowed


def test_reset_clears_k_and_window_and_always_audits():
    clock, events = Clock(), []
    b = board(clock, events=events)
    trip(b)
    b.reset(R, by_uid=501)
    s = state(b)
    assert (s["state"], s["k"], s["window_failures"]) == ("closed", 0, 0)
    fail(b, "t9")
    b.reset(R, by_uid=501)  # closed → closed: no state change, still an audit record
    assert (events[-1].from_state, events[-1].to_state) == ("closed", "closed")
    assert state(b)["window_failures"] == 0


def test_disabled_admits_everything_and_keeps_metrics_only():
    clock, events = Clock(), []
    b = board(clock, events=events)
    b.disable(R, by_uid=7)
    for i in range(10):
        fail(b, f"t{i}", retry_after_s=100)
    adm = b.admit(R)
    assert adm.allowed and not adm.trial and adm.state == "disabled"
    s = state(b)
    assert s["state"] == "disabled" and len(s["failures"]) == 10 and s["window_failures"] == 0
    assert [e.to_state for e in events] == ["disabled"]


def test_config_can_disable_and_override_per_route():
    clock = Clock()
    b = BreakerBoard(BreakerConfig(), overrides={R2: BreakerConfig(enabled=False),
                                                 R: BreakerConfig(threshold=1, cooldown_s=30)},
                     clock=clock, wall=clock.wall, rng=lambda: 0.0)
    trip(b, R2)
    assert b.admit(R2).state == "disabled"
    fail(b, "only")
    assert state(b)["state"] == "open" and b.admit(R).reopens_in_s == 30


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError):
        BreakerConfig(threshold=0)
    with pytest.raises(ValueError):
        BreakerConfig(half_open_permits=4)


# ------------------------------------------------------------------ reads


def test_snapshot_has_the_original_fields_plus_kcd_fields():
    clock = Clock()
    b = board(clock)
    b.record_success(R2, trial=False)
    trip(b)
    snap = b.snapshot()
    assert set(snap) == {R, R2} and b.routes() == sorted([R, R2])
    s = snap[R]
    original = {"state", "failures", "successes", "circuit_open_until", "last_error", "last_failure_ts"}
    extra = {"reason", "k", "reopens_in_s", "window_failures", "window_calls", "failure_rate",
             "trials_in_flight", "flags", "counts"}
    assert set(s) == original | extra
    assert s["failures"] == [clock.wall_t] * 3 and s["circuit_open_until"] == clock.wall_t + 900
    assert s["reopens_in_s"] == 900 and s["reason"] == "failure_rate" and s["k"] == 1
    assert snap[R2]["circuit_open_until"] is None and snap[R2]["successes"] == [clock.wall_t]
    assert (b.state(R), b.state(R2)) == ("open", "closed")


def test_earliest_reopen_among_open_routes():
    clock = Clock()
    b = board(clock)
    assert b.earliest_reopen([R, R2]) is None
    trip(b, R)
    fail(b, "x", R2, retry_after_s=12)
    assert b.earliest_reopen([R, R2]) == (R2, 12)
    clock.advance(20)
    assert b.earliest_reopen([R, R2]) == (R2, 0)  # passed: half-opens on the next admit


def test_flags_are_not_counted_and_clear_on_success():
    clock = Clock()
    b = board(clock)
    b.flag(R, "auth_error", "the API key in OPENROUTER_API_KEY was rejected")
    assert state(b)["flags"] == {"auth_error": "the API key in OPENROUTER_API_KEY was rejected"}
    assert state(b)["state"] == "closed"
    b.record_success(R, trial=False)
    assert state(b)["flags"] == {}


def test_a_failing_listener_does_not_break_the_caller():
    clock = Clock()

    def boom(_: Transition) -> None:
        raise RuntimeError("telemetry down")

    b = BreakerBoard(BreakerConfig(), clock=clock, wall=clock.wall, on_transition=boom)
    trip(b)
    assert state(b)["state"] == "open"


# ------------------------------------------------------------------ persistence


def restart(tmp_path, clock: Clock, **kw) -> tuple[BreakerBoard, StateStore]:
    store = StateStore(tmp_path / "state.db")
    b = board(clock, store=store, **kw)
    b.restore()
    return b, store


def test_restart_within_the_lockout_keeps_the_route_open(tmp_path):
    clock = Clock(mono0=100.0)
    store = StateStore(tmp_path / "state.db")
    b = board(clock, store=store, rng=lambda: 0.5)
    trip(b)
    b.flag(R, "billing_error", "no credit")
    until = state(b)["circuit_open_until"]
    store.close()

    later = Clock(mono0=5.0, wall0=clock.wall_t + 300)  # new process: new monotonic origin
    b2, store2 = restart(tmp_path, later)
    s = state(b2)
    assert (s["state"], s["k"], s["reason"]) == ("open", 1, "failure_rate")
    assert s["circuit_open_until"] == pytest.approx(until)
    assert s["flags"] == {"billing_error": "no credit"}
    assert s["failures"] == [clock.wall_t] * 3 and "HTTP 503" in s["last_error"]
    adm = b2.admit(R)
    assert not adm.allowed and adm.reopens_in_s == pytest.approx(990 - 300)
    later.advance(990 - 300)
    assert b2.admit(R).trial
    store2.close()


def test_restart_after_the_lockout_half_opens_on_the_next_admit(tmp_path):
    clock = Clock()
    store = StateStore(tmp_path / "state.db")
    trip(board(clock, store=store))
    store.close()
    b2, _ = restart(tmp_path, Clock(mono0=1.0, wall0=clock.wall_t + 5000))
    assert state(b2)["state"] == "open"  # no transition until a request wants it
    adm = b2.admit(R)
    assert adm.trial and adm.state == "half_open"


def test_half_open_restores_as_open_with_a_passed_deadline(tmp_path):
    clock = Clock()
    store = StateStore(tmp_path / "state.db")
    b = board(clock, store=store)
    trip(b)
    clock.advance(900)
    assert b.admit(R).trial  # persisted half-open, then the process dies
    store.close()
    b2, _ = restart(tmp_path, Clock(mono0=1.0, wall0=clock.wall_t + 1))
    s = state(b2)
    assert s["state"] == "open" and s["reopens_in_s"] == 0 and s["k"] == 1
    assert b2.admit(R).trial


def test_flush_persists_the_window_so_a_restart_keeps_counting(tmp_path):
    clock = Clock()
    store = StateStore(tmp_path / "state.db")
    b = board(clock, store=store)
    fail(b, "t0")
    fail(b, "t1")
    b.flush()
    store.close()
    later = Clock(mono0=0.0, wall0=clock.wall_t + 60)
    b2, _ = restart(tmp_path, later)
    assert state(b2)["window_failures"] == 2
    fail(b2, "t1")  # same turn as before the restart: still not counted twice
    assert state(b2)["state"] == "closed"
    fail(b2, "t2")
    assert state(b2)["state"] == "open"


def test_k_decay_clock_survives_a_restart(tmp_path):
    clock = Clock()
    store = StateStore(tmp_path / "state.db")
    b = board(clock, store=store)
    trip(b)
    clock.advance(900)
    b.admit(R)
    b.record_success(R, trial=True)  # closed at wall W with k = 1
    store.close()
    b2, _ = restart(tmp_path, Clock(mono0=0.0, wall0=clock.wall_t + 3600))
    assert state(b2)["k"] == 0


def test_unreadable_rows_are_skipped(tmp_path):
    store = StateStore(tmp_path / "state.db")
    store.save_breaker(R, b"not json")
    store.save_breaker(R2, b'{"state": "sideways"}')
    b = board(Clock(), store=store)
    assert b.restore() == 0
    assert b.admit(R).allowed and b.admit(R2).allowed


def test_store_errors_never_reach_the_caller_and_flush_retries():
    class FlakyStore:
        def __init__(self) -> None:
            self.fail, self.saved = True, {}

        def save_breaker(self, route: str, data: bytes) -> None:
            if self.fail:
                raise OSError("disk full")
            self.saved[route] = data

        def load_breakers(self) -> dict[str, bytes]:
            return dict(self.saved)

    store = FlakyStore()
    clock = Clock()
    b = board(clock, store=store)
    trip(b)
    assert state(b)["state"] == "open" and store.saved == {}
    store.fail = False
    b.flush()
    assert set(store.saved) == {R}
    b2 = board(Clock(mono0=0.0, wall0=clock.wall_t), store=store)
    assert b2.restore() == 1 and state(b2)["state"] == "open"


def test_config_decides_disabled_on_restore_unless_an_operator_did(tmp_path):
    clock = Clock()
    store = StateStore(tmp_path / "state.db")
    b = board(clock, store=store)
    b.disable(R, by_uid=1)
    b.force_open(R2, by_uid=1)
    store.close()
    b2, _ = restart(tmp_path, Clock(mono0=0.0, wall0=clock.wall_t + 10))
    assert state(b2, R)["state"] == "disabled" and state(b2, R2)["state"] == "forced_open"


# ------------------------------------------------------------ a shared daemon's breaker


def ok(b: BreakerBoard, key: str, route: str = R) -> None:
    b.record_success(route, trial=False, turn_key=key)


def test_successes_from_other_clients_keep_a_route_with_a_few_failures_closed():
    clock = Clock()
    b = board(clock)
    for i in range(10):
        ok(b, f"s{i}")
    for i in range(4):  # 4 of 14 failed: under the 50 % rate
        fail(b, f"f{i}")
    s = state(b)
    assert (s["state"], s["window_failures"], s["window_calls"]) == ("closed", 4, 14)
    for i in range(4, 12):  # 12 of 22: over it
        fail(b, f"f{i}")
    assert state(b)["state"] == "open" and state(b)["reason"] == "failure_rate"


def test_a_clients_retries_of_one_request_count_once():
    clock, events = Clock(), []
    b = board(clock, events=events)
    for _ in range(3):  # the client's immediate retries share its logical request key
        fail(b, "req-body-hash-1")
        clock.advance(0.4)
    s = state(b)
    assert s["state"] == "closed" and (s["window_failures"], s["window_calls"]) == (1, 1) and events == []
    ok(b, "req-body-hash-1")  # its retry succeeded: a success, not a failure and a success
    assert (state(b)["window_failures"], state(b)["window_calls"]) == (0, 1)


def test_min_calls_holds_a_route_until_there_is_enough_evidence():
    clock = Clock()
    b = board(clock, threshold=2, min_calls=5, failure_rate=0.5)
    fail(b, "a")
    fail(b, "b")
    fail(b, "c")
    assert state(b)["state"] == "closed"  # 3 calls < 5
    ok(b, "d")
    fail(b, "e")
    assert state(b)["state"] == "open"  # 4 of 5


def test_defaults_are_a_shared_daemons_short_growing_lockouts():
    clock = Clock()
    b = BreakerBoard(clock=clock, wall=clock.wall, rng=lambda: 0.0)
    lockouts = []
    for round_ in range(8):
        trip(b, prefix=f"r{round_}-")
        lockouts.append(b.admit(R).reopens_in_s)
        clock.advance(lockouts[-1])
        adm = b.admit(R)
        assert adm.trial
        b.record_success(R, trial=True)
    assert lockouts == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    clock.advance(300.0)  # closed for cap_s: the doubling starts over
    trip(b, prefix="late-")
    assert b.admit(R).reopens_in_s == 5.0


def test_a_lease_returns_an_unreported_trial_permit_on_any_exit():
    clock = Clock()
    b = board(clock)
    trip(b)
    clock.advance(10_000)
    adm = b.admit(R)
    assert adm.trial and state(b)["trials_in_flight"] == 1
    with pytest.raises(KeyboardInterrupt):  # stands in for a cancel: any BaseException
        with b.lease(R, adm):
            assert not b.admit(R).allowed  # the permit is held meanwhile
            raise KeyboardInterrupt
    s = state(b)
    assert s["state"] == "half_open" and s["trials_in_flight"] == 0
    again = b.admit(R)
    assert again.trial  # the next request gets the trial at once, not after half_open_max_wait_s
    with b.lease(R, again) as lease:
        b.record_success(R, trial=lease.spend())
    assert state(b)["state"] == "closed"


def test_a_spent_lease_returns_nothing():
    clock = Clock()
    b = board(clock, half_open_permits=2)
    trip(b)
    clock.advance(10_000)
    first, second = b.admit(R), b.admit(R)
    with b.lease(R, first) as lease:
        b.record_success(R, trial=lease.spend())
    assert state(b)["trials_in_flight"] == 1  # the second trial's permit was not handed back
    with b.lease(R, second) as lease:
        b.record_success(R, trial=lease.spend())
    assert state(b)["state"] == "closed"


def test_under_load_only_the_latest_requests_count():
    """A minute of successes must not hide an outage: the window holds the latest window_size."""
    clock = Clock()
    b = BreakerBoard(clock=clock, wall=clock.wall, rng=lambda: 0.0)
    for i in range(500):
        ok(b, f"s{i}")
        clock.advance(0.05)
    for i in range(5):
        fail(b, f"f{i}")
    assert state(b)["state"] == "open"  # 5 of the latest 10
    assert BreakerConfig().window_size == 10
    with pytest.raises(ValueError):
        BreakerConfig(threshold=5, window_size=4)
