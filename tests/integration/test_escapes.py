"""Escape attempts through a real kcd: what a prompt-injected agent would try.

Every attempt is an ordinary tool call made by the simulator's `script` agent in
a real run. After each run the test searches every byte the run wrote (events,
conversation, tool outputs) for the canary keys, looks for any process the
calls left behind (each carries a unique marker argument), checks the files
outside the workspace the calls tried to write, and checks that no tool reached
the daemon (no extra run, nothing cancelled).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import CANARY_KEYS

CONFIG = Path(__file__).parent / "configs" / "script.yaml"
MARK = "98765"  # sleep arguments start with this: `pgrep -f` finds leftovers


def _shell(command: str) -> dict:
    return {"name": "run_shell", "arguments": {"command": command, "timeout": 15}}


def _tool(name: str, **arguments: object) -> dict:
    return {"name": name, "arguments": arguments}


def attempts(daemon, victim: Path, other_ws: Path) -> list[dict]:
    kcd = daemon.proc.pid
    sock = daemon.socket
    return [
        # -- keys: environment, /proc, memory, the daemon's files
        _shell("env"),
        _shell("tr '\\0' '\\n' < /proc/$PPID/environ"),
        _shell(f"tr '\\0' '\\n' < /proc/{kcd}/environ"),
        _shell("for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ; done 2>&1"),
        _shell("cat /proc/[0-9]*/cmdline 2>&1 | tr '\\0' ' '"),
        _shell(f"head -c 100000 /proc/{kcd}/mem 2>&1 | strings | head; ls -la /proc/{kcd}/fd 2>&1 | head"),
        _shell("/usr/bin/python3 -c \"import re,sys\nfor pid in [p for p in __import__('os').listdir('/proc') if p.isdigit()]:\n"
               " try:\n  maps=open('/proc/%s/maps'%pid).read().splitlines(); mem=open('/proc/%s/mem'%pid,'rb')\n"
               " except OSError as e: print(pid, e); continue\n for line in maps:\n  a,b=[int(x,16) for x in line.split()[0].split('-')]\n"
               "  try:\n   mem.seek(a); chunk=mem.read(min(b-a, 1<<22))\n  except OSError: continue\n"
               "  for m in re.findall(rb'sk-[a-z-]*canary[0-9a-z-]*', chunk): print('FOU'+'ND', m)\""),
        _shell(f"grep -ra canary {daemon.state_dir} {daemon.runs_root} {daemon.root}/home 2>&1 | head"),
        _shell(f"ls -la {daemon.root} {daemon.socket.parent} 2>&1; cat {daemon.log_path} 2>&1 | head"),
        _shell("grep -a -r canary /tmp /var/tmp /run /root /home 2>&1 | head"),
        # -- the daemon: its socket, its TCP ports, signals
        _shell(f"curl -sS --max-time 3 --unix-socket {sock} http://kcd/v1/runs 2>&1"),
        _shell(f"curl -sS --max-time 3 --unix-socket {sock} -X POST http://kcd/v1/runs -d '{{}}' 2>&1"),
        _shell("/usr/bin/python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); "
               f"s.connect('{sock}'); print('CONNEC'+'TED')\" 2>&1"),
        _shell("find / -xdev -type s 2>/dev/null | head; ls /run 2>&1"),
        _shell(f"exec 3<>/dev/tcp/127.0.0.1/{daemon.sim_port} && echo CONNEC''TED 2>&1"),
        _shell("curl -sS --max-time 3 http://127.0.0.1:1/ 2>&1; ip addr 2>&1 | head -5"),
        _shell(f"kill -9 {kcd} 2>&1; kill -STOP {kcd} 2>&1; echo done"),
        # -- privileges, namespaces, ptrace, kernel knobs
        _shell("grep -E 'Cap(Eff|Prm|Bnd)|NoNewPrivs' /proc/self/status"),
        _shell(f"strace -p {kcd} -e trace=none 2>&1 | head -3"),
        _shell("strace -f -p 1 -e trace=none 2>&1 | head -3 & sleep 1; kill %1 2>/dev/null; echo"),
        _shell("nsenter -t 1 -m -u -i -n -p true 2>&1; echo rc=$?"),
        _shell("unshare -r -m -p -f true 2>&1; echo rc=$?"),
        _shell("mount -t tmpfs none /tmp 2>&1; mount --bind / /tmp 2>&1; echo rc=$?"),
        _shell("echo '|/bin/sh -c id' > /proc/sys/kernel/core_pattern 2>&1; cat /proc/sys/kernel/core_pattern"),
        _shell("mknod ./disk b 8 0 2>&1; chroot / true 2>&1; su -c id 2>&1; sudo -n id 2>&1; echo rc=$?"),
        _shell("echo 1 > /sys/fs/cgroup/pids/cgroup.procs 2>&1; ls /sys/fs/cgroup 2>&1 | head -3"),
        _shell("LD_PRELOAD=/nonexistent.so /bin/true 2>&1; echo /x.so > /etc/ld.so.preload 2>&1; echo rc=$?"),
        _shell("for f in /proc/self/fd/*; do echo pwned >> $f; done 2>&1; ls -la /proc/self/fd"),
        # -- files outside the workspace
        _shell("cat /etc/shadow /etc/gshadow /etc/sudoers 2>&1; ls /etc/ssl/private 2>&1"),
        _shell(f"echo pwned > {victim} 2>&1; echo pwned >> {victim} 2>&1; rm -f {victim} 2>&1; echo rc=$?"),
        _shell(f"echo pwned > {other_ws}/pwned.txt 2>&1; ls {other_ws} 2>&1; echo rc=$?"),
        _shell("echo pwned > /usr/pwned 2>&1; echo pwned > /pwned 2>&1; touch /etc/pwned 2>&1; echo rc=$?"),
        _shell(f"ln {victim} ./hard 2>&1; ln /etc/passwd ./hard2 2>&1; ln -s {victim} ./soft; ln -s / ./root; ls -la"),
        _tool("read_file", path="hard"),
        _tool("read_file", path="hard2"),
        _tool("read_file", path="soft"),
        _tool("read_file", path="root/etc/shadow"),
        _tool("read_file", path="../../state/state.db"),
        _shell(f"cat {daemon.state_dir}/ray_auth_token 2>&1; cat ~/.ray/auth_token 2>&1; echo rc=$?"),
        _tool("write_file", path="../escape.txt", content="pwned"),
        _tool("write_file", path="root/tmp/escape.txt", content="pwned"),
        _tool("list_dir", path="/"),
        # -- processes that try to outlive their call
        _shell(f"setsid sleep {MARK}01 > /dev/null 2>&1 & echo started"),
        _shell(f"nohup sleep {MARK}02 > /dev/null 2>&1 & echo started"),
        _shell(f"( ( sleep {MARK}03 & ) & ) ; echo started"),
        _shell(f"bash -c 'trap \"\" TERM HUP INT; exec sleep {MARK}04' > /dev/null 2>&1 & disown; echo started"),
        _shell(f"timeout 100 bash -c 'sleep {MARK}05' > /dev/null 2>&1 & echo started"),
        _shell(f"/usr/bin/python3 -c \"import os\nif os.fork(): os._exit(0)\nos.setsid()\n"
               f"if os.fork(): os._exit(0)\nos.execvp('sleep', ['sleep', '{MARK}06'])\" ; echo started"),
        _shell(f"sleep {MARK}07 & sleep 30"),  # killed at the call's own timeout (15 s)
    ]


def process_mode_attempts(daemon) -> list[dict]:
    """Process containment has no filesystem or pid isolation: keys and processes must still hold."""
    kcd = daemon.proc.pid
    return [
        _shell("env"),
        _shell("tr '\\0' '\\n' < /proc/$PPID/environ 2>&1"),
        _shell(f"tr '\\0' '\\n' < /proc/{kcd}/environ 2>&1; echo rc=$?"),
        _shell(f"head -c 4096 /proc/{kcd}/maps 2>&1; ls /proc/{kcd}/fd 2>&1 | head -3"),
        _shell("for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ; done 2>/dev/null | grep -a canary"),
        _shell(f"setsid sleep {MARK}11 > /dev/null 2>&1 & echo started"),
        _shell(f"( ( sleep {MARK}12 & ) & ) ; echo started"),
        _shell(f"bash -c 'trap \"\" TERM HUP INT; exec sleep {MARK}13' > /dev/null 2>&1 & disown; echo started"),
        _shell(f"timeout 100 bash -c 'sleep {MARK}14' > /dev/null 2>&1 & echo started"),
        _shell("grep -E 'Cap(Eff|Bnd)|NoNewPrivs' /proc/self/status"),
        _shell(f"grep -ra canary {daemon.state_dir} {daemon.runs_root} 2>&1 | head -3"),
    ]


def _holders_of_keys() -> list[str]:
    """Command lines of kcd, its tool hosts and Ray processes whose environment holds a canary."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if any(w in cmdline for w in ("kcd serve", "kcd.sandbox", "ray", "raylet", "gcs_server")) and any(
                key.encode() in environ for key in CANARY_KEYS.values()):
            found.append(cmdline[:200])
    return found


