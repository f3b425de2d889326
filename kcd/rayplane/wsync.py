"""A workspace as bytes, and back: how a run's files travel between kcd's host and a node.

No shared filesystem is assumed. The driver packs kcd's copy of the workspace once per
run (the seed) into Ray's object store; a node unpacks it into its own cache, runs the
turn there, and sends the whole tree back when the turn changed it; the driver then
replaces kcd's copy with it. kcd's copy is therefore always the workspace as of the last
completed turn: `workspace.diff`, `runs fetch` and `--apply` read it as they always did,
and a run whose node dies can start again elsewhere from it.

What comes back was written by model-chosen commands, so it is unpacked as hostile input,
into a fresh directory that then replaces the old one: relative names without `..`, only
directories, regular files and symlinks, bounded in size and count, and nothing written
through a link. A symlink itself is kept whatever it points at (`ln -s /usr/bin/python3
venv/bin/python` is ordinary work, and kcd's copy held such links before too); kcd never
follows one when it reads or writes the workspace.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath


__all__ = ["TreeRefused", "pack_tree", "replace_tree", "tree_signature"]

MAX_TREE_BYTES = 1 << 30
MAX_MEMBERS = 1_000_000


class TreeRefused(ValueError):
    """A tree sent back by a node that kcd will not unpack."""


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            yield os.path.relpath(path, root), path


def pack_tree(root: Path) -> bytes:
    """Every directory, regular file and symlink under `root` as a gzip'd tar. Hard links
    become plain files and other types (fifos, sockets) are left out: the receiver accepts
    only the first three."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for rel, path in _walk(root):
            st = os.lstat(path)
            info = tarfile.TarInfo(rel.replace(os.sep, "/"))
            info.mtime = int(st.st_mtime)
            info.mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
    return buf.getvalue()


def replace_tree(data: bytes, dest: Path, *, max_bytes: int = MAX_TREE_BYTES) -> None:
    """Make `dest` hold exactly what `data` packs: unpacked (checked) beside it, then swapped in."""
    dest = Path(dest)
    staging = dest.with_name(dest.name + ".incoming")
    old = dest.with_name(dest.name + ".previous")
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        _unpack(data, staging, max_bytes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        os.rename(dest, old)
    os.rename(staging, dest)
    shutil.rmtree(old, ignore_errors=True)


def _unpack(data: bytes, dest: Path, max_bytes: int) -> None:
    os.mkdir(dest, 0o755)
    real = os.path.realpath(dest)
    total = members = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar:
            members += 1
            total += max(m.size, 0)
            if members > MAX_MEMBERS or total > max_bytes:
                raise TreeRefused(f"the tree is over the limits ({MAX_MEMBERS} members, {max_bytes} bytes)")
            parts = PurePosixPath(m.name).parts
            if not parts or m.name.startswith("/") or ".." in parts or "\0" in m.name:
                raise TreeRefused(f"member {m.name!r}: not a relative path inside the workspace")
            target = os.path.join(real, *parts)
            parent = os.path.realpath(os.path.dirname(target))
            if os.path.commonpath([parent, real]) != real:
                raise TreeRefused(f"member {m.name!r} would be written through a link")
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                os.chmod(target, (m.mode & 0o777) | 0o700)
            elif m.issym():
                os.symlink(m.linkname, target)
            elif m.isreg():
                src = tar.extractfile(m)
                assert src is not None
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.chmod(target, m.mode & 0o7777 & ~0o6000)  # never setuid/setgid
            else:
                raise TreeRefused(f"member {m.name!r}: only directories, files and symlinks come back")


def tree_signature(root: Path) -> str:
    """Cheap change detection: names, types, sizes, modes and mtimes of everything under `root`."""
    h = hashlib.blake2b(digest_size=16)
    for rel, path in _walk(root):
        st = os.lstat(path)
        h.update(f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
