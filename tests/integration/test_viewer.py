"""The run viewer, attacked over the real socket and over its real loopback TCP listener.

A real kcd (in-process executor) with its default viewer listener (127.0.0.1, ephemeral port);
runs on the bundled simulator; `kcctl view` for login links; httpx and raw sockets as the
browser, or as an attacker who has no cookie, a forged or spent token, a foreign Host header,
or a path that tries to leave the run directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import CANARY_KEYS, CONFIGS

CONF = Path(__file__).parent / "configs"
EVIL = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
CANARY = CANARY_KEYS["OPENAI_API_KEY"]


def view(daemon, *args: str) -> dict:
    proc = daemon.kcctl("view", *args, "--json", check=True)
    return json.loads(proc.stdout)


def login(daemon, *args: str) -> tuple[httpx.Client, str]:
    """A browser with a session cookie, and the page the link pointed to."""
    url = view(daemon, *args)["url"]
    parts = urlsplit(url)
    client = httpx.Client(base_url=f"{parts.scheme}://{parts.netloc}", timeout=30)
    r = client.get(f"{parts.path}?{parts.query}")
    assert r.status_code == 303, r.text
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    return client, r.headers["location"]


def raw(base: str, path: str, *, host: str | None = None, cookie: str | None = None) -> tuple[int, bytes]:
    """One GET with the path sent exactly as given (no client-side normalisation of `..`)."""
    netloc = urlsplit(base).netloc
    hostname, port = netloc.rsplit(":", 1)
    head = f"GET {path} HTTP/1.1\r\nHost: {host or netloc}\r\nConnection: close\r\n"
    if cookie:
        head += f"Cookie: kc_viewer={cookie}\r\n"
    with socket.create_connection((hostname, int(port)), timeout=30) as s:
        s.sendall((head + "\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def run(daemon, config: Path, task: str, *extra: str) -> str:
    proc = daemon.kcctl("run", str(config), "--task", task, "--json", *extra, timeout=180)
    ends = [json.loads(line) for line in proc.stdout.splitlines() if '"run.end"' in line]
    assert ends, proc.stdout + proc.stderr
    return ends[-1]["run_id"]


def error_code(text: str) -> str | None:
    m = re.search(r'<main id="error" data-code="([^"]+)"', text)
    return m.group(1) if m else None


def test_kcctl_view_links_to_the_runs_list_and_a_run_page(kcd):
    run_id = run(kcd, CONFIGS / "demo.yaml", "list the files")
    client, target = login(kcd, run_id)
    assert target == f"/ui/runs/{run_id}"
    page = client.get(target)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for header, value in (("x-content-type-options", "nosniff"), ("x-frame-options", "DENY"),
                          ("referrer-policy", "no-referrer")):
        assert page.headers[header] == value
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert f'<main id="run" data-run-id="{run_id}" data-status="completed" data-live="false"' in html
    attempts = client.get(f"/ui/runs/{run_id}/files/meta/events.jsonl").text.count('"type":"llm.attempt"')
    assert attempts >= 2 and html.count('<g class="attempt ok kind-primary" data-turn=') == attempts
    assert '<div class="tool-call" data-turn="1" data-tool="list_dir"' in html
    assert f'href="/ui/runs/{run_id}/files/meta/requests/turn_1_attempt_1.json"' in html
    raw_file = client.get(f"/ui/runs/{run_id}/files/raw/responses/turn_1_attempt_1.json")
    assert raw_file.status_code == 200 and raw_file.headers["content-type"].startswith("text/plain")
    assert raw_file.headers["x-content-type-options"] == "nosniff" and '"ttft_s"' in raw_file.text
    listing = client.get("/ui/").text
    assert f'<tr class="run" data-run-id="{run_id}" data-status="completed" data-route="mock/dev"' in listing
    assert client.get("/ui/", params={"status": "failed"}).text.count('<tr class="run"') == 0
    assert client.get("/ui/", params={"route": "mock/dev", "exit_reason": "mark_task_complete",
                                      "since": "2000-01-01", "until": "2999-01-01"}).text.count('<tr class="run"') == 1
    assert client.get("/ui/", params={"since": "2999-01-01"}).text.count('<tr class="run"') == 0
    assert client.get("/ui/", params={"since": "yesterday"}).status_code == 400
    daemon_page = client.get("/ui/daemon").text
    assert '<tr data-route="mock/dev" data-state="closed">' in daemon_page
    assert '<svg class="metric-chart" data-metric="attempts"' in daemon_page
    # the same pages over the control socket, where the peer's uid applies (no cookie needed)
    with kcd.http() as sock:
        assert f'data-run-id="{run_id}"' in sock.get(f"/ui/runs/{run_id}").text
        assert sock.get("/ui/static/viewer.js").headers["content-type"].startswith("text/javascript")
    # the page names its icon, so a browser does not ask for /favicon.ico (a 404 in its console)
    assert '<link rel="icon" href="/ui/static/favicon.svg" type="image/svg+xml">' in html
    icon = client.get("/ui/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert icon.headers["x-content-type-options"] == "nosniff" and icon.text.startswith("<svg")


def test_kcctl_view_open_hands_the_link_to_the_browser(kcd, tmp_path):
    out = tmp_path / "opened.txt"
    browser = f"{sys.executable} -c \"import sys; open('{out}', 'w').write(sys.argv[1])\" %s"
    proc = kcd.kcctl("view", "--open", env={**kcd.env, "BROWSER": browser}, check=True)
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.read_text() == proc.stdout.strip() and "/ui/login?token=" in out.read_text()
    assert kcd.kcctl("view", "no-such-run").returncode == 2


def test_no_session_forged_expired_and_spent_tokens_get_401(make_kcd, kcd_root):
    config = kcd_root / "kcd.yaml"
    config.write_text("viewer:\n  login_ttl_s: 3\n")
    daemon = make_kcd("--config", str(config), "--executor", "in-process")
    parts = urlsplit(view(daemon)["url"])
    base = f"{parts.scheme}://{parts.netloc}"
    # a spent token (used at once: the TTL is short)
    good = f"{parts.path}?{parts.query}"
    assert httpx.get(base + good).status_code == 303
    assert httpx.get(base + good).status_code == 401
    for path in ("/ui/", "/ui/daemon", "/ui/runs/abc", "/ui/runs/abc/events", "/ui/runs/abc/files/result.json"):
        r = httpx.get(base + path)
        assert r.status_code == 401 and error_code(r.text) == "login_required", path
    assert httpx.get(base + "/ui/", cookies={"kc_viewer": "forged"}).status_code == 401
    assert httpx.get(base + "/ui/login?token=forged-token&next=/ui/").status_code == 401
    # the login token is not itself a session cookie
    token = re.search(r"token=([^&]+)", view(daemon)["url"]).group(1)
    assert httpx.get(base + "/ui/", cookies={"kc_viewer": token}).status_code == 401
    # an expired one
    stale = urlsplit(view(daemon)["url"])
    time.sleep(3.5)
    assert httpx.get(f"{base}{stale.path}?{stale.query}").status_code == 401


def test_login_redirects_only_inside_the_viewer(kcd):
    for evil_next in ("https://evil.example/", "//evil.example/ui/", "/ui/../v1/runs", "/\\evil.example",
                      "/v1/runs", "javascript:alert(1)"):
        url = view(kcd)["url"].replace("next=/ui/", "next=" + httpx.QueryParams({"n": evil_next})["n"])
        parts = urlsplit(url)
        r = httpx.get(f"{parts.scheme}://{parts.netloc}{parts.path}?{httpx.QueryParams(parts.query)}")
        assert r.status_code == 303 and r.headers["location"] == "/ui/", evil_next


def test_only_the_viewer_is_reachable_over_tcp_and_only_by_its_own_host_name(kcd):
    client, _ = login(kcd)
    base = str(client.base_url).rstrip("/")
    cookie = client.cookies["kc_viewer"]
    for method, path in (("GET", "/v1/runs"), ("GET", "/v1/health"), ("GET", "/version"), ("GET", "/v1/metrics"),
                         ("POST", "/v1/viewer/sessions"), ("POST", "/v1/shutdown"), ("GET", "/v1/models"),
                         ("POST", "/v1/chat/completions")):
        r = client.request(method, path)
        assert r.status_code == 404, (method, path, r.status_code)
        assert b"runs_root" not in r.content
    port = urlsplit(base).port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}", "localhost.evil:80"):
        status, body = raw(base, "/ui/", host=host, cookie=cookie)
        assert status == 403 and b'data-code="host_not_allowed"' in body, host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert raw(base, "/ui/", host=host, cookie=cookie)[0] == 200
    # a session cookie is no key to the control API over the socket's routes either: TCP has none
    assert client.post("/v1/runs", json={}).status_code == 404


def test_raw_files_never_leave_the_run_directory(kcd):
    run_id = run(kcd, CONFIGS / "demo.yaml", "list the files")
    client, _ = login(kcd, run_id)
    base = str(client.base_url).rstrip("/")
    cookie = client.cookies["kc_viewer"]
    run_dir = Path(kcd.runs_root).resolve()
    run_dir = next(p for p in run_dir.iterdir() if p.name.endswith(run_id[:8]))
    (run_dir / "raw" / "responses" / "turn_9_attempt_1.json").symlink_to("/etc/passwd")
    shutil.rmtree(run_dir / "errors", ignore_errors=True)
    os.symlink("/etc", run_dir / "errors")
    prefix = f"/ui/runs/{run_id}/files/"
    for path in ("../../../../etc/passwd", "..%2f..%2f..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                 "meta/..%2f..%2f..%2f..%2fetc/passwd", "%2fetc%2fpasswd", "raw/responses/turn_9_attempt_1.json",
                 "errors/passwd", "workspace/README.md", "meta/seed.tar.gz", "meta/launch.json",
                 "%252e%252e/%252e%252e/etc/passwd", "raw/responses/..%5c..%5cetc%5cpasswd"):
        status, body = raw(base, prefix + path, cookie=cookie)
        assert status in (400, 404) and b"root:" not in body, (path, status)
    with kcd.http() as sock:  # the socket route confines the same way
        r = sock.get(prefix + "raw/responses/turn_9_attempt_1.json")
        assert r.status_code == 400 and "root:" not in r.text
    page = client.get(f"/ui/runs/{run_id}").text
    assert "turn_9_attempt_1.json" not in page and "errors/passwd" not in page


def test_model_and_tool_output_is_escaped_and_the_canary_key_never_served(kcd):
    task = f"{EVIL} {CANARY}"
    echo_id = run(kcd, CONF / "echo.yaml", task)
    shell_id = run(kcd, CONF / "shell.yaml", f"echo '{EVIL} {CANARY}'")
    client, _ = login(kcd)
    seen: list[str] = []
    for run_id in (echo_id, shell_id):
        page = client.get(f"/ui/runs/{run_id}")
        assert page.status_code == 200
        html = page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "<script>alert" not in html and "<img src=x" not in html and "onerror=alert(2)>" not in html
        seen.append(html)
        for name in ("timeline", "tools", "conversation", "diff", "files", "summary"):
            seen.append(client.get(f"/ui/runs/{run_id}/fragment/{name}").text)
        seen.append(client.get(f"/ui/runs/{run_id}/events").text)
        for href in re.findall(r'class="raw-file" href="([^"]+)"', html):
            r = client.get(href)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), href
            seen.append(r.text)
    seen += [client.get("/ui/").text, client.get("/ui/daemon").text]
    shell_page = client.get(f"/ui/runs/{shell_id}").text
    assert '<div class="tool-call" data-turn="1" data-tool="run_shell"' in shell_page
    everything = "\n".join(seen)
    assert "alert(1)" in everything  # the pages did show the text, escaped
    assert CANARY not in everything and CANARY_KEYS["OPENROUTER_API_KEY"] not in everything
    # a key that reached a run file anyway (written by an older kcd, or by hand) is still not
    # served: every page and raw file is redacted on its way out
    with kcd.http() as sock:
        run_dir = Path(sock.get(f"/v1/runs/{shell_id}").json()["run_dir"])
    (run_dir / "workspace.diff").write_text(f"+ leaked {CANARY}\n")
    for path in (f"/ui/runs/{shell_id}/files/workspace.diff", f"/ui/runs/{shell_id}/fragment/diff",
                 f"/ui/runs/{shell_id}"):
        r = client.get(path)
        assert r.status_code == 200 and "leaked" in r.text, (path, r.text[:300])
        assert CANARY not in r.text and "***REDACTED***" in r.text, path


def test_a_live_run_streams_its_events_to_the_page(kcd):
    started = kcd.kcctl("run", str(CONF / "shell.yaml"), "--task", "sleep 3", "--detach", "--json", check=True)
    run_id = json.loads(started.stdout)["id"]
    client, target = login(kcd, run_id)
    page = client.get(target).text
    assert 'data-live="true"' in page and 'data-status="running"' in page
    seqs, ended = [], False
    with client.stream("GET", f"/ui/runs/{run_id}/events", params={"since": 0}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("id: "):
                seqs.append(int(line[4:]))
            elif line.startswith("data: {\"seq\""):
                event = json.loads(line[6:])
            elif line == "event: end":
                ended = True
    assert ended and event["type"] == "run.end" and seqs == sorted(seqs) and len(seqs) >= 5
    after = client.get(target).text
    assert 'data-live="false"' in after and 'data-status="completed"' in after
    # Last-Event-ID resumes where the browser left off
    resumed = client.get(f"/ui/runs/{run_id}/events", headers={"last-event-id": str(seqs[-2])}).text
    assert re.findall(r"^id: (\d+)$", resumed, re.M) == [str(seqs[-1])]


def test_the_timeline_scale_is_per_turn_or_shared_and_an_unknown_one_is_a_400(kcd):
    run_id = run(kcd, CONFIGS / "demo.yaml", "list the files")
    client, target = login(kcd, run_id)

    def chart(html: str) -> tuple[str | None, str | None, list[str]]:
        svg = re.search(r'<svg id="timeline-chart"[^>]*>', html).group(0)
        axis, full = (re.search(rf'{k}="([^"]+)"', svg) for k in ("data-axis", "data-full-scale-s"))
        scales = re.findall(r'<text class="scale"[^>]*>([^<]+)s</text>', html)
        return axis and axis.group(1), full and full.group(1), scales

    own = client.get(target).text
    axis, full, scales = chart(own)
    assert axis == "turn" and full is None and len(scales) >= 2
    assert 'href="?axis=shared#timeline" data-axis="shared">' in own
    shared = client.get(target, params={"axis": "shared"}).text
    axis, full, _ = chart(shared)
    assert axis == "shared" and float(full) == pytest.approx(max(float(s) for s in scales), rel=0.01) and float(full) > 0
    assert 'data-axis="shared" aria-current="true"' in shared and "full width: " in shared
    # the live page's refreshes ask for the scale it was opened with: the fragment keeps it
    fragment = client.get(f"/ui/runs/{run_id}/fragment/timeline", params={"axis": "shared"}).text
    assert chart(fragment)[:2] == ("shared", full)
    with kcd.http() as sock:  # over the control socket too
        assert chart(sock.get(f"/ui/runs/{run_id}", params={"axis": "shared"}).text)[0] == "shared"
    for bad in ("absolute", EVIL, "shared,turn"):
        for path in (target, f"/ui/runs/{run_id}/fragment/timeline"):
            r = client.get(path, params={"axis": bad})
            assert r.status_code == 400 and error_code(r.text) == "invalid_query", (bad, r.text[:300])
            assert "<script>" not in r.text and "onerror=alert" not in r.text
    assert client.get(target).status_code == 200  # and it keeps serving


def test_the_viewer_can_be_turned_off(make_kcd, kcd_root):
    config = kcd_root / "kcd.yaml"
    config.write_text("viewer:\n  enabled: false\n")
    daemon = make_kcd("--config", str(config), "--executor", "in-process")
    proc = daemon.kcctl("view")
    assert proc.returncode == 1 and "viewer.enabled" in proc.stderr
    with daemon.http() as sock:  # the socket still serves the pages to its peers
        assert sock.get("/ui/").status_code == 200


def test_the_viewer_shares_the_gateways_port_when_it_has_one(make_kcd, kcd_root):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = kcd_root / "kcd.yaml"
    config.write_text(f"gateway:\n  tcp: {{port: {port}}}\n  tokens: {{ci: tok-0123456789abcdef}}\n")
    daemon = make_kcd("--config", str(config), "--executor", "in-process")
    client, _ = login(daemon)
    assert client.base_url.port == port and client.get("/ui/").status_code == 200
    assert client.get("/v1/models").status_code == 401  # the gateway's own route, behind its token
    models = client.get("/v1/models", headers={"authorization": "Bearer tok-0123456789abcdef"})
    assert models.status_code == 200
    assert client.get("/v1/runs").status_code == 401  # the gateway asks for its token before routing
    assert client.get("/v1/runs", headers={"authorization": "Bearer tok-0123456789abcdef"}).status_code == 404
    assert raw(str(client.base_url).rstrip("/"), "/ui/", host="evil.example",
               cookie=client.cookies["kc_viewer"])[0] == 403


def test_the_session_endpoint_checks_its_body(kcd):
    with kcd.http() as sock:
        assert sock.post("/v1/viewer/sessions", content=b"{bad").status_code == 400
        assert sock.post("/v1/viewer/sessions", json={"run": 5}).status_code == 400
        assert sock.post("/v1/viewer/sessions", json={"extra": 1}).status_code == 400
        r = sock.post("/v1/viewer/sessions", json={"run": "../../etc"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "run_not_found"
        ok = sock.post("/v1/viewer/sessions", json={})
        assert ok.status_code == 200 and ok.json()["url"].startswith("http://127.0.0.1:")
        assert sock.get("/v1/viewer/sessions").status_code == 405


def test_the_daemon_page_charts_the_sampled_metrics(make_kcd, kcd_root):
    config = kcd_root / "kcd.yaml"
    config.write_text("viewer:\n  sample_interval_s: 0.2\n  history_points: 50\n")
    daemon = make_kcd("--config", str(config), "--executor", "in-process")
    run(daemon, CONFIGS / "demo.yaml", "list the files")
    time.sleep(0.6)
    client, _ = login(daemon)
    page = client.get("/ui/daemon").text
    charts = dict(re.findall(r'<svg class="metric-chart" data-metric="(\w+)" data-points="(\d+)"', page))
    assert set(charts) >= {"runs_active", "attempts", "fallbacks", "breaker_skips"}
    assert 3 <= int(charts["attempts"]) <= 50
    attempts_chart = page[page.index('data-metric="attempts"'):].split("</svg>", 1)[0]
    assert re.search(r"\(max [1-9]", attempts_chart), attempts_chart  # the run's attempts show up
    assert '<tr data-route="mock/dev" data-state="closed">' in page
    assert '<section id="probes">' in page


def test_a_replay_page_shows_its_divergence_and_links_the_recorded_run(kcd, tmp_path):
    """`kcctl replay RUN --workspace DIR` with a README that differs (and carries markup): the
    replay's page names the turn, call, tool and field where it diverged, as text."""
    from .test_replay import C_PROJECT, EXIT_DIVERGED, record_demo, replay_json

    recorded = record_demo(kcd)
    changed = tmp_path / "c_project"
    shutil.copytree(C_PROJECT, changed)
    readme = changed / "README.md"
    readme.write_text(readme.read_text().replace("A toy filesystem in C", f"A toy filesystem in {EVIL}"))
    code, report = replay_json(kcd, recorded, "--workspace", str(changed))
    assert code == EXIT_DIVERGED and report["divergences"], report
    replay = report["replay_run"]

    with kcd.http() as sock:  # over the control socket: the peer uid is the owner's
        html = sock.get(f"/ui/runs/{replay}").text
        assert f'<p id="replay-of" data-replay-of="{recorded}">replay of ' \
               f'<a class="replay-of" href="/ui/runs/{recorded}">{recorded}</a>' in html
        total = report["divergences_total"]
        assert f'<section id="replay" data-state="written" data-divergences="{total}">' in html
        rows = re.findall(r'<tr class="divergence" data-turn="(\d+)" data-call="(\d*)" data-tool="([^"]*)" '
                          r'data-kind="([^"]*)" data-field="([^"]*)">', html)
        assert rows and rows[0] == ("2", "0", "read_file", "result", report["divergences"][0]["field"]), rows
        assert {turn for turn, *_ in rows} == {"2"}  # the listing at turn 1 did not diverge
        assert "<script>alert(1)" not in html and "<img src=x" not in html
        assert "A toy filesystem in &lt;script&gt;alert(1)&lt;/script&gt;" in html  # the replayed excerpt, as text
        fragment = sock.get(f"/ui/runs/{replay}/fragment/replay").text
        assert fragment.startswith(f'<div class="replay-report" data-state="written" data-divergences="{total}">')
        assert sock.get(f"/ui/runs/{replay}/files/replay.json").json()["replay_run"] == replay
        # the recorded run's page lists its replay; the runs list marks it
        recorded_page = sock.get(f"/ui/runs/{recorded}").text
        assert '<section id="replays">' in recorded_page
        assert f'<a class="replay-run" href="/ui/runs/{replay}">' in recorded_page
        assert 'id="replay"' not in recorded_page and 'id="replay-of"' not in recorded_page
        listing = sock.get("/ui/").text
        assert re.search(rf'<tr class="run" data-run-id="{replay}" [^>]*data-replay-of="{recorded}">', listing)
        assert f'replay of <a href="/ui/runs/{recorded}">{recorded}</a>' in listing
