"""The tools a run offers: chosen from the config, described by the registry,
executed under the config's concurrency rules and the daemon's isolation."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from kcd.agent.calls import GroupRule, ToolInvocation, ToolSettings
from kcd.agent.dialects import ParsedCalls, parse_text_calls, render_text_catalogue
from kcd.agent.tools import TOOL_SPECS, ToolSpec, tool_schemas
from kcd.agent.tools.registry import ToolRegistry, load_tool_defs
from kcd.config.agent import LoadedConfig
from kcd.config.agent_schema import Mode
from kcd.providers.types import ToolSchema


@dataclass(frozen=True)
class ToolSet:
    names: list[str]  # offered in the active mode, in order
    specs: Mapping[str, ToolSpec]  # descriptions for prompts and schemas (registry over built-ins)
    registry: ToolRegistry | None
    settings: ToolSettings
    aliases: Mapping[str, str]
    warnings: list[str]

    def schemas(self) -> list[ToolSchema]:
        return tool_schemas(self.names, self.registry)

    def catalogue(self) -> str:
        return render_text_catalogue(self.names, specs=self.specs)

    def parse(self, text: str, turn: int) -> ParsedCalls:
        """Text-mode calls; alias names are accepted and canonicalised."""
        accepted: Collection[str] = set(self.names) | {a for a, t in self.aliases.items() if t in self.names}
        parsed = parse_text_calls(text, accepted, turn=turn)
        calls = [ToolInvocation(call_id=c.call_id, name=self.canonical(c.name), args=c.args, source=c.source)
                 for c in parsed.calls]
        return ParsedCalls(calls=calls, errors=parsed.errors)

    def canonical(self, name: str) -> str:
        seen = set()
        while name in self.aliases and name not in seen:  # chains followed, cycle-safe
            seen.add(name)
            name = self.aliases[name]
        return name


def build_toolset(loaded: LoadedConfig, *, isolation: str = "none", mode: Mode | None = None) -> ToolSet:
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
    base = ToolSettings(
        shell_timeout_s=float(cfg.tool_timeout),
        nonblocking_tools=tuple(c.nonblocking_tools),
        groups=tuple(GroupRule(g.name, tuple(g.match_tools), g.max_parallel, g.barrier_after) for g in c.groups),
        at_most_one_of=tuple(c.at_most_one_of),
        isolation=isolation,
    )
    settings = registry.settings(base) if registry is not None else base
    return ToolSet(names=names, specs=specs, registry=registry, settings=settings,
                   aliases=dict(cfg.tools.aliases or {}), warnings=warnings)
