"""From an agent config to a turn's route chain: the primary, then its fallbacks,
each with its own timeouts, params, streaming and tool capability."""

from __future__ import annotations

import msgspec

from kcd.config.agent_schema import AgentConfig
from kcd.providers.dispatcher import ChainEntry
from kcd.providers.openai_compat import Timeouts
from kcd.providers.retry import RetryPolicy
from kcd.providers.routes import Route, parse_route


def provider_native_default(route: Route) -> bool:
    """Native tool calls by default, except OpenRouter models outside `openai/`
    (as the original: many OpenRouter upstreams drop `tools` silently)."""
    if route.provider == "openrouter":
        return route.model.startswith("openai/")
    return True


def route_supports_native(cfg: AgentConfig, route: Route) -> bool:
    """Whether the dispatcher may send this route a native-tool turn.

    A route's own `native_tools` decides; without one, an explicit
    `provider_tools.use_native: true` is the user's word for every route (the
    same rule `tool_mode` applies to the primary, so a run in native mode never
    skips its own primary as `no_native_tools`); else the provider default."""
    configured = cfg.native_tools_for(route.id)
    if configured is not None:
        return configured
    if cfg.provider_tools.use_native is True:
        return True
    return provider_native_default(route)


def tool_mode(cfg: AgentConfig, route: Route) -> tuple[bool, str | None]:
    """(native, override_reason) for the run's primary route.

    `provider_tools.use_native: false` is the user's choice (text mode, no
    override). A route that is configured (or, by provider default, known) to
    lack native tools runs in text mode, and that is a tool override.
    """
    use_native = cfg.provider_tools.use_native
    if use_native is False:
        return False, None
    configured = cfg.native_tools_for(route.id)
    if configured is False:
        return False, "route_config_no_native_tools"
    if use_native is None and not provider_native_default(route):
        return False, "provider_default_no_native_tools"
    return True, None


def timeouts_for(cfg: AgentConfig, route: Route) -> Timeouts:
    overrides = cfg.timeouts_for(route.id)
    return msgspec.structs.replace(Timeouts(), **overrides) if overrides else Timeouts()


def retry_policy(cfg: AgentConfig, route: Route) -> RetryPolicy:
    overrides = cfg.retry_for(route.id)
    return msgspec.structs.replace(RetryPolicy(), **overrides) if overrides else RetryPolicy()


def chain_entry(cfg: AgentConfig, route: Route, stream: bool) -> ChainEntry:
    entry = cfg.model_entry(route.id)
    return ChainEntry(
        route=route,
        base_url=getattr(entry, "base_url", None),
        timeouts=timeouts_for(cfg, route),
        params=cfg.request_params(route.id),
        stream=stream,
        native_tools=route_supports_native(cfg, route),
        retries_per_route=retry_policy(cfg, route).retries_per_route,
        context_window=getattr(entry, "context_window", None),
    )


def build_chain(cfg: AgentConfig, primary: Route, *, primary_stream: bool) -> list[ChainEntry]:
    """The primary with the run's stream setting, then `routing.fallback_models`
    in order (each with its own `stream:` setting), duplicates and the primary removed."""
    chain = [chain_entry(cfg, primary, primary_stream)]
    seen = {primary.id}
    for raw in cfg.routing_for(primary.id).fallback_models:
        route = parse_route(raw)
        if route.id in seen:
            continue
        seen.add(route.id)
        entry = cfg.model_entry(route.id)
        chain.append(chain_entry(cfg, route, bool(getattr(entry, "stream", False))))
    return chain
