"""Model names → route chains, built once from the daemon config.

A configured name maps to its route, then its fallbacks in order, each a
`ChainEntry` with the model's timeouts and retries. Two chains are kept per
name (upstream streamed or not) so a request only picks one; it copies entries
only when it carries its own parameters. A full route id works as a name too
(`openrouter/z-ai/glm-4.6`: that route alone, default settings); those plans
are built on first use and kept in a small bounded cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from kcd.config.daemon import GatewayModel, GatewaySettings, GatewayTimeouts
from kcd.providers.attempt import Timeouts
from kcd.providers.dispatcher import ChainEntry
from kcd.providers.retry import RetryPolicy
from kcd.providers.routes import RouteError, parse_route

__all__ = ["ModelMap", "ModelPlan"]

ROUTE_ID_CACHE = 256  # route ids used as model names, kept at once


def _timeouts(t: GatewayTimeouts | None, base: Timeouts = Timeouts()) -> Timeouts:
    if t is None:
        return base
    given = {k: v for k, v in msgspec.structs.asdict(t).items() if v is not None}
    return msgspec.structs.replace(base, **given) if given else base


def _policy(model: GatewayModel) -> RetryPolicy:
    given = {k: v for k, v in msgspec.structs.asdict(model.retry).items() if v is not None}
    return RetryPolicy(**given)


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """Everything a request for one model name needs, precomputed."""

    name: str
    plain: tuple[ChainEntry, ...]  # upstream not streamed
    streamed: tuple[ChainEntry, ...]  # upstream streamed
    policy: RetryPolicy
    stream_mode: str  # "buffer" | "passthrough"
    stream_upstream: bool | None
    params: Mapping[str, Any]
    probes: bool
    configured: bool  # a name from the config (False: a route id used as a name)

    @property
    def route_ids(self) -> list[str]:
        return [e.route.id for e in self.plain]

    def upstream_streams(self, client_stream: bool) -> bool:
        if client_stream and self.stream_mode == "passthrough":
            return True  # nothing to pass through otherwise
        return client_stream if self.stream_upstream is None else self.stream_upstream

    def chain(self, client_stream: bool, params: Mapping[str, Any]) -> list[ChainEntry]:
        """The request's chain; the model's params are defaults the client's override."""
        base = self.streamed if self.upstream_streams(client_stream) else self.plain
        if not params:
            return list(base)
        return [dataclasses.replace(e, params={**e.params, **params}) for e in base]


def _plan(name: str, model: GatewayModel, configured: bool = True) -> ModelPlan:
    policy = _policy(model)
    timeouts = _timeouts(model.timeouts)
    specs: list[tuple[str, str | None, Timeouts, bool | None, int | None]] = [
        (model.route, model.base_url, timeouts, model.native_tools, model.context_window)]
    for fb in model.fallbacks:
        if isinstance(fb, str):
            specs.append((fb, None, timeouts, None, None))
        else:
            specs.append((fb.route, fb.base_url, _timeouts(fb.timeouts, timeouts), fb.native_tools,
                          fb.context_window))
    entries: list[ChainEntry] = []
    seen: set[str] = set()
    for raw, base_url, t, native, window in specs:
        route = parse_route(raw)
        if route.id in seen:
            continue  # the dispatcher would skip it anyway
        seen.add(route.id)
        # Tools are the client's choice here (there is no text mode to fall back to):
        # every route takes native tools unless the config says otherwise.
        entries.append(ChainEntry(route=route, base_url=base_url, timeouts=t, params=dict(model.params),
                                  native_tools=True if native is None else native,
                                  retries_per_route=policy.retries_per_route, context_window=window))
    return ModelPlan(
        name=name, plain=tuple(entries), streamed=tuple(dataclasses.replace(e, stream=True) for e in entries),
        policy=policy, stream_mode=model.stream_mode, stream_upstream=model.stream_upstream,
        params=dict(model.params), probes=model.probes, configured=configured)


class ModelMap:
    """Model names clients may ask for -> the route chain and parameters that serve them."""

    def __init__(self, settings: GatewaySettings):
        self._plans = {name: _plan(name, model) for name, model in settings.models.items()}
        self._allow_route_ids = settings.allow_route_ids
        self._by_route: dict[str, ModelPlan] = {}

    def get(self, name: str) -> ModelPlan | None:
        plan = self._plans.get(name)
        if plan is not None:
            return plan
        plan = self._by_route.get(name)
        if plan is not None or not self._allow_route_ids or "/" not in name:
            return plan
        try:
            parse_route(name)
        except RouteError:
            return None
        if len(self._by_route) >= ROUTE_ID_CACHE:
            self._by_route.clear()  # bounded: clients choose these names
        plan = self._by_route[name] = _plan(name, GatewayModel(route=name), configured=False)
        return plan

    def configured(self) -> list[ModelPlan]:
        return list(self._plans.values())
