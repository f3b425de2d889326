"""The control API over the real Unix socket: health, errors, limits."""

from __future__ import annotations

import os
import stat
import socket
import subprocess
import sys

import msgspec
import pytest

from .conftest import CONFIGS, request_as


def test_version_and_health_report_peer_and_executor(kcd):
    with kcd.http() as c:
        v = c.get("/version").json()
        h = c.get("/v1/health").json()
    assert v["api"] == "1" and v["daemon"]
    assert h["state"] == "ok"
    assert h["executor"] == {"mode": "in-process", "state": "ready", "detail": h["executor"]["detail"]}
    assert h["peer"]["uid"] == os.getuid()
    assert h["peer"]["pid"] == os.getpid()  # SO_PEERCRED names this test process
    assert h["socket"] == str(kcd.socket)


def test_socket_is_created_0660(kcd):
    mode = stat.S_IMODE(os.stat(kcd.socket).st_mode)
    assert stat.S_ISSOCK(os.stat(kcd.socket).st_mode)
    assert mode == 0o660


def test_curl_can_talk_to_the_socket(kcd):
    curl = subprocess.run(["curl", "-s", "--unix-socket", str(kcd.socket), "http://kcd/v1/health"],
                          capture_output=True, text=True, timeout=30)
    if curl.returncode == 127:  # no curl on this machine: httpx above covers the protocol
        return
    assert curl.returncode == 0, curl.stderr
    assert msgspec.json.decode(curl.stdout)["state"] == "ok"


def _error(resp):
    body = resp.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    return body["error"]


