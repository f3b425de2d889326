"""Per-route circuit breakers, shared by every run in the daemon.

One `BreakerBoard` per daemon holds a three-state breaker (plus the operator
states) for each route id, modelled on resilience4j's CircuitBreaker with
Envoy-style growing lockouts:

    CLOSED --(failure rate over the window, with enough calls | Retry-After)--> OPEN
    OPEN --(deadline passed, on the next admit)--> HALF_OPEN (P permits)
    HALF_OPEN --(P trial successes)--> CLOSED
    HALF_OPEN --(trial failure, slow trial, or trial older than max wait)--> OPEN (k+1)
    any --(operator)--> FORCED_OPEN / CLOSED (reset) / DISABLED

The board is synchronous and must only be used from the event loop: `admit`
checks for and takes a half-open permit in one call, so no other request can
slip in between. Time-driven changes (cooldown over, k decay, stale trials)
are applied lazily when a route is next touched; nothing runs on a timer.

Tuned for a shared daemon, not one agent: the window counts logical requests (a run's
turn, or an endpoint request with its client's immediate retries, which share a
key), the latest `window_size` of them within `window_s`, and opens on a failure
*rate* once it has `min_calls` of them and at least `threshold` failures, as
resilience4j (a count-based sliding window) and Envoy's outlier detection do. The
count bound matters under load: a time window full of the last minute's
successes would take as many failures again to notice an outage. Lockouts
start short (`cooldown_s`, 5 s) and double per consecutive reopening up to
`cap_s`, so a flapping upstream is re-probed about once per lockout instead of
being locked out for everyone for a quarter of an hour after three bad calls.

Finer points:
- A failure carrying Retry-After opens the route (reason ``retry_after``, k
  unchanged) even when not counted: OpenRouter's 402 with an in-flight budget
  says exactly when to come back (simulator fault F29). Without Retry-After a
  not-counted failure never opens, trips or re-opens anything.
- In HALF_OPEN a not-counted trial failure (auth, billing, unknown model)
  returns the permit, like an ignored outcome: it says nothing about whether
  the route has recovered, and the operator flag carries it.
- Outcomes of requests admitted before the route opened (``trial=False``)
  never change OPEN/HALF_OPEN state, except that a Retry-After extends the
  deadline (or re-opens a half-open route): extend, never shorten.
- Trials are not tokens: a report with ``trial=True`` consumes the oldest
  permit in flight; with none in flight (the trial went stale, or an operator
  reset the route) it is treated as an ordinary outcome.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol

import msgspec

__all__ = [
    "Admission",
    "TrialLease",
    "BreakerBoard",
    "BreakerConfig",
    "BreakerStateName",
    "BreakerStore",
    "Transition",
]

log = logging.getLogger("kcd.breaker")

BreakerStateName = Literal["closed", "open", "half_open", "forced_open", "disabled"]
CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED = "closed", "open", "half_open", "forced_open", "disabled"
_STATES = frozenset({CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED})

# Bound on the failure/success timestamps kept per route for the snapshot.
_HISTORY = 64


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Trip, lockout and half-open settings of one route's breaker."""

    threshold: int = 3  # at least this many failed logical requests within window_s ...
    min_calls: int | None = None  # ... among at least this many logical requests (None: threshold) ...
    failure_rate: float = 0.5  # ... failing at this rate or more trip the breaker
    window_s: float = 60.0
    window_size: int = 10  # and at most this many of the latest logical requests count
    cooldown_s: float = 5.0  # first lockout; doubles with k up to cap_s
    cap_s: float = 300.0  # also: time spent CLOSED after which k decays to 0
    jitter: float = 0.2  # lockout × (1 + U(0, jitter)); only ever adds
    half_open_permits: int = 1
    half_open_max_wait_s: float = 600.0  # a trial not reported by then has failed
    retry_after_clamp_s: float = 3600.0
    enabled: bool = True  # False: the route starts DISABLED (admits all, metrics only)

    def __post_init__(self) -> None:
        if self.threshold < 1 or (self.min_calls is not None and self.min_calls < 1):
            raise ValueError("threshold and min_calls must be >= 1")
        if self.window_size < max(self.threshold, self.min_calls or 1):
            raise ValueError("window_size must be at least threshold and min_calls")
        if not 0.0 < self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1]")
        if not 1 <= self.half_open_permits <= 3:
            raise ValueError("half_open_permits must be between 1 and 3 (each trial is a paid call)")
        if min(self.window_s, self.cooldown_s, self.cap_s, self.jitter,
               self.half_open_max_wait_s, self.retry_after_clamp_s) < 0:
            raise ValueError("breaker durations and jitter must be >= 0")


