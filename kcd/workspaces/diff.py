"""The run's `workspace.diff`: a unified diff (git-style headers) from the seed to the final tree.

Pure Python (difflib), so no git process and no git configuration is involved.

The seed of an uploaded workspace is its archive in the run directory (`meta/seed.tar.gz`,
daemon-owned, validated when it was uploaded). `diff_against_seed` reads its members
straight from the archive, one at a time, and diffs each against the final tree at once, so
only one seed file (at most `max_file_bytes`) is held in memory. Anything an extraction
would treat specially (a refused or conflicting member, a limit, a link named like a skipped
directory, a damaged archive) sends it back to the old way: extract to a temporary directory
and diff two trees, which gives the same text or raises the same error.
"""

from __future__ import annotations

import difflib
import os
import posixpath
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from kcd.workspaces.archive import DEFAULT_MAX_MEMBERS
from kcd.workspaces.seed import SEED_ARCHIVE, seed_from_archive

__all__ = ["diff_against_seed", "workspace_diff"]

# Directory names left out of diffs: VCS internals are noise, never the agent's work product.
_DIFF_SKIP_DIRS = frozenset({".git", ".hg", ".svn"})
_HARD_LINK_TEXT = "[kcd: a file with several hard links; its contents are not read]"
_BINARY_SNIFF_BYTES = 8000  # the window git inspects for NUL bytes
_MAX_FILE_BYTES = 2 * 1024 * 1024  # larger files are reported, not diffed


def diff_against_seed(run_dir: Path, seed_dir: Path | None, workspace: Path, max_bytes: int) -> str:
    """`workspace_diff` from the run's seed (its archive, else `seed_dir`) to `workspace`."""
    archive = run_dir / SEED_ARCHIVE
    if archive.is_file():
        diff = _diff_from_archive(archive, workspace, max_bytes)
        if diff is not None:
            return diff
        with tempfile.TemporaryDirectory(prefix="kcd-seed-") as tmp:
            seed = Path(tmp) / "seed"
            seed_from_archive(archive, seed, max_bytes)
            return workspace_diff(seed, workspace)
    return workspace_diff(seed_dir, workspace)


def workspace_diff(seed: Path | None, final: Path, *, max_file_bytes: int = _MAX_FILE_BYTES) -> str:
    """Unified diff (git-style headers) from the seed tree to the final workspace.

    Pure Python (difflib), so no git process and no git configuration is
    involved. Symlinks are compared by their target text and never followed.
    Binary files and files over `max_file_bytes` are reported, not diffed.
    """
    old = _snapshot(seed) if seed is not None else {}
    new = _snapshot(final)
    parts: list[str] = []
    for rel in sorted(old.keys() | new.keys()):
        parts.append(_file_diff(rel, old.get(rel), new.get(rel), max_file_bytes))
    return "".join(parts)


class _Entry:
    __slots__ = ("path", "mode", "link")

    def __init__(self, path: str, mode: str, link: str | None) -> None:
        self.path = path
        self.mode = mode  # git mode string: 100644, 100755, 120000
        self.link = link  # symlink target text, None for regular files

    def read(self) -> bytes:
        if self.link is not None:
            return self.link.encode("utf-8", "surrogateescape")
        with open(self.path, "rb") as fh:
            return fh.read()

    def size(self) -> int:
        return len(self.link) if self.link is not None else os.lstat(self.path).st_size


class _Held(_Entry):
    """A seed file read from the archive: its bytes, or None when it is over the size cap (a
    file that large is reported by its size alone and never read)."""

    __slots__ = ("data", "length")

    def __init__(self, mode: str, data: bytes | None, length: int) -> None:
        super().__init__("", mode, None)
        self.data = data
        self.length = length

    def read(self) -> bytes:
        assert self.data is not None
        return self.data

    def size(self) -> int:
        return self.length


class _Unusual(Exception):
    """The archive holds something an extraction treats specially: use the extraction."""


def _diff_from_archive(archive: Path, final: Path, max_bytes: int, *,
                       max_file_bytes: int = _MAX_FILE_BYTES) -> str | None:
    """`workspace_diff(<archive extracted>, final)` without extracting; None if unusual."""
    new = _snapshot(final)
    parts: dict[str, str] = {}
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for rel, old in _seed_members(tar, max_bytes, max_file_bytes):
                parts[rel] = _file_diff(rel, old, new.get(rel), max_file_bytes)
    except (_Unusual, tarfile.TarError, OSError, EOFError, zlib.error):
        return None
    for rel in new.keys() - parts.keys():
        parts[rel] = _file_diff(rel, None, new[rel], max_file_bytes)
    return "".join(parts[rel] for rel in sorted(parts))


