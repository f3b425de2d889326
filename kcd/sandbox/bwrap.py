"""The bubblewrap command line for one tool call.

New user (all capabilities dropped, even when the daemon is root), pid, ipc,
uts, cgroup and network namespaces; no nested user namespaces; read-only
/usr and the /bin, /sbin, /lib* trees (or their merged-/usr symlinks); a
minimal read-only /etc (no shadow, no sudoers, no machine secrets); a fresh
/proc of the call's pid namespace, a minimal /dev, a private /tmp; the
workspace bound read-write at its own path as the only writable host
directory. The daemon's socket, state and runs directories, home directories
and everything else of the host are absent. `--die-with-parent` and the pid
namespace make every process of the call die with it; `--new-session` blocks
terminal injection.

Standard library only.
"""

from __future__ import annotations

import os
import shutil

__all__ = ["ETC_DIRS", "ETC_FILES", "TOP_LEVEL", "bwrap_argv", "find_bwrap"]

TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Small files: copied into the tool host's /etc view (see etcview).
ETC_FILES = (
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/resolv.conf", "/etc/ld.so.cache",
    "/etc/ld.so.conf", "/etc/localtime", "/etc/bash.bashrc", "/etc/profile", "/etc/inputrc", "/etc/mime.types",
    "/etc/protocols", "/etc/services", "/etc/ssl/openssl.cnf",
)  # fmt: skip
# Directories of many small files: bound read-only on top of the view (never /etc/ssl/private).
ETC_DIRS = ("/etc/ld.so.conf.d", "/etc/alternatives", "/etc/ssl/certs", "/etc/ca-certificates")


def find_bwrap() -> str | None:
    return shutil.which("bwrap", path="/usr/local/bin:/usr/bin:/bin")


def bwrap_argv(bwrap: str, workspace: str, *, network: bool, etc_view: str | None = None) -> list[str]:
    """argv up to and including `--`; the command follows."""
    argv = [bwrap, "--die-with-parent", "--new-session", "--unshare-all", "--unshare-user",
            "--disable-userns", "--cap-drop", "ALL"]
    if network:
        argv.append("--share-net")
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in TOP_LEVEL:
        if os.path.islink(top):  # merged /usr: /bin -> usr/bin
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    if etc_view is not None:  # see etcview: one bind for the files instead of one per file
        argv += ["--ro-bind", etc_view, "/etc"]
    else:
        for path in ETC_FILES:
            argv += ["--ro-bind-try", path, path]
    for path in ETC_DIRS:
        argv += ["--ro-bind-try", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    # After the /tmp tmpfs, so a workspace under /tmp is bound on top of it.
    argv += ["--bind", workspace, workspace, "--chdir", workspace, "--setenv", "TMPDIR", "/tmp",
             "--remount-ro", "/", "--"]
    return argv
