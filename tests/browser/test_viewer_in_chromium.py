"""The run viewer in headless Chromium, against a real kcd with real runs on the simulator.

One daemon serves the module. Its runs: a demo run on the built-in simulator (mock/dev),
a fallback run (the primary answers 503 on every call, the fallback serves), and a run that
fails on every route. Each browser logs in through the URL the real `kcctl view` prints
(docs/runbook.md; the DOM the tests read is the viewer's contract in kcd/viewer).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

expect = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')").expect

from ..integration.conftest import CANARY_KEYS, CONFIGS
from ..integration.resilience_support import GROK, OPENAI_MINI, OR_MINI, read_json, run_json, write_config

SCRIPT = Path(__file__).resolve().parents[1] / "integration" / "configs" / "script.yaml"
TERMINAL = re.compile(r"^(completed|failed|cancelled)$")
# Model-chosen text and tool output reach the page: as markup it would run script (a CSP
# refusal is a console error), open a dialog, or fetch from another host; all fail the test.
PAYLOAD = '<script>alert("kc-xss")</script><img src="http://xss.invalid/kc.png" onerror="alert(1)">'


def _finished(d, config: Path, status: str, *, failing: str | None = None, task: str = "list the workspace") -> str:
    """Run `config` to its end (with `failing` answering 503 to every call); its run id."""
    if failing:
        d.sim.fault(failing, "unavailable_persistent")
    try:
        end, run_dir = run_json(d.kcd, config, task)
    finally:
        d.sim.reset()
    assert end["data"]["status"] == status, end
    return read_json(run_dir / "result.json")["run_id"]


@pytest.fixture(scope="module")
def runs(viewer_daemon, tmp_path_factory) -> dict[str, str]:
    """The module's finished runs by role -> run id: "demo" (mock/dev), "fallback" (grok fails
    every call, gpt-4o-mini serves; grok's breaker opens), "skipped" (grok skipped while open),
    "failed" (its only route fails every call)."""
    d = viewer_daemon
    configs = tmp_path_factory.mktemp("configs")
    fallback = write_config(configs / "fallback.yaml", GROK, [OPENAI_MINI])
    return {
        "demo": _finished(d, CONFIGS / "demo.yaml", "completed", task="list the files"),
        "fallback": _finished(d, fallback, "completed", failing=GROK),
        # grok's breaker is open now (the daemon's breaker override): skipped without a request
        "skipped": _finished(d, fallback, "completed", failing=GROK),
        "failed": _finished(d, write_config(configs / "failing.yaml", OR_MINI), "failed", failing=OR_MINI),
    }


def _login(user, url: str):
    """Open a `kcctl view` URL: the login answers 303 to a viewer page on the same origin."""
    page = user.context.new_page()
    response = page.goto(url, wait_until="load")
    assert response is not None and response.status == 200, (url, response and response.status)
    origin = urlsplit(url)
    assert urlsplit(page.url).netloc == origin.netloc and urlsplit(page.url).path.startswith("/ui/"), page.url
    assert "token=" not in page.url  # the one-time token does not stay in the address bar
    assert "default-src 'self'" in (response.headers.get("content-security-policy") or ""), response.headers
    cookies = user.context.cookies()
    assert cookies and all(c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies), cookies
    return page


def _no_secrets(page) -> None:
    html = page.content()
    for key in CANARY_KEYS.values():
        assert key not in html, (page.url, key)


def _rows(page) -> dict[str, dict[str, str]]:
    """The runs table: run id -> its row's data attributes."""
    return page.locator("#runs tr.run").evaluate_all(
        "rows => Object.fromEntries(rows.map(r => [r.dataset.runId, Object.assign({}, r.dataset)]))")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# ---- the runs list -------------------------------------------------------------------------

