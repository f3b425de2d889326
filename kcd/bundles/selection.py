"""What goes in: the allow-list, walked without following a symlink anywhere on the way.

Only regular files directly inside the allow-listed directories are taken; a symlink is
skipped and listed in the manifest, as are files too large to read whole and unsafe names.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcd.bundles.caps import Caps
from kcd.bundles.check import UnsafeEntryName
from kcd.bundles.check import check_entry_name as _check_name
from kcd.bundles.types import BundleError

# (relative path, is a directory); the order is the zip's order.
ALLOW_LIST: tuple[tuple[str, bool], ...] = (
    ("conversation/conversation.md", False),
    ("meta/capability_probes.json", False),
    ("meta/provider_metrics.json", False),
    ("meta/requests", True),
    ("errors", True),
    ("raw/responses", True),
    ("meta/telemetry.jsonl", False),
    ("meta/run.json", False),
    ("result.json", False),
)
TELEMETRY = "meta/telemetry.jsonl"


def check_entry_name(name: str) -> str:
    """A zip entry name that cannot escape wherever the zip is unpacked (no zip-slip)."""
    try:
        return _check_name(name)
    except UnsafeEntryName as exc:
        raise BundleError(400, "unsafe_entry_name", str(exc)) from None


def _is_plain(path: Path, run_dir: Path) -> bool:
    """A path with no symlink anywhere between the run dir and itself."""
    return os.path.realpath(path) == str(path) and str(path).startswith(str(run_dir) + os.sep)


@dataclass
class Collected:
    files: list[tuple[str, Path, int]] = field(default_factory=list)  # (entry name, path, size)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def collect(run_dir: Path, caps: Caps = Caps()) -> Collected:
    """The allow-listed files of a run directory (given as its real path)."""
    found = Collected()
    for rel, is_dir in ALLOW_LIST:
        path = run_dir / rel
        if not os.path.lexists(path):
            continue
        if not _is_plain(path, run_dir):
            found.skipped.append({"path": rel, "reason": "symlink"})
            continue
        if is_dir:
            if not path.is_dir():
                continue
            candidates = sorted((f"{rel}/{entry.name}", Path(entry.path)) for entry in os.scandir(path))
        else:
            candidates = [(rel, path)]
        for name, file_path in candidates:
            try:
                st = os.lstat(file_path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                if stat.S_ISLNK(st.st_mode):
                    found.skipped.append({"path": name, "reason": "symlink"})
                continue  # sub-directories are not in the allow-list
            if st.st_size > caps.read_bytes:
                found.skipped.append({"path": name, "reason": f"larger than {caps.read_bytes} bytes"})
                continue
            try:
                found.files.append((check_entry_name(name), file_path, st.st_size))
            except BundleError:
                found.skipped.append({"path": repr(name), "reason": "unsafe file name"})
    if len(found.files) > caps.entries:
        raise BundleError(413, "bundle_too_large", f"the run has {len(found.files)} files to bundle; "
                          f"the cap is {caps.entries}")
    return found


def read_regular(path: Path) -> bytes:
    """Read without following a symlink swapped in since `collect` looked."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()
