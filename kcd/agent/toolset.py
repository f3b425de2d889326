"""The tools a run offers: chosen from the config, described by the registry,
executed under the config's concurrency rules and the daemon's isolation."""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from kcd.agent.calls import GroupRule, ToolInvocation, ToolSettings
from kcd.agent.dialects import FORMAT_NAMES, ParsedCalls, parse_text_calls, render_text_catalogue
from kcd.agent.tools import TOOL_SPECS, ToolSpec, tool_schemas
from kcd.agent.tools.registry import ToolRegistry, load_tool_defs
from kcd.config.agent import LoadedConfig
from kcd.config.agent_schema import AgentConfig, Mode
from kcd.providers.routes import Route
from kcd.providers.types import ToolSchema


@dataclass(frozen=True)
class ToolSet:
    names: list[str]  # offered in the active mode, in order
    specs: Mapping[str, ToolSpec]  # descriptions for prompts and schemas (registry over built-ins)
    registry: ToolRegistry | None
    settings: ToolSettings
    aliases: Mapping[str, str]
    warnings: list[str]
    formats: frozenset[str] = FORMAT_NAMES  # text formats parsed and advertised (dialect_profiles)

    def schemas(self) -> list[ToolSchema]:
        return tool_schemas(self.names, self.registry)

    def catalogue(self) -> str:
        return render_text_catalogue(self.names, specs=self.specs,
                                     formats=None if self.formats == FORMAT_NAMES else self.formats)

    def parse(self, text: str, turn: int) -> ParsedCalls:
        """Text-mode calls; alias names are accepted and canonicalised."""
        accepted: Collection[str] = set(self.names) | {a for a, t in self.aliases.items() if t in self.names}
        parsed = parse_text_calls(text, accepted, turn=turn, formats=self.formats)
        calls = [ToolInvocation(call_id=c.call_id, name=self.canonical(c.name), args=c.args, source=c.source)
                 for c in parsed.calls]
        return ParsedCalls(calls=calls, errors=parsed.errors)

    def canonical(self, name: str) -> str:
        seen = set()
        while name in self.aliases and name not in seen:  # chains followed, cycle-safe
            seen.add(name)
            name = self.aliases[name]
        return name


# The original's dialect ids (config `tools.dialects`) -> the parser's formats.
DIALECT_FORMATS: Mapping[str, tuple[str, ...]] = {
    "pythonic02": ("pythonic02",),
    "bash_block": ("bash_block",),
    "aider_diff": ("aider_diff",),
    "unified_diff": ("unified_diff_fenced", "unified_diff_git"),
    "opencode_patch": ("opencode_patch",),
}


def text_formats(cfg: AgentConfig, route: Route | None, warnings: list[str]) -> frozenset[str]:
    """The text formats for `route`: all of them, narrowed by the first `dialect_profiles`
    entry whose key (a glob) matches the route id or its model: `preferred_dialects` (when
    given) keeps only those, `exclusions` removes. Unknown dialect names warn and are skipped."""
    if route is None or not cfg.dialect_profiles:
        return FORMAT_NAMES
    key = next((k for k in cfg.dialect_profiles
                if fnmatch.fnmatchcase(route.id, k) or fnmatch.fnmatchcase(route.model, k)), None)
    if key is None:
        return FORMAT_NAMES
    profile = cfg.dialect_profiles[key]

    def formats(names: list[str], field: str) -> set[str]:
        out: set[str] = set()
        for name in names:
            if name in DIALECT_FORMATS:
                out.update(DIALECT_FORMATS[name])
            else:
                warnings.append(f"dialect_profiles.{key}.{field}: unknown dialect {name!r} skipped "
                                f"(known: {', '.join(DIALECT_FORMATS)})")
        return out

    preferred = profile.preferred_dialects
    kept = formats(preferred, "preferred_dialects") if preferred else set(FORMAT_NAMES)
    kept -= formats(profile.exclusions, "exclusions")
    if profile.mode is not None:
        warnings.append(f"dialect_profiles.{key}.mode is accepted but not applied")
    return frozenset(kept)


def build_toolset(loaded: LoadedConfig, *, defaults: ToolSettings | None = None, scope: str = "",
                  allow_network: bool = True, mode: Mode | None = None, route: Route | None = None) -> ToolSet:
    """`defaults`: the daemon's sandbox settings (isolation, caps); `scope`: the run id."""
    cfg = loaded.config
    warnings: list[str] = []
    dirs = [Path(d) for d in loaded.tool_dirs if Path(d).is_dir()]
    registry = load_tool_defs(dirs) if dirs else None
    if registry is not None:
        warnings += registry.warnings
    available = list(registry.specs) if registry is not None else list(TOOL_SPECS)
    specs = {**TOOL_SPECS, **(registry.specs if registry else {})}
    names = cfg.select_tools(available, mode)
    for unknown in cfg.unknown_tools(available):
        warnings.append(f"tool {unknown!r} is not implemented by kcd (or not in the registry); ignored")
    c = cfg.concurrency
    network = cfg.tools.network
    if network and not allow_network:
        warnings.append("tools.network: true is refused by the daemon (sandbox.allow_network: false); "
                        "shell commands run without network")
        network = False
    base = msgspec.structs.replace(
        defaults or ToolSettings(),
        shell_timeout_s=float(cfg.tool_timeout),
        nonblocking_tools=tuple(c.nonblocking_tools),
        groups=tuple(GroupRule(g.name, tuple(g.match_tools), g.max_parallel, g.barrier_after) for g in c.groups),
        at_most_one_of=tuple(c.at_most_one_of),
        isolation_network=network,
        scope=scope,
    )
    settings = registry.settings(base) if registry is not None else base
    return ToolSet(names=names, specs=specs, registry=registry, settings=settings,
                   aliases=dict(cfg.tools.aliases or {}), warnings=warnings,
                   formats=text_formats(cfg, route, warnings))
