"""Could a socket peer read this path itself? The daemon reads with its own rights on behalf
of its clients (config bases, prompt packs, tool directories, seed trees), so it first asks
whether the client could have: by the permission bits for the peer's uid and groups, with
every ancestor searchable. Root and the daemon's own user may read what the daemon can.
"""

from __future__ import annotations

import functools
import os
import pwd
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from kcd.api.types import PeerInfo

__all__ = ["allowed_by_bits", "peer_groups", "peer_reader", "why_unreadable"]


def peer_groups(peer: PeerInfo) -> set[int]:
    """The peer's primary and supplementary groups, from the user database."""
    try:
        return set(os.getgrouplist(pwd.getpwuid(peer.uid).pw_name, peer.gid))
    except (KeyError, OSError):
        return {peer.gid}


def allowed_by_bits(st: os.stat_result, uid: int, groups: Iterable[int], need: int) -> bool:
    """`need`: 4 read, 1 search, 5 both."""
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in set(groups):
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & need == need


def why_unreadable(path: Path, uid: int, groups: Iterable[int]) -> str | None:
    """None when `uid` could read `path` (a file, or a directory and the files in it) itself;
    else a reason naming the first path in the way."""
    if uid in (0, os.getuid()):
        return None
    groups = set(groups)
    real = Path(os.path.realpath(path))
    for ancestor in reversed(real.parents):
        try:
            if not allowed_by_bits(os.stat(ancestor), uid, groups, 1):
                return f"uid {uid} may not enter {ancestor}"
        except OSError:
            return None  # missing: the caller reports "not found" itself
    try:
        st = os.stat(real)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        if not allowed_by_bits(st, uid, groups, 5):
            return f"uid {uid} may not read the directory {real}"
        for entry in os.scandir(real):
            if entry.is_file(follow_symlinks=True) and not allowed_by_bits(entry.stat(), uid, groups, 4):
                return f"uid {uid} may not read {entry.path}"
        return None
    if not allowed_by_bits(st, uid, groups, 4):
        return f"uid {uid} may not read {real}"
    return None


def peer_reader(peer: PeerInfo | None) -> Callable[[Path], str | None] | None:
    """The `may_read` check of a config load on behalf of `peer` (None: no peer, no check)."""
    if peer is None:
        return None
    return functools.partial(_refusal, uid=peer.uid, groups=peer_groups(peer))


def _refusal(path: Path, *, uid: int, groups: set[int]) -> str | None:
    why = why_unreadable(path, uid, groups)
    return None if why is None else f"{why} (the daemon reads only what you could read yourself)"