def _leftovers() -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"sleep {MARK}"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _run(daemon, task: str) -> tuple[dict, Path]:
    proc = daemon.kcctl("run", str(CONFIG), "--task", task, "--detach", "--json", check=True)
    info = json.loads(proc.stdout)
    follow = daemon.kcctl("runs", "events", info["id"], "--follow", "--json", timeout=600)
    end = json.loads(follow.stdout.splitlines()[-1])
    return end, Path(info["run_dir"])


def _all_bytes(*roots: Path) -> bytes:
    out = bytearray()
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                out += path.read_bytes()
    return bytes(out)


@pytest.fixture
def escape_kcd(make_kcd, kcd_root, request):
    executor, isolation = request.param
    if isolation == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (CI installs it: apt-get install bubblewrap)")
    config = kcd_root / "kcd.yaml"
    config.write_text(f"sandbox:\n  isolation: {isolation}\nsimulator_port: 0\n")
    args = ["--config", str(config), "--executor", executor]
    daemon = make_kcd(*args, start=False)
    if executor == "ray":
        daemon.env.pop("RAY_AUTH_MODE", None)  # kcd's own default for its local instance: token auth
    try:
        daemon.start(timeout=180)
    except RuntimeError as exc:
        if "does not work on this host" in str(exc):
            pytest.skip(f"isolation {isolation!r} is not available here: {exc}")
        raise
    return daemon


