"""Ray settings kcd prepares for its driver process, without importing Ray.

Token auth for the local instance (its token file made 0600 on first start), and
the shape of a cluster address.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ensure_ray_token", "local_auth_environment", "split_host_port"]


def local_auth_environment(environ: Mapping[str, str], token_path: Path | None) -> dict[str, str]:
    """The RAY_AUTH_* settings for a local instance kcd starts. Ray 2.60's GCS, raylet and
    workers listen on every interface whatever the node address says, so token auth is
    what keeps other hosts (and other local users) out: on unless the environment turns it
    off explicitly (RAY_AUTH_MODE=disabled), with the token in kcd's state directory."""
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    settings = {"RAY_AUTH_MODE": "token"}
    if not environ.get("RAY_AUTH_TOKEN") and not environ.get("RAY_AUTH_TOKEN_PATH") and token_path is not None:
        settings["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    return settings


def ensure_ray_token(environ: Mapping[str, str]) -> Path | None:
    """With RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH naming a file that does not exist yet,
    create it (0600, random) before a local instance starts: the system unit turns token auth
    on, and nothing else makes the token. Returns the path created, if any."""
    if environ.get("RAY_AUTH_MODE", "").lower() != "token" or environ.get("RAY_AUTH_TOKEN"):
        return None
    raw = environ.get("RAY_AUTH_TOKEN_PATH")
    if not raw:
        return None
    path = Path(raw)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} must be 'host:port' (the GCS address)")
    return host.strip("[]"), int(port)
