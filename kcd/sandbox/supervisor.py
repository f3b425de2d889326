"""One tool call, start to finish, in a process forked from the tool host.

The supervisor is single-threaded (a fork of the single-threaded helper), so it
may do what a threaded daemon must not between fork and exec: join a cgroup,
set resource limits, unshare namespaces. It is a child subreaper: anything the
command daemonises re-parents to it, not to init. When the call ends (the
command exits and the client says its output is drained, the deadline passes,
the client cancels, or the client disappears) it kills every process of the
call, through the cgroup when there is one and through the process tree below
it otherwise, and reports how many it killed.

Standard library only.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import subprocess
import time
from typing import Any, NoReturn

from kcd.sandbox.bwrap import bwrap_argv
from kcd.sandbox.cgroups import CallGroup, CgroupTree
from kcd.sandbox.linux import Libc, reap_children
from kcd.sandbox.mounts import enter_namespaces
from kcd.sandbox.protocol import FrameReader, send_frame

__all__ = ["supervise"]

_KILL_ROUNDS_S = 10.0
_NO_CLIENT_GRACE_S = 30.0  # past the deadline, how long to wait for the client's "finish"


def supervise(ctl: socket.socket, out_fd: int, err_fd: int, *, libc: Libc, tree: CgroupTree | None,
              bwrap: str | None, etc_view: str | None) -> None:
    libc.set_child_subreaper()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    reader = FrameReader()
    frames: list[Any] = []
    while not frames and not reader.closed:
        frames = reader.feed(ctl)
    if not frames:
        return
    call = Call(frames[0], ctl, reader, libc, tree, bwrap, etc_view)
    call.pending = frames[1:]  # a cancel can arrive with the request, before this process existed
    call.run(out_fd, err_fd)


class Call:
    def __init__(self, request: dict[str, Any], ctl: socket.socket, reader: FrameReader, libc: Libc,
                 tree: CgroupTree | None, bwrap: str | None, etc_view: str | None) -> None:
        self.req = request
        self.etc_view = etc_view
        self.ctl = ctl
        self.reader = reader
        self.libc = libc
        self.tree = tree
        self.bwrap = bwrap
        self.group: CallGroup | None = None
        self.limits: dict[str, Any] = dict(request.get("limits") or {})
        self.main_status: int | None = None
        self.main_pid = 0
        self.pending: list[Any] = []
        self.popen: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ the call

    def run(self, out_fd: int, err_fd: int) -> None:
        error = self._prepare()
        if error is not None:
            os.write(err_fd, f"kcd sandbox: {error}\n".encode())
            os.close(out_fd)
            os.close(err_fd)
            send_frame(self.ctl, {"event": "done", "error": error, "exit": None, "killed": 0})
            return
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        try:
            self.main_pid = self._spawn(out_fd, err_fd)
        except OSError as exc:
            error = f"could not start the command: {exc}"
            os.write(err_fd, f"kcd sandbox: {error}\n".encode())
            send_frame(self.ctl, {"event": "done", "error": error, "exit": None, "killed": 0})
            return
        finally:
            os.close(out_fd)
            os.close(err_fd)
        timed_out, cancelled = self._wait(wake_r)
        killed = self._kill_everything()
        outcome = {
            "event": "done",
            "exit": None if self.main_status is None or timed_out or cancelled else _exit_code(self.main_status),
            "signal": None if self.main_status is None or not os.WIFSIGNALED(self.main_status)
            else os.WTERMSIG(self.main_status),
            "timed_out": timed_out,
            "cancelled": cancelled,
            "killed": killed,
            "pids_limit_hit": bool(self.group and self.group.pids_limit_hit()),
            "oom": bool(self.group and self.group.oom_killed()),
            "enforced": self.limits,
        }
        try:
            send_frame(self.ctl, outcome)
        except OSError:
            pass
        if self.group is not None:  # after the answer: removing a memory cgroup can take ms
            self.group.leave(os.getpid())
            self.group.remove()

    def _prepare(self) -> str | None:
        mode = self.req["mode"]
        if mode == "bwrap" and self.bwrap is None:
            return "isolation 'bwrap' is configured but the bwrap command is not installed"
        limits = self.limits
        if self.tree is not None:
            # this supervisor (a member, so the command inherits the group) and, isolated,
            # the namespace's outer process and init
            extra = 3 if mode in ("bwrap", "namespaces") else 1
            try:
                self.group = self.tree.call_group(
                    self.req.get("scope") or "adhoc", f"call-{os.getpid()}",
                    run_pids=int(limits.get("run_pids", 0)) + extra, run_memory=int(limits.get("run_memory", 0)),
                    pids=int(limits.get("pids", 0)) + extra, memory=int(limits.get("memory", 0)))
            except OSError as exc:
                return f"could not create the call's cgroup: {exc}"
            limits["pids_by"] = "cgroup"
            limits["memory_by"] = "cgroup" if limits.get("memory") and self.group.memory_enforced else None
        else:
            # RLIMIT_NPROC counts per user namespace, so it caps a call only inside its own one,
            # and never binds uid 0 of the host.
            per_ns = mode in ("bwrap", "namespaces") and os.getuid() != 0
            limits["pids_by"] = "rlimit_nproc" if per_ns else None
            limits["memory_by"] = None
        return None

    def _spawn(self, out_fd: int, err_fd: int) -> int:
        """Start the command; its pid (the namespace's outer process in the isolated modes).

        Everything a command must inherit is set on this process first (it only
        supervises, and it is a fresh fork per call): the cgroup, the resource limits,
        default signal dispositions and, in process mode, an empty capability
        bounding set and no_new_privs (bwrap and kcd's namespaces drop capabilities
        inside their own user namespace). The command is then spawned by
        subprocess's C fork-exec, with no Python code between fork and exec.
        """
        req = self.req
        if self.group is not None:
            self.group.join(os.getpid())
        self._set_rlimits()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        argv: list[str] = list(req["argv"])
        env: dict[str, str] = dict(req["env"])
        nproc = int(self.limits["pids"]) if self.limits.get("pids_by") == "rlimit_nproc" else None
        mode = req["mode"]
        if mode == "namespaces":  # needs Python in the child: kcd's own namespace set-up
            pid = os.fork()
            if pid == 0:
                self._namespaces_child(out_fd, err_fd, argv, env, nproc)
            return pid
        if mode == "process":
            self.libc.drop_bounding_set()  # an exec, even as uid 0, gains no capability
            self.libc.set_no_new_privs()  # and no setuid/file-capability privilege
        # bwrap drops every capability and sets no_new_privs itself (it needs its own to map uids)
        if mode == "bwrap":
            assert self.bwrap is not None
            if nproc is not None:  # inside the sandbox's user namespace it counts only its own
                argv = ["/usr/bin/prlimit", f"--nproc={nproc}:{nproc}", "--", *argv]
            argv = bwrap_argv(self.bwrap, req["cwd"], network=bool(req.get("network")),
                              etc_view=self.etc_view) + argv
        # Kept referenced: a collected Popen polls (and so reaps) its child, stealing the exit status.
        self.popen = subprocess.Popen(argv, cwd=req["cwd"], env=env, stdin=subprocess.DEVNULL, stdout=out_fd,
                                      stderr=err_fd, close_fds=True, start_new_session=True)
        return self.popen.pid

    def _namespaces_child(self, out_fd: int, err_fd: int, argv: list[str], env: dict[str, str],
                          nproc: int | None) -> NoReturn:
        try:
            os.setsid()
            self.libc.set_pdeathsig(signal.SIGKILL)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            os.closerange(3, _max_fd())

            def start() -> NoReturn:
                os.execve(argv[0], argv, env)

            enter_namespaces(self.libc, self.req["cwd"], network=bool(self.req.get("network")), nproc=nproc,
                             etc_view=self.etc_view, start=start)
        except BaseException as exc:  # noqa: BLE001 - nothing may return into the helper's code
            try:
                os.write(2, f"kcd sandbox: could not start the command: {exc}\n".encode())
            finally:
                os._exit(127)

    def _set_rlimits(self) -> None:
        lim = self.limits
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files of the daemon's children
        if lim.get("cpu_s"):
            resource.setrlimit(resource.RLIMIT_CPU, (int(lim["cpu_s"]), int(lim["cpu_s"])))
        if lim.get("fsize"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(lim["fsize"]), int(lim["fsize"])))
        if lim.get("as"):
            resource.setrlimit(resource.RLIMIT_AS, (int(lim["as"]), int(lim["as"])))

    # ------------------------------------------------------------------ waiting

    def _wait(self, wake_r: int) -> tuple[bool, bool]:
        """Until the call should end: (timed out, cancelled)."""
        deadline = time.monotonic() + float(self.req["timeout"])
        finish_by: float | None = None
        while True:
            self._reap()
            now = time.monotonic()
            if self.main_status is not None and finish_by is None:
                if not self._others_alive():  # nothing can still hold the output pipes
                    return False, False
                try:
                    send_frame(self.ctl, {"event": "exited", "exit": _exit_code(self.main_status)})
                except OSError:
                    return False, True
                finish_by = now + _NO_CLIENT_GRACE_S
            limit = finish_by if finish_by is not None else deadline
            if now >= limit:
                return finish_by is None, False
            ready, _, _ = select.select([self.ctl, wake_r], [], [], limit - now) if not self.pending else ([], [], [])
            if wake_r in ready:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if self.ctl in ready:
                self.pending += self.reader.feed(self.ctl)
            if self.pending:
                frames, self.pending = self.pending, []
                for frame in frames:
                    op = frame.get("op")
                    if op == "finish":
                        return False, False
                    if op == "kill":
                        return False, True
            if self.reader.closed:  # the client is gone (its run ended, or the daemon died)
                return False, True

    def _others_alive(self) -> bool:
        if self.group is not None:
            return any(pid != os.getpid() for pid in self.group.members())
        return bool(_descendants(os.getpid()))

    def _reap(self) -> None:
        for pid, status in reap_children():
            if pid == self.main_pid and self.main_status is None:
                self.main_status = status

    # ------------------------------------------------------------------ the end

    def _kill_everything(self) -> int:
        """SIGKILL every process of the call; the number killed, wrappers not counted."""
        me = os.getpid()
        isolated = self.req["mode"] != "process"
        wrappers = ({self.main_pid} | set(_children(self.main_pid))) if isolated else set()
        # Counted before the first kill: killing a namespace's outer takes everything in it along.
        seen = {p for p in self.group.members() if p != me} if self.group is not None else set()
        if isolated:  # bwrap's outer can exit before its pid-1 init: then the init is ours, not its
            wrappers |= {p for p in seen if _is_namespace_init(p)}
        if self.main_status is None:
            _kill(self.main_pid)
        if self.group is not None:  # authoritative: every process of the call is a member
            seen |= self.group.kill_all(self._reap, exclude=me)
        else:
            seen |= self._kill_descendants()
        self._reap()
        seen.discard(self.main_pid)
        return len(seen - wrappers)

    def _kill_descendants(self) -> set[int]:
        """Kill everything below this process (orphans re-parent here, as the subreaper)."""
        seen: set[int] = set()
        deadline = time.monotonic() + _KILL_ROUNDS_S
        me = os.getpid()
        while time.monotonic() < deadline:
            below = _descendants(me)
            if not below:
                break
            seen.update(below)
            for pid in below:
                _kill(pid)
            self._reap()
            time.sleep(0.001)
        return seen


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _is_namespace_init(pid: int) -> bool:
    """Whether `pid` is pid 1 of a pid namespace below ours (the sandbox's init, a wrapper)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) > 1 and ids[-1] == "1"
    except OSError:
        pass
    return False


def _children(pid: int) -> list[int]:
    """Children of every thread of `pid` (each thread's children are listed under it)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(x) for x in fh.read().split()]
        except OSError:
            continue
    return found


def _descendants(root: int) -> list[int]:
    """Every process below `root`: its children files (cheap), else one scan of /proc."""
    if os.path.exists(f"/proc/{root}/task/{root}/children"):
        found: list[int] = []
        stack = [root]
        while stack:
            for child in _children(stack.pop()):
                found.append(child)
                stack.append(child)
        return found
    return _descendants_by_scan(root)


def _descendants_by_scan(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] == b"Z":
            continue
        parents.setdefault(int(fields[1]), []).append(int(name))
    found = []
    stack = [root]
    while stack:
        for child in parents.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if 0 < soft < 1 << 20 else 1 << 16
