"""What a simulator app has seen and been told: its state and the ``/_sim`` control API.

Everything lives in one `SimulatorState` per app (no module-level state). The
app runs on one event loop and every mutation below is synchronous (no await
between reading and writing), so concurrent requests cannot interleave inside
one: a plan with ``count: 1`` is taken by exactly one request.

Control endpoints (also under ``/v1/_sim/...``, for clients whose base URL ends in /v1,
and under ``/ns/<name>/...`` for one namespace's own state, see `namespaces`):

``GET /_sim/faults``
    ``{"faults": [catalogue rows], "plans": {model: [{"fault", "params", "remaining"}]}}``
``POST /_sim/faults``
    ``{"model": "<model as sent, without +suffix>" | "*", "fault": "<name>",
    "count": <int >= 1> | null, "params": {...}}`` (or a list of such objects).
    The next `count` requests for that model get the fault, then it is healthy
    again; null (or absent) = until reset. Entries queue per model, in order; a
    model's own queue is used before the ``"*"`` queue. Answers
    ``{"queued": [...], "plans": {...}}``; 400 for an unknown fault or bad field.
``DELETE /_sim/faults``
    clears plans, fault counters (``server_error_once``, ``flapping_primary``),
    the request log and the stats. Request ids keep counting (they stay unique).
    Under ``/ns/<name>/`` it also drops the namespace.
``GET /_sim/requests``
    ``{"requests": [...]}``, oldest first, the last `max_log` chat requests.
``GET /_sim/stats``
    ``{"total": N, "by_model": {model: N}, "by_fault": {fault: N}}``.
``POST /_sim/script``, ``GET /_sim/script``
    load a recorded script (`recorded.ScriptLoad`) for the model ``replay``; its cursor
    (``{"script": {"turns", "served", "over_asked", "exhausted", "source"} | null}``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from kcd.simulator import wire
from kcd.simulator.faults import FaultError, FaultSpec, catalogue, resolve
from kcd.simulator.recorded import RecordedScript, ScriptLoad

__all__ = ["CONTROL_PREFIXES", "FaultPlans", "SimulatorState", "control"]

CONTROL_PREFIXES = ("/_sim/", "/v1/_sim/")
ANY_MODEL = "*"
_HIDDEN_IN_LOG = ("body",)  # the full request stays in-process (state.requests), not on the wire

_DECODER = msgspec.json.Decoder()


class _Plan:
    __slots__ = ("remaining", "spec")

    def __init__(self, spec: FaultSpec, remaining: int | None) -> None:
        self.spec = spec
        self.remaining = remaining  # None: until reset


class FaultPlans:
    """Programmed faults, one FIFO queue per model (``"*"``: any model)."""

    def __init__(self) -> None:
        self._queues: dict[str, list[_Plan]] = {}

    def add(self, model: str, spec: FaultSpec, count: int | None) -> None:
        self._queues.setdefault(model, []).append(_Plan(spec, count))

    def take(self, model: str) -> FaultSpec | None:
        """The fault for the next request to `model`, consuming one use of it."""
        for key in (model, ANY_MODEL):
            queue = self._queues.get(key)
            if not queue:
                continue
            plan = queue[0]
            if plan.remaining is not None:
                plan.remaining -= 1
                if plan.remaining <= 0:
                    queue.pop(0)
                    if not queue:
                        del self._queues[key]
            return plan.spec
        return None

    def clear(self) -> None:
        self._queues.clear()

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return {model: [{"fault": p.spec.name, "params": p.spec.params, "remaining": p.remaining}
                        for p in queue] for model, queue in self._queues.items()}


class SimulatorState:
    """What this app has seen: a bounded request log, counts, plans and fault counters."""

    def __init__(self, max_log: int = 256) -> None:
        self.max_log = max_log
        self.requests: list[dict[str, Any]] = []  # newest last; oldest dropped past max_log
        self.counts: dict[str, int] = {}  # chat requests per model (suffix stripped)
        self.by_fault: dict[str, int] = {}  # chat requests a fault was applied to
        self.chat_total = 0  # chat requests since the last reset; the log's `seq`
        self.total = 0  # every HTTP request, any route; never reset (request ids)
        self.plans = FaultPlans()
        self.script: RecordedScript | None = None  # a replayed run's responses (`recorded`)
        self._applied: dict[tuple[str, str], int] = {}  # (fault, model) -> applications

    def next_request_id(self) -> str:
        self.total += 1
        return f"simreq-{self.total:06d}"

    def record(self, entry: dict[str, Any]) -> int:
        """Log one chat request (sets its `seq`); returns its 1-based number for the model."""
        model = entry.get("model") or ""
        seq = self.counts[model] = self.counts.get(model, 0) + 1
        self.chat_total += 1
        entry["seq"] = self.chat_total
        self.requests.append(entry)
        if len(self.requests) > self.max_log:
            del self.requests[: len(self.requests) - self.max_log]
        return seq

    def applied(self, fault: str, model: str) -> int:
        """Count one application of `fault` to `model`; returns how many came before."""
        key = (fault, model)
        nth = self._applied.get(key, 0)
        self._applied[key] = nth + 1
        self.by_fault[fault] = self.by_fault.get(fault, 0) + 1
        return nth

    def reset(self) -> None:
        self.requests.clear()
        self.counts.clear()
        self.by_fault.clear()
        self.chat_total = 0
        self.plans.clear()
        self.script = None
        self._applied.clear()

    def stats(self) -> dict[str, Any]:
        return {"total": self.chat_total, "by_model": dict(self.counts), "by_fault": dict(self.by_fault)}

    def log(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k not in _HIDDEN_IN_LOG} for e in self.requests]


def _bad(message: str, code: str = "invalid_request") -> tuple[int, Any]:
    return 400, wire.error_body(message, "invalid_request_error", code)


def _plan_entry(obj: Any) -> tuple[str, FaultSpec, int | None]:
    if not isinstance(obj, dict):
        raise FaultError("each plan must be an object with `model` and `fault`")
    model, name, count, params = obj.get("model"), obj.get("fault"), obj.get("count"), obj.get("params")
    if not isinstance(model, str) or not model:
        raise FaultError("`model` must be a model name (as sent, without +suffix) or \"*\"")
    if not isinstance(name, str):
        raise FaultError("`fault` must be a fault name")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise FaultError("`count` must be a whole number >= 1, or null for until reset")
    if params is not None and not isinstance(params, dict):
        raise FaultError("`params` must be an object")
    return model, resolve(name, params), count


def _program(state: SimulatorState, body: bytes) -> tuple[int, Any]:
    try:
        request = _DECODER.decode(body)
    except msgspec.DecodeError as exc:
        return _bad(f"body is not valid JSON: {exc}", "invalid_json")
    try:
        entries = [_plan_entry(e) for e in (request if isinstance(request, list) else [request])]
    except FaultError as exc:
        return 400, exc.body()
    for model, spec, count in entries:  # all validated first: a bad list queues nothing
        state.plans.add(model, spec, count)
    queued = [{"model": m, "fault": s.name, "count": c, "params": s.params} for m, s, c in entries]
    return 200, {"queued": queued, "plans": state.plans.snapshot()}


def _load_script(state: SimulatorState, body: bytes) -> tuple[int, Any]:
    try:
        load = msgspec.json.decode(body, type=ScriptLoad)
    except msgspec.DecodeError as exc:  # ValidationError included
        return _bad(f"not a script: {exc}", "invalid_script")
    state.script = RecordedScript(load)
    return 200, {"script": state.script.status()}


def control(state: SimulatorState, method: str, path: str, body: bytes) -> tuple[int, Any]:
    """Answer one ``/_sim/...`` request: (status, JSON-ready body)."""
    route = path.split("/_sim/", 1)[1]
    allowed = {"faults": ("GET", "POST", "DELETE"), "requests": ("GET",), "stats": ("GET",),
               "script": ("GET", "POST")}.get(route)
    if allowed is None:
        return 404, wire.error_body(f"no control route {path}", "invalid_request_error", "not_found")
    if method not in allowed:
        return 405, wire.error_body(f"use {' or '.join(allowed)}", "invalid_request_error",
                                    "method_not_allowed")
    if route == "requests":
        return 200, {"requests": state.log()}
    if route == "stats":
        return 200, state.stats()
    if route == "script":
        if method == "POST":
            return _load_script(state, body)
        return 200, {"script": state.script.status() if state.script else None}
    if method == "GET":
        return 200, {"faults": catalogue(), "plans": state.plans.snapshot()}
    if method == "DELETE":
        state.reset()
        return 200, {"cleared": True}
    return _program(state, body)
