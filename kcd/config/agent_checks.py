"""Checks on a converted agent config that types alone cannot express.

Errors (raised as ConfigError with the key path): route ids that do not parse,
two models[] entries for one route, a retry backoff base above its cap (after
layering), duplicate mode names, loop.sequence steps that are malformed or
name undefined modes. Warnings (returned): adapters that
contradict the route prefix, tool alias cycles, missing tool directories.
"""

from __future__ import annotations

from pathlib import Path

from kcd.config.agent_resilience import RouteRetry
from kcd.config.agent_schema import AgentConfig, RoutingPrefs
from kcd.config.keypath import Path_
from kcd.config.merge import Provenance
from kcd.providers.routes import RouteError, is_openai_reasoning, parse_route

KNOWN_ADAPTERS = frozenset({"openai", "openrouter", "anthropic", "mock"})
# Every kcd provider speaks the OpenAI wire format, so `openai` fits any route.
_UNIVERSAL_ADAPTER = "openai"


def check_config(cfg: AgentConfig, prov: Provenance) -> list[str]:
    """Raise ConfigError on the first semantic error; return warnings."""
    warnings: list[str] = []
    _check_routes(cfg, prov, warnings)
    _check_modes(cfg, prov)
    _check_aliases(cfg, prov, warnings)
    return warnings


def tool_dirs(cfg: AgentConfig, prov: Provenance, explicit_defs_dir: bool, warnings: list[str]) -> list[str]:
    """Tool definition directories, resolved against their declaring files.

    `tools.defs_dir`, when written, replaces registry.paths[0] (the original's meaning).
    Missing directories only warn: the registry skips them (their tools are not offered).
    """
    entries: list[tuple[Path_, str]] = [
        (("tools", "registry", "paths", i), p) for i, p in enumerate(cfg.tools.registry.paths)
    ]
    if explicit_defs_dir and cfg.tools.defs_dir is not None:
        entries[:1] = [(("tools", "defs_dir"), cfg.tools.defs_dir)]
    out: list[str] = []
    for key_path, raw in entries:
        path = Path(raw).expanduser()
        directory = prov.source_of(key_path).directory
        if not path.is_absolute() and directory is not None:
            path = (directory / path).resolve()
        if not path.is_dir():
            warnings.append(prov.warning(key_path, f"tool directory {path} does not exist"))
        out.append(str(path))
    return out


def _route(prov: Provenance, path: Path_, raw: str) -> str:
    try:
        return parse_route(raw).id
    except RouteError as exc:
        raise prov.error(path, str(exc)) from None


def _check_routes(cfg: AgentConfig, prov: Provenance, warnings: list[str]) -> None:
    providers = cfg.providers
    _route(prov, ("providers", "default_model"), providers.default_model)
    if providers.retry is not None:
        _check_backoff(prov, ("providers",), providers.retry, None)
    seen: dict[str, int] = {}
    for i, entry in enumerate(providers.models):
        here: Path_ = ("providers", "models", i)
        route_id = _route(prov, (*here, "id"), entry.id)
        if route_id in seen:
            raise prov.error((*here, "id"), f"route {route_id} already has an entry at models[{seen[route_id]}]")
        seen[route_id] = i
        key = "routing_preferences" if entry.routing_preferences is not None else "routing"
        _check_fallbacks(prov, (*here, key), entry.routing, route_id, warnings)
        _check_adapter(prov, (*here, "adapter"), entry.adapter, route_id, warnings)
        temperature = entry.params.temperature
        if temperature is not None and temperature != 1 and is_openai_reasoning(parse_route(route_id)):
            warnings.append(prov.warning((*here, "params", "temperature"),
                                         f"{route_id} accepts only temperature 1; OpenAI refuses "
                                         f"{temperature:g} with a 400, so every call on this route would fail"))
        if entry.retry is not None:
            _check_backoff(prov, here, entry.retry, providers.retry)
    key = "routing_preferences" if providers.routing_preferences is not None else "routing"
    _check_fallbacks(prov, ("providers", key), providers.routing, None, warnings)


def _check_backoff(prov: Provenance, owner: Path_, retry: RouteRetry, base: RouteRetry | None) -> None:
    """backoff_base_s <= backoff_cap_s once `retry` is layered over `base` (reported
    where `retry` sets one of them; `base` is checked on its own first)."""
    if retry.backoff_base_s is None and retry.backoff_cap_s is None:
        return
    below = base or RouteRetry()
    lo = retry.backoff_base_s if retry.backoff_base_s is not None else below.backoff_base_s
    hi = retry.backoff_cap_s if retry.backoff_cap_s is not None else below.backoff_cap_s
    if lo is not None and hi is not None and lo > hi:
        key = "backoff_base_s" if retry.backoff_base_s is not None else "backoff_cap_s"
        raise prov.error((*owner, "retry", key),
                         f"backoff_base_s ({lo:g}) is larger than backoff_cap_s ({hi:g})")


def _check_fallbacks(
    prov: Provenance, path: Path_, prefs: RoutingPrefs | None, own: str | None, warnings: list[str]
) -> None:
    if prefs is None:
        return
    for j, raw in enumerate(prefs.fallback_models):
        here = (*path, "fallback_models", j)
        if _route(prov, here, raw) == own:
            warnings.append(prov.warning(here, f"{raw} is the route itself; it is never its own fallback"))


def _check_adapter(prov: Provenance, path: Path_, adapter: str, route_id: str, warnings: list[str]) -> None:
    provider = route_id.split("/", 1)[0]
    if adapter not in KNOWN_ADAPTERS:
        warnings.append(prov.warning(path, f"unknown adapter {adapter!r}; the provider comes from the route id"))
    elif adapter not in (provider, _UNIVERSAL_ADAPTER):
        warnings.append(
            prov.warning(path, f"adapter {adapter!r} contradicts route {route_id}; using provider {provider!r}")
        )


def _check_modes(cfg: AgentConfig, prov: Provenance) -> None:
    names: dict[str, int] = {}
    for i, mode in enumerate(cfg.modes):
        if mode.name in names:
            raise prov.error(
                ("modes", i, "name"), f"mode {mode.name!r} is already defined at modes[{names[mode.name]}]"
            )
        names[mode.name] = i
    for i, step in enumerate(cfg.loop.sequence):
        here: Path_ = ("loop", "sequence", i)
        if step.if_ is not None and step.then is None:
            raise prov.error((*here, "then"), "a step with `if` needs `then: {mode: <name>}`")
        if step.then is not None and step.if_ is None:
            raise prov.error((*here, "if"), "a step with `then` needs `if: features.<flag>`")
        if step.if_ is not None and step.mode is not None:
            raise prov.error((*here, "mode"), "write `then: {mode: ...}` in a step with `if`")
        target, target_path = (step.then.mode, (*here, "then", "mode")) if step.then else (step.mode, (*here, "mode"))
        if target is not None and target not in names:
            raise prov.error(target_path, f"mode {target!r} is not defined in modes (defined: {', '.join(names)})")


def _check_aliases(cfg: AgentConfig, prov: Provenance, warnings: list[str]) -> None:
    aliases = cfg.tools.aliases
    reported: set[str] = set()
    for start in aliases:
        chain = [start]
        while chain[-1] in aliases and aliases[chain[-1]] not in chain:
            chain.append(aliases[chain[-1]])
        if chain[-1] in aliases and not reported.intersection(chain):
            reported.update(chain)
            cycle = " -> ".join([*chain, aliases[chain[-1]]])
            warnings.append(
                prov.warning(("tools", "aliases", start), f"alias cycle {cycle}; resolution stops at the cycle")
            )