def test_runs_list_shows_the_runs_and_filters_narrow_it(viewer_daemon, runs, browser_user):
    user = browser_user("operator")
    page = _login(user, viewer_daemon.view_url())
    assert urlsplit(page.url).path == "/ui/"
    rows = _rows(page)
    user.shot(page, "runs-list")
    assert set(runs.values()) <= set(rows), (runs, rows)
    assert rows[runs["demo"]]["status"] == "completed" and rows[runs["fallback"]]["status"] == "completed"
    assert rows[runs["failed"]]["status"] == "failed"
    assert rows[runs["demo"]]["route"] == "mock/dev"
    for run_id in runs.values():
        link = page.locator(f'#runs tr.run[data-run-id="{run_id}"] a.run-link')
        assert link.get_attribute("href") == f"/ui/runs/{run_id}"
        assert run_id in page.locator(f'#runs tr.run[data-run-id="{run_id}"]').inner_text()
    _no_secrets(page)

    # the form narrows by status...
    _submit_filters(page, status="failed")
    assert "status=failed" in page.url
    failed = _rows(page)
    user.shot(page, "filtered-failed")
    assert runs["failed"] in failed and not {runs["demo"], runs["fallback"]} & set(failed), failed
    assert {r["status"] for r in failed.values()} == {"failed"}

    # ...and by route
    route = rows[runs["fallback"]]["route"]
    assert route in (GROK, OPENAI_MINI), rows[runs["fallback"]]
    _submit_filters(page, status="", route=route)
    by_route = _rows(page)
    assert runs["fallback"] in by_route and runs["demo"] not in by_route, by_route
    assert {r["route"] for r in by_route.values()} == {route}
    # the same parameters work typed into the URL
    page = user.open(f"{_origin(page.url)}/ui/?status=completed&route=mock%2Fdev", page=page)
    assert runs["demo"] in _rows(page) and runs["fallback"] not in _rows(page)
    page = user.open(f"{_origin(page.url)}/ui/?exit_reason=provider_error", page=page)
    assert runs["failed"] in _rows(page) and not {runs["demo"], runs["fallback"]} & set(_rows(page))
    assert {r["exitReason"] for r in _rows(page).values()} == {"provider_error"}


def _submit_filters(page, **values: str) -> None:
    """Fill the filter form's fields as a person would and submit it (a GET navigation)."""
    form = page.locator("form#filters")
    for name, value in values.items():
        field = form.locator(f'[name="{name}"]')
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    with page.expect_navigation():
        form.locator('[type="submit"]').click()


# ---- one run's page --------------------------------------------------------------------------

def test_fallback_run_timeline_shows_both_routes_and_the_marker(viewer_daemon, runs, browser_user):
    user = browser_user("operator")
    run_id = runs["fallback"]
    page = _login(user, viewer_daemon.view_url(run_id))
    assert urlsplit(page.url).path == f"/ui/runs/{run_id}"
    run = page.locator("main#run")
    assert run.get_attribute("data-run-id") == run_id
    assert run.get_attribute("data-status") == "completed" and run.get_attribute("data-live") == "false"
    assert page.locator("#run-status").inner_text().strip() == "completed"
    chart = page.locator("section#timeline svg#timeline-chart")
    primary = chart.locator(f'g.attempt[data-route="{GROK}"]')
    fallback = chart.locator(f'g.attempt[data-route="{OPENAI_MINI}"]')
    assert primary.count() >= 1 and fallback.count() >= 1, page.locator("#timeline").inner_html()[:3000]
    assert {primary.nth(i).get_attribute("data-status") for i in range(primary.count())} == {"503"}
    assert {primary.nth(i).get_attribute("data-kind") for i in range(primary.count())} <= {"primary", "retry"}
    assert fallback.first.get_attribute("data-kind") == "fallback"
    assert fallback.first.get_attribute("data-status") == "200"
    for i in range(chart.locator("g.attempt").count()):
        assert chart.locator("g.attempt").nth(i).get_attribute("data-breaker") in ("closed", "open", "half_open")
    assert primary.first.bounding_box() and fallback.first.bounding_box()  # drawn, not just present
    marker = page.locator('section#conversation .marker[data-marker="fallback_route"]')
    assert marker.count() >= 1 and marker.first.is_visible()
    assert GROK in marker.first.inner_text() or GROK in page.locator("section#conversation").inner_text()
    assert page.locator("section#tools .tool-call").count() >= 1
    assert page.locator("section#tools .tool-call .tool-result").count() >= 1
    assert page.locator("section#diff").count() == 1
    user.shot(page, "fallback-run")
    user.shot(page.locator("section#timeline"), "fallback-timeline")
    _no_secrets(page)


