"""Where the control socket lives: one resolution rule for kcd and kcctl.

Order: an explicit path, then `KYLECODE_HOST` (`unix:///path`), then the
user-mode socket, then the system socket `/run/kylecode/kcd.sock`.
The user-mode directory is `$XDG_RUNTIME_DIR/kylecode`; when XDG_RUNTIME_DIR
is unset (su, cron, containers) we fall back to `/tmp/kylecode-<uid>`, as
tmux does, so a fresh machine still works with one command.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

SYSTEM_SOCKET = Path("/run/kylecode/kcd.sock")
MAX_SUN_PATH = 107  # AF_UNIX sun_path is 108 bytes including the NUL


class SocketPathError(ValueError):
    """A control socket or runtime directory that cannot be used safely, or a malformed KYLECODE_HOST."""


def user_runtime_dir(env: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """The user-mode runtime directory: `$XDG_RUNTIME_DIR/kylecode`, else `/tmp/kylecode-<uid>`."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "kylecode"
    return Path(f"/tmp/kylecode-{os.getuid()}")


def private_runtime_dir(path: Path) -> Path:
    """Create `path` 0700, or accept it only if it is a real directory of ours that nobody
    else may enter, as tmux does: another local user must not be able to plant a socket or
    a lock file link in it. Raises SocketPathError naming what is wrong."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise SocketPathError(f"{path} is a symbolic link; refusing to use it as kcd's runtime directory "
                              "(remove it, or set XDG_RUNTIME_DIR)")
    if not stat.S_ISDIR(st.st_mode):
        raise SocketPathError(f"{path} is not a directory; refusing to use it as kcd's runtime directory")
    if st.st_uid != os.geteuid():
        raise SocketPathError(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}); "
                              "another user may have made it: remove it, or set XDG_RUNTIME_DIR")
    if st.st_mode & 0o077:
        raise SocketPathError(f"{path} has unsafe permissions {stat.S_IMODE(st.st_mode):04o} "
                              "(others may enter it); run chmod 700 on it")
    return path


def user_socket(env=None) -> Path:
    """The user-mode control socket path."""
    return user_runtime_dir(env) / "kcd.sock"


def user_state_dir(env=None) -> Path:
    """The user-mode state directory: `$XDG_STATE_HOME/kylecode`, else `~/.local/state/kylecode`."""
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
