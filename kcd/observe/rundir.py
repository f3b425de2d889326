"""The run directory: where every artifact of one run is written.

Layout (compatible with the original's `logging/<ts>_agent_ws_*` tree):
  conversation/conversation.md, conversation/index.json
  raw/requests/turn_<N>.request.json, raw/responses/turn_<N>.response.json
  meta/run.json, meta/events.jsonl, meta/requests/turn_<N>_attempt_<k>.json
  errors/, artifacts/, workspace/, workspace.diff, result.json
Async writes run in a worker thread so a slow disk stalls the run's task, not the loop.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import datetime, timezone
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

_encoder = msgspec.json.Encoder(order="deterministic")
SUBDIRS = ("conversation", "raw/requests", "raw/responses", "meta/requests", "errors",
           "artifacts/tool_results", "workspace")
_SUBDIR_ORDER = tuple(dict.fromkeys(p for sub in SUBDIRS for p in (
    "/".join(sub.split("/")[:i]) for i in range(1, sub.count("/") + 2))))


def pretty_json(obj: Any) -> bytes:
    """`obj` as indented JSON bytes with a final newline."""
    return msgspec.json.format(_encoder.encode(obj), indent=2) + b"\n"


def _slug(text: str, limit: int = 32) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:limit] or "run"


def new_run_id() -> str:
    """A new random run id (12 hex digits)."""
    return secrets.token_hex(6)


def create_run_dir(root: Path, config_stem: str, run_id: str) -> Path:
    """`<root>/<UTC YYYYmmdd-HHMMSS>_agent_ws_<stem>_<short-id>`, created exclusively."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}_agent_ws_{_slug(config_stem)}_{run_id[:8]}"
    for n in range(100):
        path = root / (base if n == 0 else f"{base}-{n}")
        try:
            path.mkdir(mode=0o700)  # another user's runs are read through kcd's access rules only
        except FileExistsError:
            continue
        except FileNotFoundError:  # the first run under a new root
            root.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=0o700)
        for sub in _SUBDIR_ORDER:  # parents first: one mkdir each
            (path / sub).mkdir()
        return path
    raise RuntimeError(f"could not create a unique run directory under {root}")


Scrub = Callable[[bytes], bytes]


def _identity(data: bytes) -> bytes:
    return data


class RunDir:
    """Writes under one run directory; every byte passes the redactor first."""

    def __init__(self, path: Path, scrub: Scrub | None = None):
        self.path = path
        self._scrub = scrub or _identity

    def rel(self, *parts: str) -> Path:
        target = self.path.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    # The async writes hop to a worker thread once per write (open, write, close there) and
    # make the parent directory only when the open finds it missing: with hundreds of runs in
    # flight, every system call on the event loop waits for the GIL behind the worker threads.

    async def write_json(self, relpath: str, obj: Any) -> Path:
        return await self._write(relpath, pretty_json(obj), "wb")

    async def write_text(self, relpath: str, text: str) -> Path:
        return await self._write(relpath, text.encode("utf-8", "surrogateescape"), "wb")

    async def append_text(self, relpath: str, text: str) -> None:
        await self._write(relpath, text.encode("utf-8", "surrogateescape"), "ab")

    async def _write(self, relpath: str, data: bytes, mode: str) -> Path:
        return await anyio.to_thread.run_sync(self._write_file, relpath, data, mode)

    def _write_file(self, relpath: str, data: bytes, mode: str) -> Path:
        target = self.path / relpath
        data = self._scrub(data)
        try:
            fh = open(target, mode)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            fh = open(target, mode)
        with fh:
            fh.write(data)
        return target

    def write_json_sync(self, relpath: str, obj: Any) -> None:
        """For finalisation paths that must not be interrupted by cancellation."""
        self.write_bytes_sync(relpath, pretty_json(obj))

    def write_text_sync(self, relpath: str, text: str) -> None:
        self.write_bytes_sync(relpath, text.encode("utf-8", "surrogateescape"))

    def write_bytes_sync(self, relpath: str, data: bytes) -> None:
        """Whole or not at all (tmp + rename); a failed write (ENOSPC) leaves no tmp behind."""
        target = self.path / relpath
        tmp = target.with_suffix(target.suffix + ".tmp")
        try:
            try:
                tmp.write_bytes(self._scrub(data))
            except FileNotFoundError:  # the parent directory is made only when it is missing
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(self._scrub(data))
            os.replace(tmp, target)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
