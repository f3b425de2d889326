"""How a shell command is wrapped: resource limits and optional OS isolation.

Always (see `shell.py`): a scrubbed environment (an allow-list; no provider
keys; HOME = the workspace), the workspace as cwd, its own session and process
group, a timeout counted from the start that SIGKILLs the whole group, stdout
and stderr captured separately and capped.

Resource limits, applied by wrapping the command in util-linux `prlimit` when
it is installed (otherwise none are applied, and the outcome's
`data["limits"]` is null). `preexec_fn` is avoided on purpose: it is not safe
in a process with threads, and both the daemon and Ray workers have them.
- RLIMIT_CPU = ceil(timeout) + 1 s of CPU time per process (a busy loop dies
  even if the wall-clock kill were late).
- RLIMIT_FSIZE = `ToolSettings.file_size_limit_bytes` (default 256 MiB; 0 = no
  limit): a larger write fails with EFBIG/SIGXFSZ.
- RLIMIT_AS = `ToolSettings.memory_limit_bytes` (default 0 = no limit; a limit
  breaks JVMs, Go binaries and sanitizers, which reserve large address spaces).
- No RLIMIT_NPROC: it counts every process of the user, the daemon's included.

Isolation, `ToolSettings.isolation`:
- "none" (default): the command runs as the daemon's user, with its view of
  the filesystem and network. Only the file tools are confined by path checks.
- "bwrap": bubblewrap. New user, pid, ipc, uts, cgroup and network namespaces
  (`--unshare-all`; the host network only with `isolation_network=True`);
  read-only binds of /usr and the /bin, /sbin, /lib* trees (or their
  merged-/usr symlinks) and a minimal /etc (passwd, group, hosts, resolv.conf,
  ld.so cache, alternatives, localtime, ssl/CA certificates); a private /tmp,
  /proc and /dev; the workspace bound read-write at its own path as the only
  writable host directory. `--die-with-parent` and `--new-session` (no
  terminal injection). Nothing else of the host (home directories, /work,
  /opt, the daemon's state) is visible.
- "unshare": util-linux `unshare --user --map-root-user --net --pid --fork
  --kill-child --mount-proc`: no network (unless `isolation_network`), a
  private process tree (background processes die with the command), but the
  host filesystem stays visible and writable as the daemon's user. Weaker than
  bwrap; for hosts without bubblewrap.
If the configured isolation is not installed, or does not work (user
namespaces disabled, seccomp), the call fails with a <TOOL_ERROR> saying so:
a command is never run with less isolation than configured. Each call probes
the wrapper with `/bin/true` first (a few milliseconds), because nothing may be
cached at module level.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from typing import Any

from kcd.agent.calls import ToolSettings
from kcd.agent.tools.results import ToolError

__all__ = ["IsolationUnavailable", "isolation_prefix", "limits_prefix"]

_PROBE_TIMEOUT_S = 10.0
_TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = (
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/resolv.conf", "/etc/ld.so.cache",
    "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime", "/etc/ssl", "/etc/ca-certificates",
)  # fmt: skip


class IsolationUnavailable(ToolError):
    """The configured isolation cannot be provided on this host; nothing ran."""


def isolation_prefix(settings: ToolSettings, workspace: str, env: dict[str, str]) -> list[str]:
    """argv prefix for `settings.isolation`, probed; raises IsolationUnavailable."""
    if settings.isolation == "none":
        return []
    if settings.isolation == "bwrap":
        prefix = _bwrap(workspace, settings.isolation_network)
        install = "install bubblewrap (the 'bwrap' command)"
    elif settings.isolation == "unshare":
        prefix = _unshare(settings.isolation_network)
        install = "install util-linux's 'unshare'"
    else:
        raise IsolationUnavailable(f"unknown isolation {settings.isolation!r}; use 'none', 'bwrap' or 'unshare'")
    if not prefix:
        raise IsolationUnavailable(
            f"shell isolation {settings.isolation!r} is configured but not available on this host: {install}, "
            "or change the isolation setting; the command was not run"
        )
    _probe(settings.isolation, prefix, workspace, env)
    return prefix


def limits_prefix(settings: ToolSettings, timeout: float) -> tuple[list[str], dict[str, Any] | None]:
    """argv prefix applying the resource limits with prlimit, and their description (None: not applied)."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return [], None
    cpu = math.ceil(timeout) + 1
    limits: dict[str, Any] = {"cpu_s": cpu}
    argv = [prlimit, f"--cpu={cpu}:{cpu}"]
    if settings.file_size_limit_bytes > 0:
        limits["fsize_bytes"] = settings.file_size_limit_bytes
        argv.append(f"--fsize={settings.file_size_limit_bytes}:{settings.file_size_limit_bytes}")
    if settings.memory_limit_bytes > 0:
        limits["as_bytes"] = settings.memory_limit_bytes
        argv.append(f"--as={settings.memory_limit_bytes}:{settings.memory_limit_bytes}")
    return [*argv, "--"], limits


def _bwrap(workspace: str, network: bool) -> list[str]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return []
    argv = [bwrap, "--die-with-parent", "--new-session", "--unshare-all"]
    if network:
        argv.append("--share-net")
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in _TOP_LEVEL:
        if os.path.islink(top):  # merged /usr: /bin -> usr/bin
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for path in _ETC:
        argv += ["--ro-bind-try", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    # After the /tmp tmpfs, so a workspace under /tmp is bound on top of it.
    argv += ["--bind", workspace, workspace, "--chdir", workspace, "--setenv", "TMPDIR", "/tmp", "--"]
    return argv


def _unshare(network: bool) -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    argv = [unshare, "--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if not network:
        argv.append("--net")
    return [*argv, "--"]


def _probe(name: str, prefix: list[str], workspace: str, env: dict[str, str]) -> None:
    try:
        proc = subprocess.run(
            [*prefix, "/bin/true"],
            cwd=workspace,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IsolationUnavailable(
            f"shell isolation {name!r} could not be started on this host ({exc}); the command was not run"
        ) from None
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", errors="replace").strip()[-300:] or f"exit code {proc.returncode}"
        raise IsolationUnavailable(
            f"shell isolation {name!r} does not work on this host ({detail}); "
            "the command was not run (user namespaces may be disabled)"
        )
