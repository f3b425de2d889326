"""Fit a plain YAML document to a tree of msgspec Structs before `convert`.

msgspec can only reject unknown fields, but agent configs must *accept* keys kcd
does not use and warn about each one. So the document is walked against the
Struct fields first: unknown keys are reported and dropped (convert can then
forbid unknown fields as a safety net), and nulls are dropped so that `key:`
with no value means "use the default", as in the original.

Structs may declare two ClassVars read here:
  ignored_keys: keys of the original that kcd accepts but never uses
  pending_keys: typed fields whose behaviour kcd does not implement yet
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

import msgspec

from kcd.config.keypath import Path_

KeyKind = Literal["ignored", "unknown", "pending"]
Report = Callable[[Path_, KeyKind], None]


class Shape:
    """The field table of every Struct reachable from `root`, built once."""

    def __init__(self, root: type[msgspec.Struct]) -> None:
        self.root = root
        self._fields: dict[type, dict[str, Any]] = {}
        self._collect(root)

    def prepare(self, doc: dict[str, Any], report: Report) -> dict[str, Any]:
        """A copy of `doc` holding only known keys and no nulls; reports the rest."""
        fitted: dict[str, Any] = self._fit(doc, self.root, (), report)
        return fitted

    def locate(self, data: Any, path: Path_) -> Path_:
        """Replace msgspec's anonymous dict segments (`[...]`) with the failing key."""
        tp: Any = self.root
        out: list[str | int] = []
        for seg in path:
            tp = _select(tp, data)
            if seg == "..." and isinstance(data, dict) and typing.get_origin(tp) is dict:
                value_type = typing.get_args(tp)[1]
                seg = next((k for k, v in data.items() if not _converts(v, value_type)), seg)
            out.append(seg)
            data, tp = self._child(data, tp, seg)
        return tuple(out)

    # -- internals --------------------------------------------------------

    def _collect(self, tp: Any) -> None:
        for member in _members(tp):
            if _is_struct(member):
                if member in self._fields:
                    continue
                fields = {f.encode_name: f.type for f in msgspec.structs.fields(member)}
                self._fields[member] = fields
                for field_type in fields.values():
                    self._collect(field_type)
            else:
                for arg in typing.get_args(member):
                    self._collect(arg)

    def _fit(self, value: Any, tp: Any, path: Path_, report: Report) -> Any:
        tp = _select(tp, value)
        if _is_struct(tp) and isinstance(value, dict):
            return self._fit_struct(value, tp, path, report)
        origin = typing.get_origin(tp)
        if origin is dict and isinstance(value, dict):
            value_type = typing.get_args(tp)[1]
            return {k: self._fit(v, value_type, (*path, k), report) for k, v in value.items() if v is not None}
        if origin is list and isinstance(value, list):
            item_type = typing.get_args(tp)[0]
            return [self._fit(v, item_type, (*path, i), report) for i, v in enumerate(value)]
        return value  # scalars and mismatched kinds: convert reports type errors

    def _fit_struct(self, value: dict[str, Any], cls: type, path: Path_, report: Report) -> dict[str, Any]:
        fields = self._fields[cls]
        ignored: frozenset[str] = getattr(cls, "ignored_keys", frozenset())
        pending: frozenset[str] = getattr(cls, "pending_keys", frozenset())
        out: dict[str, Any] = {}
        for key, item in value.items():
            here = (*path, key)
            if key not in fields:
                report(here, "ignored" if key in ignored else "unknown")
                continue
            if key in pending:
                report(here, "pending")
            if item is not None:
                out[key] = self._fit(item, fields[key], here, report)
        return out

    def _child(self, data: Any, tp: Any, seg: str | int) -> tuple[Any, Any]:
        if _is_struct(tp):
            child_type = self._fields[tp].get(seg, Any)  # type: ignore[arg-type]
        else:
            args = typing.get_args(tp)
            child_type = args[-1] if args else Any
        try:
            return data[seg], child_type
        except (KeyError, IndexError, TypeError):
            return None, Any


def _members(tp: Any) -> tuple[Any, ...]:
    tp = _strip(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return tuple(_strip(m) for m in typing.get_args(tp))
    return (tp,)


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _select(tp: Any, value: Any) -> Any:
    """The member of a (possibly Annotated/Union) type that matches the value's kind."""
    members = _members(tp)
    if len(members) == 1:
        return members[0]
    for member in members:
        if isinstance(value, dict) and (_is_struct(member) or typing.get_origin(member) is dict):
            return member
        if isinstance(value, list) and typing.get_origin(member) is list:
            return member
    return Any


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _converts(value: Any, tp: Any) -> bool:
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError:
        return False
    return True