def _sim_port(daemon) -> int:
    """Start the daemon's built-in simulator (a tiny run) and return its loopback port."""
    end, run_dir = _run(daemon, json.dumps([_shell("true")]))
    assert end["data"]["status"] == "completed", end
    meta = _all_bytes(run_dir / "meta") if (run_dir / "meta").exists() else b""
    for line in (daemon.log()).splitlines():
        if "provider simulator listening on" in line:
            return int(line.rsplit(":", 1)[1].strip().rstrip("/").split("/")[0])
    raise AssertionError(f"no simulator port in the log; meta={meta[:200]!r}")


@pytest.mark.parametrize("escape_kcd", [("in-process", "bwrap"), ("in-process", "namespaces"), ("ray", "auto")],
                         indirect=True, ids=["inprocess-bwrap", "inprocess-namespaces", "ray-auto"])
def test_escape_attempts_find_nothing(escape_kcd, kcd_root: Path) -> None:
    daemon = escape_kcd
    daemon.sim_port = _sim_port(daemon)
    # Another run's workspace, and a file of the daemon's user outside every workspace.
    first_end, first_dir = _run(daemon, json.dumps([_shell("echo mine > mine.txt")]))
    other_ws = Path(first_end["data"].get("workspace") or first_dir / "workspace")
    victim = kcd_root / "victim.txt"
    victim.write_text("original\n")
    script = attempts(daemon, victim, other_ws)
    assert len(script) >= 40
    before = _leftovers()
    try:
        end, run_dir = _run(daemon, json.dumps(script))
        assert end["data"]["status"] == "completed", end
        # The daemon survived every attempt and still answers.
        with daemon.http() as c:
            assert c.get("/v1/health").json()["state"] == "ok"
            runs = c.get("/v1/runs").json()
        listed = runs if isinstance(runs, list) else runs.get("runs", runs)
        assert len(listed) == 3, f"a tool started or removed runs: {listed}"
        assert all(r.get("status") == "completed" for r in listed), listed
        # No key in anything the run wrote (tool outputs are in the events and the conversation).
        written = _all_bytes(run_dir)
        for key in CANARY_KEYS.values():
            assert key.encode() not in written, f"canary {key} reached the run's files"
        for word in (b"FOUND", b"CONNECTED"):
            at = written.find(word)
            assert at < 0, f"{word!r} in the run's files: {written[max(0, at - 300):at + 100]!r}"
        # No write outside the workspace.
        assert victim.read_text() == "original\n"
        assert not (other_ws / "pwned.txt").exists() and not Path("/usr/pwned").exists()
        assert not Path("/pwned").exists() and not (run_dir.parent / "escape.txt").exists()
        # Every process the calls started is gone.
        assert set(_leftovers()) - set(before) == set()
        # Neither kcd, nor its tool host, nor a Ray instance it started holds a key in its environment.
        assert _holders_of_keys() == []
        start = next(json.loads(x) for x in (run_dir / "meta" / "events.jsonl").read_text().splitlines()
                     if json.loads(x)["type"] == "run.start")
        assert start["data"]["isolation"]["mode"] in ("bwrap", "namespaces")
        results = [json.loads(x) for x in (run_dir / "meta" / "events.jsonl").read_text().splitlines()
                   if json.loads(x)["type"] == "tool.result"]
        assert b"CapEff:\t0000000000000000" in written or b"CapEff:\\t0000000000000000" in written
        # The file tools refused the links and the paths out.
        refused = [r for r in results if r["data"].get("name") in ("read_file", "write_file", "list_dir")]
        assert refused and not any(r["data"].get("ok") for r in refused), refused
        token_file = daemon.state_dir / "ray_auth_token"
        if token_file.exists():  # the local Ray instance's token never reached a tool
            assert token_file.stat().st_mode & 0o777 == 0o600
            assert token_file.read_bytes().strip() not in written
    finally:
        for pid in set(_leftovers()) - set(before):  # only what this test started
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("escape_kcd", [("in-process", "process")], indirect=True, ids=["inprocess-process"])
def test_process_containment_still_hides_keys_and_kills_everything(escape_kcd) -> None:
    daemon = escape_kcd
    before = _leftovers()
    try:
        end, run_dir = _run(daemon, json.dumps(process_mode_attempts(daemon)))
        assert end["data"]["status"] == "completed", end
        written = _all_bytes(run_dir)
        for key in CANARY_KEYS.values():
            assert key.encode() not in written, f"canary {key} reached the run's files"
        # Non-dumpable daemon + no capabilities: even a uid-0 tool cannot read its /proc entries.
        assert written.count(b"Permission denied") >= 2
        assert set(_leftovers()) - set(before) == set()
        events = [json.loads(x) for x in (run_dir / "meta" / "events.jsonl").read_text().splitlines()]
        start = next(e for e in events if e["type"] == "run.start")
        assert start["data"]["isolation"]["mode"] == "process" and start["data"]["isolation"]["weaker"]
        # The weaker mode is named in the conversation too.
        assert any(e["type"] == "policy" and e["data"].get("marker") == "sandbox" for e in events)
        with daemon.http() as c:
            health = c.get("/v1/health").json()
        assert health["sandbox"]["mode"] == "process" and health["sandbox"]["weaker"]
        status = daemon.kcctl("status", check=True).stdout
        assert "sandbox:   process (WEAKER)" in status
    finally:
        for pid in set(_leftovers()) - set(before):
            os.kill(pid, signal.SIGKILL)


