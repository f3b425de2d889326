"""run_shell and bash: one command in the workspace, contained and bounded.

The command runs through the tool host (`kcd.sandbox`): a process that never
held a provider key forks a supervisor that applies the run's isolation and
caps, and kills every process of the call when it ends. The timeout counts
from the start, not from when stdout closes; stdout and stderr are captured
separately and passed on unmodified, each capped at the output limit.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from pathlib import Path
from typing import Any

from kcd.agent.calls import ToolSettings
from kcd.agent.tools.results import Result, ToolError
from kcd.sandbox.host import HostUnavailable, SandboxOutcome, SandboxRequest, ToolHost

__all__ = ["bash", "run_shell", "shell_environment"]

# Only these variables reach commands: the daemon's environment holds provider keys.
_ENV_ALLOW = ("LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "USER", "LOGNAME")


def shell_environment(workspace: str) -> dict[str, str]:
    """The complete environment of a shell command, built from an allow-list."""
    env = {k: os.environ[k] for k in _ENV_ALLOW if k in os.environ}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
    env.setdefault("LANG", "C.UTF-8")
    env.setdefault("TERM", "dumb")
    env["HOME"] = workspace
    env["PWD"] = workspace
    env["SHELL"] = "/bin/bash"
    env["TMPDIR"] = "/tmp"
    return env


def run_shell(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: threading.Event | None,
              *, host: ToolHost) -> Result:
    timeout = args["timeout"]
    if timeout is not None and timeout <= 0:
        raise ToolError("parameter 'timeout' must be > 0 seconds")
    return _shell(root, args["command"], timeout, settings, cancel, host)


def bash(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: threading.Event | None,
         *, host: ToolHost) -> Result:
    timeout_ms = args["timeout"]
    if timeout_ms is not None and timeout_ms <= 0:
        raise ToolError("parameter 'timeout' must be > 0 milliseconds")
    result = _shell(root, args["command"], None if timeout_ms is None else timeout_ms / 1000, settings, cancel,
                    host)
    if args["description"]:
        result.data["description"] = args["description"]
    return result


def sandbox_limits(settings: ToolSettings, timeout: float) -> dict[str, int]:
    cpu = math.ceil(timeout) + 1  # CPU seconds per process: a busy loop dies even if the wall kill were late
    limits = {"pids": settings.max_processes, "run_pids": max(settings.max_processes_per_run, settings.max_processes),
              "cpu_s": cpu}
    if settings.memory_max_bytes > 0:
        limits["memory"] = settings.memory_max_bytes
        limits["run_memory"] = max(settings.run_memory_max_bytes, settings.memory_max_bytes)
    if settings.file_size_limit_bytes > 0:
        limits["fsize"] = settings.file_size_limit_bytes
    if settings.memory_limit_bytes > 0:
        limits["as"] = settings.memory_limit_bytes
    return limits


def _shell(root: Path, command: str, requested: float | None, settings: ToolSettings,
           cancel: threading.Event | None, host: ToolHost) -> Result:
    timeout = settings.shell_timeout_s if requested is None else min(float(requested), settings.shell_timeout_s)
    workspace = os.path.realpath(root)
    request = SandboxRequest(argv=["/bin/bash", "-c", command], cwd=workspace, env=shell_environment(workspace),
                             timeout=timeout, mode=settings.isolation, network=settings.isolation_network,
                             scope=settings.scope, limits=sandbox_limits(settings, timeout))
    try:
        run = host.run(request, output_cap=settings.output_limit_bytes, cancel=cancel)
    except HostUnavailable as exc:
        raise ToolError(f"the command could not be run: {exc}") from None
    if run.error:
        raise ToolError(f"the command could not be run: {run.error}")
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
    parts += _status_lines(run, timeout, settings)
    data = {
        "command": command,
        "stdout": stdout,
        "stderr": stderr,
        "exit": run.exit,
        "timed_out": run.timed_out,
        "cancelled": run.cancelled,
        "truncated": {"stdout": run.stdout.dropped, "stderr": run.stderr.dropped},
        "timeout_s": timeout,
        "isolation": settings.isolation,
        "network": settings.isolation_network,
        "killed_processes": run.killed,
        "process_limit_hit": run.pids_limit_hit,
        "memory_limit_hit": run.oom,
        "limits": run.enforced,
        "worker_pid": os.getpid(),  # which process ran it (a Ray worker, or the daemon)
    }
    ok = run.exit == 0 and not (run.timed_out or run.cancelled)
    return Result("<BASH_RESULT>\n" + "".join(parts) + "</BASH_RESULT>", data, ok=ok)


def _status_lines(run: SandboxOutcome, timeout: float, settings: ToolSettings) -> list[str]:
    lines: list[str] = []
    left = (f"; {run.killed} process(es) it left running were killed" if run.killed
            else "; no process of it is left running")
    if run.cancelled:
        lines.append(f"Command cancelled{left}.\n")
    elif run.timed_out:
        lines.append(f"Command timed out after {timeout:g} s{left}.\n")
    elif run.exit is not None and run.exit < 0:
        lines.append(f"Command was killed by {_signal_text(-run.exit)}\n")
    elif run.exit is not None and run.exit > 128 and settings.isolation != "process" and run.exit - 128 < 65:
        lines.append(f"Command failed with exit code {run.exit} (killed by {_signal_text(run.exit - 128)})\n")
    elif run.exit != 0:
        lines.append(f"Command failed with exit code {run.exit}\n")
    if run.pids_limit_hit:
        lines.append(f"Process limit reached: the call may run at most {settings.max_processes} processes "
                     "and threads; forks beyond it failed.\n")
    if run.oom:
        lines.append(f"Memory limit reached: the call may use at most {settings.memory_max_bytes // 2**20} MiB; "
                     "the kernel killed a process of it.\n")
    if run.killed and not (run.cancelled or run.timed_out):
        lines.append(f"{run.killed} background process(es) still running when the command ended were killed.\n")
    return lines


_LIMIT_SIGNALS = {signal.SIGXCPU: "the CPU time limit", signal.SIGXFSZ: "the file size limit"}


def _signal_text(number: int) -> str:
    try:
        sig = signal.Signals(number)
    except ValueError:
        return f"signal {number}"
    reason = _LIMIT_SIGNALS.get(sig)
    return f"signal {sig.name}" + (f" ({reason} was exceeded)" if reason else "")