class Admission(msgspec.Struct, frozen=True):
    allowed: bool  # may the caller send a request to this route now?
    trial: bool = False  # this request holds a half-open permit (must report its outcome)
    state: str = CLOSED
    reason: str | None = None  # why not allowed / why open ("threshold", "retry_after", "forced", ...)
    reopens_in_s: float | None = None


class TrialLease:
    """A half-open permit held by one request, from `admit` to its first reported outcome.

    Any other way out (a cancelled turn, a client that disconnected, an error of ours)
    returns the permit on exit, so the route is free for the next trial at once instead
    of refusing everyone until `half_open_max_wait_s` and reopening with a longer lockout.
    """

    __slots__ = ("_board", "route", "trial")

    def __init__(self, board: BreakerBoard, route: str, admission: Admission) -> None:
        self._board = board
        self.route = route
        self.trial = admission.trial

    def spend(self) -> bool:
        """Whether the outcome being reported is the trial's (only the first one is)."""
        trial, self.trial = self.trial, False
        return trial

    def renew(self, admission: Admission) -> None:
        """A later admission on the same route (after a retry wait) holds its own permit."""
        self.release()
        self.trial = admission.trial

    def release(self) -> None:
        if self.trial:
            self.trial = False
            self._board.record_ignored(self.route, trial=True)

    def __enter__(self) -> TrialLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Transition(msgspec.Struct, frozen=True):
    """One state change (or operator action), for telemetry, metrics and the audit log."""

    route: str
    from_state: str
    to_state: str
    reason: str
    at: float  # wall clock
    k: int
    reopens_at: float | None = None  # wall clock
    last_error: str | None = None
    trigger: dict[str, Any] | None = None


class BreakerStore(Protocol):
    def save_breaker(self, route: str, data: bytes) -> None: ...
    def load_breakers(self) -> dict[str, bytes]: ...


class _Saved(msgspec.Struct, kw_only=True):
    """Persisted form of one route: every instant as wall clock."""

    state: str
    reason: str | None = None
    k: int = 0
    deadline: float | None = None
    closed_since: float | None = None
    last_error: str | None = None
    last_failure_ts: float | None = None
    window: list[tuple[float, str]] = []  # counted failures: (ts, turn_key); saves before `calls`
    calls: list[tuple[float, str, bool]] = []  # logical requests in the window: (ts, key, failed)
    failures: list[float] = []
    successes: list[float] = []
    flags: dict[str, str] = {}
    counts: dict[str, int] = {}


class _Route:
    """Mutable state of one route's breaker; instants are monotonic unless named *_wall."""

    __slots__ = ("config", "state", "reason", "k", "deadline", "closed_since", "calls",
                 "trials", "trial_successes", "failures", "successes", "last_error",
                 "last_failure_ts", "flags", "counts")

    def __init__(self, config: BreakerConfig, now: float) -> None:
        self.config = config
        self.state: str = CLOSED if config.enabled else DISABLED
        self.reason: str | None = None
        self.k = 0
        self.deadline: float | None = None  # OPEN only
        self.closed_since = now  # for k decay
        # Logical requests in the window, oldest first: key -> (t, failed). A key seen again
        # (a retry of the same turn or request) updates its outcome; it is never a second call.
        self.calls: dict[str, tuple[float, bool]] = {}
        self.trials: deque[float] = deque()  # half-open permits in flight: start times
        self.trial_successes = 0
        self.failures: deque[float] = deque(maxlen=_HISTORY)  # wall
        self.successes: deque[float] = deque(maxlen=_HISTORY)  # wall
        self.last_error: str | None = None
        self.last_failure_ts: float | None = None  # wall
        self.flags: dict[str, str] = {}
        self.counts = {"opened": 0, "closed": 0, "rejected": 0}


