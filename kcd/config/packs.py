"""Prompt packs: `prompts.packs.<pack>.<key>` files and `@pack(<pack>).<key>` refs.

Pack files are resolved against the directory of the config file that
declared the key (after `extends`, packs from a base stay relative to the
base). A missing file is a config error: the original read it as empty and
ran with an empty system prompt.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from kcd.config.agent_schema import AgentConfig
from kcd.config.keypath import Path_
from kcd.config.merge import Provenance

MODE_SPECIFIC = "mode_specific"
_REF = re.compile(r"(?:\[CACHE\]\s*)?@pack\(([^()\s]+)\)\.(\S+)\Z")


def parse_ref(ref: str) -> tuple[str, str] | None:
    """`[CACHE] @pack(base).system` -> ("base", "system"); None if not a pack ref."""
    m = _REF.match(ref.strip())
    return (m.group(1), m.group(2)) if m else None


def canonical_ref(ref: str) -> str:
    """The key used in `LoadedConfig.pack_texts`: `@pack(<p>).<key>`, no cache prefix."""
    parsed = parse_ref(ref)
    if parsed is None:
        raise KeyError(f"not a pack ref: {ref!r}")
    return f"@pack({parsed[0]}).{parsed[1]}"


def check_refs(cfg: AgentConfig, prov: Provenance) -> None:
    """Every ref in injection orders and mode prompts names a declared pack key."""
    injection = cfg.prompts.injection
    for name, refs in (("system_order", injection.system_order), ("per_turn_order", injection.per_turn_order)):
        for i, ref in enumerate(refs):
            path = ("prompts", "injection", name, i)
            if ref.strip() == MODE_SPECIFIC:
                if name == "per_turn_order":
                    continue
                raise prov.error(path, "`mode_specific` is only valid in per_turn_order")
            _check_ref(cfg, prov, path, ref, required=True)
    for i, mode in enumerate(cfg.modes):
        if mode.prompt is not None:
            _check_ref(cfg, prov, ("modes", i, "prompt"), mode.prompt, required=False)


def _check_ref(cfg: AgentConfig, prov: Provenance, path: Path_, ref: str, *, required: bool) -> None:
    parsed = parse_ref(ref)
    if parsed is None:
        if required or ref.lstrip().startswith(("@pack", "[CACHE]")):
            raise prov.error(path, f"{ref!r} is not a pack ref; write @pack(<pack>).<key>")
        return  # a mode prompt may be literal text
    pack, key = parsed
    if pack not in cfg.prompts.packs:
        raise prov.error(path, f"{ref!r}: pack {pack!r} is not defined under prompts.packs")
    if key not in cfg.prompts.packs[pack]:
        raise prov.error(path, f"{ref!r}: pack {pack!r} has no key {key!r}")


def load_packs(cfg: AgentConfig, prov: Provenance,
               may_read: Callable[[Path], str | None] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Resolve and read every declared pack file (each first cleared by `may_read`, if given).

    Returns (paths, texts), both keyed by canonical ref `@pack(<p>).<key>`.
    """
    paths: dict[str, str] = {}
    texts: dict[str, str] = {}
    read: dict[Path, str] = {}  # packs often share one file
    for pack, keys in cfg.prompts.packs.items():
        for key, rel in keys.items():
            key_path = ("prompts", "packs", pack, key)
            resolved = _resolve(prov, key_path, rel)
            refused = may_read(resolved) if may_read is not None else None
            if refused is not None:
                raise prov.error(key_path, f"pack file {rel!r}: {refused}")
            if resolved not in read:
                read[resolved] = _read(prov, key_path, resolved)
            ref = f"@pack({pack}).{key}"
            paths[ref] = str(resolved)
            texts[ref] = read[resolved]
    return paths, texts


def _resolve(prov: Provenance, key_path: Path_, rel: str) -> Path:
    path = Path(rel).expanduser()
    if path.is_absolute():
        return path
    directory = prov.source_of(key_path).directory
    if directory is None:
        raise prov.error(key_path, f"relative pack path {rel!r} needs the config's path, and none was given")
    return (directory / path).resolve()


def _read(prov: Provenance, key_path: Path_, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise prov.error(key_path, f"pack file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise prov.error(key_path, f"cannot read pack file {path}: {exc}") from None
