"""The user runtime directory is trusted only if it is ours and private (as tmux checks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kcd.api.paths import SocketPathError, private_runtime_dir


def test_created_private(tmp_path: Path) -> None:
    d = private_runtime_dir(tmp_path / "kylecode-1")
    assert d.is_dir() and (os.stat(d).st_mode & 0o777) == 0o700


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "kylecode-1"
    link.symlink_to(target)
    with pytest.raises(SocketPathError, match="symbolic link"):
        private_runtime_dir(link)


def test_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "kylecode-1"
    f.write_text("")
    with pytest.raises(SocketPathError, match="not a directory"):
        private_runtime_dir(f)


def test_others_may_not_enter(tmp_path: Path) -> None:
    d = tmp_path / "kylecode-1"
    d.mkdir()
    os.chmod(d, 0o755)
    with pytest.raises(SocketPathError, match="unsafe permissions 0755"):
        private_runtime_dir(d)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory owned by another uid")
def test_another_users_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "kylecode-1"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(SocketPathError, match="belongs to uid 65534"):
        private_runtime_dir(d)


def test_kcctl_does_not_follow_a_planted_lock_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kcctl.client import DaemonUnreachable, start_user_daemon

    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (runtime / "start.lock").symlink_to(victim)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    with pytest.raises(DaemonUnreachable, match="start.lock"):
        start_user_daemon(runtime / "kcd.sock", timeout=1)
    assert victim.read_text() == "precious\n"