def test_breaker_open_run_shows_the_skip_and_the_marker(viewer_daemon, runs, browser_user):
    user = browser_user("operator")
    run_id = runs["skipped"]
    page = _login(user, viewer_daemon.view_url(run_id))
    chart = page.locator("svg#timeline-chart")
    assert chart.locator(f'g.attempt[data-route="{GROK}"]').count() == 0  # not one request to it
    skips = chart.locator("g.skip")
    assert skips.count() >= 1, page.locator("#timeline").inner_html()[:3000]
    assert skips.first.bounding_box()
    fallback = chart.locator(f'g.attempt[data-route="{OPENAI_MINI}"]')
    assert fallback.count() >= 1 and fallback.first.get_attribute("data-kind") == "fallback"
    marker = page.locator('section#conversation .marker[data-marker="circuit-open"]')
    assert marker.count() >= 1 and GROK in marker.first.inner_text()
    user.shot(page.locator("section#timeline"), "skip-timeline")


def test_raw_file_links_open_as_text(viewer_daemon, runs, browser_user):
    user = browser_user("operator")
    run_id = runs["fallback"]
    page = _login(user, viewer_daemon.view_url(run_id))
    links = page.locator("section#files a.raw-file")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert hrefs and all(h.startswith(f"/ui/runs/{run_id}/files/") for h in hrefs), hrefs
    wanted = f"/ui/runs/{run_id}/files/raw/responses/turn_1_attempt_1.json"
    assert wanted in hrefs, hrefs
    with page.expect_navigation() as nav:
        links.nth(hrefs.index(wanted)).click()
    response = nav.value
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    assert response.headers.get("x-content-type-options") == "nosniff", response.headers
    body = page.locator("body").inner_text()
    assert "503" in body or "unavailable" in body.lower(), body[:500]
    user.shot(page, "raw-file")
    _no_secrets(page)
    # an attacker's paths: out of the run directory, or another file by encoded slashes
    for path in ("..%2F..%2Fkcd.yaml", "..%2f..%2fstate%2fstate.db", "%2Fetc%2Fpasswd", "meta/../../../kcd.yaml"):
        r = page.request.get(f"{_origin(page.url)}/ui/runs/{run_id}/files/{path}", max_redirects=0)
        assert r.status in (400, 403, 404), (path, r.status, r.text()[:300])
        assert "operators_group" not in r.text() and "root:" not in r.text()


