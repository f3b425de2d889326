"""The tool host and its supervisor (kcd.sandbox), in every isolation mode this host supports.

Each test runs real commands through a real tool host. Modes that cannot run
here (no bwrap, user namespaces disabled) skip with the reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.tools import execute_calls
from kcd.sandbox.host import SandboxRequest, ToolHost, helper_environment
from kcd.sandbox.keys import is_secret_name
from kcd.sandbox.modes import IsolationUnavailable, probe_isolation

MARK = "86420"


@pytest.fixture(scope="module")
def host():
    with ToolHost() as h:
        yield h


@pytest.fixture(scope="module")
def available(host) -> dict[str, str]:
    return probe_isolation(host, "auto").probes | _probe_rest(host)


def _probe_rest(host: ToolHost) -> dict[str, str]:
    found = {}
    for mode in ("bwrap", "namespaces", "process"):
        try:
            found[mode] = probe_isolation(host, mode).probes[mode]
        except IsolationUnavailable as exc:
            found[mode] = str(exc)
    return found


@pytest.fixture(params=["bwrap", "namespaces", "process"])
def mode(request, available) -> str:
    if available.get(request.param) != "ok":
        pytest.skip(f"isolation {request.param!r} does not work here: {available.get(request.param)}")
    return request.param


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("outside secret\n")
    return root


def shell(ws: Path, command: str, settings: ToolSettings, host: ToolHost, **extra: object) -> ToolOutcome:
    [outcome] = execute_calls(str(ws), [ToolInvocation("c1", "run_shell", {"command": command, **extra})], settings,
                              host=host)
    return outcome


def _leftovers() -> set[int]:
    out = subprocess.run(["pgrep", "-f", f"sleep {MARK}"], capture_output=True, text=True).stdout.split()
    return {int(p) for p in out}


@pytest.fixture
def no_leftovers():
    before = _leftovers()
    yield
    left = _leftovers() - before
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived their call: {left}"


# --------------------------------------------------------------------------- every mode


def test_helper_environment_is_an_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    env = helper_environment()
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ"}


def test_secret_names() -> None:
    for name in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "KCD_GATEWAY_TOKEN",
                 "DB_PASSWORD", "MY_KEY"):
        assert is_secret_name(name), name
    for name in ("PATH", "HOME", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "LANG", "KEYBOARD"):
        assert not is_secret_name(name), name


def test_the_shell_is_not_a_child_of_a_process_with_keys(ws, host, mode, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-unit-0000")  # this process has a key now
    out = shell(ws, "tr '\\0' '\\n' < /proc/$PPID/environ; env; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'",
                ToolSettings(isolation=mode), host)
    assert out.ok, out.output
    assert "sk-canary-unit" not in out.output and "OPENAI_API_KEY" not in out.output


def test_background_and_daemonised_processes_die_with_the_call(ws, host, mode, no_leftovers) -> None:
    command = (f"setsid sleep {MARK}1 >/dev/null 2>&1 & nohup sleep {MARK}2 >/dev/null 2>&1 & "
               f"( ( sleep {MARK}3 >/dev/null 2>&1 & ) & ); "
               f"bash -c 'trap \"\" TERM HUP; exec sleep {MARK}4' >/dev/null 2>&1 & "
               f"timeout 100 sleep {MARK}5 >/dev/null 2>&1 & sleep 0.3; echo ok")
    out = shell(ws, command, ToolSettings(isolation=mode), host)
    assert out.ok and out.data is not None
    if mode == "process":  # the supervisor kills them and counts them
        assert out.data["killed_processes"] >= 5 and "were killed" in out.output
    time.sleep(0.2)


def test_a_command_that_leaves_nothing_behind_reports_no_kills(ws, host, mode) -> None:
    # bwrap's outer process can exit a moment before its pid-1 init: that wrapper once counted
    # as "1 background process(es) still running ... killed" in about one call in six.
    counts = [shell(ws, command, ToolSettings(isolation=mode), host).data["killed_processes"]
              for command in ["echo hi"] * 24 + ["sleep 0.2; echo step2"] * 2]
    assert counts == [0] * len(counts)


def test_timeout_kills_everything_and_says_so(ws, host, mode, no_leftovers) -> None:
    started = time.monotonic()
    out = shell(ws, f"setsid sleep {MARK}6 & sleep {MARK}7", ToolSettings(isolation=mode, shell_timeout_s=1), host)
    assert time.monotonic() - started < 5
    assert out.data is not None and out.data["timed_out"] and out.data["exit"] is None
    assert "Command timed out after 1 s" in out.output
    if out.data["limits"].get("pids_by") == "cgroup" or mode == "process":  # counted: the shell and both sleeps
        assert out.data["killed_processes"] >= 2 and "were killed" in out.output


def test_cancel_kills_everything(ws, host, mode, no_leftovers) -> None:
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    [out] = execute_calls(str(ws), [ToolInvocation("c1", "run_shell", {"command": f"setsid sleep {MARK}8 & sleep 30"})],
                          ToolSettings(isolation=mode), cancel, host=host)
    assert time.monotonic() - started < 5
    assert out.data is not None and out.data["cancelled"] and "Command cancelled" in out.output


def test_a_burst_is_capped_and_cleaned_up(ws, host, mode, no_leftovers) -> None:
    settings = ToolSettings(isolation=mode, max_processes=40, shell_timeout_s=5)
    probe = shell(ws, "true", settings, host)
    assert probe.data is not None
    if not probe.data["limits"].get("pids_by"):
        pytest.skip(f"no process cap can be enforced here in mode {mode} (not root, no cgroup, no user namespace)")
    # bounded: 300 sleeps against a cap of 40
    out = shell(ws, f"for i in $(seq 300); do sleep {MARK}9 2>/dev/null & done 2>/dev/null; echo forked", settings,
                host)
    assert out.data is not None and out.data["process_limit_hit"], out.output
    assert "Process limit reached" in out.output


def test_cpu_and_file_size_limits(ws, host, mode) -> None:
    settings = ToolSettings(isolation=mode, shell_timeout_s=5, file_size_limit_bytes=1024 * 1024)
    out = shell(ws, "ulimit -t; ulimit -f; head -c 2000000 /dev/zero > big", settings, host)
    assert out.data is not None and out.data["stdout"].split() == ["6", "1024"]
    # SIGXFSZ, or EFBIG where a wrapper ignores that signal (bwrap): the write stops at the limit either way
    assert not out.ok and ("File size limit exceeded" in out.output or "File too large" in out.output)
    assert (ws / "big").stat().st_size == 1024 * 1024


def test_no_capabilities_and_no_new_privileges(ws, host, mode) -> None:
    out = shell(ws, "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status", ToolSettings(isolation=mode), host)
    lines = dict(line.split(":\t") for line in out.data["stdout"].splitlines())  # type: ignore[index]
    assert lines["CapEff"] == lines["CapBnd"] == "0000000000000000" and lines["NoNewPrivs"] == "1"


def test_output_is_capped_and_separated(ws, host, mode) -> None:
    out = shell(ws, "yes | head -c 200000; echo err >&2", ToolSettings(isolation=mode, output_limit_bytes=1000), host)
    assert out.data is not None and len(out.data["stdout"]) == 1000 and out.data["stderr"] == "err\n"
    assert out.data["truncated"]["stdout"] == 199000


def test_a_child_holding_the_pipe_does_not_keep_the_call(ws, host, mode, no_leftovers) -> None:
    started = time.monotonic()
    out = shell(ws, f"sleep {MARK}0 & echo done", ToolSettings(isolation=mode), host)
    assert out.ok and out.data is not None and out.data["stdout"] == "done\n"
    assert time.monotonic() - started < 3  # at most the 1 s drain grace


# --------------------------------------------------------------------------- isolated modes


@pytest.fixture(params=["bwrap", "namespaces"])
def isolated(request, available) -> str:
    if available.get(request.param) != "ok":
        pytest.skip(f"isolation {request.param!r} does not work here: {available.get(request.param)}")
    return request.param


def test_only_the_workspace_is_visible_and_writable(ws, host, isolated, tmp_path) -> None:
    outside = tmp_path / "outside.txt"
    command = (f"cat {outside} 2>&1; echo x > {outside} 2>&1; echo x > /usr/x 2>&1; echo x > /x 2>&1; "
               "cat /etc/shadow 2>&1; ls /root /home /var /run 2>&1; ls /etc/ssl/private 2>&1; "
               "echo inside > here.txt; ls /proc | grep -c '^[0-9]'")
    out = shell(ws, command, ToolSettings(isolation=isolated), host)
    text = out.output
    assert "outside secret" not in text and outside.read_text() == "outside secret\n"
    assert not Path("/usr/x").exists() and not Path("/x").exists()
    assert (ws / "here.txt").read_text() == "inside\n"
    assert int(out.data["stdout"].splitlines()[-1]) < 10  # type: ignore[index]  # only this call's processes


def test_network_is_off_unless_asked(ws, host, isolated) -> None:
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        off = shell(ws, f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo open", ToolSettings(isolation=isolated), host)
        assert "open" not in off.data["stdout"]  # type: ignore[index]
        on = shell(ws, f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo open",
                   ToolSettings(isolation=isolated, isolation_network=True), host)
        assert on.data["stdout"] == "open\n", on.output  # type: ignore[index]
    finally:
        server.close()


def test_hard_and_symbolic_links_do_not_reach_outside(ws, host, tmp_path) -> None:
    # Process mode can make the hard link (same filesystem); the file tools still refuse it.
    outside = tmp_path / "outside.txt"
    out = shell(ws, f"ln {outside} hard; ln -s {outside} soft; ls", ToolSettings(isolation="process"), host)
    assert "hard" in out.data["stdout"]  # type: ignore[index]
    for name in ("hard", "soft"):
        [read] = execute_calls(str(ws), [ToolInvocation("r", "read_file", {"path": name})], ToolSettings(), host=host)
        assert not read.ok and "outside secret" not in read.output, read.output


def test_a_missing_bwrap_is_an_error_and_nothing_runs(ws) -> None:
    with ToolHost() as h:
        if h.info()["bwrap"] is not None:
            pytest.skip("bwrap is installed here (this checks hosts without it)")
        outcome = h.run(SandboxRequest(argv=["/bin/sh", "-c", "touch ran"], cwd=str(ws), env={}, timeout=5,
                                       mode="bwrap"), output_cap=1000)
    assert outcome.error and "bwrap" in outcome.error and not (ws / "ran").exists()


def test_an_explicit_mode_that_does_not_work_is_refused(host, available) -> None:
    broken = [m for m in ("bwrap", "namespaces") if available.get(m) != "ok"]
    if not broken:
        pytest.skip("every isolation mode works on this host")
    with pytest.raises(IsolationUnavailable, match="does not work on this host"):
        probe_isolation(host, broken[0])


def test_a_run_asks_for_network_and_the_daemon_decides(tmp_path: Path) -> None:
    from kcd.agent.toolset import build_toolset
    from kcd.config.agent import load_agent_config

    configs = Path(__file__).resolve().parents[3] / "configs"
    daemon = ToolSettings(isolation="bwrap", max_processes=64, memory_max_bytes=2**30)
    plain = build_toolset(load_agent_config(configs / "demo.yaml"), defaults=daemon, scope="run1")
    assert plain.settings.isolation == "bwrap" and plain.settings.scope == "run1"
    assert plain.settings.max_processes == 64 and not plain.settings.isolation_network
    asks = tmp_path / "net.yaml"
    asks.write_text(f"version: 2\nextends: {configs / 'demo.yaml'}\ntools:\n  network: true\n")
    allowed = build_toolset(load_agent_config(asks), defaults=daemon, scope="run2")
    assert allowed.settings.isolation_network
    refused = build_toolset(load_agent_config(asks), defaults=daemon, scope="run3", allow_network=False)
    assert not refused.settings.isolation_network
    assert any("sandbox.allow_network" in w for w in refused.warnings)


def test_a_runs_calls_share_the_runs_process_cap(ws, host, mode, no_leftovers) -> None:
    """Two concurrent calls of one run: each under its own cap, together under the run's."""
    settings = ToolSettings(isolation=mode, max_processes=30, max_processes_per_run=40, shell_timeout_s=6,
                            scope=f"run-{mode}")
    probe = shell(ws, "true", settings, host)
    if probe.data["limits"].get("pids_by") != "cgroup":  # type: ignore[index]
        pytest.skip("per-run caps need a writable cgroup (root or a delegated subtree)")
    first_started = threading.Event()
    results: dict[str, ToolOutcome] = {}

    def first() -> None:
        cmd = f"for i in $(seq 25); do sleep {MARK}7 & done; echo up > up1; wait"
        results["first"] = shell(ws, cmd, settings, host)

    t = threading.Thread(target=first)
    t.start()
    deadline = time.monotonic() + 5
    while not (ws / "up1").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    # The first call holds ~26 of the run's 40: the second gets only what is left.
    # bash retries a failed fork for a while, so the second call ends at its timeout; what it
    # had running then is what the run's cap left it (its own cap alone would allow 25 more)
    second = shell(ws, f"for i in $(seq 25); do sleep {MARK}8 2>/dev/null & done 2>/dev/null; wait", settings, host)
    t.join(15)
    assert second.data is not None and second.data["process_limit_hit"], second.output
    assert 0 < second.data["killed_processes"] < 25, second.output
    assert results["first"].data is not None and results["first"].data["killed_processes"] >= 25
