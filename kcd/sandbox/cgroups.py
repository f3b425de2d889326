"""Per-call cgroups: a process cap, a memory cap, and a complete kill.

Layout: `<own cgroup>/kylecode-h<helper pid>/<run scope>/call-<n>`, in the v1
`pids` hierarchy and, when writable, the v1 `memory` hierarchy. The run scope
carries the per-run caps; the call group nested in it the per-call caps, so one
run's calls together cannot exceed the run's caps (v1 pids and memory limits
are hierarchical).

Used where the tool host may write those hierarchies (root, or a delegated
subtree). A pure cgroup v2 host (`/sys/fs/cgroup/cgroup.controllers`) with a
writable own cgroup gets the same through its unified tree, with
`cgroup.kill`. Where neither works, `CgroupTree.create` returns None and the
supervisor caps processes with RLIMIT_NPROC inside a user namespace instead.

Standard library only.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

__all__ = ["CallGroup", "CgroupTree"]

_V1_ROOT = "/sys/fs/cgroup"
_KILL_ROUNDS_S = 10.0


def _own_path(controller: str) -> str | None:
    """This process's cgroup path in `controller`'s hierarchy ("" for v2's unified line)."""
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controller in controllers.split(","):
                    return path
    except OSError:
        return None
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _make_dir(parent: str, name: str) -> str | None:
    path = os.path.join(parent, name)
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except OSError:
        return None
    return path


@dataclass
class CgroupTree:
    """The helper's own subtrees; `memory` is None when that hierarchy is not writable."""

    pids: str
    memory: str | None
    version: int  # 1 or 2 (unified: `pids` and `memory` are the same directory)
    homes: list[str]  # the tool host's own cgroup per hierarchy, in the order of `pids`, `memory`

    @classmethod
    def create(cls, tag: str) -> CgroupTree | None:
        unified = os.path.join(_V1_ROOT, "cgroup.controllers")
        if os.path.exists(unified):
            return cls._create_v2(tag)
        own = _own_path("pids")
        if own is None or not os.path.isdir(os.path.join(_V1_ROOT, "pids")):
            return None
        pids = _make_dir(os.path.join(_V1_ROOT, "pids") + own, f"kylecode-{tag}")
        if pids is None or not os.access(os.path.join(pids, "cgroup.procs"), os.W_OK):
            return None
        homes = [os.path.join(_V1_ROOT, "pids") + own]
        memory = None
        own_mem = _own_path("memory")
        if own_mem is not None and os.path.isdir(os.path.join(_V1_ROOT, "memory")):
            memory = _make_dir(os.path.join(_V1_ROOT, "memory") + own_mem, f"kylecode-{tag}")
            if memory is not None:
                homes.append(os.path.join(_V1_ROOT, "memory") + own_mem)
        tree = cls(pids=pids, memory=memory, version=1, homes=homes)
        tree.sweep_stale()
        return tree

    @classmethod
    def _create_v2(cls, tag: str) -> CgroupTree | None:
        # Only a subtree we may write with the pids controller delegated to it; processes
        # may not live in a cgroup that enables controllers for its children, so our tree
        # is a leaf-free parent of its own.
        own = _own_path("")
        if own is None:
            return None
        parent = _V1_ROOT + own
        try:
            if "pids" not in _read(os.path.join(parent, "cgroup.subtree_control")).split():
                return None
        except OSError:
            return None
        base = _make_dir(parent, f"kylecode-{tag}")
        if base is None:
            return None
        try:
            controllers = set(_read(os.path.join(base, "cgroup.controllers")).split())
            _write(os.path.join(base, "cgroup.subtree_control"),
                   " ".join(f"+{c}" for c in ("pids", "memory") if c in controllers))
        except OSError:
            _rmdir(base)
            return None
        return cls(pids=base, memory=base if "memory" in controllers else None, version=2, homes=[parent])

    def describe(self) -> dict[str, object]:
        return {"version": self.version, "pids": self.pids, "memory": self.memory is not None}

    def sweep_stale(self) -> None:
        """Remove empty subtrees left by helpers that were killed (their pid is gone)."""
        for root in {os.path.dirname(self.pids), os.path.dirname(self.memory or self.pids)}:
            try:
                names = os.listdir(root)
            except OSError:
                continue
            for name in names:
                if name.startswith("kylecode-h") and name[len("kylecode-h"):].isdigit():
                    if not os.path.exists(f"/proc/{name[len('kylecode-h'):]}"):
                        _remove_tree(os.path.join(root, name))

    def call_group(self, scope: str, call: str, *, run_pids: int, run_memory: int, pids: int,
                   memory: int) -> CallGroup:
        """Create the run scope (if new) and the call's group with their caps; raises OSError."""
        dirs: list[str] = []
        for base in dict.fromkeys(b for b in (self.pids, self.memory) if b):  # v2: one directory for both
            scope_dir = os.path.join(base, _safe(scope))
            call_dir = os.path.join(scope_dir, _safe(call))
            new_scope = _make_nested(scope_dir, call_dir)
            if self.version == 2 and new_scope:
                _write(os.path.join(scope_dir, "cgroup.subtree_control"),
                       " ".join(f"+{c}" for c in ("pids", "memory")
                                if c in _read(os.path.join(scope_dir, "cgroup.controllers")).split()))
            dirs.append(call_dir)
        group = CallGroup(dirs=dirs, version=self.version, homes=self.homes[: len(dirs)])
        group.set_limits(run_pids=run_pids, run_memory=run_memory, pids=pids, memory=memory)
        return group

    def remove(self) -> None:
        for base in {self.pids, self.memory or self.pids}:
            _remove_tree(base)


@dataclass
class CallGroup:
    dirs: list[str]  # the call's directories (pids first), one per hierarchy
    version: int
    homes: list[str]  # the tool host's own cgroup in each of those hierarchies

    def set_limits(self, *, run_pids: int, run_memory: int, pids: int, memory: int) -> None:
        for d in self.dirs:
            scope = os.path.dirname(d)
            if os.path.exists(os.path.join(d, "pids.max")):
                _write(os.path.join(scope, "pids.max"), str(run_pids))
                _write(os.path.join(d, "pids.max"), str(pids))
            if memory > 0:
                for name in ("memory.max", "memory.limit_in_bytes"):
                    if os.path.exists(os.path.join(d, name)):
                        _write(os.path.join(scope, name), str(run_memory))
                        _write(os.path.join(d, name), str(memory))
                if os.path.exists(os.path.join(d, "memory.swap.max")):
                    _write(os.path.join(d, "memory.swap.max"), "0")

    @property
    def memory_enforced(self) -> bool:
        return any(os.path.exists(os.path.join(d, n)) for d in self.dirs
                   for n in ("memory.max", "memory.limit_in_bytes"))

    def join(self, pid: int) -> None:
        for d in self.dirs:
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def leave(self, pid: int) -> None:
        """Move `pid` back to where the tool host lives (a group with members cannot be removed)."""
        for d, home in zip(self.dirs, self.homes):
            try:
                _write(os.path.join(home, "cgroup.procs"), str(pid))
            except OSError:
                pass

    def members(self) -> list[int]:
        try:
            return [int(x) for x in _read(os.path.join(self.dirs[0], "cgroup.procs")).split()]
        except OSError:
            return []

    def pids_limit_hit(self) -> bool:
        try:
            for line in _read(os.path.join(self.dirs[0], "pids.events")).splitlines():
                key, _, value = line.partition(" ")
                if key == "max" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def oom_killed(self) -> bool:
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    for line in _read(os.path.join(d, name)).splitlines():
                        key, _, value = line.partition(" ")
                        if key in ("oom_kill", "oom") and int(value) > 0:
                            return True
                except (OSError, ValueError):
                    continue
        return False

    def kill_all(self, reap: object, exclude: int = 0) -> set[int]:
        """SIGKILL every member until none is left; returns every pid seen. `reap()` collects
        zombies between rounds (the supervisor is the subreaper they re-parent to)."""
        seen: set[int] = set()
        kill_file = os.path.join(self.dirs[0], "cgroup.kill")
        deadline = time.monotonic() + _KILL_ROUNDS_S
        delay = 0.0005
        while time.monotonic() < deadline:
            members = [pid for pid in self.members() if pid != exclude]
            if not members:
                break
            seen.update(members)
            if self.version == 2 and not exclude and os.path.exists(kill_file):
                try:
                    _write(kill_file, "1")
                except OSError:
                    pass
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            reap()  # type: ignore[operator]
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return seen

    def remove(self) -> None:
        for d in self.dirs:
            _rmdir(d)
            _rmdir(os.path.dirname(d))  # the run scope, once its last call is gone


def _make_nested(scope_dir: str, call_dir: str) -> bool:
    """mkdir scope (if missing) and call; whether the scope is new. Another call of the run may
    remove the scope (its last call ended) between the two mkdirs: then start over."""
    for _ in range(20):
        new_scope = False
        try:
            os.mkdir(scope_dir)
            new_scope = True
        except FileExistsError:
            pass
        try:
            os.mkdir(call_dir)
            return new_scope
        except FileNotFoundError:
            continue
    raise OSError(f"could not create {call_dir}: its run's cgroup kept disappearing")


def _safe(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64].lstrip(".")
    return cleaned or "scope"


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _remove_tree(path: str) -> None:
    """cgroup directories are removed bottom-up with rmdir (they hold no files of their own)."""
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            _rmdir(os.path.join(root, d))
    _rmdir(path)
