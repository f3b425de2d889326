"""Headless Chromium (Debian's package, driven by Playwright) against a real kcd.

The browser is launched once per session from the system's `chromium` (no browser
download); each test gets fresh contexts. Every context fails its test on a JavaScript
console error (a CSP refusal of injected script is one), an uncaught page error, a dialog,
or a request to any host but 127.0.0.1 (the viewer must work offline). Screenshots go to the test's `tmp_path`, named after the step.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ..integration.conftest import REPO, Kcd, base_env
from ..integration.resilience_support import Simulator

LOOPBACK = "127.0.0.1"
# Pages we open expecting these statuses: Chromium logs the main document's 4xx as a
# console error ("Failed to load resource"), which is then expected rather than a fault.
_LOAD_FAILED = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")


def find_chromium() -> str | None:
    """Debian's `chromium` (or another Chromium-family binary on PATH)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per module, closed by its own handle. Not per session: Playwright's
    sync API keeps an event loop running in the main thread while it is started, and every
    later test that calls anyio.run/asyncio.run (tests/unit/...) would fail after this package."""
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    driver = sync_playwright().start()
    try:
        # Chromium's own sandbox cannot start as root; elsewhere keep it.
        handle = driver.chromium.launch(
            executable_path=executable, headless=True, chromium_sandbox=os.geteuid() != 0,
            # Resolve nothing but loopback: a stray CDN or font URL fails here even if a
            # test forgot to look (the route guard below records and fails it too).
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
    except Exception:
        driver.stop()
        raise
    try:
        yield handle
    finally:
        handle.close()
        driver.stop()


class BrowserUser:
    """One browser context (one person's cookies) and what went wrong in it."""

    def __init__(self, context, shots: Path, name: str):
        self.context = context
        self.shots = shots
        self.name = name
        self.problems: list[str] = []
        self._expected: dict[str, set[int]] = {}  # url -> the error statuses the test expects
        self._shot_count = 0
        context.route("**/*", self._guard)
        context.on("page", self._watch)

    def _guard(self, route) -> None:
        url = route.request.url
        host = urlsplit(url).hostname
        if urlsplit(url).scheme in ("data", "blob", "about") or host == LOOPBACK:
            route.continue_()
        else:
            self.problems.append(f"request off loopback: {route.request.method} {url}")
            route.abort("blockedbyclient")

    def _watch(self, page) -> None:
        page.on("console", lambda msg: self._console(page, msg))
        page.on("pageerror", lambda exc: self.problems.append(f"page error on {page.url}: {exc}"))
        page.on("dialog", self._dialog)  # only injected script opens one: the viewer never does

    def _dialog(self, dialog) -> None:
        self.problems.append(f"a {dialog.type} dialog opened: {dialog.message!r}")
        dialog.dismiss()

    def _console(self, page, msg) -> None:
        if msg.type != "error":
            return
        loaded = _LOAD_FAILED.search(msg.text)
        where = msg.location.get("url", "") if isinstance(msg.location, dict) else ""
        if loaded and int(loaded.group(1)) in self._expected.get(where, ()):
            return
        self.problems.append(f"console error on {page.url}: {msg.text} ({where})")

    def expect_error(self, url: str, *statuses: int) -> None:
        """Chromium logs a document's 4xx as a console error; for `url` these are expected."""
        self._expected.setdefault(url, set()).update(statuses)

    def open(self, url: str, status: int = 200, page=None):
        """Navigate (a new page unless given) and check the document's HTTP status."""
        page = page or self.context.new_page()
        if status >= 400:
            self.expect_error(url, status)
        response = page.goto(url, wait_until="load")
        assert response is not None, url
        assert response.status == status, (url, response.status, page.content()[:2000])
        return page

    def shot(self, what, step: str) -> Path:
        """A screenshot of a page (all of it) or of one element (a Locator), kept in the test's
        tmp dir as `NN-<user>-<step>.png`."""
        self._shot_count += 1
        path = self.shots / f"{self._shot_count:02d}-{self.name}-{re.sub(r'[^a-z0-9_-]+', '-', step.lower())}.png"
        if hasattr(what, "main_frame"):
            what.screenshot(path=str(path), full_page=True)
        else:
            what.screenshot(path=str(path))
        return path


@pytest.fixture
def browser_user(browser, tmp_path) -> Iterator:
    """`browser_user(name)`: a fresh context; the test fails on any problem it saw."""
    users: list[BrowserUser] = []

    def make(name: str = "user") -> BrowserUser:
        user = BrowserUser(browser.new_context(viewport={"width": 1280, "height": 900}), tmp_path, name)
        users.append(user)
        return user

    yield make
    problems = [p for user in users for p in user.problems]
    for user in users:
        user.context.close()
    assert problems == [], "\n".join(problems)


# ---- the daemon, its simulator, and the users who open `kcctl view` URLs -----------------------

VIEW_URL = re.compile(r"https?://\S+")


class ViewerDaemon:
    """A kcd started for one module, with helpers that act as a given local user."""

    def __init__(self, kcd: Kcd, sim: Simulator, stranger: dict | None):
        self.kcd = kcd
        self.sim = sim
        self.stranger = stranger  # {"uid", "gid", "home"} of a second local user, or None

    def kcctl(self, *args: str, uid: int | None = None, timeout: float = 120.0,
              check: bool = True) -> subprocess.CompletedProcess:
        """`kcctl` against the daemon's socket, as root (the operator) or as `uid`."""
        if uid is None:
            return self.kcd.kcctl(*args, timeout=timeout, check=check)
        env = dict(self.kcd.env, HOME=self.stranger["home"])
        # The daemon knows its caller by SO_PEERCRED's uid. The interpreter may live where only
        # root can read (pyenv under /root), so the process keeps CAP_DAC_READ_SEARCH, which
        # lets it read files and changes nothing the daemon sees.
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={self.stranger['gid']}", "--clear-groups",
               "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
               sys.executable, "-m", "kcctl.cli", "--socket", str(self.kcd.socket), "--no-autostart", *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"kcctl {args} as uid {uid} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def view_url(self, *args: str, uid: int | None = None) -> str:
        """The login URL the real `kcctl view` prints."""
        out = self.kcctl("view", *args, uid=uid).stdout
        found = VIEW_URL.findall(out)
        assert found, f"kcctl view printed no URL: {out!r}"
        url = found[-1]
        assert urlsplit(url).hostname == LOOPBACK and "/ui/login" in url, url
        return url

    def origin(self) -> str:
        parts = urlsplit(self.view_url())
        return f"{parts.scheme}://{parts.netloc}"


@contextlib.contextmanager
def _stranger(root: Path) -> Iterator[dict | None]:
    """A second local user (created as root with useradd, removed afterwards), or None."""
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("setpriv") is None:
        yield None
        return
    import pwd
    tag = uuid.uuid4().hex[:6]
    group, name = f"kcvadm{tag}", f"kcvs{tag}"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True)
        entry = pwd.getpwnam(name)
        home = root / "stranger-home"
        home.mkdir()
        os.chown(home, entry.pw_uid, entry.pw_gid)
        yield {"uid": entry.pw_uid, "gid": entry.pw_gid, "home": str(home), "group": group}
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


