"""The tool host: a resident, single-threaded process that forks one supervisor per call.

Started by `host.ToolHost` as `python -I -S -B -c …` with an allow-listed
environment, so neither its environment nor its memory ever held a provider
key, and every command's parent is a process without them. It owns the cgroup
subtree of its calls and removes it when its client goes away (EOF on its
channel).

Standard library only.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import sys

from kcd.sandbox.bwrap import find_bwrap
from kcd.sandbox.cgroups import CgroupTree
from kcd.sandbox.etcview import build_etc_view
from kcd.sandbox.linux import Libc, reap_children
from kcd.sandbox.protocol import send_frame
from kcd.sandbox.supervisor import supervise

__all__ = ["main"]

_SPARE_IDLE_S = 0.005  # how long the helper must be idle before it forks the next spare


def main(channel_fd: int) -> None:
    libc = Libc()
    libc.set_dumpable(False)
    channel = socket.socket(fileno=channel_fd)
    tree = CgroupTree.create(f"h{os.getpid()}")
    bwrap = find_bwrap()
    etc_view = build_etc_view()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon's Ctrl-C is for the daemon
    signal.signal(signal.SIGCHLD, _reap_all)
    context = {"libc": libc, "tree": tree, "bwrap": bwrap, "etc_view": etc_view}
    spare: _Spare | None = _Spare.fork(channel, context)
    try:
        while True:
            if spare is None and not select.select([channel], [], [], _SPARE_IDLE_S)[0]:
                # Forked once the helper is idle, so the fork does not compete with a running call
                # for the CPU; a call that arrives first forks its supervisor on the spot.
                spare = _Spare.fork(channel, context)
                continue
            try:
                message, fds, _, _ = socket.recv_fds(channel, 64, 4)
            except OSError:
                break
            if not message:
                break
            if message == b"info" and len(fds) == 1:
                with socket.socket(fileno=fds[0]) as ctl:
                    send_frame(ctl, {"cgroup": tree.describe() if tree else None, "bwrap": bwrap,
                                     "uid": os.getuid(), "pid": os.getpid()})
                continue
            if message == b"run" and len(fds) == 3:
                (spare or _Spare.fork(channel, context)).hand_over(fds)
                spare = None
            for fd in fds:
                os.close(fd)  # before the next fork: a spare holding a call's pipe would keep it open
    finally:
        if spare is not None:
            spare.discard()
        shutil.rmtree(etc_view, ignore_errors=True)
        if tree is not None:
            tree.remove()


class _Spare:
    """A supervisor forked ahead of its call: a call starts without paying for a fork."""

    def __init__(self, pid: int, link: socket.socket) -> None:
        self.pid = pid
        self.link = link

    @classmethod
    def fork(cls, channel: socket.socket, context: dict) -> _Spare:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            channel.close()
            mine.close()
            try:
                _, fds, _, _ = socket.recv_fds(theirs, 16, 3)
                theirs.close()
                if len(fds) == 3:  # nothing (EOF): the tool host is going away
                    supervise(socket.socket(fileno=fds[0]), fds[1], fds[2], **context)
            finally:
                os._exit(0)
        theirs.close()
        return cls(pid, mine)

    def hand_over(self, fds: list[int]) -> None:
        socket.send_fds(self.link, [b"run"], fds)
        self.link.close()

    def discard(self) -> None:
        self.link.close()  # EOF: the spare exits


def _reap_all(*_: object) -> None:
    reap_children()  # finished supervisors and spares


if __name__ == "__main__":
    main(int(sys.argv[1]))
