"""The replay's agent config: the recorded one, with the simulator's script as its only route.

Everything the tools and the loop read (tools, modes, prompts, limits, concurrency,
completion) stays as recorded. The providers are replaced by one route, `mock/replay`,
whose base URL is the replay's simulator namespace: no fallbacks, no provider key, no
way to reach the recorded provider. The recorded route's params, timeouts, retry and
context window carry over, and the tool mode and streaming are the ones the recorded
run actually used (after its capability probes), so probes are off. A
`dialect_profiles` entry that matched the recorded route is kept for the new one.

Relative pack paths and tool directories were resolved against the file that wrote
them (a base the config `extends`), which the merged config no longer says; they are
written absolute, as the recorded run resolved them.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any

from kcd.providers.routes import RouteError, parse_route

__all__ = ["REPLAY_ROUTE", "replay_config"]

REPLAY_ROUTE = "mock/replay"
_CARRIED = ("params", "timeouts", "retry", "context_window")


def _same_route(written: Any, route_id: str) -> bool:
    try:
        return isinstance(written, str) and parse_route(written).id == route_id
    except RouteError:
        return False


def _absolute_paths(cfg: dict[str, Any], pack_paths: dict[str, str], tool_dirs: list[str]) -> None:
    prompts = cfg.get("prompts")
    packs = prompts.get("packs") if isinstance(prompts, dict) else None
    for pack, keys in (packs or {}).items():
        if isinstance(keys, dict):
            for key in keys:
                keys[key] = pack_paths.get(f"@pack({pack}).{key}", keys[key])
    tools = cfg.get("tools")
    if tool_dirs and isinstance(tools, dict):
        if tools.get("defs_dir") is not None:  # it stands for registry.paths[0] (agent_checks.tool_dirs)
            tools["defs_dir"] = tool_dirs[0]
        registry = tools.setdefault("registry", {})
        if isinstance(registry, dict):
            registry["paths"] = list(tool_dirs)


def replay_config(resolved: dict[str, Any], *, route: str, base_url: str, native_tools: bool,
                  stream: bool, pack_paths: dict[str, str] | None = None,
                  tool_dirs: list[str] | None = None) -> dict[str, Any]:
    """The recorded `resolved_config` rewritten for a replay on the script at `base_url`."""
    cfg = copy.deepcopy(resolved)
    _absolute_paths(cfg, pack_paths or {}, tool_dirs or [])
    providers = cfg.get("providers") if isinstance(cfg.get("providers"), dict) else {}
    recorded = next((m for m in providers.get("models") or () if isinstance(m, dict)
                     and _same_route(m.get("id"), route)), {})
    entry = {k: recorded[k] for k in _CARRIED if k in recorded}
    entry.update(id=REPLAY_ROUTE, adapter="mock", base_url=base_url, stream=stream, native_tools=native_tools)
    cfg["providers"] = {"default_model": REPLAY_ROUTE, "models": [entry]}
    cfg["provider_tools"] = {**(cfg.get("provider_tools") or {}), "use_native": native_tools}
    cfg["provider_probes"] = {**(cfg.get("provider_probes") or {}), "enabled": False}
    profiles = cfg.get("dialect_profiles")
    if isinstance(profiles, dict):
        model = route.split("/", 1)[-1]
        match = next((v for k, v in profiles.items()
                      if fnmatch.fnmatchcase(route, k) or fnmatch.fnmatchcase(model, k)), None)
        cfg["dialect_profiles"] = {REPLAY_ROUTE: match} if match is not None else {}
    return cfg
