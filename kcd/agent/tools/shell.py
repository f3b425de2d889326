"""run_shell and bash: one command in the workspace, bounded in time and output.

See `sandbox` for resource limits and the optional isolation. The timeout counts
from the start (defect 38) and kills the command's whole process group; stdout
and stderr are captured separately and passed on unmodified (defect 40).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from kcd.agent.calls import ToolSettings
from kcd.agent.tools.results import Result, ToolError
from kcd.agent.tools.sandbox import isolation_prefix, limits_prefix

__all__ = ["bash", "run_shell", "shell_environment"]

_SHELL_DRAIN_GRACE_S = 1.0  # after the shell exits, how long background writers may keep its pipes
_READ_CHUNK = 64 * 1024
# Only these variables reach commands: the daemon's environment holds provider keys (defect 39).
_ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "TMPDIR", "USER", "LOGNAME")


def shell_environment(workspace: str) -> dict[str, str]:
    """The complete environment of a shell command, built from an allow-list."""
    env = {k: os.environ[k] for k in _ENV_ALLOW if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env.setdefault("TERM", "dumb")
    env["HOME"] = workspace
    env["PWD"] = workspace
    env["SHELL"] = "/bin/bash"
    return env


def run_shell(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: threading.Event | None) -> Result:
    timeout = args["timeout"]
    if timeout is not None and timeout <= 0:
        raise ToolError("parameter 'timeout' must be > 0 seconds")
    return _shell(root, args["command"], timeout, settings, cancel)


def bash(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: threading.Event | None) -> Result:
    timeout_ms = args["timeout"]
    if timeout_ms is not None and timeout_ms <= 0:
        raise ToolError("parameter 'timeout' must be > 0 milliseconds")
    result = _shell(root, args["command"], None if timeout_ms is None else timeout_ms / 1000, settings, cancel)
    if args["description"]:
        result.data["description"] = args["description"]
    return result


def _shell(
    root: Path, command: str, requested: float | None, settings: ToolSettings, cancel: threading.Event | None
) -> Result:
    timeout = settings.shell_timeout_s if requested is None else min(float(requested), settings.shell_timeout_s)
    workspace = os.path.realpath(root)
    env = shell_environment(workspace)
    limits, limit_info = limits_prefix(settings, timeout)
    argv = [*limits, *isolation_prefix(settings, workspace, env), "/bin/bash", "-c", command]
    started = time.monotonic()
    run = _spawn_and_wait(argv, workspace, env, timeout, settings.output_limit_bytes, cancel)
    elapsed = time.monotonic() - started
    stdout = run.stdout.kept.decode("utf-8", errors="replace")
    stderr = run.stderr.kept.decode("utf-8", errors="replace")

    parts: list[str] = []
    if stdout:
        parts.append(stdout if stdout.endswith("\n") else stdout + "\n")
    if run.stdout.dropped:
        parts.append(f"[stdout truncated: {run.stdout.dropped} more bytes not shown (limit {run.stdout.cap} bytes)]\n")
    if stderr:
        parts.append(f"stderr: {stderr}" + ("" if stderr.endswith("\n") else "\n"))
    if run.stderr.dropped:
        parts.append(f"[stderr truncated: {run.stderr.dropped} more bytes not shown (limit {run.stderr.cap} bytes)]\n")
    if not parts:
        parts.append("(no output)\n")
    if run.cancelled:
        parts.append("Command cancelled; it and every process it started were killed.\n")
    elif run.timed_out:
        parts.append(f"Command timed out after {timeout:g} s; it and every process it started were killed.\n")
    elif run.exit_code is not None and run.exit_code < 0:
        parts.append(f"Command was killed by {_signal_text(-run.exit_code)}\n")
    elif run.exit_code != 0:
        parts.append(f"Command failed with exit code {run.exit_code}\n")
    data = {
        "command": command,
        "stdout": stdout,
        "stderr": stderr,
        "exit": run.exit_code,
        "timed_out": run.timed_out,
        "cancelled": run.cancelled,
        "truncated": {"stdout": run.stdout.dropped, "stderr": run.stderr.dropped},
        "timeout_s": timeout,
        "elapsed_s": round(elapsed, 3),
        "isolation": settings.isolation,
        "limits": limit_info,
        "worker_pid": os.getpid(),  # which process ran it (a Ray worker, or the daemon's thread)
    }
    ok = run.exit_code == 0 and not (run.timed_out or run.cancelled)
    return Result("<BASH_RESULT>\n" + "".join(parts) + "</BASH_RESULT>", data, ok=ok)


_LIMIT_SIGNALS = {signal.SIGXCPU: "the CPU time limit", signal.SIGXFSZ: "the file size limit"}


def _signal_text(number: int) -> str:
    try:
        sig = signal.Signals(number)
    except ValueError:
        return f"signal {number}"
    reason = _LIMIT_SIGNALS.get(sig)
    return f"signal {sig.name}" + (f" ({reason} was exceeded)" if reason else "")


@dataclass
class _Capture:
    """Drains one pipe in a thread, keeping at most `cap` bytes and counting the rest."""

    fd: int
    cap: int
    kept: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def run(self) -> None:
        try:
            while chunk := os.read(self.fd, _READ_CHUNK):
                room = self.cap - len(self.kept)
                if room > 0:
                    self.kept += chunk[:room]
                self.dropped += max(0, len(chunk) - max(room, 0))
        except OSError:
            pass


class _ShellRun(NamedTuple):
    exit_code: int | None
    stdout: _Capture
    stderr: _Capture
    timed_out: bool
    cancelled: bool


def _spawn_and_wait(
    argv: list[str], cwd: str, env: dict[str, str], timeout: float, cap: int, cancel: threading.Event | None
) -> _ShellRun:
    """Run `argv` in its own session; the timeout counts from the start (defect 38).

    The process group is always SIGKILLed at the end, so background children die
    with the command. The shell is only observed (WNOWAIT), not reaped, until
    then, so its pid, which is the group id, cannot be recycled before the kill.
    """
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    captures = (_Capture(proc.stdout.fileno(), cap), _Capture(proc.stderr.fileno(), cap))
    readers = [threading.Thread(target=c.run, daemon=True, name="kcd-shell-pipe") for c in captures]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    timed_out = cancelled = False
    try:
        timed_out, cancelled = _wait_until(lambda: _has_exited(proc.pid), deadline, cancel)
        if not (timed_out or cancelled):
            # Background children may still hold the pipes open: give them a moment, then kill.
            drain_deadline = min(deadline, time.monotonic() + _SHELL_DRAIN_GRACE_S)
            _wait_until(lambda: not any(t.is_alive() for t in readers), drain_deadline, cancel)
    finally:  # also on KeyboardInterrupt (Ray's cooperative cancel)
        _kill_group(proc.pid)
        proc.wait()
        for t in readers:
            t.join(timeout=2.0)  # a process that escaped the group (setsid) could hold a pipe
        proc.stdout.close()
        proc.stderr.close()
    exit_code = None if (timed_out or cancelled) else proc.returncode
    return _ShellRun(exit_code, captures[0], captures[1], timed_out, cancelled)


def _wait_until(done: Callable[[], bool], deadline: float, cancel: threading.Event | None) -> tuple[bool, bool]:
    """Poll `done` with a growing delay: (timed out, cancelled)."""
    delay = 0.001
    while not done():
        if cancel is not None and cancel.is_set():
            return False, True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True, False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)
    return False, False


def _has_exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped elsewhere (e.g. SIGCHLD ignored)
        return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
