"""Who may do what, with real local users over the real socket.

CI runs as root: the test creates three users (an owner, a stranger, and an operator who is
a member of the operators group) and one group, and removes them afterwards. Elsewhere it
skips. Requests are made with the user's uid as the effective uid at connect time, which is
what the daemon reads with SO_PEERCRED.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

import msgspec
import pytest

from .conftest import CONFIGS, request_as

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd to create the test users (CI runs as root)")


@pytest.fixture(scope="module")
def users():
    tag = uuid.uuid4().hex[:6]
    group = f"kcadm{tag}"
    names = {"owner": f"kco{tag}", "stranger": f"kcs{tag}", "operator": f"kcp{tag}"}
    subprocess.run(["groupadd", group], check=True)
    try:
        for role, name in names.items():
            extra = ["-G", group] if role == "operator" else []
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", *extra, name], check=True)
        yield {"group": group, **{role: pwd.getpwnam(name).pw_uid for role, name in names.items()}}
    finally:
        for name in names.values():
            subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


@pytest.fixture
def system_kcd(make_kcd, kcd_root, users):
    config = kcd_root / "kcd.yaml"
    config.write_text(f"mode: system\noperators_group: {users['group']}\n")
    daemon = make_kcd("--config", str(config), "--executor", "in-process")
    os.chmod(kcd_root, 0o755)
    os.chmod(daemon.socket, 0o666)  # the socket's group stands in for "may use the daemon"
    return daemon


def _json(status_payload):
    status, payload = status_payload
    return status, (msgspec.json.decode(payload) if payload.strip().startswith((b"{", b"[")) else payload)


def _start_run(daemon, uid: int) -> str:
    body = msgspec.json.encode({"config_text": (CONFIGS / "demo.yaml").read_text(),
                                "config_path": str(CONFIGS / "demo.yaml"), "task": "list the files"})
    status, info = _json(request_as(uid, daemon.socket, "POST", "/v1/runs", body))
    assert status == 201, info
    return info["id"]


def _wait_done(daemon, run_id: str) -> None:
    daemon.kcctl("runs", "events", run_id, "--follow", "--json", check=True)


RUN_RESOURCES = [
    ("GET", "/v1/runs/{id}", b""),
    ("GET", "/v1/runs/{id}/events", b""),
    ("GET", "/v1/runs/{id}/changes", b""),
    ("GET", "/v1/runs/{id}/workspace", b""),
    ("POST", "/v1/bundles", b'{"run": "{id}"}'),
    ("POST", "/v1/scenarios/from-run", b'{"run": "{id}", "name": "from_their_run"}'),
    ("POST", "/v1/runs/{id}/replay", b"{}"),  # a replay is a new run of the caller's (201)
    ("POST", "/v1/runs/{id}/cancel", b""),
]


def test_every_run_resource_is_the_owners_and_the_operators_only(system_kcd, users) -> None:
    daemon = system_kcd
    run_id = _start_run(daemon, users["owner"])
    _wait_done(daemon, run_id)
    for method, path, body in RUN_RESOURCES:
        p, b = path.replace("{id}", run_id), body.replace(b"{id}", run_id.encode())
        status, payload = _json(request_as(users["stranger"], daemon.socket, method, p, b))
        assert status == 403, (method, p, status, payload)
        assert payload["error"]["code"] == "forbidden" and f"uid {users['owner']}" in payload["error"]["message"]
        assert users["group"] in payload["error"]["message"]  # the rule names who may
        for who in ("owner", "operator"):
            status, payload = request_as(users[who], daemon.socket, method, p, b)
            assert status in (200, 201, 202), (who, method, p, status, payload[:300])


def test_listings_show_only_what_the_caller_may_read(system_kcd, users) -> None:
    daemon = system_kcd
    mine = _start_run(daemon, users["owner"])
    theirs = _start_run(daemon, users["stranger"])
    for run_id in (mine, theirs):
        _wait_done(daemon, run_id)

    def listed(uid: int) -> set[str]:
        status, payload = _json(request_as(uid, daemon.socket, "GET", "/v1/runs?limit=100"))
        assert status == 200
        return {r["id"] for r in payload["runs"]}

    assert listed(users["owner"]) == {mine}
    assert listed(users["stranger"]) == {theirs}
    assert {mine, theirs} <= listed(users["operator"])
    assert {mine, theirs} <= listed(0)


def test_daemon_wide_actions_are_operator_only(system_kcd, users) -> None:
    daemon = system_kcd
    route = b'{"route": "mock/dev"}'
    for method, path, body in (("POST", "/v1/routes/reset", route), ("POST", "/v1/probes/refresh", route),
                               ("POST", "/v1/shutdown", b""), ("POST", "/v1/reload", b"")):
        status, payload = _json(request_as(users["owner"], daemon.socket, method, path, body))
        assert status == 403 and "only operators" in payload["error"]["message"], (path, payload)
    # an operator passes the rule (the route has no breaker yet: 404, not 403)
    status, _ = request_as(users["operator"], daemon.socket, "POST", "/v1/routes/reset", route)
    assert status == 404
    status, payload = _json(request_as(users["operator"], daemon.socket, "POST", "/v1/reload", b""))
    assert status == 200 and payload["executor"] == "ready" and payload["probes_invalidated"], payload
    status, _ = request_as(users["operator"], daemon.socket, "POST", "/v1/shutdown", b"")
    assert status == 202


def test_a_user_mode_daemon_serves_its_user_only(kcd, kcd_root, users) -> None:
    os.chmod(kcd_root, 0o755)
    os.chmod(kcd.socket, 0o666)
    run_id = json.loads(kcd.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", "list the files", "--json",
                                  "--detach", check=True).stdout)["id"]
    for method, path in (("GET", "/v1/runs"), ("GET", f"/v1/runs/{run_id}"), ("POST", "/v1/runs")):
        status, payload = _json(request_as(users["stranger"], kcd.socket, method, path, b"{}"))
        assert status == 403 and "per-user daemon" in payload["error"]["message"], (path, payload)
    status, _ = request_as(users["stranger"], kcd.socket, "GET", "/v1/health")
    assert status == 200
    assert Path(kcd.socket).exists()


def test_files_a_config_names_are_read_only_if_the_client_could_read_them(system_kcd, users, kcd_root) -> None:
    daemon = system_kcd
    private = kcd_root / "daemon-only"
    private.mkdir(mode=0o700)
    secret = private / "secret.md"
    secret.write_text("TOP SECRET daemon-only text\n")
    secret.chmod(0o600)
    (private / "base.yaml").write_text((CONFIGS / "demo.yaml").read_text())
    tools = private / "tools"
    tools.mkdir(mode=0o700)
    public = kcd_root / "public"
    shutil.copytree(CONFIGS, public)  # a readable copy: the bases and packs demo.yaml names
    subprocess.run(["chmod", "-R", "a+rX", str(public)], check=True)
    demo = (CONFIGS / "demo.yaml").read_text()
    cases = {
        "$.extends": f"version: 2\nextends: {private / 'base.yaml'}\n",
        "prompts.packs.p.system": demo + f"\nprompts:\n  packs:\n    p:\n      system: {secret}\n",
        "tools.registry.paths": demo.replace("  registry:\n", f"  registry:\n    paths: [{tools}]\n", 1),
    }
    for key_path, text in cases.items():
        body = msgspec.json.encode({"config_text": text, "config_path": str(public / "cfg.yaml"), "task": "t"})
        status, payload = _json(request_as(users["stranger"], daemon.socket, "POST", "/v1/runs", body))
        assert status == 400, (key_path, status, payload)
        message = payload["error"]["message"]
        assert key_path in message and "could read yourself" in message, (key_path, message)
        assert "TOP SECRET" not in message
        status, payload = _json(request_as(users["stranger"], daemon.socket, "POST", "/v1/config/check",
                                           msgspec.json.encode({"config_text": text,
                                                                "config_path": str(public / "cfg.yaml")})))
        assert "TOP SECRET" not in json.dumps(payload) and status in (200, 400), payload
    # The daemon's own user (and root) may still name them.
    body = msgspec.json.encode({"config_text": cases["prompts.packs.p.system"],
                                "config_path": str(public / "cfg.yaml"), "task": "t"})
    status, payload = _json(request_as(0, daemon.socket, "POST", "/v1/runs", body))
    assert status == 201, payload


def test_live_matrix_scenarios_are_operator_only(system_kcd, users) -> None:
    body = msgspec.json.encode({"files": [{"text": "scenarios: []\n"}], "live": True})
    status, payload = _json(request_as(users["owner"], system_kcd.socket, "POST", "/v1/matrix", body))
    assert status == 403 and "spend the daemon's keys" in payload["error"]["message"], payload
    status, payload = _json(request_as(users["operator"], system_kcd.socket, "POST", "/v1/matrix", body))
    assert status != 403, payload  # past the rule (the empty file itself is then a 400)


_READ_EVERYTHING = """
import os, sys
readable = []
for root in sys.argv[1:]:
    for dirpath, dirs, files in os.walk(root, onerror=lambda e: None):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as fh:
                    fh.read(1)
                readable.append(path)
            except OSError:
                pass
print("\\n".join(readable))
"""


def test_the_socket_group_cannot_read_run_files_on_disk(system_kcd, users) -> None:
    """The API refuses a stranger; the files behind it must too, even for the daemon's group."""
    daemon = system_kcd
    run_id = _start_run(daemon, users["owner"])
    _wait_done(daemon, run_id)
    with daemon.http() as c:
        run_dir = Path(c.get(f"/v1/runs/{run_id}").json()["run_dir"])
    assert run_dir.is_dir() and (run_dir.stat().st_mode & 0o077) == 0
    daemon_gid = os.stat(daemon.state_dir / "state.db").st_gid
    roots = [str(daemon.runs_root), str(daemon.state_dir)]
    central = daemon.env.get("RAYCODE_TELEMETRY_PATH")
    if central:
        roots.append(str(Path(central).parent))
    proc = subprocess.run(["/usr/bin/python3", "-I", "-c", _READ_EVERYTHING, *roots], user=users["stranger"],
                          group=daemon_gid, extra_groups=[daemon_gid], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    leaked = [p for p in proc.stdout.splitlines() if p and run_id in open(p, "rb").read().decode(errors="replace")
              or str(run_dir) in p]
    assert leaked == [], f"a member of the daemon's group read: {leaked[:5]}"
