"""The shipped systemd units: clean under `systemd-analyze verify`, hardened, and consistent
with what kcd needs (its token file, its directories, the sandbox's namespaces)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
INSTALL_PATHS = {"/opt/kylecode/.venv/bin/kcd", "%h/.local/bin/kcd"}


def _installed_copy(unit_dir: Path, tmp: Path) -> list[Path]:
    """The units with the install path of `kcd` pointed at this checkout's (verify checks it exists)."""
    kcd = Path(sys.executable).with_name("kcd")
    if not kcd.exists():
        pytest.skip(f"no kcd entry point next to {sys.executable}")
    out = []
    for name in ("kcd.service", "kcd.socket"):
        text = (unit_dir / name).read_text()
        for path in INSTALL_PATHS:
            text = text.replace(path, str(kcd))
        (tmp / name).write_text(text)
        out.append(tmp / name)
    return out


def _analyze(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    runtime = tmp / "xdg"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, env=env, timeout=120)


def _exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", output)
    assert match, output[-2000:]
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize("scope", ["system", "user"])
def test_units_are_clean_under_verify(scope: str, tmp_path: Path) -> None:
    units = _installed_copy(SYSTEMD if scope == "system" else SYSTEMD / "user", tmp_path)
    proc = _analyze("verify", *(["--user"] if scope == "user" else []), *map(str, units), tmp=tmp_path)
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), proc.stderr + proc.stdout


@needs_analyze
def test_the_user_unit_is_hardened(tmp_path: Path) -> None:
    proc = _analyze("security", "--user", "--offline=true", str(SYSTEMD / "user" / "kcd.service"), tmp=tmp_path)
    assert _exposure(proc.stdout + proc.stderr) <= 5.0


@needs_analyze
def test_the_system_unit_stays_at_its_measured_exposure(tmp_path: Path) -> None:
    """2.4: what remains is what kcd is for (internet sockets for providers, user namespaces
    for tool sandboxes, no PrivateUsers because SO_PEERCRED must see real uids); see the unit."""
    proc = _analyze("security", "--offline=true", str(SYSTEMD / "kcd.service"), tmp=tmp_path)
    assert _exposure(proc.stdout + proc.stderr) <= 2.4


def _directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_system_unit_keeps_files_from_the_socket_group() -> None:
    unit = _directives(SYSTEMD / "kcd.service")
    socket = _directives(SYSTEMD / "kcd.socket")
    # Everyone who may use kcd is in the socket's group: its files must not be readable by it.
    assert socket["SocketGroup"] == ["kylecode"] and unit["UMask"] == ["0077"]
    for kind in ("State", "Cache", "Logs", "Runtime"):
        assert unit[f"{kind}DirectoryMode"] == ["0700"], kind
    # Ray token auth with a token file kcd creates in its own state directory.
    env = dict(v.split("=", 1) for v in unit["Environment"])
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"].startswith("/var/lib/" + unit["StateDirectory"][0] + "/")
    # The sandbox builds namespaces: the unit must allow what bubblewrap unshares.
    allowed = set(unit["RestrictNamespaces"][0].split())
    assert {"user", "mnt", "pid", "net", "ipc", "uts", "cgroup"} <= allowed


def test_the_tmpfiles_entry_lets_the_daemon_user_create_its_socket() -> None:
    entries = [line.split() for line in (SYSTEMD / "kylecode.tmpfiles").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert ["d", "/run/kylecode", "0750", "kylecode", "kylecode", "-"] in entries
