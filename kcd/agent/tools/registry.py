"""Tool definition files (the original KyleCode's YAML format) → a registry of specs.

Every `*.yaml`/`*.yml` of every directory is loaded, directories in the given
order and files sorted by name; on a name clash the first definition wins and a
warning names both files (the original silently used only `registry.paths[0]`).

A definition describes a tool for prompts and native schemas; kcd's own
implementation still executes it and checks its arguments. So a definition is
kept only for a name kcd implements, and its parameters are reconciled with the
implementation's: parameters the implementation does not accept are left out,
required ones it omits are added back (each with a warning), and bounds
(minimum/maximum) are taken from the implementation. Problems never raise:
they are collected in `ToolRegistry.warnings` for the caller to report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import msgspec
import yaml

from kcd.agent.calls import ToolLimit, ToolSettings
from kcd.agent.tools.catalogue import REFUSED_TOOLS, TOOL_SPECS
from kcd.agent.tools.spec import ParamSpec, ToolSpec
from kcd.api.typeinfo import prepare_types

__all__ = ["ToolDef", "ToolRegistry", "load_tool_defs"]

ParamType = Literal["string", "integer", "number", "boolean", "array", "object"]
_NUMERIC = frozenset({"integer", "number"})


class ParamDef(msgspec.Struct, kw_only=True):
    name: str
    type: ParamType = "string"
    description: str = ""
    required: bool = False
    default: Any = None


class ExecutionDef(msgspec.Struct, kw_only=True):
    blocking: bool = False
    max_per_turn: Annotated[int, msgspec.Meta(gt=0)] | None = None


class ProviderRouteDef(msgspec.Struct, kw_only=True):
    native_primary: bool = False
    function_call: str | None = None
    fallback_formats: list[str] = []


class ToolDef(msgspec.Struct, kw_only=True):
    """One definition file. Unknown keys (use_cases, performance_data, ...) are ignored."""

    id: str
    name: str
    description: str
    parameters: list[ParamDef]
    type_id: str = "python"
    manipulations: list[str] = []
    syntax_formats_supported: list[str] = []
    preferred_formats: list[str] = []
    execution: ExecutionDef = msgspec.field(default_factory=ExecutionDef)
    provider_routing: dict[str, ProviderRouteDef] = {}


@dataclass(frozen=True)
class ToolRegistry:
    specs: Mapping[str, ToolSpec]  # implemented tools only, in load order
    warnings: list[str] = field(default_factory=list)
    sources: Mapping[str, Path] = field(default_factory=dict)  # name -> the file that defined it

    def limits(self) -> tuple[ToolLimit, ...]:
        """The definitions' `execution.max_per_turn`, for `ToolSettings.max_per_turn`."""
        return tuple(ToolLimit(name, s.max_per_turn) for name, s in self.specs.items() if s.max_per_turn)

    def settings(self, base: ToolSettings) -> ToolSettings:
        """`base` with this registry's per-turn limits added (a definition wins over `base`)."""
        mine = self.limits()
        names = {lim.name for lim in mine}
        kept = tuple(lim for lim in base.max_per_turn if lim.name not in names)
        return msgspec.structs.replace(base, max_per_turn=kept + mine)

    def native_tools(self, provider: str) -> list[str]:
        """Names whose definition sets `provider_routing.<provider>.native_primary`."""
        return [name for name, s in self.specs.items() if provider in s.native_primary]


def load_tool_defs(dirs: Sequence[Path]) -> ToolRegistry:
    specs: dict[str, ToolSpec] = {}
    sources: dict[str, Path] = {}
    warnings: list[str] = []
    for directory in dirs:
        directory = Path(directory)
        if not directory.is_dir():
            warnings.append(f"tool definitions directory {str(directory)!r} does not exist or is not a directory")
            continue
        files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        for path in files:
            definition = _read_def(path, warnings)
            if definition is None:
                continue
            name = definition.name
            if name in sources:
                warnings.append(f"{path}: tool {name!r} is already defined by {sources[name]}; keeping that one")
                continue
            if name in REFUSED_TOOLS:
                warnings.append(f"{path}: tool {name!r} is not supported by kcd; it is not offered")
                continue
            impl = TOOL_SPECS.get(name)
            if impl is None:
                warnings.append(f"{path}: tool {name!r} is not implemented by kcd; it is not offered")
                continue
            specs[name] = _spec(definition, impl, path, warnings)
            sources[name] = path
    return ToolRegistry(MappingProxyType(specs), warnings, MappingProxyType(sources))


def _read_def(path: Path, warnings: list[str]) -> ToolDef | None:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        warnings.append(f"{path}: cannot read the tool definition: {exc}")
        return None
    if not isinstance(raw, dict):
        warnings.append(f"{path}: a tool definition must be a mapping, got {type(raw).__name__}")
        return None
    if "parameters" in raw and raw["parameters"] is None:
        raw = {**raw, "parameters": []}  # `parameters:` left empty means none
    try:
        return msgspec.convert(raw, ToolDef)
    except msgspec.ValidationError as exc:
        warnings.append(f"{path}: invalid tool definition: {exc}")
        return None


def _spec(d: ToolDef, impl: ToolSpec, path: Path, warnings: list[str]) -> ToolSpec:
    accepted = {p.name: p for p in impl.params}
    params: list[ParamSpec] = []
    for p in d.parameters:
        ip = accepted.get(p.name)
        if ip is None:
            warnings.append(
                f"{path}: parameter {p.name!r} of {d.name!r} is not accepted by kcd's implementation; left out"
            )
            continue
        type_: str = p.type
        if type_ != ip.type and not (type_ in _NUMERIC and ip.type in _NUMERIC):
            warnings.append(
                f"{path}: parameter {p.name!r} of {d.name!r} is declared {type_}, but kcd takes "
                f"{ip.type}; using {ip.type}"
            )
            type_ = ip.type
        required = p.required or ip.required
        if ip.required and not p.required:
            warnings.append(f"{path}: parameter {p.name!r} of {d.name!r} is required by kcd's implementation")
        params.append(
            ParamSpec(p.name, type_, p.description or ip.description, required, p.default, ip.minimum, ip.maximum)
        )
    declared = {p.name for p in params}
    for ip in impl.params:
        if ip.required and ip.name not in declared:
            warnings.append(f"{path}: {d.name!r} does not declare the required parameter {ip.name!r}; added")
            params.append(ip)
    return ToolSpec(
        name=d.name,
        description=d.description,
        params=tuple(params),
        blocking=d.execution.blocking,
        max_per_turn=d.execution.max_per_turn or impl.max_per_turn,
        read_only=impl.read_only,
        file_changing=impl.file_changing,
        type_id=d.type_id,
        native_primary=frozenset(p for p, route in d.provider_routing.items() if route.native_primary),
    )


prepare_types(ToolDef)  # converted in worker threads: see kcd/api/typeinfo.py