def test_bad_requests_get_4xx_and_the_daemon_keeps_serving(kcd):
    demo = (CONFIGS / "demo.yaml").read_text()
    with kcd.http() as c:
        assert c.get("/v1/nope").status_code == 404
        assert _error(c.get("/v1/nope"))["code"] == "not_found"
        r = c.delete("/v1/runs")
        assert r.status_code == 405
        r = c.post("/v1/runs", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and _error(r)["code"] == "malformed_json"
        r = c.post("/v1/runs", json={"config_text": 42, "task": "x"})
        assert r.status_code == 400 and "config_text" in _error(r)["message"]
        r = c.post("/v1/runs", json={"config_text": demo, "task": "x", "bogus": 1})
        assert r.status_code == 400
        r = c.post("/v1/runs", content=b"")
        assert r.status_code == 400
        r = c.get("/v1/runs/doesnotexist")
        assert r.status_code == 404 and _error(r)["code"] == "run_not_found"
        r = c.post("/v1/runs/doesnotexist/cancel")
        assert r.status_code == 404
        r = c.get("/v1/runs/doesnotexist/events")
        assert r.status_code == 404
        r = c.get("/v1/runs", params={"limit": "many"})
        assert r.status_code == 400
        bad = demo.replace("mock/dev", "x-ai/grok-4-fast")
        r = c.post("/v1/runs", json={"config_text": bad, "config_path": str(CONFIGS / "demo.yaml"),
                                     "task": "x"})
        assert r.status_code == 400
        err = _error(r)
        assert err["code"] == "config_error"
        assert "demo.yaml" in err["message"] and "$.providers" in err["message"]
        assert c.get("/v1/health").json()["state"] == "ok"


def test_oversize_body_is_rejected(make_kcd):
    daemon = make_kcd("--executor", "in-process", "--max-body-bytes", "4096")
    with daemon.http() as c:
        r = c.post("/v1/runs", content=b"x" * 10000, headers={"content-type": "application/json"})
        assert r.status_code == 413 and _error(r)["code"] == "body_too_large"
        assert c.get("/v1/health").status_code == 200


def test_stale_socket_is_replaced_but_a_live_daemon_is_not(make_kcd, kcd_root):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(kcd_root / "kcd.sock"))
    stale.close()  # the file stays, nothing listens: what a crashed daemon leaves
    first = make_kcd("--executor", "in-process")
    with first.http() as c:
        assert c.get("/version").status_code == 200
    second = subprocess.run(
        [sys.executable, "-m", "kcd", "serve", "--socket", str(first.socket), "--state-dir",
         str(kcd_root / "state2"), "--executor", "in-process"],
        env=first.env, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert "already listening" in second.stderr
    with first.http() as c:
        assert c.get("/version").status_code == 200


def test_sigterm_exits_zero_and_removes_the_socket(kcd):
    assert kcd.stop() == 0
    assert not kcd.socket.exists()


def test_unreachable_daemon_exit_code_3(kcd_root):
    proc = subprocess.run(
        [sys.executable, "-m", "kcctl.cli", "--socket", str(kcd_root / "none.sock"), "--no-autostart",
         "status"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "not running" in proc.stderr


def test_idle_exit(make_kcd):
    daemon = make_kcd("--executor", "in-process", "--idle-exit", "1")
    assert daemon.proc.wait(timeout=30) == 0
    assert not daemon.socket.exists()


def test_idle_exit_waits_for_open_gateway_tcp_connections(make_kcd, kcd_root):
    # An external tool holding a connection to the OpenAI endpoint keeps an idle daemon up.
    import time

    from .resilience_support import free_port

    port = free_port()
    config = kcd_root / "kcd.yaml"
    config.write_text(f"gateway:\n  tcp: {{port: {port}}}\n  tokens: {{ci: idle-test-token-0123456789}}\n")
    daemon = make_kcd("--executor", "in-process", "--idle-exit", "1", "--config", str(config))
    with socket.create_connection(("127.0.0.1", port)) as held:
        held.sendall(b"GET /v1/models HTTP/1.1\r\nHost: kcd\r\n"
                     b"Authorization: Bearer idle-test-token-0123456789\r\n\r\n")
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(3)  # three idle periods, the connection kept alive
        assert daemon.proc.poll() is None, daemon.log()
    assert daemon.proc.wait(timeout=30) == 0


def test_kcd_simulate_runs_standalone(kcd_root):
    import socket as s
    import time

    import httpx

    with s.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "kcd", "simulate", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                               json={"model": "dev", "messages": [{"role": "user", "content": "hi"}]})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "simulator did not start"
                time.sleep(0.1)
        assert r.status_code == 200
        assert "<TOOL_CALL> list_dir" in r.json()["choices"][0]["message"]["content"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) in (0, -15)


def _post_as(uid: int, sock_path: str, path: str, body: bytes) -> tuple[int, bytes]:
    return request_as(uid, sock_path, "POST", path, body)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_another_users_run_cannot_seed_from_a_path_it_could_not_read(make_kcd, kcd_root):
    # System mode: a user-mode daemon serves its own user only.
    (kcd_root / "system.yaml").write_text("mode: system\n")
    kcd = make_kcd("--config", str(kcd_root / "system.yaml"), "--executor", "in-process")
    # Same-host seeding copies with the daemon's rights: a peer of another uid may name
    # only trees it could read itself (else 403, and it uploads instead).
    os.chmod(kcd_root, 0o755)
    os.chmod(kcd.socket, 0o666)
    secret = kcd_root / "private"
    secret.mkdir(mode=0o700)
    (secret / "token.txt").write_text("only root reads this")
    public = kcd_root / "public"
    public.mkdir(mode=0o755)
    (public / "main.c").write_text("int main(void) { return 0; }\n")
    os.chmod(public / "main.c", 0o644)
    config = (CONFIGS / "demo.yaml").read_text()

    def run_request(workspace):
        return msgspec.json.encode({"config_text": config, "config_path": str(CONFIGS / "demo.yaml"),
                                    "task": "list the files", "workspace": str(workspace)})

    status, payload = _post_as(65534, str(kcd.socket), "/v1/runs", run_request(secret))
    assert status == 403, payload
    error = msgspec.json.decode(payload)["error"]
    assert error["code"] == "forbidden" and str(secret) in error["message"] and "upload" in error["message"]
    status, payload = _post_as(65534, str(kcd.socket), "/v1/runs", run_request(public))
    assert status == 201, payload
    assert msgspec.json.decode(payload)["peer_uid"] == 65534
    with kcd.http() as c:  # the daemon's own user may still seed from its own trees
        assert c.post("/v1/runs", content=run_request(secret)).status_code == 201
