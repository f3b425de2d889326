"""The `namespaces` isolation: bubblewrap's view of the host, built without bubblewrap.

For hosts without the `bwrap` command where the kernel allows unprivileged user
namespaces. The call's process unshares user, mount, pid, ipc, uts and (unless
the run asks for network) net namespaces, maps itself to uid 0 of the new user
namespace, and forks the namespace's init. The init builds a new root on a
tmpfs with the same contents as `bwrap.bwrap_argv` (read-only /usr and
library trees, a minimal /etc, fresh /proc, minimal /dev, private /tmp, the
workspace read-write), pivots into it, detaches the host's root, forks the
command with an empty capability bounding set and no_new_privs, and reaps
until the command exits. When the init exits, the kernel kills every other
process of the namespace.

Standard library only; runs in a freshly forked single-threaded process.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import NoReturn

from kcd.sandbox.bwrap import ETC_DIRS, ETC_FILES, TOP_LEVEL
from kcd.sandbox.linux import (
    CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWUTS, MNT_DETACH, MS_BIND,
    MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, Libc,
)  # fmt: skip

__all__ = ["enter_namespaces"]

_MS_NOEXEC = 8
_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
# statvfs flags that a bind remount must keep (the kernel refuses to clear locked ones).
_KEEP_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, _MS_NOEXEC),
               (os.ST_NOATIME, 1024), (os.ST_NODIRATIME, 2048), (os.ST_RELATIME, 1 << 21))


def enter_namespaces(libc: Libc, workspace: str, *, network: bool, nproc: int | None, etc_view: str | None,
                     start: Callable[[], NoReturn]) -> NoReturn:
    """Become the namespace's outer process; `start` runs as the command (pid 2)."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if not network:
        flags |= CLONE_NEWNET
    libc.unshare(flags)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    init = os.fork()
    if init:
        os._exit(_wait_exit_code(init))
    libc.set_pdeathsig(signal.SIGKILL)  # the outer (the supervisor's child) dies: so does the namespace
    _build_root(libc, workspace, etc_view)
    if nproc is not None:
        import resource

        # Inside the new user namespace RLIMIT_NPROC counts this namespace's processes only.
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    command = os.fork()
    if command == 0:
        libc.drop_bounding_set()
        libc.set_no_new_privs()
        start()
    os._exit(_init_loop(command))


def _init_loop(command: int) -> int:
    """pid 1: reap every orphan; leave (killing the namespace) when the command exits."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        if pid == command:
            return _exit_code(status)


def _wait_exit_code(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return _exit_code(status)
        except ChildProcessError:
            return 1


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _build_root(libc: Libc, workspace: str, etc_view: str | None) -> None:
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Step 1: a scratch tmpfs becomes the root; the host's root stays reachable at /oldroot.
    libc.mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    os.mkdir("/tmp/newroot")
    os.mkdir("/tmp/oldroot")
    libc.pivot_root("/tmp", "/tmp/oldroot")
    os.chdir("/")
    # Step 2: the call's root, filled from /oldroot.
    libc.mount("tmpfs", "/newroot", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    _bind(libc, "/usr", read_only=True)
    for top in TOP_LEVEL:
        host = "/oldroot" + top
        if os.path.islink(host):
            os.symlink(os.readlink(host), "/newroot" + top)
        elif os.path.isdir(host):
            _bind(libc, top, read_only=True)
    if etc_view is not None:
        _bind(libc, etc_view, read_only=True, target="/etc")
    for path in () if etc_view is not None else ETC_FILES:
        if os.path.lexists("/oldroot" + path) and not os.path.islink("/oldroot" + path):
            _bind(libc, path, read_only=True)
        elif os.path.islink("/oldroot" + path):
            os.symlink(os.readlink("/oldroot" + path), "/newroot" + path)
    for path in ETC_DIRS:
        if os.path.isdir("/oldroot" + path):
            _bind(libc, path, read_only=True)
    os.mkdir("/newroot/proc")
    libc.mount("proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | _MS_NOEXEC)
    _make_dev(libc)
    os.mkdir("/newroot/tmp")
    libc.mount("tmpfs", "/newroot/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    _bind(libc, workspace, read_only=False)
    # Step 3: pivot into it and drop the host's root for good.
    os.chdir("/newroot")
    libc.pivot_root(".", ".")
    libc.umount2(".", MNT_DETACH)
    os.chdir("/")
    libc.mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(workspace)


def _make_dev(libc: Libc) -> None:
    os.mkdir("/newroot/dev")
    libc.mount("tmpfs", "/newroot/dev", "tmpfs", MS_NOSUID | _MS_NOEXEC, "mode=0755")
    for node in _DEV_NODES:
        if os.path.exists("/oldroot/dev/" + node):
            open("/newroot/dev/" + node, "w").close()
            libc.mount("/oldroot/dev/" + node, "/newroot/dev/" + node, None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, "/newroot/dev/" + name)
    os.mkdir("/newroot/dev/shm")
    libc.mount("tmpfs", "/newroot/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def _bind(libc: Libc, path: str, *, read_only: bool, target: str | None = None) -> None:
    source, target = "/oldroot" + path, "/newroot" + (target or path)
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "w").close()
    libc.mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        kept = os.statvfs(target).f_flag
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for st_flag, ms_flag in _KEEP_FLAGS:
            if kept & st_flag:
                flags |= ms_flag
        libc.mount(None, target, None, flags)
