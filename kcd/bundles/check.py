"""Checking a vendor bundle against its MANIFEST.json, on either side of the socket.

kcd builds bundles (`kcd.bundles.build`); kcctl verifies what it received before it
writes it anywhere. Standard library only, so kcctl can import it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

MANIFEST = "MANIFEST.json"


class UnsafeEntryName(ValueError):
    pass


def check_entry_name(name: str) -> str:
    """A zip entry name that cannot escape wherever the zip is unpacked (no zip-slip)."""
    path = PurePosixPath(name)
    if (not name or "\\" in name or "\x00" in name or ":" in name or path.is_absolute()
            or name != str(path) or any(part in ("", ".", "..") for part in path.parts)):
        raise UnsafeEntryName(f"refusing the zip entry name {name!r}")
    return name


def unzip_entries(data: bytes) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            yield check_entry_name(info.filename), zf.read(info)


def verify_bundle(data: bytes) -> dict[str, Any]:
    """The manifest of a bundle whose entries match it exactly (sizes, sha256, names), else ValueError."""
    entries = dict(unzip_entries(data))
    manifest = json.loads(entries.pop(MANIFEST))
    listed = {row["path"]: row for row in manifest["files"]}
    if set(listed) != set(entries):
        raise ValueError(f"zip entries and manifest differ: {sorted(set(listed) ^ set(entries))}")
    for name, blob in entries.items():
        row = listed[name]
        if row["size"] != len(blob) or row["sha256"] != hashlib.sha256(blob).hexdigest():
            raise ValueError(f"{name}: size or sha256 differs from the manifest")
    return manifest
