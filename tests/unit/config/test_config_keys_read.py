"""Every validated config key is read by some code (no key that validates but does nothing).

Method. The agent config (`AgentConfig`) and the daemon config (`DaemonConfig`) are
walked field by field with `msgspec.structs.fields`, recursively through every Struct a
field's type holds (unions, `list[...]`, `dict[..., ...]`, `Annotated`). Each field gives a
key path such as `logging.retention.max_runs`. The kcd source (`kcd/**/*.py`) is parsed
with `ast`, and the *field declarations* of those Structs (the annotated assignments in
their class bodies) are removed; methods of the schema classes stay, since they are code
that reads. What is left is searched for names in two forms: an attribute access
(`x.max_runs`) and a string constant (`data["max_runs"]`, `getattr(x, "max_runs")`).

A key path is read when *every* segment of it is found (`logging`, `retention`,
`max_runs`), so a whole section nobody opens is caught even when its leaf names are common
words. This is a name-level check: it proves a key unread (no code could read a name that
appears nowhere), not read (`enabled` of one section may be matched by another's). Keys
that would fail it must either do what they say or leave the schema for the Struct's
`ignored_keys` (the loader then accepts them with a warning naming the key path).

Exempt: keys in a Struct's `pending_keys` and everything under them (the loader warns
"accepted but not acted on by kcd yet" at each such key path), and ALLOWED below.
"""

from __future__ import annotations

import ast
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from kcd.config.agent_schema import AgentConfig
from kcd.config.daemon import DaemonConfig

KCD = Path(__file__).resolve().parents[3] / "kcd"

# Key paths kept though nothing reads them, each with its reason. Keep it short.
ALLOWED: dict[str, str] = {}


def _structs_in(tp: object) -> Iterator[type[msgspec.Struct]]:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        yield tp
    elif typing.get_origin(tp) in (typing.Union, types.UnionType, list, dict):
        for arg in typing.get_args(tp):
            yield from _structs_in(arg)


def walk(cls: type[msgspec.Struct], path: tuple[str, ...] = (), seen: frozenset = frozenset()
         ) -> Iterator[tuple[tuple[str, ...], tuple[str, ...], type]]:
    """(key path as written, attribute names along it, declaring Struct) for every field;
    pending keys and their subtrees are skipped."""
    pending = getattr(cls, "pending_keys", frozenset())
    names = path and path[1] or ()
    for f in msgspec.structs.fields(cls):
        if f.encode_name in pending:
            continue
        here = (*path[0], f.encode_name) if path else (f.encode_name,)
        attrs = (*names, f.name)
        yield here, attrs, cls
        for sub in _structs_in(f.type):
            if sub not in seen:
                yield from walk(sub, (here, attrs), seen | {cls})  # type: ignore[arg-type]


def _fields(root: type[msgspec.Struct]) -> list[tuple[tuple[str, ...], tuple[str, ...], type]]:
    return list(walk(root))


def names_read(schema: set[type]) -> set[str]:
    """Attribute names and string constants in kcd's source, minus the schema's field
    declarations."""
    found: set[str] = set()
    for py in KCD.rglob("*.py"):
        tree = ast.parse(py.read_text(encoding="utf-8"))
        module = ".".join(py.relative_to(KCD.parent).with_suffix("").parts)
        declared: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                    c.__name__ == node.name and c.__module__ == module for c in schema):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign):
                        declared.update(id(n) for n in ast.walk(stmt))
        for node in ast.walk(tree):
            if id(node) in declared:
                continue
            if isinstance(node, ast.Attribute):
                found.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


@pytest.mark.parametrize("root", [AgentConfig, DaemonConfig], ids=["agent", "daemon"])
def test_every_config_key_is_read(root: type[msgspec.Struct]) -> None:
    fields = _fields(root)
    read = names_read({cls for _, _, cls in fields} | {root})
    unread = [".".join(key) for key, attrs, _ in fields
              if ".".join(key) not in ALLOWED
              and not all(a in read or k in read for a, k in zip(attrs, key))]
    assert unread == [], (f"{root.__name__}: keys nothing in kcd/ reads: {unread}; make them act, "
                          "or move them to the Struct's ignored_keys (the loader warns)")


def test_the_check_catches_an_unread_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The method itself: a field named like nothing in kcd/ is reported."""

    class Probe(msgspec.Struct, kw_only=True):
        never_read_anywhere_xyz: int = 0
        retention: int = 0  # read (kcd/runs.py reads `.retention`)

    fields = _fields(Probe)
    read = names_read({Probe})
    unread = [".".join(k) for k, attrs, _ in fields if not all(a in read for a in attrs)]
    assert unread == ["never_read_anywhere_xyz"]


def test_walk_reaches_nested_and_union_structs() -> None:
    keys = {".".join(k) for k, _, _ in _fields(AgentConfig)}
    assert {"logging.retention.max_runs", "providers.models.params.temperature",
            "providers.models.routing_preferences.fallback_models", "loop.sequence.if"} <= keys
    assert not any(k.startswith("enhanced_tools") for k in keys)  # pending: warned by the loader
    daemon = {".".join(k) for k, _, _ in _fields(DaemonConfig)}
    assert {"gateway.models.fallbacks.timeouts.ttft", "breaker_overrides.cap_s", "sandbox.isolation"} <= daemon


def test_removed_keys_still_load_with_a_warning(tmp_path: Path) -> None:
    """Keys this check removed from the schema: accepted, one warning per key path."""
    from kcd.config.agent import load_agent_config

    cfg = tmp_path / "a.yaml"
    cfg.write_text(
        "version: 2\nworkspace: {root: ws}\n"
        "providers: {default_model: mock/dev, models: [{id: mock/dev, adapter: mock}]}\n"
        "modes: [{name: build}]\nloop: {sequence: [{mode: build}], turn_strategy: {relay: tool_role}}\n"
        "turn_strategy: {flow: assistant_continuation}\n"
        "provider_tools: {suppress_prompts: true}\ncompletion: {confidence_threshold: 0.6}\n"
        "logging: {enabled: true, root_dir: logs, redact: false, include_raw: true, include_events: true,"
        " include_structured_requests: true, retention: {max_runs: 3}}\n")
    loaded = load_agent_config(cfg)
    assert loaded.config.logging.retention.max_runs == 3
    paths = [w.split(": ")[1] for w in loaded.warnings]
    for key in ("$.loop.turn_strategy.relay", "$.turn_strategy.flow", "$.provider_tools.suppress_prompts",
                "$.completion.confidence_threshold", "$.logging.enabled", "$.logging.root_dir",
                "$.logging.redact", "$.logging.include_raw", "$.logging.include_events",
                "$.logging.include_structured_requests"):
        assert key in paths, (key, loaded.warnings)
    assert all("not used by kcd" in w for w in loaded.warnings)
