"""Naming a run: the run directory a request may bundle, and what the scrubber must know of it
(its id, its config's path, its owner; the local user names and homes to hide)."""

from __future__ import annotations

import getpass
import json
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kcd.bundles.types import BundleError


def resolve_run_dir(runs_root: Path, ref: str | Path) -> Path:
    """The real path of a run directory: a direct child of the runs root, or BundleError.

    Relative references are taken from the runs root. `..` is refused outright, and the
    real path (symlinks resolved) must sit directly under the root's real path.
    """
    text = str(ref)
    if not text or "\x00" in text:
        raise BundleError(400, "invalid_run", "empty or malformed run reference")
    if ".." in PurePosixPath(text).parts:
        raise BundleError(400, "run_outside_runs_root", f"{text!r} contains '..'; name a run by its id "
                          "or by its directory under the runs root")
    root = Path(os.path.realpath(runs_root))
    candidate = Path(text) if os.path.isabs(text) else Path(runs_root) / text
    real = Path(os.path.realpath(candidate))
    if real.parent != root:
        raise BundleError(400, "run_outside_runs_root",
                          f"{text!r} resolves to {real}, which is not a run directory directly under "
                          f"the runs root {root}")
    if not real.is_dir():
        raise BundleError(404, "run_not_found", f"no run directory {real.name!r} under the runs root")
    return real


@dataclass(frozen=True)
class RunFacts:
    """What the scrubber needs to know about the run, read from its unscrubbed files."""

    run_id: str | None = None
    config_path: str | None = None
    peer_uid: int | None = None


def run_facts(run_dir: Path) -> RunFacts:
    """The run id, config path and peer uid a run directory records."""
    meta = _load_json(run_dir / "meta" / "run.json")
    index = _load_json(run_dir / "conversation" / "index.json")
    run_id = meta.get("run_id") or index.get("run_id") or index.get("session_id")
    peer = meta.get("peer") if isinstance(meta.get("peer"), dict) else {}
    return RunFacts(run_id=str(run_id) if run_id else None,
                    config_path=meta.get("config_path") if isinstance(meta.get("config_path"), str) else None,
                    peer_uid=peer.get("uid") if isinstance(peer.get("uid"), int) else None)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def local_identities(uids: Iterable[int | None], env_home: str | None = None) -> tuple[list[str], list[str]]:
    """(user names, home directories) of the daemon's user and the given uids."""
    users, homes = [], [env_home or ""]
    try:
        users.append(getpass.getuser())
    except (KeyError, OSError):  # no USER/LOGNAME and no passwd entry (some containers)
        pass
    for uid in {os.getuid(), *(u for u in uids if u is not None)}:
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            continue
        users.append(entry.pw_name)
        homes.append(entry.pw_dir)
    return users, homes
