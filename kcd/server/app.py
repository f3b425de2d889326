"""The control API: routes of the daemon's Unix-socket HTTP server.

`ControlAPI` sees the daemon only through `ControlServices`, the narrow set of components,
settings and callables its handlers use, built by `kcd.daemon`; nothing here imports the
daemon. Handlers raise `kcd.errors.KcError`s; `kcd.server.http.App` renders them.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec

from kcd import API_VERSION, MIN_API_VERSION, __version__
from kcd.api.types import (
    ConfigCheckRequest,
    ConfigCheckResult,
    ErrorDetail,
    ExecutorInfo,
    Health,
    ReplayRequest,
    RunList,
    RouteRef,
    RunInfo,
    RunRequest,
    UploadInfo,
    VersionInfo,
)
from kcd.bundles.build import build_bundle
from kcd.bundles.runref import RunFacts, local_identities, resolve_run_dir, run_facts
from kcd.bundles.scrub import Scrubber, make_scrubber
from kcd.bundles.types import BundleRequest
from kcd.config.agent import ConfigError, load_agent_config_text
from kcd.config.daemon import BreakerSettings
from kcd.errors import BadRequest, NotFound
from kcd.execution.base import Executor
from kcd.matrix.incident_scenario import scenario_from_run
from kcd.matrix.runner import MatrixService
from kcd.matrix.types import MatrixRequest, ScenarioFromRunRequest
from kcd.observe.prometheus import CONTENT_TYPE
from kcd.observe.redact import Redactor
from kcd.peer_files import peer_reader
from kcd.providers.breaker import BreakerBoard
from kcd.providers.dispatcher import ChainEntry
from kcd.providers.probes import ProbeManager
from kcd.providers.routes import parse_route
from kcd.replay.service import ReplayService, read_report
from kcd.runs import RunManager
from kcd.server.access import AccessPolicy
from kcd.server.http import App, Handler, Request, Response, Router, StreamResponse, json_response
from kcd.viewer.history import MetricsHistory
from kcd.viewer.routes import ViewerAPI, ViewerServices
from kcd.viewer.sessions import SessionTable
from kcd.workspaces.archive import pack_all
from kcd.workspaces.uploads import UploadStore

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a run id, as opposed to a run directory's name or path


@dataclass(frozen=True, kw_only=True)
class ControlServices:
    """Everything the control API's handlers use of the daemon, and nothing else."""

    # components
    runs: RunManager
    uploads: UploadStore
    executor: Executor  # its mode, state and nodes for /v1/health
    probes: ProbeManager
    breakers: BreakerBoard | None
    matrix: Callable[[], MatrixService]  # made on first use
    replays: ReplayService
    redactor: Redactor  # every non-streamed body; bundle scrubbing
    chat_completions: Handler  # the OpenAI-compatible endpoint's two routes on the socket
    list_models: Handler
    sessions: SessionTable  # the run viewer's login tokens and sessions
    history: MetricsHistory  # the daemon page's metric charts
    # settings
    mode: str  # "user" | "system"
    operators_group: str | None
    max_body_bytes: int
    max_upload_bytes: int
    socket: Path | None
    runs_root: Path
    state_dir: Path | None
    upstream_client: str
    sandbox: dict[str, object] | None  # the isolation report
    home: str | None  # the daemon's HOME, scrubbed from bundles
    # the daemon's own doings
    stopping: Callable[[], bool]
    metrics_text: Callable[[], bytes]
    reload: Callable[[str], Awaitable[dict[str, object]]]
    request_stop: Callable[[str], None]
    log_exception: Callable[[BaseException], None]
    simulator_url: Callable[[], Awaitable[str]]
    viewer_url: Callable[[], str | None]  # http://HOST:PORT of the viewer's TCP listener, None when off
    viewer_local_only: bool  # that listener is loopback-only: bind sessions to the browser's local uid


