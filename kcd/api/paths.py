"""Where the control socket lives: one resolution rule for kcd and kcctl.

Order: an explicit path, then `KYLECODE_HOST` (`unix:///path`), then the
user-mode socket, then the system socket `/run/kylecode/kcd.sock`.
The user-mode directory is `$XDG_RUNTIME_DIR/kylecode`; when XDG_RUNTIME_DIR
is unset (su, cron, containers) we fall back to `/tmp/kylecode-<uid>`, as
tmux does, so a fresh machine still works with one command.
"""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_SOCKET = Path("/run/kylecode/kcd.sock")
MAX_SUN_PATH = 107  # AF_UNIX sun_path is 108 bytes including the NUL


class SocketPathError(ValueError):
    pass


def user_runtime_dir(env: os._Environ[str] | dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "kylecode"
    return Path(f"/tmp/kylecode-{os.getuid()}")


def user_socket(env=None) -> Path:
    return user_runtime_dir(env) / "kcd.sock"


def user_state_dir(env=None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local" / "state")
    return Path(base) / "kylecode"


def parse_host(value: str) -> Path:
    if value.startswith("unix://"):
        path = value[len("unix://"):]
        if not path.startswith("/"):
            raise SocketPathError(f"KYLECODE_HOST={value!r}: expected unix:///absolute/path")
        return Path(path)
    raise SocketPathError(f"KYLECODE_HOST={value!r}: only unix:// hosts are supported")


def check_length(path: Path) -> Path:
    if len(os.fsencode(str(path))) > MAX_SUN_PATH:
        raise SocketPathError(
            f"socket path {path} is {len(str(path))} bytes; AF_UNIX allows at most {MAX_SUN_PATH}"
        )
    return path


def resolve_socket(explicit: str | None = None, env=None) -> tuple[Path, str]:
    """Return (path, how) where how is "explicit", "env", "user" or "system".

    Without an explicit choice the user socket wins when it exists, else the
    system socket when it exists, else the user socket (where an auto-started
    daemon will listen).
    """
    env = os.environ if env is None else env
    if explicit:
        return check_length(Path(explicit)), "explicit"
    host = env.get("KYLECODE_HOST")
    if host:
        return check_length(parse_host(host)), "env"
    user = user_socket(env)
    if user.exists():
        return check_length(user), "user"
    if SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET, "system"
    return check_length(user), "user"
