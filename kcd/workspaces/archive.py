"""Workspace archives sent across the socket, as `docker build` sends its context.

`pack_workspace` (kcctl side) writes a gzip'd tar of a directory, skipping what
`.gitignore` files ignore and `.git` unless asked, and returns a manifest of
sha256 per file so the caller can later tell whether the directory changed.
`safe_extract` (daemon side, and `kcctl runs fetch`) unpacks only regular
files, directories and symlinks that stay inside the destination, under size
and member-count limits; anything else rejects the whole archive.
Standard library only (pathspec is imported lazily, for .gitignore rules).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_MEMBERS = 100_000


class UnsafeArchive(ValueError):
    """The archive has a member we refuse to unpack; nothing was written."""


class ArchiveTooLarge(ValueError):
    """A workspace holds more bytes of files than the limit allows."""


class Packed(NamedTuple):  # not a dataclass: kcctl run imports this module, and every ms counts
    file: IO[bytes]  # positioned at 0; gzip'd tar
    size: int
    manifest: dict[str, str]  # relpath -> sha256 (regular files)
    skipped: list[str]


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Ignore:
    """Stacked .gitignore rules: each directory's file applies below it."""

    def __init__(self) -> None:
        self._specs: list[tuple[str, object]] = []  # (dir prefix, GitIgnoreSpec)

    def push_dir(self, root: Path, rel_dir: str) -> None:
        ignore = root / rel_dir / ".gitignore" if rel_dir else root / ".gitignore"
        if ignore.is_file():
            import pathspec  # lazy: only packing needs it

            lines = ignore.read_text(encoding="utf-8", errors="replace").splitlines()
            self._specs.append((rel_dir, pathspec.GitIgnoreSpec.from_lines(lines)))

    def ignored(self, rel: str, is_dir: bool) -> bool:
        hit = False
        for prefix, spec in self._specs:
            if prefix and not rel.startswith(prefix + "/"):
                continue
            sub = rel[len(prefix) + 1:] if prefix else rel
            result = spec.check_file(sub + ("/" if is_dir else ""))  # type: ignore[attr-defined]
            if result.include is not None:
                hit = bool(result.include)
        return hit