def test_a_live_run_page_updates_without_reloading(viewer_daemon, runs, browser_user):
    d = viewer_daemon
    steps = [{"name": "run_shell", "arguments": {"command": f"sleep 1.5; echo step{i}"}} for i in range(4)]
    steps.insert(2, {"name": "run_shell", "arguments": {"command": f"echo '{PAYLOAD}'"}})
    task = json.dumps(steps) + "\n\n" + PAYLOAD  # the script agent reads the first paragraph
    started = d.kcctl("run", str(SCRIPT), "--task", task, "--json", "--detach")
    run_id = json.loads(started.stdout)["id"]
    user = browser_user("operator")
    page = _login(user, d.view_url(run_id))
    # switch the timeline to one scale for all turns (a plain link): the refreshes must keep it
    with page.expect_navigation(wait_until="load"):
        page.locator('#timeline-axis a[data-axis="shared"]').click()
    assert urlsplit(page.url).query == "axis=shared", page.url
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: frame == page.main_frame and navigations.append(frame.url))
    run = page.locator("main#run")
    assert run.get_attribute("data-status") == "running", "the run ended before its page opened"
    assert run.get_attribute("data-live") == "true"
    events = page.locator("#events li[data-seq]")
    first = events.count()
    user.shot(page, "live-running")

    expect(events).not_to_have_count(first, timeout=30_000)  # new events, pushed to the open page
    expect(run).to_have_attribute("data-status", TERMINAL, timeout=60_000)
    assert navigations == [], f"the page reloaded: {navigations}"
    assert run.get_attribute("data-status") == "completed"
    assert run.get_attribute("data-live") == "false"
    expect(page.locator("#run-status")).to_have_text("completed")
    # the fragments were refreshed too: every turn's attempt and every tool call with its result
    expect(page.locator('#tools .tool-call[data-tool="run_shell"] .tool-result')).to_have_count(len(steps),
                                                                                                 timeout=10_000)
    expect(page.locator('#tools .tool-call[data-tool="mark_task_complete"]')).to_have_count(1)
    assert page.locator("#timeline-chart g.attempt").count() >= len(steps) + 1
    assert page.locator("#timeline-chart").get_attribute("data-axis") == "shared"  # refreshed on its scale
    assert page.locator('#timeline-axis a[aria-current="true"]').get_attribute("data-axis") == "shared"
    assert PAYLOAD in page.locator("#tools").inner_text()  # shown as text, not run
    seqs = [int(s) for s in events.evaluate_all("els => els.map(e => e.dataset.seq)")]
    assert seqs == sorted(set(seqs)) and len(seqs) > first, seqs  # in order, none twice
    types = events.evaluate_all("els => els.map(e => e.dataset.type || e.textContent)")
    assert "run.end" in types[-1], types[-3:]
    user.shot(page, "live-ended")
    lines = "els => els.map(e => [e.dataset.seq, e.dataset.type, e.textContent])"
    live_lines = events.evaluate_all(lines)
    # a reload agrees with what the live page showed, line for line: viewer.js takes the
    # fields an event line shows from the page (data-keys), so the two cannot drift apart
    page.reload()
    assert events.count() == len(seqs)
    assert events.evaluate_all(lines) == live_lines
    assert "message" in page.locator("#events").get_attribute("data-keys").split()
    assert PAYLOAD in page.locator("#tools").inner_text() and PAYLOAD in page.locator("main#run").inner_text()
    page = user.open(f"{_origin(page.url)}/ui/", page=page)
    assert _rows(page)[run_id]["status"] == "completed"  # the list, with the payload task, renders clean


# ---- ownership -------------------------------------------------------------------------------

def test_another_users_run_is_refused(viewer_daemon, runs, browser_user):
    d = viewer_daemon
    if d.stranger is None:
        pytest.skip("needs root, useradd and setpriv to act as a second local user (CI runs as root)")
    uid = d.stranger["uid"]
    theirs = json.loads(d.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", "list the files", "--json",
                                "--detach", uid=uid).stdout)["id"]
    d.kcctl("runs", "events", theirs, "--follow", "--json", uid=uid)
    stranger = browser_user("stranger")
    page = _login(stranger, d.view_url(uid=uid))
    listed = _rows(page)
    stranger.shot(page, "stranger-runs-list")
    assert theirs in listed and not set(runs.values()) & set(listed), listed
    origin = _origin(page.url)
    for run_id in runs.values():
        page = stranger.open(f"{origin}/ui/runs/{run_id}", status=403, page=page)
        error = page.locator("main#error")
        assert error.get_attribute("data-code") == "forbidden", page.content()[:1000]
        assert GROK not in page.content()  # nothing of the run itself
    stranger.shot(page, "stranger-forbidden")
    # nor through the run's other resources
    for path in ("events", "files/result.json", "files/conversation/conversation.md"):
        r = page.request.get(f"{origin}/ui/runs/{runs['fallback']}/{path}", max_redirects=0)
        assert r.status == 403, (path, r.status, r.text()[:300])
    page = stranger.open(f"{origin}/ui/?status=completed&route={quote(GROK, safe='')}", page=page)
    assert runs["fallback"] not in _rows(page)
    # and `kcctl view THEIR_RUN` makes no link at all
    refused = d.kcctl("view", runs["fallback"], uid=uid, check=False)
    assert refused.returncode != 0 and "/ui/login" not in refused.stdout + refused.stderr, refused


