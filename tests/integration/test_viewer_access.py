"""The viewer keeps the access rule: a run is its starter's, operators see all, user mode
serves its user only; over the socket (peer uid) and over TCP (the uid the session was issued
to). Real local users, created by `test_access`'s fixtures (CI runs as root; skipped elsewhere).
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  (loaded as root, before connecting as the test users)
import os
import pwd
import re
import shutil
import socket
import subprocess
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from .conftest import request_as
from .test_access import _start_run, _wait_done, system_kcd, users  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd to create the test users (CI runs as root)")


def _code(body: bytes) -> str | None:
    m = re.search(rb'<main id="error" data-code="([^"]+)"', body)
    return m.group(1).decode() if m else None


def browser_for(daemon, uid: int, run: str | None = None) -> tuple[int, httpx.Client]:
    """What `kcctl view` does for `uid`: a login link over the socket, opened in a browser."""
    body = msgspec.json.encode({"run": run} if run else {})
    status, payload = request_as(uid, daemon.socket, "POST", "/v1/viewer/sessions", body)
    if status != 200:
        return status, None
    parts = urlsplit(msgspec.json.decode(payload)["url"])
    client = httpx.Client(base_url=f"{parts.scheme}://{parts.netloc}", timeout=30)
    assert client.get(f"{parts.path}?{parts.query}").status_code == 303
    return status, client


def test_another_users_run_is_refused_over_the_socket_and_over_tcp(system_kcd, users) -> None:  # noqa: F811
    daemon = system_kcd
    mine = _start_run(daemon, users["owner"])
    theirs = _start_run(daemon, users["stranger"])
    for run_id in (mine, theirs):
        _wait_done(daemon, run_id)
    pages = [f"/ui/runs/{mine}", f"/ui/runs/{mine}/fragment/timeline", f"/ui/runs/{mine}/events",
             f"/ui/runs/{mine}/files/meta/events.jsonl"]
    for path in pages:  # the socket: the peer's uid
        status, body = request_as(users["stranger"], daemon.socket, "GET", path)
        assert status == 403 and _code(body) == "forbidden", (path, status)
        for who in ("owner", "operator"):
            assert request_as(users[who], daemon.socket, "GET", path)[0] == 200, (who, path)
    # a login link to someone else's run is not issued at all
    status, payload = request_as(users["stranger"], daemon.socket, "POST", "/v1/viewer/sessions",
                                 msgspec.json.encode({"run": mine}))
    assert status == 403 and b"forbidden" in payload
    # TCP: the session speaks for the uid it was issued to
    _, stranger = browser_for(daemon, users["stranger"])
    for path in pages:
        r = stranger.get(path)
        assert r.status_code == 403 and _code(r.content) == "forbidden", path
    listing = stranger.get("/ui/").text
    assert f'data-run-id="{theirs}"' in listing and f'data-run-id="{mine}"' not in listing
    _, operator = browser_for(daemon, users["operator"])
    listing = operator.get("/ui/").text
    assert f'data-run-id="{theirs}"' in listing and f'data-run-id="{mine}"' in listing
    assert operator.get(f"/ui/runs/{mine}").status_code == 200
    assert operator.get("/ui/daemon").status_code == 200
    # a cookie from one user's browser does not become another's: the stranger's cookie stays the stranger's
    cookie = stranger.cookies["kc_viewer"]
    r = httpx.get(str(operator.base_url).rstrip("/") + f"/ui/runs/{mine}", cookies={"kc_viewer": cookie})
    assert r.status_code == 403


def test_a_user_mode_daemons_viewer_serves_its_user_only(kcd, kcd_root, users) -> None:  # noqa: F811
    os.chmod(kcd_root, 0o755)
    os.chmod(kcd.socket, 0o666)
    status, body = request_as(users["stranger"], kcd.socket, "GET", "/ui/")
    assert status == 403 and _code(body) == "forbidden"
    status, _ = browser_for(kcd, users["stranger"])
    assert status == 403


def tcp_get_as(uid: int, base: str, path: str, cookie: str | None = None) -> tuple[int, bytes, str]:
    """One GET over TCP from a socket opened with `uid` as the effective uid: the kernel then
    records that uid as the socket's owner, as for a browser that user runs."""
    host, port = urlsplit(base).hostname, urlsplit(base).port
    os.seteuid(uid)
    try:
        s = socket.create_connection((host, port), timeout=30)
    finally:
        os.seteuid(0)
    with s:
        head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        s.sendall((head + (f"Cookie: kc_viewer={cookie}\r\n" if cookie else "") + "\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), body, head_bytes.decode("latin-1")


def test_a_session_cookie_replayed_by_another_local_user_is_refused(system_kcd, users) -> None:  # noqa: F811
    """Browsers send 127.0.0.1's cookies to every port: another local user who collects the
    owner's cookie (a page of theirs on their own port) must not be able to replay it."""
    daemon = system_kcd
    mine = _start_run(daemon, users["owner"])
    _wait_done(daemon, mine)
    status, payload = request_as(users["owner"], daemon.socket, "POST", "/v1/viewer/sessions",
                                 msgspec.json.encode({"run": mine}))
    assert status == 200
    link = urlsplit(msgspec.json.decode(payload)["url"])
    base = f"{link.scheme}://{link.netloc}"
    # the owner's browser logs in and reads the run
    status, _, head = tcp_get_as(users["owner"], base, f"{link.path}?{link.query}")
    assert status == 303
    cookie = re.search(r"kc_viewer=([^;]+)", head).group(1)
    status, body, _ = tcp_get_as(users["owner"], base, f"/ui/runs/{mine}", cookie)
    assert status == 200 and f'data-run-id="{mine}"'.encode() in body
    # the stranger replays the cookie from their own process: refused, whatever the path
    for path in (f"/ui/runs/{mine}", f"/ui/runs/{mine}/files/meta/events.jsonl", "/ui/"):
        status, body, _ = tcp_get_as(users["stranger"], base, path, cookie)
        assert status == 401 and _code(body) == "login_required" and mine.encode() not in body, path
    # ... and so is an operator's process: a session is its own user's
    assert tcp_get_as(users["operator"], base, f"/ui/runs/{mine}", cookie)[0] == 401
    # a login link that leaked to the stranger is spent and refused in their hands
    status, payload = request_as(users["owner"], daemon.socket, "POST", "/v1/viewer/sessions", b"{}")
    leaked = urlsplit(msgspec.json.decode(payload)["url"])
    assert tcp_get_as(users["stranger"], base, f"{leaked.path}?{leaked.query}")[0] == 401
    assert tcp_get_as(users["owner"], base, f"{leaked.path}?{leaked.query}")[0] == 401


def test_replay_links_and_lists_follow_the_access_rule(system_kcd, users) -> None:  # noqa: F811
    """An operator replays the owner's run: the owner's page does not list the operator's
    replay; once the operator is demoted, their replay's page names the recorded run but no
    longer links it, and the runs list does not either."""
    daemon = system_kcd
    recorded = _start_run(daemon, users["owner"])
    _wait_done(daemon, recorded)
    status, payload = request_as(users["operator"], daemon.socket, "POST", f"/v1/runs/{recorded}/replay", b"{}")
    assert status == 201, payload
    replay = msgspec.json.decode(payload)["id"]
    _wait_done(daemon, replay)

    def page(who: str, path: str) -> tuple[int, str]:
        status, body = request_as(users[who], daemon.socket, "GET", path)
        return status, body.decode()

    status, html = page("operator", f"/ui/runs/{replay}")
    assert status == 200 and f'<a class="replay-of" href="/ui/runs/{recorded}">' in html
    assert '<section id="replay" data-state="written" data-divergences="0">' in html
    assert f'<a class="replay-run" href="/ui/runs/{replay}">' in page("operator", f"/ui/runs/{recorded}")[1]
    status, html = page("owner", f"/ui/runs/{recorded}")
    assert status == 200 and replay not in html and 'id="replays"' not in html
    assert replay not in page("owner", "/ui/")[1]
    for who in ("owner", "stranger"):
        assert page(who, f"/ui/runs/{replay}")[0] == 403
        assert page(who, f"/ui/runs/{replay}/fragment/replay")[0] == 403
    name = pwd.getpwuid(users["operator"]).pw_name
    subprocess.run(["gpasswd", "-d", name, users["group"]], check=True, capture_output=True)
    try:
        status, html = page("operator", f"/ui/runs/{replay}")
        assert status == 200 and f'data-replay-of="{recorded}"' in html and "not yours to view" in html
        assert f'href="/ui/runs/{recorded}"' not in html
        listing = page("operator", "/ui/")[1]
        assert f'data-replay-of="{recorded}"' in listing and f'href="/ui/runs/{recorded}"' not in listing
        assert page("operator", f"/ui/runs/{recorded}")[0] == 403
    finally:
        subprocess.run(["gpasswd", "-a", name, users["group"]], check=True, capture_output=True)
