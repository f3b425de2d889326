"""YAML config documents: `yaml.safe_load` semantics plus the checks it skips.

safe_load silently keeps the last of duplicate keys, accepts non-string keys
(`yes:` is a bool in YAML 1.1) and expands aliases without bound. Configs are
sent to a long-lived daemon, so each of these is caught here, on the node
graph, before anything is constructed.
"""

from __future__ import annotations

from typing import Any

import yaml

from kcd.config.keypath import ConfigError, Path_, render

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_EXPANDED_NODES = 100_000  # far above any real config; stops alias bombs

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SafeLoader(_BaseLoader):  # type: ignore[misc]
    """Safe loader whose documents we inspect as nodes before constructing."""


def load_yaml(text: str, file: str) -> tuple[Any, list[str]]:
    """Parse one YAML document; returns (data, warnings). Raises ConfigError."""
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        warnings: list[str] = []
        _Checker(file, warnings).walk(node, ())
        return loader.construct_document(node), warnings
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(file, "$", _describe(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, "$", f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(file, "$", "invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _describe(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    text = f"invalid YAML: {exc.problem or exc.context or 'parse error'}{where}"
    if exc.context and exc.problem and exc.context_mark:
        text += f", {exc.context} at line {exc.context_mark.line + 1}"
    return text


class _Checker:
    """Walks the node graph once: duplicate keys, key types, alias expansion."""

    def __init__(self, file: str, warnings: list[str]) -> None:
        self.file = file
        self.warnings = warnings
        self.sizes: dict[int, int] = {}  # node id -> expanded size; aliases are walked once
        self.open: set[int] = set()  # nodes on the current path: a repeat is a cycle

    def walk(self, node: yaml.Node, path: Path_) -> int:
        nid = id(node)
        if nid in self.open:
            raise ConfigError(self.file, render(path), f"recursive YAML alias (line {_line(node)})")
        if nid in self.sizes:
            return self.sizes[nid]
        self.open.add(nid)
        size = 1
        if isinstance(node, yaml.MappingNode):
            size += self._mapping(node, path)
        elif isinstance(node, yaml.SequenceNode):
            size += sum(self.walk(item, (*path, i)) for i, item in enumerate(node.value))
        self.open.discard(nid)
        if size > MAX_EXPANDED_NODES:
            raise ConfigError(self.file, render(path), "document too large after alias expansion")
        self.sizes[nid] = size
        return size

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> int:
        size = 0
        first_line: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == _MERGE_TAG:  # `<<: *base` - explicit keys override merged ones by design
                size += self.walk(value, path)
                continue
            if not isinstance(key, yaml.ScalarNode) or key.tag != _STR_TAG:
                shown = key.value if isinstance(key, yaml.ScalarNode) else "<complex key>"
                raise ConfigError(
                    self.file,
                    render(path),
                    f"key {shown!r} (line {_line(key)}) is not a string; quote it",
                )
            name = key.value
            if name in first_line:
                self.warnings.append(
                    f"{self.file}: duplicate key {name!r} at {render(path)}, keeping the last "
                    f"(lines {first_line[name]} and {_line(key)})"
                )
            first_line[name] = _line(key)
            size += self.walk(value, (*path, name))
        return size


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1