def _seed_members(tar: tarfile.TarFile, max_bytes: int, max_file_bytes: int) -> Iterator[tuple[str, _Entry]]:
    """(relpath, entry) of what `_snapshot` would list in the extracted archive, in archive
    order; raises `_Unusual` where `safe_extract` would refuse, fail or differ."""
    dirs: set[str] = set()  # directories the extraction creates, explicitly or on the way
    others: set[str] = set()  # files and symlinks
    members = total = 0
    for m in tar:
        members += 1
        name = m.name
        parts = PurePosixPath(name).parts
        if (members > DEFAULT_MAX_MEMBERS or not parts or name.startswith("/") or "\\" in name
                or "\0" in name or ".." in parts):
            raise _Unusual
        rel = "/".join(parts)
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if any(a in others for a in ancestors):
            raise _Unusual  # written through a link, or a file used as a directory
        if m.isdir():
            if rel in others:
                raise _Unusual
            dirs.add(rel)
            dirs.update(ancestors)
            continue
        if rel in others or rel in dirs:
            raise _Unusual  # the extraction refuses to overwrite
        others.add(rel)
        dirs.update(ancestors)
        skipped = any(part in _DIFF_SKIP_DIRS for part in parts[:-1])
        if m.issym():
            target = m.linkname
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            if (target.startswith("/") or resolved == ".." or resolved.startswith("../")
                    or parts[-1] in _DIFF_SKIP_DIRS):
                raise _Unusual  # refused; or a link `_snapshot` lists only if it is not a directory's
            if not skipped:
                yield rel, _Entry("", "120000", target)
        elif m.isreg():
            total += m.size
            if total > max_bytes:
                raise _Unusual
            if not skipped:
                data = None
                if m.size <= max_file_bytes:
                    src = tar.extractfile(m)
                    assert src is not None
                    data = src.read()
                # The extraction writes 0o755 or 0o644 (under the daemon's umask).
                yield rel, _Held("100755" if m.mode & 0o111 else "100644", data, m.size)
        else:
            raise _Unusual


def _snapshot(root: Path) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(real_root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in _DIFF_SKIP_DIRS]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, real_root).replace(os.sep, "/")
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = _Entry(path, "120000", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                mode = "100755" if st.st_mode & stat.S_IXUSR else "100644"
                # A hard-linked file may be a host file a tool linked in: never read it into the diff.
                entries[rel] = _Entry(path, mode, _HARD_LINK_TEXT if st.st_nlink > 1 else None)
    return entries


def _file_diff(rel: str, old: _Entry | None, new: _Entry | None, max_bytes: int) -> str:
    a_name = f"a/{rel}" if old is not None else "/dev/null"
    b_name = f"b/{rel}" if new is not None else "/dev/null"
    header = [f"diff --git a/{rel} b/{rel}\n"]
    if old is None and new is not None:
        header.append(f"new file mode {new.mode}\n")
    elif new is None and old is not None:
        header.append(f"deleted file mode {old.mode}\n")
    elif old is not None and new is not None and old.mode != new.mode:
        header += [f"old mode {old.mode}\n", f"new mode {new.mode}\n"]

    too_big = any(e is not None and e.size() > max_bytes for e in (old, new))
    if too_big:
        return "".join(header) + f"Files {a_name} and {b_name} differ (larger than {max_bytes} bytes, not diffed)\n"
    old_bytes = old.read() if old is not None else b""
    new_bytes = new.read() if new is not None else b""
    if old_bytes == new_bytes:
        # Same content: only a mode change (or an empty add/delete) is worth reporting.
        return "".join(header) if len(header) > 1 else ""
    old_text, new_text = _as_text(old_bytes), _as_text(new_bytes)
    if old_text is None or new_text is None:
        return "".join(header) + f"Binary files {a_name} and {b_name} differ\n"

    body: list[str] = []
    diff = difflib.unified_diff(_lines(old_text), _lines(new_text), a_name, b_name, n=3)
    for i, line in enumerate(diff):
        # The first two lines are the ---/+++ headers; after them content lines always
        # start with ' ', '-' or '+', so '@@' can only be a hunk header.
        if i < 2 or line.startswith("@@"):
            body.append(line)
        elif line.endswith("\n"):
            body.append(line)
        else:
            body.append(line + "\n\\ No newline at end of file\n")
    return "".join(header + body)


def _as_text(data: bytes) -> str | None:
    if b"\x00" in data[:_BINARY_SNIFF_BYTES]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _lines(text: str) -> list[str]:
    """Split on '\\n' only (str.splitlines would also split on '\\r', form feeds, ...)."""
    if not text:
        return []
    lines = [line + "\n" for line in text.split("\n")]
    if text.endswith("\n"):
        lines.pop()  # the empty piece after the final newline
    else:
        lines[-1] = lines[-1][:-1]
    return lines
