"""Who may do what over the control socket: one rule, in one place.

Every request carries the socket peer's uid and gid (SO_PEERCRED, see
`peercred`); its supplementary groups come from the user database. A run (and a
matrix) belongs to the uid that started it. Its reads, events, cancel, bundle,
workspace and changes are allowed to that uid and to operators; breaker resets,
probe refreshes, live matrix scenarios, reload and shutdown are operator-only.
Operators: root, the daemon's own user and, in system mode, members of
`operators_group` (`kylecode-admin` by default). In user mode nobody but the user (and root) may do anything
beyond `/version` and `/v1/health`. A refusal is a 403 naming the rule.
"""

from __future__ import annotations

import grp
import os

import msgspec

from kcd.api.types import PeerInfo
from kcd.errors import Forbidden
from kcd.peer_files import peer_groups

__all__ = ["AccessPolicy", "Caller"]


class Caller(msgspec.Struct, frozen=True):
    """Who is asking: the peer's uid (None over TCP) and whether it is an operator."""

    uid: int | None
    operator: bool


class AccessPolicy:
    """The one access rule: a run or matrix is its starter's; operators (root, the daemon's
    user, `operators_group`) may act on all; user mode serves only its user."""

    def __init__(self, *, mode: str, operators_group: str | None, daemon_uid: int | None = None) -> None:
        self.mode = mode
        self.daemon_uid = os.getuid() if daemon_uid is None else daemon_uid
        self.group_name = operators_group if mode == "system" else None
        try:
            self.group_gid = grp.getgrnam(self.group_name).gr_gid if self.group_name else None
        except KeyError:
            self.group_gid = None  # no such group on this host: root and the daemon's user only

    def caller(self, peer: PeerInfo | None) -> Caller:
        if peer is None:
            return Caller(uid=None, operator=False)
        uid = peer.uid
        operator = uid in (0, self.daemon_uid) or (self.group_gid is not None and self.group_gid in peer_groups(peer))
        return Caller(uid=uid, operator=operator)

    def _who(self) -> str:
        who = "root, the daemon's user"
        return who + (f" and members of group '{self.group_name}'" if self.group_name else "")

    def require_user(self, caller: Caller) -> None:
        """User mode: the daemon serves its user only."""
        if self.mode == "user" and not caller.operator:
            raise Forbidden("forbidden", f"this is the per-user daemon of uid {self.daemon_uid}; "
                                         f"uid {caller.uid} may not use it")

    def may_see(self, caller: Caller, owner_uid: int | None) -> bool:
        return caller.operator or (owner_uid is not None and owner_uid == caller.uid)

    def require_owner(self, caller: Caller, owner_uid: int | None, what: str, action: str) -> None:
        self.require_user(caller)
        if not self.may_see(caller, owner_uid):
            owner = f"uid {owner_uid}" if owner_uid is not None else "no user"
            raise Forbidden("forbidden", f"{what} belongs to {owner}; only its owner, {self._who()} may "
                                         f"{action} it")

    def require_operator(self, caller: Caller, action: str) -> None:
        if not caller.operator:
            raise Forbidden("forbidden", f"only operators ({self._who()}) may {action}")
