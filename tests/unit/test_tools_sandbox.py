"""Shell resource limits and the optional isolation (bwrap, unshare)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.tools import execute_calls, sandbox


def run_shell(ws: Path, command: str, settings: ToolSettings, **extra: object) -> ToolOutcome:
    [outcome] = execute_calls(str(ws), [ToolInvocation("c1", "run_shell", {"command": command, **extra})], settings)
    return outcome


def _works(argv: list[str]) -> bool:
    if shutil.which(argv[0]) is None:
        return False
    return subprocess.run([*argv, "/bin/true"], capture_output=True, timeout=10).returncode == 0


HAVE_PRLIMIT = shutil.which("prlimit") is not None
HAVE_BWRAP = _works(["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--"])
HAVE_UNSHARE = _works(["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--"])


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("outside secret\n")
    return root


# --------------------------------------------------------------------------- resource limits


@pytest.mark.skipif(not HAVE_PRLIMIT, reason="prlimit is not installed")
def test_limits_are_applied_with_prlimit(ws: Path) -> None:
    settings = ToolSettings(shell_timeout_s=5, file_size_limit_bytes=1024 * 1024)
    out = run_shell(ws, "ulimit -t; ulimit -f; head -c 2000000 /dev/zero > big", settings)
    assert out.data is not None and out.data["limits"] == {"cpu_s": 6, "fsize_bytes": 1024 * 1024}
    assert out.data["stdout"].split() == ["6", "1024"]  # ulimit -f counts KiB
    assert not out.ok and "File size limit exceeded" in out.data["stderr"]
    assert (ws / "big").stat().st_size == 1024 * 1024


@pytest.mark.skipif(not HAVE_PRLIMIT, reason="prlimit is not installed")
def test_memory_limit_is_optional(ws: Path) -> None:
    default = run_shell(ws, "ulimit -v", ToolSettings())
    assert default.data is not None and default.data["stdout"].strip() == "unlimited"
    limited = run_shell(ws, "ulimit -v", ToolSettings(memory_limit_bytes=512 * 1024 * 1024))
    assert limited.data is not None and limited.data["stdout"].strip() == str(512 * 1024)


def test_without_prlimit_the_command_still_runs(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None if name == "prlimit" else real_which(name))
    out = run_shell(ws, "echo ok", ToolSettings())
    assert out.ok and out.data is not None and out.data["limits"] is None


def test_killed_by_a_limit_signal_is_explained(ws: Path) -> None:
    out = run_shell(ws, "kill -XFSZ $$", ToolSettings())
    assert not out.ok
    assert "Command was killed by signal SIGXFSZ (the file size limit was exceeded)" in out.output


# --------------------------------------------------------------------------- isolation unavailable


@pytest.mark.parametrize("isolation", ["bwrap", "unshare"])
def test_missing_isolation_is_an_error_and_nothing_runs(
    ws: Path, monkeypatch: pytest.MonkeyPatch, isolation: str
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        sandbox.shutil, "which", lambda name: None if name in ("bwrap", "unshare") else real_which(name)
    )
    out = run_shell(ws, "touch ran", ToolSettings(isolation=isolation))  # type: ignore[arg-type]
    assert not out.ok
    assert out.output.startswith('<TOOL_ERROR tool="run_shell">')
    assert f"shell isolation {isolation!r} is configured but not available on this host" in out.output
    assert not (ws / "ran").exists()


def test_broken_isolation_is_an_error_and_nothing_runs(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sandbox, "_bwrap", lambda workspace, network: ["/bin/sh", "-c", "echo 'no user namespaces' >&2; exit 1", "--"]
    )
    out = run_shell(ws, "touch ran", ToolSettings(isolation="bwrap"))
    assert not out.ok
    assert "shell isolation 'bwrap' does not work on this host (no user namespaces)" in out.output
    assert not (ws / "ran").exists()


# --------------------------------------------------------------------------- bwrap


@pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap is not installed or cannot create namespaces here")
def test_bwrap_confines_the_filesystem_and_network(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    settings = ToolSettings(isolation="bwrap")
    command = (
        "echo made > inside.txt; cat ../outside.txt; ls /work /root /home 2>&1 | wc -l; "
        "grep -c : /proc/net/dev; echo pid=$$; env | grep -c OPENAI_API_KEY; true"
    )
    out = run_shell(ws, command, settings)
    assert out.ok, out.output
    assert out.data is not None and out.data["isolation"] == "bwrap"
    assert (ws / "inside.txt").read_text() == "made\n"  # the workspace is writable
    assert "outside secret" not in out.output  # nothing beside it is visible
    lines = out.data["stdout"].split()
    assert lines[1] == "1"  # only the loopback interface
    assert lines[2] == "pid=2"  # a private process tree
    assert lines[3] == "0"  # the environment is still scrubbed


@pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap is not installed or cannot create namespaces here")
def test_bwrap_timeout_kills_everything(ws: Path) -> None:
    started = time.monotonic()
    out = run_shell(ws, "sleep 60 & sleep 60", ToolSettings(isolation="bwrap"), timeout=1)
    assert time.monotonic() - started < 3
    assert out.data is not None and out.data["timed_out"]


@pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap is not installed or cannot create namespaces here")
def test_bwrap_network_can_be_kept(ws: Path) -> None:
    out = run_shell(ws, "grep -c : /proc/net/dev", ToolSettings(isolation="bwrap", isolation_network=True))
    with open("/proc/net/dev") as fh:
        host = sum(1 for line in fh if ":" in line)
    assert out.ok and out.data is not None and int(out.data["stdout"]) == host


# --------------------------------------------------------------------------- unshare


@pytest.mark.skipif(not HAVE_UNSHARE, reason="unshare is not installed or user namespaces are disabled")
def test_unshare_isolates_processes_and_network(ws: Path) -> None:
    out = run_shell(
        ws, "echo pid=$$; grep -c : /proc/net/dev; sleep 30 & echo bg=$!", ToolSettings(isolation="unshare")
    )
    assert out.ok, out.output
    assert out.data is not None
    lines = out.data["stdout"].split()
    assert lines[0] == "pid=1" and lines[1] == "1"
    assert os.path.exists(ws)  # the filesystem is shared (documented: weaker than bwrap)