class BreakerBoard:
    """The daemon's per-route circuit breakers (see the module docstring)."""

    def __init__(
        self,
        config: BreakerConfig = BreakerConfig(),
        *,
        overrides: Mapping[str, BreakerConfig] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        on_transition: Callable[[Transition], None] | None = None,
        store: BreakerStore | None = None,
    ) -> None:
        self._config = config
        self._overrides = dict(overrides or {})
        self._clock = clock
        self._wall = wall
        self._rng = rng
        self._on_transition = on_transition
        self._store = store
        self._routes: dict[str, _Route] = {}
        self._dirty: set[str] = set()

    def config_for(self, route: str) -> BreakerConfig:
        """The settings `route`'s breaker uses: its override, else the board's."""
        return self._overrides.get(route, self._config)

    # ---------------------------------------------------------------- requests

    def admit(self, route: str) -> Admission:
        """May a request go to `route` now? Takes a half-open permit when it says trial."""
        r, now = self._touch(route)
        if r.state in (CLOSED, DISABLED):
            return Admission(True, state=r.state)
        if r.state == FORCED_OPEN:
            return self._reject(r, reason="forced")
        if r.state == OPEN:
            assert r.deadline is not None
            if now < r.deadline:
                return self._reject(r, reopens_in_s=r.deadline - now)
            self._transition(route, r, HALF_OPEN, "cooldown_elapsed", now)
        if len(r.trials) < r.config.half_open_permits:
            r.trials.append(now)
            return Admission(True, trial=True, state=HALF_OPEN, reason="trial")
        return self._reject(r, reason="half_open_busy")

    def lease(self, route: str, admission: Admission) -> TrialLease:
        """Hold `admission`'s permit (if any) for a `with` block: returned on any unreported exit."""
        return TrialLease(self, route, admission)

    def record_success(self, route: str, *, trial: bool, slow: bool = False,
                       turn_key: str | None = None) -> None:
        r, now = self._touch(route)
        r.successes.append(self._wall())
        if r.state == CLOSED:
            _note_call(r, now, turn_key or f"anonymous-{now!r}", failed=False)
        if r.flags:  # outages have surfaced as 401s: a success clears the operator flags
            r.flags.clear()
            self._persist(route, r)
        if not (trial and r.state == HALF_OPEN and r.trials):
            return
        r.trials.popleft()
        if slow:  # a slow success is a failed trial: the route has not really recovered
            self._trip(route, r, now, "trial_slow", trigger={"slow": True})
            return
        r.trial_successes += 1
        if r.trial_successes >= r.config.half_open_permits:
            self._transition(route, r, CLOSED, "trial_succeeded", now)

    def record_failure(self, route: str, *, turn_key: str, error: str, counted: bool = True,
                       retry_after_s: float | None = None, trial: bool = False) -> None:
        r, now = self._touch(route)
        wall = self._wall()
        r.failures.append(wall)
        r.last_error, r.last_failure_ts = error, wall
        self._dirty.add(route)
        trigger: dict[str, Any] = {"turn_key": turn_key, "error": error, "counted": counted}
        ra = None
        if retry_after_s is not None:
            ra = min(max(0.0, retry_after_s), r.config.retry_after_clamp_s)
            trigger["retry_after_s"] = retry_after_s  # raw (unclamped) value, for the log
        if r.state in (DISABLED, FORCED_OPEN):
            return  # metrics only
        if r.state == OPEN:
            if ra is not None and now + ra > (r.deadline or 0.0):
                r.deadline = now + ra  # extend, never shorten
                self._persist(route, r)
            return
        if r.state == HALF_OPEN:
            if trial and r.trials and counted:
                r.trials.popleft()
                self._trip(route, r, now, "trial_failed", ra=ra, trigger=trigger)
            elif ra is not None:
                if trial and r.trials:
                    r.trials.popleft()
                self._open_retry_after(route, r, now, ra, trigger)
            elif trial and r.trials:
                r.trials.popleft()  # not counted: the permit goes back (module docstring)
            return
        # CLOSED
        if counted:
            _note_call(r, now, turn_key, failed=True)  # at most one per (route, logical request)
            failed, calls = _window_counts(r)
            cfg = r.config
            min_calls = cfg.threshold if cfg.min_calls is None else cfg.min_calls
            if failed >= cfg.threshold and calls >= min_calls and failed >= cfg.failure_rate * calls:
                trigger.update(window_failures=failed, window_calls=calls)
                self._trip(route, r, now, "failure_rate", ra=ra, trigger=trigger)
                return
        if ra is not None:
            self._open_retry_after(route, r, now, ra, trigger)

    def record_ignored(self, route: str, *, trial: bool) -> None:
        """Neither success nor failure (context length, content policy, client cancel)."""
        r, _ = self._touch(route)
        if trial and r.state == HALF_OPEN and r.trials:
            r.trials.popleft()

    def flag(self, route: str, flag: str, detail: str) -> None:
        """Operator flag (``auth_error``, ``billing_error``); never counted; cleared by a success."""
        r, _ = self._touch(route)
        if r.flags.get(flag) != detail:
            r.flags[flag] = detail
            self._persist(route, r)

    # ------------------------------------------------------------------ reads

    def earliest_reopen(self, routes: Iterable[str]) -> tuple[str, float] | None:
        """Among the OPEN routes given, the one whose deadline comes first, and seconds until it."""
        best: tuple[str, float] | None = None
        for route in routes:
            r, now = self._touch(route)
            if r.state == OPEN and r.deadline is not None:
                left = max(0.0, r.deadline - now)
                if best is None or left < best[1]:
                    best = (route, left)
        return best

    def snapshot(self, route: str | None = None) -> dict[str, dict[str, Any]]:
        """Per route: the original KyleCode's health fields (`failures`, `successes`,
        `circuit_open_until`, `last_error`, `last_failure_ts`) plus kcd's state, reason, k and trials."""
        names = [route] if route is not None else sorted(self._routes)
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            r, now = self._touch(name)
            wall = self._wall()
            since = wall - r.config.window_s
            deadline_wall = self._to_wall(r.deadline, now, wall) if r.state == OPEN else None
            out[name] = {
                "state": r.state,
                "failures": [t for t in r.failures if t >= since],
                "successes": [t for t in r.successes if t >= since],
                "circuit_open_until": deadline_wall,
                "last_error": r.last_error,
                "last_failure_ts": r.last_failure_ts,
                "reason": r.reason,
                "k": r.k,
                "reopens_in_s": max(0.0, r.deadline - now) if deadline_wall is not None else None,
                "window_failures": _window_counts(r)[0],
                "window_calls": len(r.calls),
                "failure_rate": round(_window_counts(r)[0] / len(r.calls), 3) if r.calls else 0.0,
                "trials_in_flight": len(r.trials),
                "flags": dict(r.flags),
                "counts": dict(r.counts),
            }
        return out

    def state(self, route: str) -> str:
        """The route's state name alone: cheaper than `snapshot` on the request path."""
        return self._touch(route)[0].state

    def routes(self) -> list[str]:
        return sorted(self._routes)

    # --------------------------------------------------------------- operator

    def reset(self, route: str, *, by_uid: int | None = None) -> None:
        """→ CLOSED with k = 0 and an empty window (DISABLED if the route's config disables it).

        Operator actions always emit a Transition, even when the state does not
        change (closed → closed): it is the audit record, with the uid in `trigger`.
        """
        r, now = self._touch(route)
        r.k = 0
        to = CLOSED if r.config.enabled else DISABLED
        self._transition(route, r, to, "operator_reset", now, trigger={"by_uid": by_uid})

    def force_open(self, route: str, *, by_uid: int | None = None) -> None:
        r, now = self._touch(route)
        self._transition(route, r, FORCED_OPEN, "operator_open", now, trigger={"by_uid": by_uid})

    def disable(self, route: str, *, by_uid: int | None = None) -> None:
        r, now = self._touch(route)
        self._transition(route, r, DISABLED, "operator_disable", now, trigger={"by_uid": by_uid})

    # ------------------------------------------------------------ persistence

    def flush(self) -> None:
        """Write every route changed since its last save (call at shutdown, or periodically)."""
        for route in sorted(self._dirty):
            self._persist(route, self._routes[route])

    def restore(self) -> int:
        """Load persisted routes (once, at start); returns how many were restored.

        Wall deadlines become monotonic ones, so a restart inside a lockout keeps
        the route OPEN; a HALF_OPEN route comes back OPEN with its deadline
        passed (its trial died with the old process), so it half-opens on the
        next admit. Unreadable rows are skipped: a breaker is never worth a
        failed start.
        """
        if self._store is None:
            return 0
        now, wall = self._clock(), self._wall()
        restored = 0
        for route, data in self._store.load_breakers().items():
            try:
                saved = msgspec.json.decode(data, type=_Saved)
                if saved.state not in _STATES:
                    raise ValueError(f"unknown state {saved.state!r}")
            except (msgspec.DecodeError, ValueError) as exc:
                log.warning("breaker state for %s is unreadable, starting closed: %s", route, exc)
                continue
            self._routes[route] = self._from_saved(route, saved, now, wall)
            restored += 1
        return restored

    # ---------------------------------------------------------------- internals

    def _touch(self, route: str) -> tuple[_Route, float]:
        """The route's state, created on first use, with lazy time-driven changes applied."""
        now = self._clock()
        r = self._routes.get(route)
        if r is None:
            r = self._routes[route] = _Route(self._overrides.get(route, self._config), now)
        cfg = r.config
        while r.calls:
            oldest = next(iter(r.calls))
            if now - r.calls[oldest][0] <= cfg.window_s:
                break
            del r.calls[oldest]
        if r.state == CLOSED and r.k and now - r.closed_since >= cfg.cap_s:
            r.k = 0  # decay after `cap` spent CLOSED: old trouble stops growing lockouts
            self._dirty.add(route)
        if r.state == HALF_OPEN and r.trials and now - r.trials[0] >= cfg.half_open_max_wait_s:
            r.trials.popleft()  # never reported: must not wedge the route half-open
            self._trip(route, r, now, "trial_timeout")
        return r, now

    def _reject(self, r: _Route, *, reason: str | None = None,
                reopens_in_s: float | None = None) -> Admission:
        r.counts["rejected"] += 1
        return Admission(False, state=r.state, reason=reason or r.reason, reopens_in_s=reopens_in_s)

    def _lockout(self, cfg: BreakerConfig, k: int) -> float:
        base = min(cfg.cap_s, cfg.cooldown_s * 2.0 ** min(max(k - 1, 0), 62))
        return base * (1.0 + self._rng() * cfg.jitter)

    def _trip(self, route: str, r: _Route, now: float, reason: str, *, ra: float | None = None,
              trigger: dict[str, Any] | None = None) -> None:
        """CLOSED or HALF_OPEN → OPEN with k + 1; the lockout is raised to the Retry-After
        deadline if that is later (jitter only adds, so it never cuts into a Retry-After)."""
        r.k += 1
        deadline = now + self._lockout(r.config, r.k)
        if ra is not None:
            deadline = max(deadline, now + ra)
        r.deadline = deadline
        self._transition(route, r, OPEN, reason, now, trigger=trigger)

    def _open_retry_after(self, route: str, r: _Route, now: float, ra: float,
                          trigger: dict[str, Any]) -> None:
        """CLOSED or HALF_OPEN → OPEN until the Retry-After deadline; k unchanged."""
        r.deadline = now + ra
        self._transition(route, r, OPEN, "retry_after", now, trigger=trigger)

    def _transition(self, route: str, r: _Route, to: str, reason: str, now: float, *,
                    trigger: dict[str, Any] | None = None) -> None:
        frm = r.state
        r.state, r.reason = to, reason
        r.trials.clear()
        r.trial_successes = 0
        if to == OPEN:
            r.counts["opened"] += 1
        else:
            r.deadline = None
        if to == CLOSED:
            r.counts["closed"] += 1
            r.closed_since = now
            r.calls.clear()
            r.reason = None
        wall = self._wall()
        event = Transition(route, frm, to, reason, wall, r.k,
                           reopens_at=self._to_wall(r.deadline, now, wall),
                           last_error=r.last_error, trigger=trigger)
        self._persist(route, r)
        if self._on_transition is not None:
            try:
                self._on_transition(event)
            except Exception:  # a telemetry fault must not break the request path
                log.exception("breaker transition listener failed for %s", route)

    @staticmethod
    def _to_wall(deadline: float | None, now: float, wall: float) -> float | None:
        return None if deadline is None else wall + (deadline - now)

    def _persist(self, route: str, r: _Route) -> None:
        self._dirty.add(route)
        if self._store is None:
            return
        now, wall = self._clock(), self._wall()
        saved = _Saved(
            state=r.state,
            reason=r.reason,
            k=r.k,
            deadline=self._to_wall(r.deadline, now, wall),
            closed_since=self._to_wall(r.closed_since, now, wall),
            last_error=r.last_error,
            last_failure_ts=r.last_failure_ts,
            calls=[(wall + (t - now), key, failed) for key, (t, failed) in r.calls.items()],
            failures=list(r.failures),
            successes=list(r.successes),
            flags=dict(r.flags),
            counts=dict(r.counts),
        )
        try:
            self._store.save_breaker(route, msgspec.json.encode(saved))
        except Exception:  # disk trouble must not fail requests; retried on the next flush
            log.exception("cannot persist breaker state for %s", route)
            return
        self._dirty.discard(route)

    def _from_saved(self, route: str, s: _Saved, now: float, wall: float) -> _Route:
        r = _Route(self._overrides.get(route, self._config), now)
        r.state, r.reason, r.k = s.state, s.reason, s.k
        if s.state == HALF_OPEN:
            r.state, r.deadline = OPEN, now  # its trial died with the old process
        elif s.state == OPEN:
            r.deadline = now + ((s.deadline if s.deadline is not None else wall) - wall)
        # The config may have changed since: it decides DISABLED unless an operator did.
        if not r.config.enabled and r.state != FORCED_OPEN:
            r.state, r.deadline = DISABLED, None
        elif r.state == DISABLED and r.config.enabled and s.reason != "operator_disable":
            r.state, r.reason = CLOSED, None
        if s.closed_since is not None:
            r.closed_since = now - max(0.0, wall - s.closed_since)
        for t, key, failed in s.calls or [(t, key, True) for t, key in s.window]:
            r.calls[key] = (now - max(0.0, wall - t), failed)
        r.failures.extend(s.failures)
        r.successes.extend(s.successes)
        r.last_error, r.last_failure_ts = s.last_error, s.last_failure_ts
        r.flags = dict(s.flags)
        r.counts.update(s.counts)
        return r


def _note_call(r: _Route, now: float, key: str, *, failed: bool) -> None:
    r.calls.pop(key, None)  # re-inserted last: the dict stays in time order
    r.calls[key] = (now, failed)
    while len(r.calls) > r.config.window_size:
        del r.calls[next(iter(r.calls))]


def _window_counts(r: _Route) -> tuple[int, int]:
    """(failed logical requests, logical requests) in the route's window."""
    return sum(1 for _, failed in r.calls.values() if failed), len(r.calls)
