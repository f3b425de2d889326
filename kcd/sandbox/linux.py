"""The few Linux calls Python's os module lacks (prctl, unshare, mount, pivot_root).

Standard library only (ctypes): the tool host imports this without site-packages.
"""

from __future__ import annotations

import ctypes
import os

__all__ = [
    "CLONE_NEWIPC", "CLONE_NEWNET", "CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWUSER", "CLONE_NEWUTS",
    "MNT_DETACH", "MS_BIND", "MS_NODEV", "MS_NOSUID", "MS_PRIVATE", "MS_RDONLY", "MS_REC", "MS_REMOUNT",
    "Libc", "reap_children",
]  # fmt: skip

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36
_SYS_PIVOT_ROOT = 155  # x86_64
_SYS_PIVOT_ROOT_AARCH64 = 41


def reap_children() -> list[tuple[int, int]]:
    """Collect every child that has exited, without blocking: (pid, wait status) pairs."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


class Libc:
    """Thin, checked wrappers; each raises OSError with the call's errno."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._prctl = self._libc.prctl
        self._prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def _check(self, result: int, what: str) -> int:
        if result == -1:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")
        return result

    def prctl(self, option: int, arg: int = 0) -> int:
        return self._check(self._prctl(option, arg, 0, 0, 0), f"prctl({option})")

    def set_dumpable(self, dumpable: bool) -> None:
        self.prctl(_PR_SET_DUMPABLE, int(dumpable))

    def set_child_subreaper(self) -> None:
        self.prctl(_PR_SET_CHILD_SUBREAPER, 1)

    def set_pdeathsig(self, signum: int) -> None:
        self.prctl(_PR_SET_PDEATHSIG, signum)

    def set_no_new_privs(self) -> None:
        self.prctl(_PR_SET_NO_NEW_PRIVS, 1)

    def drop_bounding_set(self) -> None:
        """Drop every capability from the bounding set: an exec, even as uid 0, gains none."""
        cap = 0
        while cap < 64:
            try:
                self.prctl(_PR_CAPBSET_DROP, cap)
            except OSError as exc:
                if exc.errno == 22:  # EINVAL: past the kernel's last capability
                    return
                raise
            cap += 1

    def unshare(self, flags: int) -> None:
        self._check(self._libc.unshare(ctypes.c_int(flags)), "unshare")

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
        fn = self._libc.mount
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        self._check(fn(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {target}")

    def umount2(self, target: str, flags: int) -> None:
        self._check(self._libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")

    def pivot_root(self, new_root: str, put_old: str) -> None:
        number = _SYS_PIVOT_ROOT_AARCH64 if os.uname().machine == "aarch64" else _SYS_PIVOT_ROOT
        fn = self._libc.syscall
        fn.argtypes = [ctypes.c_long, ctypes.c_char_p, ctypes.c_char_p]
        self._check(fn(number, new_root.encode(), put_old.encode()), "pivot_root")
