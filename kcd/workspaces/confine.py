"""Workspace confinement, seeding and diffing.

Every path a tool receives goes through `resolve_in_workspace`: the real path
(symlinks resolved, including dangling ones, which `os.path.realpath` follows
through `readlink`) must stay inside the real workspace root. The original
checked a string prefix and silently re-rooted absolute paths (defect 41).

This guards the file tools only, which also refuse files with several hard
links (a shell may have linked a file from outside). Shell commands are
confined by the OS sandbox (`kcd.sandbox`), not by path checks.
"""

from __future__ import annotations

import difflib
import os
import shutil
import stat
import tempfile
from pathlib import Path

__all__ = [
    "WorkspaceEscape",
    "prepare_workspace",
    "relative_to_workspace",
    "resolve_in_workspace",
    "resolve_tool_path",
    "workspace_diff",
    "write_file_atomic",
]

# Directory names left out of diffs: VCS internals are noise, never the agent's work product.
_DIFF_SKIP_DIRS = frozenset({".git", ".hg", ".svn"})
_HARD_LINK_TEXT = "[kcd: a file with several hard links; its contents are not read]"
_BINARY_SNIFF_BYTES = 8000  # the window git inspects for NUL bytes


class WorkspaceEscape(ValueError):
    """A tool path that is not allowed to leave (or name) anything outside the workspace."""


def resolve_in_workspace(root: Path, user_path: str) -> Path:
    """Return the real path of `user_path` inside `root`, or raise `WorkspaceEscape`.

    Works for targets that do not exist yet: the existing part of the chain is
    resolved (symlinks included) and the rest is appended lexically, so a later
    create cannot land outside the workspace either.
    """
    if not isinstance(user_path, str):
        raise WorkspaceEscape(f"path must be a string, got {type(user_path).__name__}")
    shown = repr(user_path)
    if "\x00" in user_path:
        raise WorkspaceEscape(f"path {shown} contains a NUL byte")
    if os.path.isabs(user_path):
        raise WorkspaceEscape(
            f"path {shown} is absolute; use a path relative to the workspace root"
        )
    if user_path.startswith("~"):
        # Never expanded: refuse rather than create a literal '~' directory the model did not mean.
        raise WorkspaceEscape(
            f"path {shown} refers to a home directory; use a path relative to the workspace root"
        )
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, user_path or "."))
    if os.path.commonpath([real_root, candidate]) != real_root:
        raise WorkspaceEscape(
            f"path {shown} resolves outside the workspace (via '..' or a symlink); "
            "use a path inside the workspace root"
        )
    if _is_hard_linked(candidate):
        raise WorkspaceEscape(
            f"path {shown} is a file with several hard links; its other names may be outside the "
            "workspace, so the file tools do not touch it (copy it instead of linking it)"
        )
    return Path(candidate)


def _is_hard_linked(path: str) -> bool:
    """A regular file with more than one name: a shell could have linked a file from outside."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink > 1


def resolve_tool_path(root: Path, user_path: str) -> Path:
    """Like `resolve_in_workspace`, but an absolute path naming something inside the
    workspace is accepted (OpenCode's tools ask models for absolute paths).

    The absolute path must start with the workspace root as given or as resolved;
    the remainder then goes through `resolve_in_workspace`, so `..` and symlinks
    are still resolved for real and escapes refused.
    """
    if isinstance(user_path, str) and os.path.isabs(user_path) and "\x00" not in user_path:
        for base in (os.path.realpath(root), os.path.abspath(root)):
            if user_path == base or user_path.startswith(base.rstrip("/") + "/"):
                rest = user_path[len(base):].lstrip("/") or "."
                try:
                    return resolve_in_workspace(root, rest)
                except WorkspaceEscape:
                    raise WorkspaceEscape(
                        f"path {user_path!r} resolves outside the workspace (via '..' or a symlink); "
                        "use a path inside the workspace root"
                    ) from None
        raise WorkspaceEscape(
            f"path {user_path!r} is absolute and outside the workspace; "
            "use a path relative to the workspace root"
        )
    return resolve_in_workspace(root, user_path)


def relative_to_workspace(root: Path, resolved: Path) -> str:
    """Workspace-relative display form of a path returned by `resolve_in_workspace`."""
    return os.path.relpath(resolved, os.path.realpath(root))


def write_file_atomic(path: str, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` (a path already confined) through a sibling temp file and a rename.

    A hard link planted in the workspace is replaced, never written through (path
    checks cannot see hard links), and readers never see half a file. `mode`
    defaults to 0o644; pass the old file's mode to keep it.
    """
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".kcd-write-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644 if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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


# --------------------------------------------------------------------------- diff


def workspace_diff(seed: Path | None, final: Path, *, max_file_bytes: int = 2 * 1024 * 1024) -> str:
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
