"""Scrubbing each entry, counting what was replaced, and refusing a bundle a secret survives.

For every entry: JSON values under secret key names (`Redactor.obj`), then the daemon's
value-level `Redactor`, then local absolute paths and user names become placeholders;
`*.b64` files are decoded, scrubbed and re-encoded. After scrubbing, any known secret value
left, verbatim or base64-encoded at any alignment, refuses the whole bundle.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kcd.bundles.types import BundleError
from kcd.observe.redact import MASK, Redactor, base64_cores
from kcd.observe.rundir import pretty_json

PLACEHOLDERS = {
    "<RUN_DIR>": "the run's directory",
    "<RUNS_ROOT>": "the daemon's runs root",
    "<STATE_DIR>": "the daemon's state directory",
    "<CONFIG_DIR>": "the directory of the run's agent config",
    "<HOME>": "a local home directory",
    "<USER>": "a local user name",
}
# Accounts that name no person; replacing them would also mangle ordinary words
# (`"root"` is a config key).
GENERIC_USERS = frozenset({"root", "nobody", "daemon", "kylecode", "kcd"})
_MASK_B = MASK.encode()


@dataclass
class Counts:
    secrets_masked: int = 0  # new ***REDACTED*** tokens put in by this bundle
    already_masked: int = 0  # tokens the run's writer had put in already
    known_secret_values: int = 0  # verbatim known values found before scrubbing
    paths_replaced: int = 0
    user_names_replaced: int = 0

    def add(self, other: Counts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class Scrubber:
    """Immutable after construction; one per bundle."""

    def __init__(self, redactor: Redactor, *, paths: Mapping[str, str] | Iterable[tuple[str, str]] = (),
                 users: Iterable[str] = (), run_dir_name: str | None = None):
        self.redactor = redactor
        pairs = paths.items() if isinstance(paths, Mapping) else paths
        # Longest first, so the run dir wins over the runs root, and the root over a home.
        by_path = {os.path.normpath(p): ph for p, ph in pairs if p and os.path.normpath(p) != "/"}
        ordered = sorted(by_path, key=len, reverse=True)
        self._placeholder = {p.encode(): by_path[p].encode() for p in ordered}
        # Whole path prefixes only: `/root` must not match inside `/var/root` or `/rootfs`.
        self._paths = (re.compile(rb"(?<![\w.-])(" + b"|".join(re.escape(p.encode()) for p in ordered)
                                  + rb")(?![\w-])") if ordered else None)
        # Any other absolute path to the run dir (a symlinked root, a copy under /tmp).
        self._run_name = run_dir_name.encode() if run_dir_name else None
        self._run_path = (re.compile(rb"(?:/[^\s\"'<>/`]+)+/" + re.escape(self._run_name) + rb"(?![\w-])")
                          if self._run_name else None)
        names = sorted({u for u in users if u and len(u) >= 3 and u not in GENERIC_USERS}, key=len, reverse=True)
        self.users = tuple(names)
        self._users = (re.compile(rb"(?<![\w.-])(?:" + b"|".join(re.escape(u.encode()) for u in names)
                                  + rb")(?![\w-])") if names else None)
        known = [v.encode() for v in redactor.known_values]
        self._known = re.compile(b"|".join(re.escape(v) for v in known)) if known else None
        # Base64 of a known value (a net after scrubbing; shorter cores than the redactor masks).
        self._needles = tuple(sorted({n.encode() for v in known for n in base64_cores(v, min_length=8)}))

    def scrub(self, data: bytes, source: bytes | None = None) -> tuple[bytes, Counts]:
        """`data` scrubbed; secrets are counted against `source` (the file as read, before any
        key-level masking already replaced some of them), by default `data` itself."""
        source = data if source is None else source
        counts = Counts(already_masked=source.count(_MASK_B),
                        known_secret_values=len(self._known.findall(source)) if self._known else 0)
        data = self.redactor.bytes(data)
        if self._paths is not None:
            data, n = self._paths.subn(lambda m: self._placeholder[m.group(1)], data)
            counts.paths_replaced += n
        if self._run_path is not None and self._run_name in data:
            data, n = self._run_path.subn(b"<RUN_DIR>", data)
            counts.paths_replaced += n
        if self._users is not None:
            data, counts.user_names_replaced = self._users.subn(b"<USER>", data)
        counts.secrets_masked = max(data.count(_MASK_B) - counts.already_masked, 0)
        return data, counts

    def leaks(self, data: bytes) -> bool:
        """Whether a known secret value is still in `data`, verbatim or base64-encoded."""
        return self.redactor.contains_secret(data) or any(n in data for n in self._needles)


def _decode_b64(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _json_keys_scrubbed(data: bytes, redactor: Redactor) -> bytes:
    """Values under secret key names masked; the file's own bytes if nothing changes.
    Provider bodies are not ours: junk or absurd nesting falls back to byte-level scrubbing."""
    try:
        value = json.loads(data)
        cleaned = redactor.obj(value)
    except (ValueError, RecursionError):
        return data
    return data if cleaned == value else pretty_json(cleaned)


def _run_lines(data: bytes, run_id: str | None) -> tuple[list[bytes], int]:
    """The run's telemetry lines (and lines naming no run); lines of other runs are counted."""
    kept, dropped = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            owner = json.loads(line).get("run_id")
        except (ValueError, AttributeError, RecursionError):
            owner = None  # junk or a non-object: the exporter skips it itself; scrubbing still applies
        if run_id is not None and owner is not None and owner != run_id:
            dropped += 1
        else:
            kept.append(line)
    return kept, dropped