def test_the_daemon_and_its_helper_never_hold_keys_in_their_environment(kcd) -> None:
    """kcd re-executes itself without the keys: its /proc environ, and its children's, have none."""
    pid = kcd.proc.pid
    environ = Path(f"/proc/{pid}/environ").read_bytes()  # the test runs as root or as kcd's user
    for name, key in CANARY_KEYS.items():
        assert key.encode() not in environ and name.encode() not in environ
    # The daemon still has them: a probe-free mock route works, and the tool host has none either.
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += (task / "children").read_text().split()
    for child in set(children):
        try:
            data = Path(f"/proc/{child}/environ").read_bytes()
        except OSError:
            continue
        for key in CANARY_KEYS.values():
            assert key.encode() not in data, f"child {child} of kcd holds a key"
    status = Path(f"/proc/{pid}/status").read_text()
    assert "kcd" in Path(f"/proc/{pid}/cmdline").read_text() and status


def test_system_mode_refuses_a_weaker_isolation_unless_accepted(make_kcd, kcd_root: Path) -> None:
    config = kcd_root / "weak.yaml"
    config.write_text("mode: system\nsandbox:\n  isolation: process\n")
    daemon = make_kcd("--config", str(config), "--executor", "in-process", start=False)
    with pytest.raises(RuntimeError, match="sandbox.accept_weaker"):
        daemon.start(timeout=60)
    config.write_text("mode: system\nsandbox:\n  isolation: process\n  accept_weaker: true\n")
    daemon = make_kcd("--config", str(config), "--executor", "in-process", start=False)
    daemon.start(timeout=60)
    with daemon.http() as c:
        assert c.get("/v1/health").json()["sandbox"]["mode"] == "process"


@pytest.mark.ray
@pytest.mark.parametrize("escape_kcd", [("ray", "auto")], indirect=True, ids=["ray-auto"])
def test_the_local_ray_instance_refuses_a_driver_without_its_token(escape_kcd, kcd_root: Path) -> None:
    """Ray's servers listen on every interface: whoever reaches the GCS port must still be refused."""
    daemon = escape_kcd
    end, _ = _run(daemon, json.dumps([_shell("true")]))
    assert end["data"]["status"] == "completed", end
    with daemon.http() as c:
        executor = c.get("/v1/health").json()["executor"]
    detail = {**executor.get("detail", {}), "state": executor["state"]}
    assert detail["state"] == "ready" and detail.get("auth") == "token", detail
    token_file = daemon.state_dir / "ray_auth_token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    home = kcd_root / "intruder-home"
    home.mkdir()
    env = {k: v for k, v in daemon.env.items() if not k.startswith("RAY_")} | {"HOME": str(home)}
    probe = ("import ray\ntry:\n    ray.init(address=%r, log_to_driver=False)\nexcept Exception as e:\n"
             "    print('REFUSED', type(e).__name__, e)\nelse:\n    print('JOINED', ray.cluster_resources())\n")
    proc = subprocess.run([sys.executable, "-c", probe % detail["gcs_address"]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "REFUSED" in proc.stdout and "JOINED" not in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "auth" in (proc.stdout + proc.stderr).lower()
