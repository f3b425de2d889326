"""The viewer's `/ui/` handlers, and the socket-only endpoint that issues login links.

Who is asking: over the control socket, the peer's uid (SO_PEERCRED), as for every other
route; over TCP (no peer), the viewer session cookie, else 401 `login_required`. What they
may see: `kcd.server.access.AccessPolicy`, unchanged (a run is its starter's, operators see
all, user mode serves only its user). Every refusal is an HTML page with the right status.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio

from kcd.api.types import RunInfo, ViewerSession, ViewerSessionRequest
from kcd.errors import BadRequest, Forbidden, KcError, NotFound, Unauthorized, Unavailable
from kcd.providers.breaker import BreakerBoard
from kcd.providers.probes import ProbeManager
from kcd.runs import RunManager
from kcd.server.access import AccessPolicy, Caller
from kcd.server.http import Handler, Request, Response, Router, json_response
from kcd.viewer import pages
from kcd.viewer.confine import list_files, read_confined
from kcd.viewer.history import MetricsHistory
from kcd.viewer.markup import SECURITY_HEADERS, error_page, html_response, page
from kcd.viewer.replays import ReplayView, load_report
from kcd.viewer.rundata import RunRecord, load_run
from kcd.viewer.sessions import SessionTable
from kcd.viewer.sse import FollowingResponse, sse_messages
from kcd.viewer.tcpowner import loopback_peer_uid
from kcd.viewer.timeline import AXES

__all__ = ["COOKIE", "ViewerAPI", "ViewerServices", "read_view"]

COOKIE = "kc_viewer"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_WHEN = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?Z?)?")
MAX_REPLAYS_LISTED = 20  # on a recorded run's page, newest first
_STATIC = {"viewer.css": "text/css; charset=utf-8", "viewer.js": "text/javascript; charset=utf-8",
           "favicon.svg": "image/svg+xml"}  # the icon: else a browser asks for /favicon.ico, a 404


@dataclass(frozen=True, kw_only=True)
class ViewerServices:
    """What the viewer reads of the daemon."""

    runs: RunManager
    access: AccessPolicy
    sessions: SessionTable
    history: MetricsHistory
    breakers: BreakerBoard | None
    probes: ProbeManager
    base_url: Callable[[], str | None]  # http://127.0.0.1:PORT of the TCP listener, None when off
    facts: Callable[[], Mapping[str, Any]]  # a few health facts for the daemon page
    scrub: Callable[[bytes], bytes]  # the daemon's redactor, for streamed bodies
    # True when the TCP listener is loopback-only: a session is then honoured only from a
    # connection its own user (or root) owns (`tcpowner`: cookies are shared by every port).
    bind_browser: bool = True


def read_view(info: RunInfo, parts: Collection[str], *, live: bool,
              replay: ReplayView | None = None) -> dict[str, Any]:
    """The arguments of `pages.run_page` / `pages.fragment` for `parts` (names in `pages.PAGE`),
    reading only the files those parts show: a live page refreshes its timeline, tools and
    conversation on every few events, and each refresh reads just its own. Blocking: call it in
    a worker thread."""
    run_dir = Path(info.run_dir)
    replay = replay or ReplayView()

    def text(rel: str) -> str | None:
        try:
            return read_confined(run_dir, rel, truncate=True).decode("utf-8", "replace")
        except KcError:
            return None

    record = RunRecord(events=[], turns=[], tools=[], markers=[])
    if {"timeline", "tools", "events"} & set(parts):
        record = load_run(run_dir, ttft_turns=pages.MAX_CHART_TURNS if "timeline" in parts else 0)
    if "replay" in parts and info.replay_of:
        replay.report, replay.report_error = load_report(run_dir)
    return dict(info=info, live=live, record=record,
                conversation=text("conversation/conversation.md") if "conversation" in parts else None,
                diff=text("workspace.diff") if "diff" in parts else None,
                files=list_files(run_dir) if "files" in parts and run_dir.is_dir() else [], replay=replay)


def _html_errors(handler: Handler) -> Handler:
    """A KcError from a viewer handler becomes an HTML error page with its status."""

    @functools.wraps(handler)
    async def wrapper(req: Request) -> Response:
        try:
            return await handler(req)
        except KcError as exc:
            return error_page(exc.status, exc.code, str(exc), exc.headers)
    return wrapper


def _cookie(req: Request) -> str | None:
    raw = req.header("cookie") or ""
    for part in raw.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def _safe_next(target: str | None) -> str:
    """Only a path of this viewer: no scheme, no host (`//evil`), no backslash, no `..`."""
    if not target or not target.startswith("/ui/") or "//" in target or "\\" in target \
            or any(not 0x21 <= ord(c) <= 0x7E for c in target) or "%2e" in target.lower() \
            or "/../" in target + "/" or "/./" in target + "/":
        return "/ui/"
    return target


def _axis(req: Request) -> str:
    """The timeline's time scale asked for (`?axis=`), per turn when absent."""
    axis = req.query.get("axis") or "turn"
    if axis not in AXES:
        raise BadRequest("invalid_query", f"axis must be one of {', '.join(AXES)}")
    return axis


