"""Seeding a run's workspace: from its uploaded archive, or by path on the same host.

The upload is unpacked into the run's own `workspace/` (`archive.safe_extract`) and kept as
`meta/seed.tar.gz`, the seed snapshot the diff and the change list compare against; the
sha256 of every seeded file is `meta/seed_manifest.json`. Seeding by path copies with the
daemon's rights, so it is allowed only for a peer that could read the whole tree itself
(`unreadable_for`).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from kcd.peer_files import allowed_by_bits
from kcd.workspaces.archive import safe_extract, sha256_file

SEED_ARCHIVE = "meta/seed.tar.gz"
SEED_MANIFEST = "meta/seed_manifest.json"


def seed_from_archive(archive: Path, workspace: Path, max_bytes: int) -> dict[str, str]:
    """Extract an uploaded archive into a new run's workspace; returns its manifest."""
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


def prepare_workspace(dest: Path, seed: Path | None) -> list[str]:
    """Create `dest` (which must be missing or empty) and copy the seed tree into it.

    Regular files and directories are copied with their modes. A symlink is kept
    as a link only when its target resolves inside the seed tree (absolute
    targets are rewritten relative, so they point into `dest`, not back into the
    seed); links leading outside, and special files, are skipped.
    Returns the seed-relative paths that were skipped.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"workspace {str(dest)!r} already exists and is not empty")
    if seed is None:
        return []
    real_seed = os.path.realpath(seed)
    if not os.path.isdir(real_seed):
        raise NotADirectoryError(f"workspace seed {str(seed)!r} is not a directory")

    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(real_seed, followlinks=False):
        rel_dir = os.path.relpath(dirpath, real_seed)
        out_dir = os.path.normpath(os.path.join(dest, rel_dir))
        for name in list(dirnames):
            src = os.path.join(dirpath, name)
            if os.path.islink(src):
                dirnames.remove(name)  # never descend through a link
                _copy_link(src, os.path.join(out_dir, name), real_seed, skipped)
            else:
                os.mkdir(os.path.join(out_dir, name))
                shutil.copymode(src, os.path.join(out_dir, name))
        for name in filenames:
            src = os.path.join(dirpath, name)
            mode = os.lstat(src).st_mode
            if stat.S_ISLNK(mode):
                _copy_link(src, os.path.join(out_dir, name), real_seed, skipped)
            elif stat.S_ISREG(mode):
                shutil.copy2(src, os.path.join(out_dir, name), follow_symlinks=False)
            else:
                skipped.append(os.path.relpath(src, real_seed))
    return sorted(skipped)


def _copy_link(src: str, out: str, real_seed: str, skipped: list[str]) -> None:
    target = os.path.realpath(src)
    if os.path.commonpath([real_seed, target]) != real_seed:
        skipped.append(os.path.relpath(src, real_seed))
        return
    link = os.readlink(src)
    if os.path.isabs(link):
        link = os.path.relpath(target, os.path.dirname(src))
    os.symlink(link, out)