# ---- the daemon page -------------------------------------------------------------------------

def test_daemon_page_shows_routes_breakers_and_metric_charts(viewer_daemon, runs, browser_user):
    user = browser_user("operator")
    page = _login(user, viewer_daemon.view_url())
    page = user.open(f"{_origin(page.url)}/ui/daemon", page=page)
    routes = page.locator("table#routes tr[data-route]").evaluate_all(
        "rows => Object.fromEntries(rows.map(r => [r.dataset.route, r.dataset.state]))")
    assert {GROK, OPENAI_MINI, OR_MINI} <= set(routes), routes
    assert set(routes.values()) <= {"closed", "open", "half_open"}, routes
    assert routes[GROK] == "open" and routes[OPENAI_MINI] == "closed", routes
    assert page.locator("section#probes").count() == 1
    charts = page.locator("section#metrics svg.metric-chart[data-metric]")
    assert charts.count() >= 1
    assert charts.first.bounding_box() and charts.first.bounding_box()["width"] > 0
    user.shot(page, "daemon")
    _no_secrets(page)


# ---- no session, bad logins ------------------------------------------------------------------

def test_no_session_is_a_401_page_and_logins_are_one_time_and_local(viewer_daemon, runs, browser_user):
    d = viewer_daemon
    origin = d.origin()
    nobody = browser_user("nobody")
    for path in ("/ui/", f"/ui/runs/{runs['demo']}", "/ui/daemon"):
        page = nobody.open(origin + path, status=401)
        assert page.locator("main#error").get_attribute("data-code") == "login_required"
        assert not [run_id for run_id in runs.values() if run_id in page.content() and run_id not in path]
        page.close()
    page = nobody.open(f"{origin}/ui/login?token=not-a-token&next=/ui/", status=401)
    nobody.shot(page, "login-required")
    assert nobody.context.cookies() == []
    r = page.request.get(f"{origin}/ui/runs/{runs['demo']}/events", max_redirects=0)
    assert r.status == 401

    # a token works once: the second browser to use the same URL has no session
    url = d.view_url()
    _login(browser_user("first"), url)
    late = browser_user("late")
    page = late.open(url, status=401)
    assert late.context.cookies() == []

    # `next` never leaves the viewer's origin
    for target in ("http://example.com/", "//example.com/ui/", "/\\example.com/", "/v1/runs"):
        user = browser_user("redirected")
        token_url = d.view_url()
        token = re.search(r"token=([^&\s]+)", token_url).group(1)
        page = user.context.new_page()
        login = f"{_origin(token_url)}/ui/login?token={token}&next={quote(target, safe='')}"
        user.expect_error(login, 400)  # refusing the target outright is as good as ignoring it
        response = page.goto(login)
        assert response is not None and urlsplit(page.url).hostname == "127.0.0.1", (target, page.url)
        assert urlsplit(page.url).path.startswith("/ui/"), (target, page.url)
        assert response.status in (200, 400), (target, response.status)
        page.close()


def test_unknown_run_is_a_404_page(viewer_daemon, browser_user):
    user = browser_user("operator")
    page = _login(user, viewer_daemon.view_url())
    page = user.open(f"{_origin(page.url)}/ui/runs/no-such-run", status=404, page=page)
    assert page.locator("main#error").get_attribute("data-code") == "run_not_found"