def _jsonl_keys_scrubbed(lines: list[bytes], redactor: Redactor) -> bytes:
    out = []
    for line in lines:
        try:
            event = json.loads(line)
            cleaned = redactor.obj(event)
        except (ValueError, RecursionError):
            event = cleaned = None
        if isinstance(event, dict) and cleaned != event:
            line = json.dumps(cleaned, separators=(",", ":"), ensure_ascii=False).encode()
        out.append(line + b"\n")
    return b"".join(out)


def scrub_entry(name: str, data: bytes, scrubber: Scrubber, run_id: str | None = None) -> tuple[bytes, Counts, int]:
    """One entry's bundle bytes, its redaction counts, and dropped telemetry lines."""
    if name.endswith(".b64"):
        decoded = _decode_b64(data)
        if decoded is not None:
            clean, counts = scrubber.scrub(decoded)
            return (data if clean == decoded else base64.b64encode(clean)), counts, 0
    dropped, source = 0, data
    if name.endswith(".jsonl"):
        lines, dropped = _run_lines(data, run_id)
        source = b"".join(line + b"\n" for line in lines)
        data = _jsonl_keys_scrubbed(lines, scrubber.redactor)
    elif name.endswith(".json"):
        data = _json_keys_scrubbed(data, scrubber.redactor)
    clean, counts = scrubber.scrub(data, source)
    return clean, counts, dropped


def entry_leaks(name: str, data: bytes, scrubber: Scrubber) -> bool:
    if scrubber.leaks(data):
        return True
    decoded = _decode_b64(data) if name.endswith(".b64") else None
    return decoded is not None and scrubber.leaks(decoded)


def refuse_leaks(entries: Mapping[str, bytes], scrubber: Scrubber) -> None:
    for name, data in entries.items():
        if entry_leaks(name, data, scrubber):
            raise BundleError(422, "bundle_refused",
                              f"refusing the bundle: a known secret value would remain in {name} after "
                              "scrubbing (e.g. base64-encoded in a field); nothing was written")


def make_scrubber(redactor: Redactor, run_dir: Path, *, runs_root: Path, state_dir: Path | None = None,
                  homes: Iterable[str] = (), users: Iterable[str] = (),
                  config_path: str | None = None) -> Scrubber:
    """The Scrubber for one run's bundle: secrets, home and state paths, user names."""
    paths: list[tuple[str, str]] = []
    for home in homes:
        if home:
            paths += [(home, "<HOME>"), (os.path.realpath(home), "<HOME>")]
    if config_path and os.path.isabs(config_path):
        paths.append((os.path.dirname(config_path), "<CONFIG_DIR>"))
    if state_dir is not None:
        paths += [(str(state_dir), "<STATE_DIR>"), (os.path.realpath(state_dir), "<STATE_DIR>")]
    paths += [(str(runs_root), "<RUNS_ROOT>"), (os.path.realpath(runs_root), "<RUNS_ROOT>"),
              (str(run_dir), "<RUN_DIR>"), (os.path.realpath(run_dir), "<RUN_DIR>")]
    return Scrubber(redactor, paths=dict(paths), users=users, run_dir_name=run_dir.name)
