"""Tool and parameter descriptions, and the checking of a call's arguments against them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kcd.agent.tools.results import ToolError

__all__ = ["PARAM_TYPES", "ParamSpec", "ToolSpec", "check_args"]

PARAM_TYPES = frozenset({"string", "integer", "number", "boolean", "array", "object"})


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str  # JSON Schema type: one of PARAM_TYPES
    description: str
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.type == "array":
            schema["items"] = {"type": "string"}  # arrays get string items, as the original sent them
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.default is not None:
            schema["default"] = self.default
        return schema


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    params: tuple[ParamSpec, ...] = ()  # declared order: positional text-call args map onto it
    blocking: bool = False  # the definition's execution.blocking
    max_per_turn: int | None = None  # more calls of this tool in one reply: <VALIDATION_ERROR>
    read_only: bool = False  # may run in parallel with other read-only calls of its reply
    file_changing: bool = False  # runs before the reply's other calls
    type_id: str = "python"
    native_primary: frozenset[str] = frozenset()  # providers whose definition says native_primary

    @property
    def parameters(self) -> dict[str, Any]:
        """A fresh JSON Schema object for the arguments (callers may mutate it)."""
        return {
            "type": "object",
            "properties": {p.name: p.json_schema() for p in self.params},
            "required": [p.name for p in self.params if p.required],
            "additionalProperties": False,
        }


def check_args(spec: ToolSpec, args: Any) -> dict[str, Any]:
    """The call's arguments, checked and completed with defaults; raises ToolError."""
    if not isinstance(args, dict):
        raise ToolError(f"arguments must be an object of named parameters, got {type(args).__name__}")
    known = {p.name for p in spec.params}
    unexpected = sorted(set(args) - known)
    if unexpected:
        expected = ", ".join(sorted(known)) or "none"
        raise ToolError(f"unexpected parameter {unexpected[0]!r} (parameters: {expected})")
    checked: dict[str, Any] = {}
    for p in spec.params:
        value = args.get(p.name)
        if value is None:  # JSON null for an optional parameter means "use the default"
            if p.required:
                raise ToolError(f"missing required parameter {p.name!r}")
            checked[p.name] = p.default
            continue
        checked[p.name] = _coerce(p, value)
    return checked


def _coerce(p: ParamSpec, value: Any) -> Any:
    if p.type == "string":
        if not isinstance(value, str):
            raise ToolError(f"parameter {p.name!r} must be a string, got {type(value).__name__}")
        return value
    if p.type == "boolean":
        if not isinstance(value, bool):
            raise ToolError(f"parameter {p.name!r} must be a boolean (true or false), got {type(value).__name__}")
        return value
    if p.type == "array":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ToolError(f"parameter {p.name!r} must be an array of strings")
        return list(value)
    if p.type == "object":
        if not isinstance(value, dict):
            raise ToolError(f"parameter {p.name!r} must be an object, got {type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        article = "an" if p.type == "integer" else "a"
        raise ToolError(f"parameter {p.name!r} must be {article} {p.type}, got {type(value).__name__}")
    if p.type == "integer":
        if isinstance(value, float) and not value.is_integer():
            raise ToolError(f"parameter {p.name!r} must be an integer, got {value!r}")
        value = int(value)
    if (p.minimum is not None and value < p.minimum) or (p.maximum is not None and value > p.maximum):
        bounds = f"between {p.minimum:g} and {p.maximum:g}" if p.maximum is not None else f">= {p.minimum:g}"
        raise ToolError(f"parameter {p.name!r} must be {bounds}, got {value!r}")
    return value
