"""The run directory: where every artifact of one run is written.

Layout (compatible with the original's `logging/<ts>_agent_ws_*` tree):
  conversation/conversation.md, conversation/index.json
  raw/requests/turn_<N>.request.json, raw/responses/turn_<N>.response.json
  meta/run.json, meta/events.jsonl, meta/requests/turn_<N>_attempt_<k>.json
  errors/, artifacts/, workspace/, workspace.diff, result.json
Writes go through aiofiles so a slow disk stalls the run's task, not the loop.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import datetime, timezone
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiofiles
import msgspec

_encoder = msgspec.json.Encoder(order="deterministic")
SUBDIRS = ("conversation", "raw/requests", "raw/responses", "meta/requests", "errors",
           "artifacts/tool_results", "workspace")


def pretty_json(obj: Any) -> bytes:
    return msgspec.json.format(_encoder.encode(obj), indent=2) + b"\n"


def _slug(text: str, limit: int = 32) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:limit] or "run"


def new_run_id() -> str:
    return secrets.token_hex(6)


def create_run_dir(root: Path, config_stem: str, run_id: str) -> Path:
    """`<root>/<UTC YYYYmmdd-HHMMSS>_agent_ws_<stem>_<short-id>`, created exclusively."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}_agent_ws_{_slug(config_stem)}_{run_id[:8]}"
    root.mkdir(parents=True, exist_ok=True)
    for n in range(100):
        path = root / (base if n == 0 else f"{base}-{n}")
        try:
            path.mkdir(mode=0o700)  # another user's runs are read through kcd's access rules only
        except FileExistsError:
            continue
        for sub in SUBDIRS:
            (path / sub).mkdir(parents=True, exist_ok=True)
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

    async def write_json(self, relpath: str, obj: Any) -> Path:
        target = self.rel(relpath)
        async with aiofiles.open(target, "wb") as fh:
            await fh.write(self._scrub(pretty_json(obj)))
        return target

    async def write_text(self, relpath: str, text: str) -> Path:
        target = self.rel(relpath)
        async with aiofiles.open(target, "wb") as fh:
            await fh.write(self._scrub(text.encode("utf-8", "surrogateescape")))
        return target

    async def append_text(self, relpath: str, text: str) -> None:
        target = self.rel(relpath)
        async with aiofiles.open(target, "ab") as fh:
            await fh.write(self._scrub(text.encode("utf-8", "surrogateescape")))

    def write_json_sync(self, relpath: str, obj: Any) -> None:
        """For finalisation paths that must not be interrupted by cancellation."""
        self.write_bytes_sync(relpath, pretty_json(obj))

    def write_text_sync(self, relpath: str, text: str) -> None:
        self.write_bytes_sync(relpath, text.encode("utf-8", "surrogateescape"))

    def write_bytes_sync(self, relpath: str, data: bytes) -> None:
        """Whole or not at all (tmp + rename); a failed write (ENOSPC) leaves no tmp behind."""
        target = self.rel(relpath)
        tmp = target.with_suffix(target.suffix + ".tmp")
        try:
            tmp.write_bytes(self._scrub(data))
            os.replace(tmp, target)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
