"""`extends` resolution and deep merge, remembering which file set each key.

Rules (the original KyleCode's, so its configs load unchanged): each `extends`
path is relative to the directory of the file that declares it; bases merge
left to right, then the declaring file (minus `extends`) on top. Maps merge recursively (child wins, an empty child
map keeps the base map); lists and scalars replace wholesale. A cycle is an
error that shows the chain.

Provenance matters because errors and warnings must name the file a key came
from, and relative paths (prompt packs, tool dirs) resolve against that file's
directory, not the top file's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kcd.config.keypath import ConfigError, Path_, render
from kcd.config.yamlfile import load_yaml


@dataclass(frozen=True, slots=True)
class Source:
    """One config file: its name as shown to users and its directory."""

    file: str
    directory: Path | None  # None: text without a known location


class Provenance:
    """Maps key paths of a merged document to the file that set them.

    Only map keys are recorded; anything inside a list belongs to whoever set
    the list, since lists are replaced wholesale.
    """

    __slots__ = ("_origins", "top")

    def __init__(self, top: Source, origins: dict[Path_, Source]) -> None:
        self.top = top
        self._origins = origins

    def source_of(self, path: Path_) -> Source:
        for end in range(len(path), 0, -1):
            src = self._origins.get(path[:end])
            if src is not None:
                return src
        return self.top

    def error(self, path: Path_, message: str) -> ConfigError:
        return ConfigError(self.source_of(path).file, render(path), message)

    def warning(self, path: Path_, message: str) -> str:
        return f"{self.source_of(path).file}: {render(path)}: {message}"


@dataclass(slots=True)
class MergedDocument:
    data: dict[str, Any]
    provenance: Provenance
    files: list[str]  # every file read, top first, then bases in resolution order
    warnings: list[str] = field(default_factory=list)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge `over` onto `base` without mutating either."""
    out = dict(base)
    for key, value in over.items():
        current = out.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            out[key] = deep_merge(current, value)
        else:
            out[key] = value
    return out


def merge_document(text: str, file: str, real_path: Path | None,
                   may_read: Callable[[Path], str | None] | None = None) -> MergedDocument:
    """Parse `text` (the content of `file`) and resolve its `extends` chain.

    `may_read(path)` is asked before any base file is opened: a reason (not None) refuses it,
    so a client cannot make the daemon read, with its own rights, a file the client could not.
    """
    top = Source(file, real_path.parent if real_path else None)
    resolver = _Resolver(may_read)
    doc = resolver.parse(text, top)
    origins: dict[Path_, Source] = {}
    data = resolver.resolve(doc, top, real_path, [(real_path, file)], origins)
    return MergedDocument(data, Provenance(top, origins), [file, *resolver.files], resolver.warnings)


class _Resolver:
    """State of one load: parsed bases are cached so a diamond reads each file once."""

    def __init__(self, may_read: Callable[[Path], str | None] | None = None) -> None:
        self.warnings: list[str] = []
        self.files: list[str] = []
        self._docs: dict[Path, dict[str, Any]] = {}
        self._may_read = may_read

    def parse(self, text: str, src: Source) -> dict[str, Any]:
        data, warnings = load_yaml(text, src.file)
        self.warnings.extend(warnings)
        if not isinstance(data, dict):
            kind = "an empty document" if data is None else f"a {type(data).__name__}"
            raise ConfigError(src.file, "$", f"the top level must be a mapping, got {kind}")
        return data

    def resolve(
        self,
        doc: dict[str, Any],
        src: Source,
        real: Path | None,
        chain: list[tuple[Path | None, str]],
        origins: dict[Path_, Source],
    ) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for key_path, rel in _extends_entries(doc, src):
            base_real, base_src = self._locate(rel, key_path, src, real, chain)
            base_doc = self._read(base_real, base_src)
            chain_next = [*chain, (base_real, base_src.file)]
            merged = deep_merge(merged, self.resolve(base_doc, base_src, base_real, chain_next, origins))
        own = {k: v for k, v in doc.items() if k != "extends"}
        _record(own, (), src, origins)
        return deep_merge(merged, own)

    def _locate(
        self,
        rel: str,
        key_path: str,
        src: Source,
        real: Path | None,
        chain: list[tuple[Path | None, str]],
    ) -> tuple[Path, Source]:
        if real is None:
            raise ConfigError(src.file, key_path, "cannot resolve extends: the config was given without its path")
        base_real = (real.parent / rel).resolve()
        base_file = os.path.normpath(os.path.join(os.path.dirname(src.file), rel))
        if any(seen == base_real for seen, _ in chain):
            names = " -> ".join([name for _, name in chain] + [base_file])
            raise ConfigError(src.file, key_path, f"extends cycle: {names}")
        refused = self._may_read(base_real) if self._may_read is not None else None
        if refused is not None:
            raise ConfigError(src.file, key_path, f"base config {rel!r}: {refused}")
        if not base_real.is_file():
            raise ConfigError(src.file, key_path, f"base config {rel!r} not found (looked for {base_real})")
        return base_real, Source(base_file, base_real.parent)

    def _read(self, real: Path, src: Source) -> dict[str, Any]:
        doc = self._docs.get(real)
        if doc is None:
            try:
                text = real.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(src.file, "$", f"cannot read: {exc}") from None
            doc = self._docs[real] = self.parse(text, src)
            self.files.append(src.file)
        return doc


def _extends_entries(doc: dict[str, Any], src: Source) -> list[tuple[str, str]]:
    """`extends` as (key path, relative path) pairs."""
    value = doc.get("extends")
    if value is None:
        return []
    entries = [("$.extends", value)] if isinstance(value, str) else None
    if isinstance(value, list):
        entries = [(f"$.extends[{i}]", item) for i, item in enumerate(value)]
    if entries is None:
        raise ConfigError(src.file, "$.extends", "must be a path or a list of paths")
    for key_path, rel in entries:
        if not isinstance(rel, str) or not rel.strip():
            raise ConfigError(src.file, key_path, "must be a non-empty path")
    return entries


def _record(doc: dict[str, Any], path: Path_, src: Source, origins: dict[Path_, Source]) -> None:
    for key, value in doc.items():
        here = (*path, key)
        origins[here] = src
        if isinstance(value, dict):
            _record(value, here, src, origins)