def iter_workspace(root: Path, *, include_git: bool = False) -> Iterator[tuple[str, Path, bool]]:
    """(relpath, path, is_dir) for what a pack includes, in a stable order; never follows symlinks."""
    ignore = _Ignore()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        ignore.push_dir(root, rel_dir)
        base = root / rel_dir if rel_dir else root
        try:
            entries = sorted(os.scandir(base), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if entry.name == ".git" and not include_git:
                continue
            if ignore.ignored(rel, is_dir):
                continue
            yield rel, Path(entry.path), is_dir
            if is_dir:
                subdirs.append(rel)
        stack.extend(reversed(subdirs))


def workspace_manifest(root: Path, *, include_git: bool = False) -> dict[str, str]:
    """relpath -> sha256 of every regular file a workspace archive would hold."""
    return {rel: sha256_file(path) for rel, path, is_dir in iter_workspace(root, include_git=include_git)
            if not is_dir and path.is_file() and not path.is_symlink()}


def _pack(entries: Iterable[tuple[str, Path]], max_bytes: int, what: Path) -> Packed:
    out = tempfile.SpooledTemporaryFile(max_size=8 << 20)
    manifest: dict[str, str] = {}
    skipped: list[str] = []
    total = 0
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
        for rel, path in entries:
            st = path.lstat()
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                skipped.append(rel)  # sockets, fifos, devices
                continue
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                total += info.size
                if total > max_bytes:
                    raise ArchiveTooLarge(f"{what} holds more than {max_bytes} bytes of files")
                with open(path, "rb") as fh:
                    data = fh.read()
                manifest[rel] = hashlib.sha256(data).hexdigest()
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    size = out.tell()
    out.seek(0)
    return Packed(file=out, size=size, manifest=manifest, skipped=skipped)


def pack_workspace(root: Path, *, include_git: bool = False, max_bytes: int = DEFAULT_MAX_BYTES) -> Packed:
    """A gzip'd tar of `root` as an upload (ignore rules applied; spooled to disk past 8 MiB)."""
    root = root.resolve()
    entries = ((rel, path) for rel, path, _ in iter_workspace(root, include_git=include_git))
    return _pack(entries, max_bytes, root)


def pack_all(root: Path, *, max_bytes: int = 1 << 40) -> Packed:
    """Everything under `root`, no ignore rules: a run's final workspace for `runs fetch`."""
    def entries() -> Iterator[tuple[str, Path]]:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = Path(dirpath) / name
                yield path.relative_to(root).as_posix(), path

    return _pack(entries(), max_bytes, root)


def _check_member(m: tarfile.TarInfo, dest: Path) -> None:
    name = m.name
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise UnsafeArchive(f"member {name!r}: absolute or malformed path")
    if any(p == ".." for p in parts):
        raise UnsafeArchive(f"member {name!r}: '..' in path")
    if m.islnk():
        raise UnsafeArchive(f"member {name!r}: hard links are not accepted")
    if m.issym():
        target = m.linkname
        if target.startswith("/"):
            raise UnsafeArchive(f"member {name!r}: symlink to an absolute path ({target})")
        resolved = os.path.normpath(os.path.join(os.path.dirname(name), target))
        if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
            raise UnsafeArchive(f"member {name!r}: symlink pointing outside the workspace ({target})")
    elif not (m.isreg() or m.isdir()):
        raise UnsafeArchive(f"member {name!r}: type not allowed (only files, directories, symlinks)")


def check_archive(fileobj: IO[bytes], *, max_bytes: int = DEFAULT_MAX_BYTES,
                  max_members: int = DEFAULT_MAX_MEMBERS) -> int:
    """Validate every member without writing anything (one bounded streaming pass, see
    `tarcheck`); returns the member count."""
    from kcd.workspaces.tarcheck import ArchiveRefused, ArchiveTooBig, validate_tar  # the daemon's side only

    try:
        return validate_tar(fileobj, max_bytes=max_bytes, max_members=max_members)
    except ArchiveRefused as exc:
        raise UnsafeArchive(str(exc)) from None
    except ArchiveTooBig as exc:
        raise ArchiveTooLarge(str(exc)) from None
    except OSError as exc:
        raise UnsafeArchive(f"not a readable archive: {exc}") from None
    finally:
        fileobj.seek(0)


def safe_extract(fileobj: IO[bytes], dest: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_members: int = DEFAULT_MAX_MEMBERS) -> dict[str, str]:
    """Unpack into `dest` (created; must be empty) after checking every member.

    Returns the manifest (relpath -> sha256) of the regular files written.
    """
    check_archive(fileobj, max_bytes=max_bytes, max_members=max_members)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise UnsafeArchive(f"{dest} is not empty")
    real_dest = os.path.realpath(dest)
    manifest: dict[str, str] = {}
    with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
        for m in tar:
            _check_member(m, dest)
            target = os.path.join(real_dest, *PurePosixPath(m.name).parts)
            parent = os.path.realpath(os.path.dirname(target))
            # A symlink unpacked earlier must not redirect a later member outside.
            if os.path.commonpath([parent, real_dest]) != real_dest:
                raise UnsafeArchive(f"member {m.name!r} would be written through a link outside")
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                os.chmod(target, 0o755)
            elif m.issym():
                os.makedirs(parent, exist_ok=True)
                os.symlink(m.linkname, target)
            else:
                os.makedirs(parent, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                digest = hashlib.sha256()
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o755 if m.mode & 0o111 else 0o644)
                with os.fdopen(fd, "wb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        digest.update(chunk)
                        out.write(chunk)
                manifest[m.name] = digest.hexdigest()
    fileobj.seek(0)
    return manifest
