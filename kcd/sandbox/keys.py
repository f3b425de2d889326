"""Keep provider keys out of everything a tool could read about the daemon.

`/proc/<pid>/environ` shows the environment a process was *started* with;
removing a variable later (os.environ.pop) does not change it. So `kcd serve`
starts over: if its environment holds secret-looking variables, it moves them
into an anonymous memory file, re-executes itself without them, and reads
them back into memory. The daemon keeps them in its `env` mapping only; every
process it starts afterwards (the tool host, a local Ray instance and its
workers) inherits an environment that never contained them. It then marks
itself non-dumpable, so its memory, fds and environ are unreadable to other
processes of its user.
"""

from __future__ import annotations

import json
import os
import re
import sys

__all__ = ["is_secret_name", "restart_without_secrets"]

_FD_VAR = "KCD_SECRETS_FD"
_SECRET = re.compile(r"(?i)(api_?key|_key$|^key$|token|secret|passw|credential|private)")
# Ray reads its own settings from the process environment (RAY_AUTH_TOKEN* is a cluster
# token, not a provider key, and Ray needs it where it runs).
_KEEP_PREFIXES = ("RAY_",)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET.search(name)) and not name.startswith(_KEEP_PREFIXES)


def restart_without_secrets() -> dict[str, str]:
    """Return the secrets taken out of this process's environment (re-executing once to do so)."""
    fd_text = os.environ.pop(_FD_VAR, None)
    if fd_text is not None:
        with os.fdopen(int(fd_text), "rb") as fh:
            return dict(json.loads(fh.read() or b"{}"))
    secrets = {k: v for k, v in os.environ.items() if is_secret_name(k)}
    if not secrets:
        return {}
    fd = os.memfd_create("kcd-secrets", 0)  # not CLOEXEC: the new image reads it
    os.write(fd, json.dumps(secrets).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    env[_FD_VAR] = str(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    raise AssertionError("unreachable")