class ViewerAPI:
    """The `/ui/` routes over ViewerServices."""

    def __init__(self, services: ViewerServices):
        self.s = services
        root = resources.files("kcd.viewer") / "static"
        self._static = {name: (root / name).read_bytes() for name in _STATIC}

    def register(self, r: Router) -> None:
        """The `/ui/` routes (on the control socket's router and on the TCP listener's)."""
        for path, handler in (("/ui", self.to_index), ("/ui/", self.runs_list), ("/ui/login", self.login),
                              ("/ui/daemon", self.daemon), ("/ui/static/{name}", self.static),
                              ("/ui/runs/{run_id}", self.run_page),
                              ("/ui/runs/{run_id}/fragment/{name}", self.fragment),
                              ("/ui/runs/{run_id}/events", self.events),
                              ("/ui/runs/{run_id}/files/{path:path}", self.raw_file),
                              ("/ui/{rest:path}", self.not_found)):
            r.add("GET", path, _html_errors(handler))

    # ---- who is asking ----------------------------------------------------------------------

    def caller(self, req: Request) -> Caller:
        access = self.s.access
        if req.peer is not None:  # the control socket: the kernel says who it is
            caller = access.caller(req.peer)
        else:
            grant = self.s.sessions.session(_cookie(req))
            if grant is None:
                raise Unauthorized("login_required", "no valid viewer session: open the link `kcctl view` prints")
            self._same_user(req, grant.uid)
            caller = Caller(uid=grant.uid, operator=grant.operator)
        access.require_user(caller)
        return caller

    def _same_user(self, req: Request, uid: int | None) -> None:
        """A session (or login link) is honoured only from its own user's programs, or root's."""
        if not self.s.bind_browser:
            return
        owner = loopback_peer_uid(req.scope.get("client"), req.scope.get("server"))
        if owner is None or (owner != uid and owner != 0):
            raise Unauthorized("login_required", "this viewer session was issued to another local user than the "
                                                 "one whose program is connecting: run `kcctl view` as the user "
                                                 "who runs the browser")

    def _run(self, req: Request, run_id: str) -> RunInfo:
        return self._caller_and_run(req, run_id)[1]

    def _caller_and_run(self, req: Request, run_id: str) -> tuple[Caller, RunInfo]:
        caller = self.caller(req)
        info = self.s.runs.get(run_id) if _ID.fullmatch(run_id) else None
        if info is None:
            raise NotFound("run_not_found", f"no run with id {run_id!r}")
        self.s.access.require_owner(caller, info.peer_uid, f"run {run_id}", "view")
        return caller, info

    def _may_open(self, caller: Caller, run_id: str) -> bool:
        """Whether `caller` may open run `run_id`'s page (the same rule as `_run`)."""
        info = self.s.runs.get(run_id) if _ID.fullmatch(run_id) else None
        return info is not None and self.s.access.may_see(caller, info.peer_uid)

    # ---- the session endpoint (control socket only) --------------------------------------------

    async def create_session(self, req: Request) -> Response:
        """`POST /v1/viewer/sessions`: a one-time login link bound to the caller's uid and
        operator flag, to the runs list or to one run's page."""
        if req.peer is None:
            raise Forbidden("forbidden", "viewer sessions are issued over the control socket only")
        body = await req.json(ViewerSessionRequest) if (await req.body()).strip() else ViewerSessionRequest()
        target = "/ui/"
        if body.run:
            target = f"/ui/runs/{quote(self._run(req, body.run).id, safe='')}"
        else:
            self.caller(req)
        base = self.s.base_url()
        if base is None:
            raise Unavailable("viewer_disabled", "the viewer's TCP listener is off (viewer.enabled: false)")
        caller = self.s.access.caller(req.peer)
        token = self.s.sessions.issue_login(caller.uid, caller.operator)
        url = f"{base}/ui/login?token={token}&next={quote(target, safe='/')}"
        response = json_response(ViewerSession(url=url, expires_in_s=self.s.sessions.login_ttl_s, run=body.run))
        response.scrub = False  # the redactor would mask `token=`: nothing here came from a run or provider
        return response

    # ---- pages ------------------------------------------------------------------------------

    async def to_index(self, req: Request) -> Response:
        return html_response(page("Runs", '<main><a href="/ui/">Runs</a></main>'), 308, {"location": "/ui/"})

    async def not_found(self, req: Request) -> Response:
        raise NotFound("not_found", f"no such page: {req.path}")

    async def static(self, req: Request) -> Response:
        name = req.path_params["name"]
        if name not in self._static:
            raise NotFound("not_found", f"no such asset: {name}")
        return Response(self._static[name], content_type=_STATIC[name],
                        headers={**SECURITY_HEADERS, "cache-control": "no-cache"})

    async def login(self, req: Request) -> Response:
        q = req.query
        target = _safe_next(q.get("next"))
        redeemed = self.s.sessions.redeem_login(q.get("token"))
        if redeemed is None:
            raise Unauthorized("login_required", "this login link is invalid, expired or already used")
        cookie, grant = redeemed
        if req.peer is None:
            self._same_user(req, grant.uid)  # a leaked link is spent, and refused, in a stranger's hands
        max_age = int(self.s.sessions.session_ttl_s)
        body = page("Signed in", f'<main id="login"><a href="{target}">continue</a></main>')
        return html_response(body, 303, {
            "location": target,
            "set-cookie": f"{COOKIE}={cookie}; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age={max_age}"})

    async def runs_list(self, req: Request) -> Response:
        caller = self.caller(req)
        q = req.query
        filters = {k: q.get(k, "").strip() for k in pages.FILTERS}
        for key in ("since", "until"):
            if filters[key] and not _WHEN.fullmatch(filters[key]):
                raise BadRequest("invalid_query", f"{key} must be a UTC date or time like 2026-01-31T12:00")
        limit = 200
        runs = self.s.runs.list(
            limit=limit, status=filters["status"] or None, owner=None if caller.operator else caller.uid,
            route=filters["route"] or None, exit_reason=filters["exit_reason"] or None,
            since=filters["since"].replace(" ", "T") or None, until=filters["until"].replace(" ", "T") or None)
        who = "all runs (operator)" if caller.operator else f"runs of uid {caller.uid}"
        openable = {r.replay_of for r in runs if r.replay_of and self._may_open(caller, r.replay_of)}
        return html_response(page("Runs", pages.runs_page(runs, filters, limit=limit, who=who, openable=openable)))

    async def _render(self, caller: Caller, info: RunInfo, parts: Collection[str],
                      render: Callable[..., str]) -> Response:
        """`render(**read_view(...))` in a worker thread: reading a long run and rendering its
        page (a 1000-turn run: ~130 ms, 2 MB) must not stall the event loop every run streams
        on. The app redacts the body on its way out (a big one off the loop too)."""
        replay = ReplayView(
            recorded=info.replay_of,
            recorded_visible=bool(info.replay_of) and self._may_open(caller, info.replay_of or ""),
            replays=self.s.runs.list(limit=MAX_REPLAYS_LISTED, owner=None if caller.operator else caller.uid,
                                     replay_of=info.id) if "replays" in parts else [])
        live = not self.s.runs.is_terminal(info)
        body = await anyio.to_thread.run_sync(lambda: render(**read_view(info, parts, live=live, replay=replay)))
        return html_response(body)

    async def run_page(self, req: Request) -> Response:
        caller, info = self._caller_and_run(req, req.path_params["run_id"])
        axis = _axis(req)
        return await self._render(caller, info, pages.PAGE,
                                  lambda **view: page(f"Run {info.id}", pages.run_page(**view, axis=axis)))

    async def fragment(self, req: Request) -> Response:
        caller, info = self._caller_and_run(req, req.path_params["run_id"])
        name = req.path_params["name"]
        if name not in pages.FRAGMENTS:
            raise NotFound("not_found", f"no fragment {name!r}")
        axis = _axis(req)
        return await self._render(caller, info, (name,), lambda **view: pages.fragment(name, **view, axis=axis))

    async def events(self, req: Request) -> Response:
        """Server-Sent Events from the run's event stream: one `message` per event (its JSON),
        heartbeats as comments, and a final `end` event so the browser stops reconnecting."""
        info = self._run(req, req.path_params["run_id"])
        since_raw = req.query.get("since") or req.header("last-event-id") or "0"
        if not since_raw.isdigit():
            raise BadRequest("invalid_query", "since must be an event sequence number")
        stream = await self.s.runs.follow(info.id, int(since_raw), True)
        if stream is None:
            raise NotFound("run_not_found", f"no run with id {info.id!r}")
        return FollowingResponse(sse_messages(stream, self.s.scrub), req.receive,
                                 content_type="text/event-stream; charset=utf-8",
                                 headers={**SECURITY_HEADERS, "x-accel-buffering": "no"})

    async def raw_file(self, req: Request) -> Response:
        info = self._run(req, req.path_params["run_id"])
        rel = req.path_params["path"]
        data = await anyio.to_thread.run_sync(read_confined, Path(info.run_dir), rel)
        return Response(data, content_type="text/plain; charset=utf-8",
                        headers={**SECURITY_HEADERS, "content-disposition": "inline"})

    async def daemon(self, req: Request) -> Response:
        self.caller(req)
        board = self.s.breakers
        probes = [{**r.record(), "age_s": round(self.s.probes.age_s(r), 1)} for r in self.s.probes.results()]
        body = pages.daemon_page(routes=board.snapshot() if board else {}, probes=probes,
                                 series=self.s.history.series(), interval_s=self.s.history.interval_s,
                                 health=self.s.facts())
        return html_response(page("Daemon", body))
