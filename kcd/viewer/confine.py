"""Which files of a run directory the viewer serves, and opening one without leaving it.

Only the diagnostic files a run writes (the transcript, events, per-attempt request and
response records, tool calls and results, errors, metrics, the diff): never the workspace,
the seed archive or anything a tool could have planted. A path is checked by its parts
(no `..`, `.`, empty part, backslash or NUL), then opened one component at a time below the
run directory with O_NOFOLLOW, so a symlink anywhere on the way is refused even if it
appears between the check and the open.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from kcd.errors import BadRequest, NotFound, TooLarge

__all__ = ["MAX_FILE_BYTES", "list_files", "read_confined", "served"]

MAX_FILE_BYTES = 8 * 1024 * 1024
_FILES = frozenset({"result.json", "workspace.diff", "meta/events.jsonl", "meta/provider_metrics.json",
                    "meta/capability_probes.json", "conversation/conversation.md", "conversation/index.json",
                    "prompts/compiled_system.md", "replay.json"})
_DIRS = ("meta/requests/", "raw/requests/", "raw/responses/", "provider_native/tool_calls/",
         "provider_native/tool_results/", "provider_native/tools_provided/", "errors/")


def served(rel: str) -> bool:
    """Whether `rel` (a `/`-separated path inside a run directory) is on the list."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        return False
    if rel in _FILES:
        return True
    return any(rel.startswith(d) and "/" not in rel[len(d):] for d in _DIRS)


def read_confined(run_dir: Path, rel: str, limit: int = MAX_FILE_BYTES, *, truncate: bool = False) -> bytes:
    """The bytes of `run_dir/rel`: BadRequest for a path off the list or with a symlink on it,
    NotFound for one that is not there, TooLarge past `limit` (or its first `limit` bytes
    with `truncate`)."""
    if not served(rel):
        raise BadRequest("path_refused", "only the run's diagnostic files are served "
                                         "(no workspace files, no '..', no absolute paths)")
    *dirs, name = rel.split("/")
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(run_dir, flags_dir))
            for part in dirs:
                fds.append(os.open(part, flags_dir, dir_fd=fds[-1]))
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fds[-1])
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink (or a file) where a part should be
                raise BadRequest("path_refused", f"{rel} leads through a symbolic link") from None
            raise NotFound("file_not_found", f"the run has no file {rel}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise BadRequest("path_refused", f"{rel} is not a regular file")
            if st.st_size > limit and not truncate:
                raise TooLarge("file_too_large", f"{rel} is {st.st_size} bytes; the viewer serves up to {limit}")
            return fh.read(limit + 1)[:limit]
    finally:
        for d in fds:
            os.close(d)


def list_files(run_dir: Path) -> list[str]:
    """The served files present in `run_dir`, sorted; symlinks are left out."""
    found: list[str] = []
    for rel in sorted(_FILES):
        p = run_dir / rel
        if not p.is_symlink() and p.is_file():
            found.append(rel)
    for d in _DIRS:
        base = run_dir / d
        if base.is_symlink() or not base.is_dir() or any(q.is_symlink() for q in base.parents if run_dir in q.parents):
            continue
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False):
                found.append(d + entry.name)
    return found
