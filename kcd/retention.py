"""Retention: run directories past `logging.retention.max_runs`, and stale uploads.

Run directories. A retention scope is one user and one config file: the runs with the
same `peer_uid` and the same `config_path` as submitted (inline configs: `None`). After a
run of the scope ends, if its config sets `logging.retention.max_runs: N` (N > 0), only the
newest N *finished* run directories of the scope are kept (newest by start time); older
ones are deleted. A run in flight is never deleted nor counted, nor an interrupted run
recovery has not finished yet. The state store keeps the row of a deleted run, with
`pruned_at` set, so `kcctl runs show` says what happened instead of "not found".

Safety: a directory is deleted only if it is a real directory (not a symbolic link)
directly inside the runs root, as resolved now; `shutil.rmtree` on Linux works through
directory descriptors and never follows a link inside the tree. Anything else is left
alone and logged. Deletion happens in one worker thread, at most PRUNE_BATCH directories
per pass, one pass at a time (a lock), so runs that end together never over-prune: each
pass recomputes the scope from the store after the previous one marked its deletions.

Uploads. Workspace uploads nobody claimed are deleted after UPLOAD_TTL_S (the same age
rule as at start-up), checked every UPLOAD_PRUNE_INTERVAL_S while the daemon runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Container
from pathlib import Path
from typing import Literal, Protocol

import anyio
import msgspec

from kcd.api.types import RunInfo
from kcd.observe.eventlog import utc_now
from kcd.state import StateStore

log = logging.getLogger("kcd.retention")

PRUNE_BATCH = 64  # run directories deleted per pass at most; the rest go on the next pass
UPLOAD_PRUNE_INTERVAL_S = 300.0

Outcome = Literal["deleted", "missing", "refused"]


def delete_run_dir(runs_root: Path, run_dir: str) -> tuple[Outcome, str]:
    """Delete one run directory if it is safe to; (outcome, why). Never raises for the
    path's own shape; OSError from the deletion itself propagates."""
    path = Path(run_dir)
    root = os.path.realpath(runs_root)
    if path.name in ("", ".", "..") or os.path.realpath(path.parent) != root:
        return "refused", f"not directly inside the runs root {root}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing", "already gone"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return "refused", "not a directory (a symbolic link or a file stands in its place)"
    shutil.rmtree(path)  # descriptor-based: refuses a top-level link, never follows one inside
    return "deleted", "deleted"


class RunRetention:
    """Prunes one retention scope after each of its runs ends (see the module doc)."""

    def __init__(self, runs_root: Path, store: StateStore, active: Container[str]):
        self.runs_root = runs_root
        self.store = store
        self.active = active  # ids of runs in flight (RunManager's table)
        self._lock: anyio.Lock | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    async def after_run(self, info: RunInfo, max_runs: int) -> None:
        """Keep the newest `max_runs` finished runs of `info`'s scope. Never raises: it runs
        in the daemon's task group."""
        if max_runs <= 0:
            return
        if self._lock is None:  # made on the event loop, on first use
            self._lock, self._limiter = anyio.Lock(), anyio.CapacityLimiter(1)
        try:
            async with self._lock:
                with anyio.CancelScope(shield=True):  # what is deleted is also marked
                    await self._pass(info, max_runs)
        except Exception:
            log.exception("retention: pruning after run %s failed", info.id)

    async def _pass(self, info: RunInfo, max_runs: int) -> None:
        finished = [r for r in self.store.finished_in_scope(info.peer_uid, info.config_path)
                    if r.id not in self.active]
        excess = finished[max_runs:]
        if not excess:
            return
        batch = excess[:PRUNE_BATCH]
        if len(excess) > len(batch):
            log.info("retention: %d run(s) over the limit; %d now, the rest after the next run",
                     len(excess), len(batch))
        outcomes = await anyio.to_thread.run_sync(self._delete_all, batch, limiter=self._limiter)
        for run, (outcome, why) in zip(batch, outcomes):
            if outcome == "refused":
                log.warning("retention: run %s: %s left alone: %s", run.id, run.run_dir, why)
                continue
            self.store.save_run(msgspec.structs.replace(run, pruned_at=utc_now()))
            log.info("retention: pruned run %s (%s; logging.retention.max_runs=%d, uid %s, config %s): %s",
                     run.id, run.run_dir, max_runs, run.peer_uid, run.config_path or "<inline>", why)

    def _delete_all(self, runs: list[RunInfo]) -> list[tuple[Outcome, str]]:
        out: list[tuple[Outcome, str]] = []
        for run in runs:
            try:
                out.append(delete_run_dir(self.runs_root, run.run_dir))
            except OSError as exc:
                out.append(("refused", f"{type(exc).__name__}: {exc}"))
        return out


async def prune_uploads_forever(uploads: UploadPruner, interval_s: float = UPLOAD_PRUNE_INTERVAL_S) -> None:
    """Every `interval_s`, delete stale unclaimed uploads by the upload store's own age rule
    (`UploadStore.prune`, also run at start-up). A failed pass is logged and retried."""
    while True:
        await anyio.sleep(interval_s)
        try:
            await anyio.to_thread.run_sync(uploads.prune)
        except Exception as exc:  # e.g. an upload taken by its run while the pass ran
            log.info("retention: upload pruning pass failed (%s: %s); retried in %.0fs",
                     type(exc).__name__, exc, interval_s)
        else:
            log.debug("retention: stale uploads pruned from %s", uploads.root)


class UploadPruner(Protocol):
    root: Path

    def prune(self) -> None: ...
