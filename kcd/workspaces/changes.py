"""The run's file changes against its seed, with new contents: what `kcctl run --apply` writes."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from kcd.api.types import FileChange
from kcd.workspaces.archive import sha256_file


def compute_changes(seed_manifest: dict[str, str], workspace: Path) -> list[FileChange]:
    """Files added, modified or deleted relative to the seed, with new contents."""
    changes: list[FileChange] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(workspace):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            rel = path.relative_to(workspace).as_posix()
            seen.add(rel)
            after = sha256_file(path)
            before = seed_manifest.get(rel)
            if before == after:
                continue
            changes.append(FileChange(
                path=rel, action="modified" if before else "added", sha256_before=before,
                sha256_after=after, content_b64=base64.b64encode(path.read_bytes()).decode("ascii"),
                mode=path.stat().st_mode & 0o777))
    for rel, before in sorted(seed_manifest.items()):
        if rel not in seen:
            changes.append(FileChange(path=rel, action="deleted", sha256_before=before))
    return changes
