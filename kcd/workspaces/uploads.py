"""Run workspaces on the daemon side: uploads, seeding, the diff and the changes.

A client uploads its directory as a tar (`POST /v1/workspaces`), then names the
upload in its run request. The archive is checked member by member before a
run is accepted, moved into the run directory (`meta/seed.tar.gz`, the seed
snapshot), and unpacked into the run's own `workspace/`. At the end the final
tree is compared with that snapshot: `workspace.diff` for people, and a list
of file changes for `kcctl run --apply`.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path

from kcd.agent.workspace import prepare_workspace, workspace_diff
from kcd.api.archive import (
    ArchiveTooLarge,
    UnsafeArchive,
    check_archive,
    safe_extract,
    sha256_file,
)
from kcd.api.types import FileChange
from kcd.peer_files import allowed_by_bits

SEED_ARCHIVE = "meta/seed.tar.gz"
SEED_MANIFEST = "meta/seed_manifest.json"
UPLOAD_TTL_S = 3600.0


class UploadError(ValueError):
    pass


class UploadStore:
    """Uploaded archives waiting for their run, under the daemon's state directory."""

    def __init__(self, root: Path, *, max_workspace_bytes: int):
        self.root = root
        self.max_workspace_bytes = max_workspace_bytes
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.prune()

    def new_path(self) -> tuple[str, Path]:
        upload_id = "u_" + secrets.token_hex(8)
        return upload_id, self.root / f"{upload_id}.tar"

    def check(self, path: Path) -> int:
        """Validate every member; the upload is deleted when it is refused."""
        try:
            with open(path, "rb") as fh:
                return check_archive(fh, max_bytes=self.max_workspace_bytes)
        except (UnsafeArchive, ArchiveTooLarge) as exc:
            path.unlink(missing_ok=True)
            raise UploadError(str(exc)) from None

    def take(self, upload_id: str) -> Path:
        if not upload_id.startswith("u_") or not upload_id[2:].isalnum():
            raise UploadError(f"malformed upload id {upload_id!r}")
        path = self.root / f"{upload_id}.tar"
        if not path.is_file():
            raise UploadError(f"no upload {upload_id!r} (uploads are kept {UPLOAD_TTL_S:.0f}s)")
        return path

    def prune(self) -> None:
        cutoff = time.time() - UPLOAD_TTL_S
        for path in self.root.glob("u_*.tar"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)


def seed_from_archive(archive: Path, workspace: Path, max_bytes: int) -> dict[str, str]:
    with open(archive, "rb") as fh:
        return safe_extract(fh, workspace, max_bytes=max_bytes)


def unreadable_for(seed: Path, uid: int, gid: int) -> str | None:
    """The first path under `seed` (or on the way to it) that user `uid` (primary group
    `gid`) could not read by the permission bits, else None.

    Same-host seeding by path makes the daemon copy files with *its* rights; a socket peer
    of another user must not get a copy of what it could not read itself (the daemon's
    state, another user's tree). Only the bits are checked (no ACLs, no supplementary
    groups): when in doubt the peer uploads the tree instead, as `kcctl run -w` does.
    """

    def allowed(st: os.stat_result, need: int) -> bool:  # need: 4 read, 1 search, 5 both
        return allowed_by_bits(st, uid, (gid,), need)

    real = Path(os.path.realpath(seed))
    for ancestor in reversed(real.parents):
        if not allowed(os.stat(ancestor), 1):
            return str(ancestor)
    for dirpath, dirnames, filenames in os.walk(real, followlinks=False):
        if not allowed(os.stat(dirpath), 5):
            return dirpath
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and not allowed(st, 4):
                return path
    return None


def seed_from_directory(seed: Path | None, workspace: Path) -> dict[str, str]:
    """Same-host seeding (API callers naming a directory); returns the manifest."""
    prepare_workspace(workspace, seed)
    return {p.relative_to(workspace).as_posix(): sha256_file(p)
            for p in workspace.rglob("*") if p.is_file() and not p.is_symlink()}


def diff_against_seed(run_dir: Path, seed_dir: Path | None, workspace: Path, max_bytes: int) -> str:
    archive = run_dir / SEED_ARCHIVE
    if archive.is_file():
        with tempfile.TemporaryDirectory(prefix="kcd-seed-") as tmp:
            seed = Path(tmp) / "seed"
            seed_from_archive(archive, seed, max_bytes)
            return workspace_diff(seed, workspace)
    return workspace_diff(seed_dir, workspace)


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


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
