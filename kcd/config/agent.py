"""Load a Schema V2 agent config: YAML -> `extends` merge -> typed `AgentConfig`.

    load_agent_config(path) -> LoadedConfig
    load_agent_config_text(text, path) -> LoadedConfig   # text sent over the socket

Every problem is a `ConfigError` naming the file the key came from and its key
path (`str(err) == "<file>: $.providers.models[0].id: <message>"`). Keys kcd
does not act on never fail a load and are never silent: each one gives one
warning in `LoadedConfig.warnings`.

Prompt packs are read at load time into `LoadedConfig.pack_texts` (keyed by
`@pack(<p>).<key>`), so a run uses one consistent snapshot of its prompts and
a missing file fails the load instead of yielding an empty prompt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from kcd.config import packs
from kcd.config.agent_checks import check_config, tool_dirs
from kcd.config.agent_schema import AgentConfig, Mode, ModelEntry, RoutingPrefs
from kcd.config.keypath import ConfigError, Path_, parse
from kcd.config.merge import MergedDocument, Provenance, merge_document
from kcd.config.shape import KeyKind, Shape

__all__ = [
    "AgentConfig",
    "ConfigError",
    "LoadedConfig",
    "Mode",
    "ModelEntry",
    "RoutingPrefs",
    "load_agent_config",
    "load_agent_config_text",
]

SCHEMA_VERSION = 2
_SHAPE = Shape(AgentConfig)  # built once at import; read-only afterwards
_KEY_MESSAGES: dict[KeyKind, str] = {
    "ignored": "accepted but not used by kcd",
    "unknown": "unknown key, ignored",
    "pending": "accepted but not acted on by kcd yet",
}
_TEXT_SOURCE = "<config>"  # the file name shown for text given without a path


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A loaded agent config: the typed config plus warnings, digest, files and pack texts."""

    config: AgentConfig
    warnings: list[str]  # "<file>: <key path>: <message>", one per ignored/unknown key path
    digest: str  # "sha256:<hex>" of `merged` as canonical JSON (sorted keys)
    source_path: str | None  # absolute path of the top file, if known
    merged: dict[str, Any]  # the document after `extends`, as written (no defaults filled in)
    files: list[str]  # every config file read: the top file, then its bases
    pack_paths: dict[str, str]  # "@pack(<p>).<key>" -> resolved file path
    pack_texts: dict[str, str]  # "@pack(<p>).<key>" -> file content
    tool_dirs: list[str]  # tool definition directories, resolved (may not exist yet)

    def pack_text(self, ref: str) -> str:
        """Text of a ref such as `[CACHE] @pack(base).system`; KeyError if undeclared."""
        return self.pack_texts[packs.canonical_ref(ref)]


def load_agent_config(path: str | Path) -> LoadedConfig:
    """Read, merge and check the agent config at `path`; raises ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "$", f"cannot read: {exc}") from None
    return load_agent_config_text(text, path)


def load_agent_config_text(text: str, path: str | Path | None,
                           may_read: Callable[[Path], str | None] | None = None) -> LoadedConfig:
    """Load config text; `path` (where the text came from) anchors relative paths.

    Without a path, `extends` and relative pack paths are errors. `may_read(path)` clears
    every file and tool directory the config names before it is opened (a reason refuses
    it, as a ConfigError at that key path): the daemon reads for socket clients.
    """
    real = Path(path).expanduser().resolve() if path is not None else None
    doc = merge_document(text, str(path) if path is not None else _TEXT_SOURCE, real, may_read)
    return _build(doc, real, may_read)


def _build(doc: MergedDocument, real: Path | None,
           may_read: Callable[[Path], str | None] | None = None) -> LoadedConfig:
    prov = doc.provenance
    warnings = list(doc.warnings)
    _check_version(doc.data, prov)

    def report(key_path: Path_, kind: KeyKind) -> None:
        warnings.append(prov.warning(key_path, _KEY_MESSAGES[kind]))

    prepared = _SHAPE.prepare(doc.data, report)
    cfg = _convert(prepared, prov)
    warnings.extend(check_config(cfg, prov))
    packs.check_refs(cfg, prov)
    pack_paths, pack_texts = packs.load_packs(cfg, prov, may_read)
    tools = doc.data.get("tools")
    explicit_defs_dir = isinstance(tools, dict) and tools.get("defs_dir") is not None
    dirs = tool_dirs(cfg, prov, explicit_defs_dir, warnings)
    if may_read is not None:
        for d in dirs:
            refused = may_read(Path(d)) if Path(d).exists() else None
            if refused is not None:
                raise prov.error(("tools", "registry", "paths"), f"tool directory {d}: {refused}")
    return LoadedConfig(
        config=cfg,
        warnings=warnings,
        digest=_digest(doc.data),
        source_path=str(real) if real is not None else None,
        merged=doc.data,
        files=doc.files,
        pack_paths=pack_paths,
        pack_texts=pack_texts,
        tool_dirs=dirs,
    )


def _check_version(data: dict[str, Any], prov: Provenance) -> None:
    # Checked before anything else: without `version: 2` the rest cannot be read as V2.
    if "version" not in data or data["version"] is None:
        raise prov.error(("version",), "missing required key; Schema V2 configs declare `version: 2`")
    version = data["version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise prov.error(("version",), f"must be 2 (Schema V2 is the only schema kcd reads), got {version!r}")


def _convert(prepared: dict[str, Any], prov: Provenance) -> AgentConfig:
    try:
        return msgspec.convert(prepared, AgentConfig)
    except msgspec.ValidationError as exc:
        message, key_path = _split_error(str(exc))
        raise prov.error(_SHAPE.locate(prepared, key_path), message) from None


def _split_error(text: str) -> tuple[str, Path_]:
    """msgspec's "<message> - at `$.a[0].b`" -> (message, path); missing fields join the path."""
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        message, where = text, "$`"
    path = parse(where.rstrip("`"))
    missing = "Object missing required field `"
    if message.startswith(missing):
        return "missing required key", (*path, message[len(missing) :].rstrip("`"))
    # Nulls are dropped before convert, so "| null" in a type name only confuses.
    return message.replace(" | null`", "`"), path


def _digest(merged: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(msgspec.json.encode(merged, order="sorted")).hexdigest()