@pytest.fixture(scope="module")
def viewer_daemon(request) -> Iterator[ViewerDaemon]:
    """kcd with its loopback viewer listener, the provider routes on a standalone simulator.

    As root (CI) it runs in system mode with a second local user, so ownership is real;
    elsewhere it is a per-user daemon and the cross-user test skips.
    """
    root = Path(tempfile.mkdtemp(prefix="kcv-", dir="/tmp"))  # short: AF_UNIX path limit
    (root / "home").mkdir()
    sim = Simulator()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        stack.callback(sim.close)
        stranger = stack.enter_context(_stranger(root))
        config = root / "kcd.yaml"
        # the viewer's own loopback listener on an ephemeral port (its default); metric samples
        # every second so the daemon page's charts have points within the test
        lines = ["viewer:", "  sample_interval_s: 1",
                 # the grok route opens after two failed turns and stays open for the module: the
                 # runs include a breaker-open skip, and the daemon page an open route
                 "breaker_overrides:", "  openrouter/x-ai/grok-4-fast:",
                 "    {threshold: 2, window_s: 600, cooldown_s: 600, cap_s: 600, jitter: 0}"]
        if stranger:
            lines = ["mode: system", f"operators_group: {stranger['group']}", *lines]
        config.write_text("\n".join(lines) + "\n")
        env = base_env(root / "home")
        env.update(OPENROUTER_BASE_URL=sim.api_base, OPENAI_BASE_URL=sim.api_base)
        daemon = Kcd(root, env, ["--config", str(config), "--executor", "in-process"])
        stack.callback(_stop, daemon, request)
        daemon.start()
        if stranger:
            os.chmod(root, 0o755)
            os.chmod(daemon.socket, 0o666)  # the socket's group stands in for "may use the daemon"
        yield ViewerDaemon(daemon, sim, stranger)


def _stop(daemon: Kcd, request) -> None:
    if request.session.testsfailed:
        print(f"--- kcd log tail ---\n{daemon.log()[-6000:]}")
    try:
        daemon.stop(timeout=30)
    except Exception:
        pass
