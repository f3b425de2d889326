"""From a scenario to the agent config its runs use.

`prepare` (at submit time, off the event loop) reads the base config, settles
the route chain and checks every alias the scenario uses against it;
`render` (per run) writes the config text. Offline, every route's `base_url`
points at the scenario's simulator namespace (or a closed port for
`unreachable` routes), with fast timeouts and backoff so that every fault
resolves in seconds. Live, routes keep their real endpoints and the
config's own timeouts.

A base config is extended, not copied: the generated text is
`extends: <base>` plus a `providers` block whose `models` list (lists replace
wholesale) carries the base's entries with their params, plus an entry for
every route of the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kcd.config.agent import ConfigError, load_agent_config
from kcd.config.keypath import Path_, render
from kcd.matrix.scenario import ANY_MODEL, Scenario, alias_index, is_alias, templates
from kcd.providers.routes import parse_route

__all__ = ["FAST_RETRY", "FAST_TIMEOUTS", "Prepared", "RunConfig", "prepare", "render_config"]

# Bounded settings so that every fault resolves in seconds (as the integration tests use).
FAST_TIMEOUTS = {"connect": 2, "ttft": 2, "idle": 2, "progress": 2, "total": 6}
FAST_RETRY = {"backoff_base_s": 0.05, "backoff_cap_s": 0.2, "turn_deadline_s": 30,
              "retry_after_inline_max_s": 3, "all_open_max_wait_s": 2}
INLINE_TOOLS = ("list_dir", "read_file", "mark_task_complete")
INLINE_MAX_STEPS = 6


@dataclass(frozen=True, slots=True)
class Prepared:
    scenario: Scenario
    primary: str  # canonical route id
    fallbacks: tuple[str, ...]  # canonical, as listed (the primary may appear: it is skipped at run time)
    base_models: tuple[dict[str, Any], ...]  # the base config's providers.models, as written

    @property
    def chain(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.primary, *self.fallbacks)))

    def aliases(self) -> dict[str, str]:
        out = {"primary": self.primary}
        for i, route in enumerate(self.fallbacks, 1):
            out["fallback" if i == 1 else f"fallback{i}"] = route
        return out

    def route(self, ref: str) -> str:
        """An alias or route id -> canonical route id (`*` stays `*`)."""
        if ref == ANY_MODEL:
            return ref
        if is_alias(ref):
            return self.aliases()[ref if ref != "fallback1" else "fallback"]
        return parse_route(ref).id

    def fill(self, text: str) -> str:
        """`{primary}`, `{fallback}`, ... replaced by route ids."""
        for name, route in self.aliases().items():
            text = text.replace("{" + name + "}", route)
        return text


@dataclass(frozen=True, slots=True)
class RunConfig:
    text: str  # agent config YAML
    path: str | None  # anchors `extends`; names the run directory
    stream: bool | None
    max_steps: int | None


def prepare(scenario: Scenario) -> Prepared:
    """Read the base config (if any), settle the chain, check the aliases. ConfigError."""
    routes = scenario.routes
    base_models: tuple[dict[str, Any], ...] = ()
    if scenario.base_config is not None:
        try:
            loaded = load_agent_config(scenario.base_config)
        except ConfigError as exc:
            raise ConfigError(scenario.source, render((*scenario.key_prefix, "config")),
                              f"the base config does not load: {exc}") from None
        cfg = loaded.config
        primary = parse_route(routes.primary).id if routes.primary else cfg.default_route().id
        written = routes.fallbacks if routes.fallbacks is not None else cfg.routing_for(primary).fallback_models
        base_models = tuple((loaded.merged.get("providers") or {}).get("models") or ())
    else:
        assert routes.primary is not None  # the loader insists
        primary = parse_route(routes.primary).id
        written = routes.fallbacks or []
    prepared = Prepared(scenario, primary, tuple(parse_route(r).id for r in written), base_models)
    _check_aliases(prepared)
    return prepared


def _check_aliases(p: Prepared) -> None:
    """Every alias the scenario uses must name a route of its chain."""
    sc = p.scenario
    known = p.aliases()
    limit = len(p.fallbacks)

    def check(ref: str, where: Path_) -> None:
        index = alias_index(ref) if is_alias(ref) else None
        if index is not None and index > limit:
            raise ConfigError(sc.source, render(where),
                              f"{ref!r}: the chain has {limit} fallback(s) ({', '.join(known.values())})")

    for i, ref in enumerate(sc.routes.unreachable):
        check(ref, (*sc.key_prefix, "routes", "unreachable", i))
    for ref in sc.routes.context_windows:
        check(ref, (*sc.key_prefix, "routes", "context_windows", ref))
        if p.route(ref) not in p.chain:
            raise ConfigError(sc.source, render((*sc.key_prefix, "routes", "context_windows", ref)),
                              f"{ref!r} is not a route of the chain ({', '.join(p.chain)})")
    for n, step in enumerate(sc.steps):
        at = sc.step_path(n)
        faults = sc.faults(step)
        for i, fault in enumerate(faults):
            check(fault.route, (*at, "fault", *((i,) if len(faults) > 1 else ()), "route"))
        e = step.expect
        for key in ("served_route", "fallback_target"):
            if getattr(e, key):
                check(getattr(e, key), (*at, "expect", key))
        for key in ("upstream", "breaker", "breaker_transitions"):
            for ref in getattr(e, key):
                check(ref, (*at, "expect", key, ref))
        texts = [*e.markers_present, *e.markers_absent, *e.error_contains, *e.metrics]
        for text in texts:
            for name in templates(text):
                check(name, (*at, "expect"))


def render_config(p: Prepared, *, sim_base: str | None, closed_url: str | None = None) -> RunConfig:
    """The agent config of one run. `sim_base` (offline): every route's base URL."""
    sc = p.scenario
    routes = sc.routes
    offline = sim_base is not None
    unreachable = {p.route(r) for r in routes.unreachable}

    def url(route: str) -> str | None:
        if route in unreachable:
            return closed_url
        return sim_base

    providers: dict[str, Any] = {"default_model": p.primary, "models": _models(p, url)}
    timeouts = routes.timeouts.set_values() if routes.timeouts else {}
    retry = routes.retry.set_values() if routes.retry else {}
    if offline or timeouts:
        providers["timeouts"] = {**(FAST_TIMEOUTS if offline else {}), **timeouts}
    if offline or retry:
        providers["retry"] = {**(FAST_RETRY if offline else {}), **retry}
    doc: dict[str, Any]
    if sc.base_config is not None:
        doc = {"version": 2, "extends": str(sc.base_config), "providers": providers}
    else:
        doc = {"version": 2, "workspace": {}, "providers": providers,
               "tools": {"registry": {"include": list(INLINE_TOOLS)}},
               "modes": [{"name": "build"}], "loop": {"sequence": [{"mode": "build"}]},
               "max_iterations": INLINE_MAX_STEPS}
    if routes.native_tools is not None:
        doc["provider_tools"] = {"use_native": routes.native_tools}
    probes = routes.probes if routes.probes is not None else (False if sc.base_config is None else None)
    if probes is not None:
        doc["provider_probes"] = {"enabled": probes}
    header = f"# generated by kcd matrix for scenario {sc.name} ({sc.source})\n"
    return RunConfig(text=header + yaml.safe_dump(doc, sort_keys=False), path=_anchor(sc),
                     stream=routes.stream, max_steps=routes.max_steps)


def _anchor(sc: Scenario) -> str | None:
    """Where the config text "comes from": the scenario file (it anchors `extends`)."""
    source = Path(sc.source)
    return str(source.resolve()) if source.is_absolute() else None


def _models(p: Prepared, url) -> list[dict[str, Any]]:
    """The base's entries (params kept), one for every route of the chain, each with its URL;
    the primary's entry carries the scenario's fallback chain."""
    entries: dict[str, dict[str, Any]] = {}
    for written in p.base_models:
        entry = dict(written)
        if "routing_preferences" in entry:  # an alias of `routing`; writing both is an error
            entry["routing"] = entry.pop("routing_preferences")
        entries.setdefault(parse_route(entry["id"]).id, entry)
    for route in p.chain:
        entries.setdefault(route, {"id": route, "adapter": parse_route(route).provider})
    primary = entries[p.primary]
    routing = dict(primary.get("routing") or {})
    routing["fallback_models"] = list(p.fallbacks)
    primary["routing"] = routing
    for ref, tokens in p.scenario.routes.context_windows.items():
        entries[p.route(ref)]["context_window"] = tokens
    for route, entry in entries.items():
        target = url(route)
        if target is not None:
            entry["base_url"] = target
    return list(entries.values())