def _bool(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def _int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest("invalid_query", f"{name} must be an integer, got {value!r}") from None


class ControlAPI:
    """The control API's routes (`/v1/...`, `/version`) over a ControlServices: each handler
    checks access, calls one service and answers; errors are raised as KcError."""

    def __init__(self, services: ControlServices):
        self.s = services
        self.started = time.monotonic()
        self.access = AccessPolicy(mode=services.mode, operators_group=services.operators_group)
        self.viewer = ViewerAPI(ViewerServices(
            runs=services.runs, access=self.access, sessions=services.sessions, history=services.history,
            breakers=services.breakers, probes=services.probes, base_url=services.viewer_url,
            facts=self._viewer_facts, scrub=services.redactor.bytes, bind_browser=services.viewer_local_only))

    def asgi(self) -> App:
        r = Router()
        r.add("GET", "/version", self.version)
        r.add("GET", "/v1/health", self.health)
        r.add("POST", "/v1/runs", self.create_run)
        r.add("GET", "/v1/runs", self.list_runs)
        r.add("GET", "/v1/runs/{run_id}", self.get_run)
        r.add("POST", "/v1/runs/{run_id}/cancel", self.cancel_run)
        r.add("GET", "/v1/runs/{run_id}/events", self.run_events)
        r.add("POST", "/v1/config/check", self.check_config)
        r.add("POST", "/v1/workspaces", self.upload_workspace)
        r.add("GET", "/v1/runs/{run_id}/changes", self.run_changes)
        r.add("GET", "/v1/runs/{run_id}/workspace", self.run_workspace)
        r.add("GET", "/v1/metrics", self.live_metrics)
        r.add("GET", "/v1/probes", self.list_probes)
        r.add("POST", "/v1/probes/refresh", self.refresh_probes)
        r.add("GET", "/v1/routes", self.routes)
        r.add("POST", "/v1/routes/reset", self.reset_route)
        r.add("POST", "/v1/shutdown", self.shutdown)
        r.add("POST", "/v1/reload", self.reload)
        # ---- OpenAI-compatible gateway (kcd.gateway.handlers; the caller is the peer's uid) ----
        r.add("POST", "/v1/chat/completions", self.s.chat_completions)
        r.add("GET", "/v1/models", self.s.list_models)
        # ---- end of the OpenAI-compatible gateway block ----
        r.add("POST", "/v1/bundles", self.create_bundle)  # vendor bundles: see the block below
        self._matrix_routes(r)  # regression matrix and simulator: see the block below
        r.add("POST", "/v1/scenarios/from-run", self.scenario_from_run)  # see the block below
        # ---- the run viewer (kcd.viewer): its pages, and login links for `kcctl view` ----
        r.add("POST", "/v1/viewer/sessions", self.viewer.create_session)
        self.viewer.register(r)
        self._replay_routes(r)  # replays of recorded runs: see the block below
        return App(r, max_body=self.s.max_body_bytes, on_error=self.s.log_exception,
                   scrub=self.s.redactor.bytes)

    def viewer_asgi(self) -> App:
        """The viewer's pages alone, for its TCP listener (`kcd.viewer.listener`): nothing else
        of the control API is routed there."""
        r = Router()
        self.viewer.register(r)
        return App(r, max_body=64 * 1024, on_error=self.s.log_exception, scrub=self.s.redactor.bytes)

    def _viewer_facts(self) -> dict[str, object]:
        s = self.s
        return {"version": __version__, "mode": s.mode, "pid": os.getpid(),
                "uptime": f"{time.monotonic() - self.started:.0f}s", "runs active": s.runs.active_count,
                "executor": f"{s.executor.mode} ({s.executor.state})", "viewer": s.viewer_url() or "off"}

    async def version(self, req: Request) -> Response:
        return json_response(VersionInfo(api=API_VERSION, min_api=MIN_API_VERSION, daemon=__version__))

    async def health(self, req: Request) -> Response:
        s = self.s
        ex = s.executor
        state = "stopping" if s.stopping() else ("degraded" if ex.state == "degraded" else "ok")
        return json_response(Health(
            state=state, version=__version__, api=API_VERSION,
            pid=os.getpid(), uid=os.getuid(), uptime_s=round(time.monotonic() - self.started, 3),
            executor=ExecutorInfo(mode=ex.mode, state=ex.state, detail=dict(ex.detail),
                                  nodes=list(getattr(ex, "nodes", []))),
            runs_active=s.runs.active_count, socket=str(s.socket),
            runs_root=str(s.runs_root), peer=req.peer, upstream_client=s.upstream_client,
            event_loop=_event_loop_name(), sandbox=s.sandbox))

    async def create_run(self, req: Request) -> Response:
        self.access.require_user(self.access.caller(req.peer))
        body = await req.json(RunRequest)
        info = await self.s.runs.submit(body, req.peer)  # RunRejected: 400, 403 or 503
        return json_response(info, status=201)

    async def list_runs(self, req: Request) -> Response:
        """Only the runs the caller may read (all of them for operators)."""
        caller = self.access.caller(req.peer)
        self.access.require_user(caller)
        q = req.query
        limit = _int(q.get("limit"), "limit", 50)
        owner = None if caller.operator else caller.uid
        return json_response(RunList(runs=self.s.runs.list(limit=max(1, min(limit, 1000)),
                                                           status=q.get("status") or None, owner=owner)))

    def _run_or_404(self, run_id: str, req: Request | None = None, action: str = "read"):
        info = self.s.runs.get(run_id)
        if info is None:
            raise NotFound("run_not_found", f"no run with id {run_id!r}")
        if req is not None:
            self.access.require_owner(self.access.caller(req.peer), info.peer_uid, f"run {run_id}", action)
        return info

    @staticmethod
    def _files_or_404(info: RunInfo) -> RunInfo:
        """A run whose directory retention deleted: say so, not a bare "not found"."""
        if info.pruned_at:
            raise NotFound("run_pruned", f"run {info.id}'s directory was deleted by retention "
                                         f"(logging.retention.max_runs) at {info.pruned_at}; its index entry remains")
        return info

    async def get_run(self, req: Request) -> Response:
        return json_response(self._run_or_404(req.path_params["run_id"], req))

    async def cancel_run(self, req: Request) -> Response:
        run_id = req.path_params["run_id"]
        self._run_or_404(run_id, req, "cancel")
        info = self.s.runs.cancel(run_id)
        return json_response(info, status=202)

    async def run_events(self, req: Request) -> Response:
        run_id = req.path_params["run_id"]
        q = req.query
        since = _int(q.get("since"), "since", 0)
        self._run_or_404(run_id, req, "read the events of")
        stream = await self.s.runs.follow(run_id, since, _bool(q.get("follow")))
        if stream is None:
            raise NotFound("run_not_found", f"no run with id {run_id!r}")
        return StreamResponse(_detaching(stream), content_type="application/x-ndjson",
                              headers={"cache-control": "no-store"})

    async def upload_workspace(self, req: Request) -> Response:
        """A gzip'd tar of the caller's workspace; checked member by member (UploadError: 400)."""
        uploads = self.s.uploads
        upload_id, path = uploads.new_path()
        try:
            with open(path, "wb") as fh:
                size = await req.save_to(fh, self.s.max_upload_bytes)
            members = await anyio.to_thread.run_sync(uploads.check, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return json_response(UploadInfo(upload_id=upload_id, size=size, members=members), status=201)

    async def run_changes(self, req: Request) -> Response:
        run_id = req.path_params["run_id"]
        self._files_or_404(self._run_or_404(run_id, req, "read the changes of"))
        changes = await self.s.runs.changes(run_id)  # RunRejected run_active: 409
        if changes is None:
            raise NotFound("run_not_found", f"no run with id {run_id!r}")
        return json_response(changes)

    async def run_workspace(self, req: Request) -> Response:
        """The run's final workspace as a gzip'd tar."""
        info = self._files_or_404(self._run_or_404(req.path_params["run_id"], req, "download the workspace of"))
        workspace = Path(info.run_dir) / "workspace"
        if not workspace.is_dir():
            raise NotFound("workspace_not_found", f"run {info.id} has no workspace directory")
        packed = await anyio.to_thread.run_sync(pack_all, workspace)
        body = packed.file.read()
        packed.file.close()
        return Response(body, content_type="application/gzip")

    async def check_config(self, req: Request) -> Response:
        body = await req.json(ConfigCheckRequest)
        try:
            loaded = await anyio.to_thread.run_sync(load_agent_config_text, body.config_text, body.config_path,
                                                    peer_reader(req.peer))
        except ConfigError as exc:
            return json_response(ConfigCheckResult(ok=False, error=ErrorDetail("config_error", str(exc))))
        return json_response(ConfigCheckResult(ok=True, route=loaded.config.default_route().id,
                                               digest=loaded.digest, warnings=list(loaded.warnings)))

    async def live_metrics(self, req: Request) -> Response:
        """Daemon-wide metrics in Prometheus text format 0.0.4."""
        return Response(self.s.metrics_text(), content_type=CONTENT_TYPE)

    def _probe_view(self, result) -> dict:
        manager = self.s.probes
        return {**result.record(), "age_s": round(manager.age_s(result), 3), "fresh": manager.is_fresh(result)}

    async def list_probes(self, req: Request) -> Response:
        route = req.query.get("route") or None
        results = [r for r in self.s.probes.results() if route is None or r.route == route]
        if route and not results:
            raise NotFound("probe_not_found", f"no probe results for route {route!r}")
        return json_response({"probes": [self._probe_view(r) for r in results]})

    async def refresh_probes(self, req: Request) -> Response:
        self.access.require_operator(self.access.caller(req.peer), "refresh capability probes")
        body = await req.json(RouteRef)
        route = parse_route(body.route)  # RouteError: 400 invalid_route
        manager = self.s.probes
        entry = manager.entry_for(route.id) or ChainEntry(route=route)
        result = await manager.get(entry, refresh=True)
        return json_response({"probes": [self._probe_view(result)]})

    async def routes(self, req: Request) -> Response:
        route = req.query.get("route") or None
        board = self.s.breakers
        snapshot = board.snapshot(route) if board else {}
        if route and route not in snapshot:
            raise NotFound("route_not_found", f"no breaker state for route {route!r}")
        return json_response({"routes": snapshot})

    async def reset_route(self, req: Request) -> Response:
        self.access.require_operator(self.access.caller(req.peer), "reset a breaker")
        body = await req.json(RouteRef)
        board = self.s.breakers
        if board is None or body.route not in board.routes():
            raise NotFound("route_not_found", f"no breaker state for route {body.route!r}")
        board.reset(body.route, by_uid=req.peer.uid if req.peer else None)
        return json_response({"routes": board.snapshot(body.route)})

    async def reload(self, req: Request) -> Response:
        self.access.require_operator(self.access.caller(req.peer), "reload the daemon")
        return json_response(await self.s.reload(f"requested over the API by uid {req.peer.uid if req.peer else '?'}"))

    async def shutdown(self, req: Request) -> Response:
        self.access.require_operator(self.access.caller(req.peer), "stop the daemon")
        self.s.request_stop("shutdown requested over the API")
        return json_response({"stopping": True}, status=202)

    # ---- vendor bundles (`kcctl bundle`, `kcctl incident`) ---------------------------------
    # POST /v1/bundles {"run": <run id | run dir name | absolute run dir>,
    #                   "matrix": [{"name": "<file name>", "content": "<text>"}]}   (optional)
    # -> 200 application/zip: the bundle's bytes; headers x-kc-bundle-name (the file name to
    #    save it as), x-kc-run-id. The daemon builds it because it can read the run directory
    #    and knows the secret values; it streams the bytes back instead of writing a file, so a
    #    client can never make the daemon write, or read, a path of its choosing (attachments
    #    come as content for the same reason). A path must resolve directly under the runs root.
    # Errors: 400 invalid_run / run_outside_runs_root / unsafe_entry_name, 404 run_not_found,
    #         413 bundle_too_large, 422 bundle_refused (a known secret would remain).

    async def _owned_run(self, req: Request, ref: str,
                         action: str) -> tuple[Path, RunFacts, RunInfo | None, Scrubber]:
        """The run directory `ref` names (id, directory name or absolute path under the runs
        root), once the caller may `action` it, with the scrubber for what leaves it.
        BundleError 400/404 for a bad or unknown reference; 403 for another user's run."""
        s = self.s
        by_id = s.runs.get(ref) if _ID.fullmatch(ref) else None
        if by_id is not None:
            self.access.require_owner(self.access.caller(req.peer), by_id.peer_uid, f"run {by_id.id}", action)
            self._files_or_404(by_id)
        run_dir = await anyio.to_thread.run_sync(resolve_run_dir, s.runs_root, by_id.run_dir if by_id else ref)
        facts = await anyio.to_thread.run_sync(run_facts, run_dir)
        info = by_id or (s.runs.get(facts.run_id) if facts.run_id else None)
        owner = info.peer_uid if info is not None else facts.peer_uid
        self.access.require_owner(self.access.caller(req.peer), owner, f"run {facts.run_id or ref}", action)
        users, homes = local_identities([req.peer.uid if req.peer else None, facts.peer_uid], s.home)
        scrubber = make_scrubber(s.redactor, run_dir, runs_root=s.runs_root, state_dir=s.state_dir,
                                 homes=homes, users=users, config_path=facts.config_path)
        return run_dir, facts, info, scrubber

    async def create_bundle(self, req: Request) -> Response:
        body = await req.json(BundleRequest)
        # BundleError (400/404/413/422) from any step below is the answer.
        run_dir, facts, info, scrubber = await self._owned_run(req, body.run, "bundle")
        built = await anyio.to_thread.run_sync(lambda: build_bundle(
            run_dir, scrubber, run_id=facts.run_id or (info.id if info else None),
            run_status=info.status if info else None, attachments=body.matrix))
        run_id = built.manifest["run_id"] or ""
        return Response(built.data, content_type="application/zip",
                        headers={"x-kc-bundle-name": built.name,
                                 "x-kc-run-id": run_id if _ID.fullmatch(run_id) else "",
                                 "content-disposition": f'attachment; filename="{built.name}"'})


    # ---- regression scenarios from runs (`kcctl incident RUN --scenario NAME`) ---------------
    # POST /v1/scenarios/from-run {"run": <run id | run dir name | absolute run dir>,
    #                              "name": "<[a-z0-9_]+>", "expect_outcome": "fixed" | "recorded" | null}
    # -> 200 ScenarioFromRun {name, run_id, expect_outcome, text (the YAML), summary}. Owner or
    #    operator, like a bundle; the client writes the file. Errors: 400 invalid_request (name),
    #    invalid_run / run_outside_runs_root, 403, 404 run_not_found, 422 cannot_generate /
    #    scenario_refused (a known secret would remain).

    async def scenario_from_run(self, req: Request) -> Response:
        body = await req.json(ScenarioFromRunRequest)
        run_dir, _facts, _info, scrubber = await self._owned_run(req, body.run, "make a scenario from")
        board = self.s.breakers

        def breaker_for(route: str) -> BreakerSettings:
            config = board.config_for(route) if board is not None else None
            return BreakerSettings(**msgspec.structs.asdict(config)) if config is not None else BreakerSettings()

        made = await anyio.to_thread.run_sync(scenario_from_run, run_dir, body, scrubber, breaker_for)
        return json_response(made)

    # ---- end of the scenarios-from-runs block ----

    # ---- regression matrix (`kcctl matrix`; kcd.matrix) --------------------------------------
    # POST /v1/matrix                MatrixRequest -> 201 MatrixInfo (400 config_error / no_scenario)
    # GET  /v1/matrix/{id}           MatrixInfo, results so far
    # GET  /v1/matrix/{id}/events    NDJSON (?follow=1&since=N): matrix.start, scenario.start,
    #                                scenario.end {result}, matrix.end {info}; heartbeats while idle
    # POST /v1/matrix/{id}/cancel    202 MatrixInfo; its runs are cancelled and finalised
    # GET  /v1/simulator             {"base_url", "control_url"} of the embedded simulator (started
    #                                on first use); namespaces under <root>/ns/<name>/...

    def _matrix_routes(self, r: Router) -> None:
        r.add("POST", "/v1/matrix", self.create_matrix)
        r.add("GET", "/v1/matrix/{matrix_id}", self.get_matrix)
        r.add("GET", "/v1/matrix/{matrix_id}/events", self.matrix_events)
        r.add("POST", "/v1/matrix/{matrix_id}/cancel", self.cancel_matrix)
        r.add("GET", "/v1/simulator", self.simulator)

    async def create_matrix(self, req: Request) -> Response:
        caller = self.access.caller(req.peer)
        self.access.require_user(caller)
        body = await req.json(MatrixRequest)
        if body.live and not body.dry_run:  # live scenarios spend the daemon's real provider keys
            self.access.require_operator(caller, "run live matrix scenarios (they spend the daemon's keys)")
        info = await self.s.matrix().submit(body, req.peer)  # ConfigError, SelectionError: 400
        return json_response(info, status=200 if body.dry_run else 201)

    def _matrix_or_404(self, matrix_id: str, req: Request, action: str = "read"):
        info = self.s.matrix().get(matrix_id)
        if info is None:
            raise NotFound("matrix_not_found", f"no matrix with id {matrix_id!r}")
        self.access.require_owner(self.access.caller(req.peer), info.peer_uid, f"matrix {matrix_id}", action)
        return info

    async def get_matrix(self, req: Request) -> Response:
        return json_response(self._matrix_or_404(req.path_params["matrix_id"], req))

    async def matrix_events(self, req: Request) -> Response:
        matrix_id = req.path_params["matrix_id"]
        self._matrix_or_404(matrix_id, req, "read the events of")
        stream = self.s.matrix().follow(matrix_id, _int(req.query.get("since"), "since", 0),
                                        _bool(req.query.get("follow")))
        if stream is None:
            raise NotFound("matrix_not_found", f"no matrix with id {matrix_id!r}")
        return StreamResponse(_detaching(stream), content_type="application/x-ndjson",
                              headers={"cache-control": "no-store"})

    async def cancel_matrix(self, req: Request) -> Response:
        matrix_id = req.path_params["matrix_id"]
        self._matrix_or_404(matrix_id, req, "cancel")
        return json_response(self.s.matrix().cancel(matrix_id), status=202)

    async def simulator(self, req: Request) -> Response:
        base_url = await self.s.simulator_url()
        return json_response({"base_url": base_url, "control_url": f"{base_url.removesuffix('/v1')}/_sim"})

    # ---- end of the regression matrix block ----

    # ---- replays (`kcctl replay`; kcd.replay) -------------------------------------------------
    # POST /v1/runs/{id}/replay    ReplayRequest -> 201 RunInfo of the new run (replay_of: id).
    #                              Owner or operator. 404 run_not_found, 409 run_active,
    #                              422 recording_incomplete / recording_corrupt / no_seed.
    # GET  /v1/runs/{id}/replay    ReplayReport of a finished replay run (its replay.json);
    #                              404 replay_not_found while running or for a run not a replay.

    def _replay_routes(self, r: Router) -> None:
        r.add("POST", "/v1/runs/{run_id}/replay", self.create_replay)
        r.add("GET", "/v1/runs/{run_id}/replay", self.get_replay)

    async def create_replay(self, req: Request) -> Response:
        info = self._run_or_404(req.path_params["run_id"], req, "replay")
        body = await req.json(ReplayRequest)
        return json_response(await self.s.replays.start(info, body, req.peer), status=201)

    async def get_replay(self, req: Request) -> Response:
        info = self._run_or_404(req.path_params["run_id"], req, "read the replay report of")
        report = await anyio.to_thread.run_sync(read_report, Path(info.run_dir))
        if report is None:
            what = "has not ended yet" if info.replay_of and not self.s.runs.is_terminal(info) else (
                "has no replay report" if info.replay_of else "is not a replay")
            raise NotFound("replay_not_found", f"run {info.id} {what}")
        return json_response(report)

    # ---- end of the replays block ----

def _event_loop_name() -> str:
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def _detaching(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Closing the HTTP stream only detaches the follower; the run goes on."""
    try:
        async for line in stream:
            yield line
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
