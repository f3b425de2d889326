"""One turn of a run on whichever Ray node the scheduler picked (runs inside a Ray worker).

The node keeps the run's workspace in a cache directory between turns; `version` says
which snapshot kcd's copy is at. On a cache miss (first turn here, another node had the
run, the cache was cleaned) the snapshot is fetched from the object store (`snapshot` is
a one-element list, so Ray does not fetch it unless it is needed) and unpacked. After the
calls, a changed workspace goes back packed; an unchanged one does not. Shell calls run in
the worker process's tool host, kept between turns (`WorkerToolHost`).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.tools import execute_calls
from kcd.rayplane.wsync import pack_tree, replace_tree, tree_signature
from kcd.sandbox.host import ToolHost

__all__ = ["WorkerToolHost", "cache_root", "release_on_node", "run_turn_on_node"]

_STALE_S = 24 * 3600.0  # caches of runs nobody released (a driver that died) are removed after a day


class WorkerToolHost:
    """The tool host of this Ray worker process, kept between the turns it runs.

    Ray runs many tasks in one worker process, one after another. A tool host costs ~130 ms to
    start and stop (its cgroup tree, its /etc view, a spare supervisor) against ~10 ms for a call
    on a running one: started per turn, it was most of a shell turn's time on Ray. The worker
    process is its owner, so this is kcd's one piece of per-process state: made on the worker's
    first shell call, closed when the worker exits; a worker killed outright closes its end of
    the helper's channel, and the helper exits on that. Like kcd's own host under the in-process
    executor it serves every run: it holds no keys (an allow-listed environment) and nothing of
    a run (each call carries its run's scope and limits; a cancelled call is killed when its
    control socket closes, whatever the host's lifetime).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._host: ToolHost | None = None
        self._pid = 0

    def get(self) -> ToolHost:
        with self._lock:
            if self._host is None or self._pid != os.getpid():  # none yet, or a forked copy
                self._host, self._pid = ToolHost(), os.getpid()  # the helper starts on first use
                atexit.register(self._host.close)
            return self._host


_WORKER_HOST = WorkerToolHost()  # this worker process's (see the class)


def cache_root() -> Path:
    root = Path(tempfile.gettempdir()) / f"kylecode-ws-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def _dir_of(run: str, node_id: str) -> Path:
    # Per node, even when nodes share a host (and its /tmp): each keeps its own copy.
    return cache_root() / f"{node_id[:16]}-{hashlib.sha256(run.encode()).hexdigest()[:24]}"


def run_turn_on_node(run: str, version: int, snapshot: list[Any], calls: list[ToolInvocation],
                     settings: ToolSettings) -> tuple[list[ToolOutcome], bytes | None, str, str]:
    """(outcomes, the packed workspace if the turn changed it, this node's id, the path used)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    base = _dir_of(run, node_id)
    workspace = base / "workspace"
    marker = base / "version"
    have = marker.read_text() if marker.is_file() else None
    if have != str(version) or not workspace.is_dir():
        base.mkdir(mode=0o700, exist_ok=True)
        replace_tree(ray.get(snapshot[0]), workspace)
        marker.write_text(str(version))
    before = tree_signature(workspace)
    outcomes = execute_calls(str(workspace), calls, settings, host=_WORKER_HOST.get())
    packed = None
    if tree_signature(workspace) != before:
        packed = pack_tree(workspace)
        marker.write_text(str(version + 1))
    return outcomes, packed, node_id, str(workspace)


def release_on_node(run: str) -> None:
    """Remove the run's cache here, and any cache left unused for a day."""
    import ray

    shutil.rmtree(_dir_of(run, ray.get_runtime_context().get_node_id()), ignore_errors=True)
    now = time.time()
    for entry in cache_root().iterdir():
        try:
            if now - entry.stat().st_mtime > _STALE_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass
