"""The control API: routes of the daemon's Unix-socket HTTP server."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from kcd import API_VERSION, MIN_API_VERSION, __version__
from kcd.api.types import (
    ConfigCheckRequest,
    ConfigCheckResult,
    ErrorDetail,
    ExecutorInfo,
    Health,
    RunList,
    RouteRef,
    RunRequest,
    UploadInfo,
    VersionInfo,
)
from kcd.config.agent import ConfigError, load_agent_config_text
from kcd.peer_files import peer_reader
from kcd.server.access import AccessPolicy
from kcd.server.http import App, HTTPError, Request, Response, Router, StreamResponse, json_response

if TYPE_CHECKING:
    from kcd.daemon import Daemon


def _bool(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def _int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise HTTPError(400, "invalid_query", f"{name} must be an integer, got {value!r}") from None


class ControlAPI:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.started = time.monotonic()
        cfg = daemon.config
        self.access = AccessPolicy(mode=cfg.mode, operators_group=cfg.operators_group)

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
        r.add("POST", "/v1/chat/completions", self.daemon.openai.chat_completions)
        r.add("GET", "/v1/models", self.daemon.openai.list_models)
        # ---- end of the OpenAI-compatible gateway block ----
        r.add("POST", "/v1/bundles", self.create_bundle)  # vendor bundles: see the block below
        self._matrix_routes(r)  # regression matrix and simulator: see the block below
        return App(r, max_body=self.daemon.config.max_body_bytes, on_error=self.daemon.log_exception,
                   scrub=self.daemon.redactor.bytes)

    async def version(self, req: Request) -> Response:
        return json_response(VersionInfo(api=API_VERSION, min_api=MIN_API_VERSION, daemon=__version__))

    async def health(self, req: Request) -> Response:
        d = self.daemon
        ex = d.executor
        state = "stopping" if d.stopping else ("degraded" if ex.state == "degraded" else "ok")
        return json_response(Health(
            state=state, version=__version__, api=API_VERSION,
            pid=os.getpid(), uid=os.getuid(), uptime_s=round(time.monotonic() - self.started, 3),
            executor=ExecutorInfo(mode=ex.mode, state=ex.state, detail=dict(ex.detail),
                                  nodes=list(getattr(ex, "nodes", []))),
            runs_active=d.runs.active_count, socket=str(d.config.socket),
            runs_root=str(d.config.runs_root), peer=req.peer, upstream_client=d.config.upstream_client,
            event_loop=_event_loop_name(), sandbox=d.sandbox))

    async def create_run(self, req: Request) -> Response:
        from kcd.runs import RunRejected

        self.access.require_user(self.access.caller(req.peer))
        body = await req.json(RunRequest)
        try:
            info = await self.daemon.runs.submit(body, req.peer)
        except RunRejected as exc:
            status = {"shutting_down": 503, "forbidden": 403}.get(exc.code, 400)
            raise HTTPError(status, exc.code, exc.message) from None
        return json_response(info, status=201)

    async def list_runs(self, req: Request) -> Response:
        """Only the runs the caller may read (all of them for operators)."""
        caller = self.access.caller(req.peer)
        self.access.require_user(caller)
        q = req.query
        limit = _int(q.get("limit"), "limit", 50)
        owner = None if caller.operator else caller.uid
        return json_response(RunList(runs=self.daemon.runs.list(limit=max(1, min(limit, 1000)),
                                                                status=q.get("status") or None, owner=owner)))

    def _run_or_404(self, run_id: str, req: Request | None = None, action: str = "read"):
        info = self.daemon.runs.get(run_id)
        if info is None:
            raise HTTPError(404, "run_not_found", f"no run with id {run_id!r}")
        if req is not None:
            self.access.require_owner(self.access.caller(req.peer), info.peer_uid, f"run {run_id}", action)
        return info

    async def get_run(self, req: Request) -> Response:
        return json_response(self._run_or_404(req.path_params["run_id"], req))

    async def cancel_run(self, req: Request) -> Response:
        run_id = req.path_params["run_id"]
        self._run_or_404(run_id, req, "cancel")
        info = self.daemon.runs.cancel(run_id)
        return json_response(info, status=202)

    async def run_events(self, req: Request) -> Response:
        run_id = req.path_params["run_id"]
        q = req.query
        since = _int(q.get("since"), "since", 0)
        self._run_or_404(run_id, req, "read the events of")
        stream = await self.daemon.runs.follow(run_id, since, _bool(q.get("follow")))
        if stream is None:
            raise HTTPError(404, "run_not_found", f"no run with id {run_id!r}")
        return StreamResponse(_detaching(stream), content_type="application/x-ndjson",
                              headers={"cache-control": "no-store"})

    async def upload_workspace(self, req: Request) -> Response:
        """A gzip'd tar of the caller's workspace; checked member by member."""
        from kcd.workspaces.uploads import UploadError

        uploads = self.daemon.uploads
        upload_id, path = uploads.new_path()
        try:
            with open(path, "wb") as fh:
                size = await req.save_to(fh, self.daemon.config.max_upload_bytes)
            members = await anyio.to_thread.run_sync(uploads.check, path)
        except UploadError as exc:
            raise HTTPError(400, "unsafe_archive", str(exc)) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return json_response(UploadInfo(upload_id=upload_id, size=size, members=members), status=201)

    async def run_changes(self, req: Request) -> Response:
        from kcd.runs import RunRejected

        run_id = req.path_params["run_id"]
        self._run_or_404(run_id, req, "read the changes of")
        try:
            changes = await self.daemon.runs.changes(run_id)
        except RunRejected as exc:
            raise HTTPError(409, exc.code, exc.message) from None
        if changes is None:
            raise HTTPError(404, "run_not_found", f"no run with id {run_id!r}")
        return json_response(changes)

    async def run_workspace(self, req: Request) -> Response:
        """The run's final workspace as a gzip'd tar."""
        from kcd.workspaces.archive import pack_all

        info = self._run_or_404(req.path_params["run_id"], req, "download the workspace of")
        workspace = Path(info.run_dir) / "workspace"
        if not workspace.is_dir():
            raise HTTPError(404, "workspace_not_found", f"run {info.id} has no workspace directory")
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
        from kcd.observe.prometheus import CONTENT_TYPE

        d = self.daemon
        stats = d.telemetry.stats()
        d.metrics.telemetry_stats(stats["written"], stats["dropped"], stats["write_errors"])
        return Response(d.metrics.render(), content_type=CONTENT_TYPE)

    def _probe_view(self, result) -> dict:
        manager = self.daemon.probes
        return {**result.record(), "age_s": round(manager.age_s(result), 3), "fresh": manager.is_fresh(result)}

    async def list_probes(self, req: Request) -> Response:
        route = req.query.get("route") or None
        results = [r for r in self.daemon.probes.results() if route is None or r.route == route]
        if route and not results:
            raise HTTPError(404, "probe_not_found", f"no probe results for route {route!r}")
        return json_response({"probes": [self._probe_view(r) for r in results]})

    async def refresh_probes(self, req: Request) -> Response:
        from kcd.providers.dispatcher import ChainEntry
        from kcd.providers.routes import RouteError, parse_route

        self.access.require_operator(self.access.caller(req.peer), "refresh capability probes")
        body = await req.json(RouteRef)
        try:
            route = parse_route(body.route)
        except RouteError as exc:
            raise HTTPError(400, "invalid_route", str(exc)) from None
        manager = self.daemon.probes
        entry = manager.entry_for(route.id) or ChainEntry(route=route)
        result = await manager.get(entry, refresh=True)
        return json_response({"probes": [self._probe_view(result)]})

    async def routes(self, req: Request) -> Response:
        route = req.query.get("route") or None
        board = self.daemon.breakers
        snapshot = board.snapshot(route) if board else {}
        if route and route not in snapshot:
            raise HTTPError(404, "route_not_found", f"no breaker state for route {route!r}")
        return json_response({"routes": snapshot})

    async def reset_route(self, req: Request) -> Response:
        self.access.require_operator(self.access.caller(req.peer), "reset a breaker")
        body = await req.json(RouteRef)
        board = self.daemon.breakers
        if board is None or body.route not in board.routes():
            raise HTTPError(404, "route_not_found", f"no breaker state for route {body.route!r}")
        board.reset(body.route, by_uid=req.peer.uid if req.peer else None)
        return json_response({"routes": board.snapshot(body.route)})

    async def reload(self, req: Request) -> Response:
        self.access.require_operator(self.access.caller(req.peer), "reload the daemon")
        return json_response(await self.daemon.reload(f"requested over the API by uid {req.peer.uid if req.peer else '?'}"))

    async def shutdown(self, req: Request) -> Response:
        self.access.require_operator(self.access.caller(req.peer), "stop the daemon")
        self.daemon.request_stop("shutdown requested over the API")
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

    async def create_bundle(self, req: Request) -> Response:
        import re

        from kcd.bundles.build import build_bundle
        from kcd.bundles.runref import local_identities, resolve_run_dir, run_facts
        from kcd.bundles.scrub import make_scrubber
        from kcd.bundles.types import BundleError, BundleRequest

        body = await req.json(BundleRequest)
        d = self.daemon
        runs_root = d.config.runs_root
        assert runs_root is not None
        by_id = d.runs.get(body.run) if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", body.run) else None
        try:
            run_dir = await anyio.to_thread.run_sync(resolve_run_dir, runs_root,
                                                     by_id.run_dir if by_id else body.run)
            facts = await anyio.to_thread.run_sync(run_facts, run_dir)
            info = by_id or (d.runs.get(facts.run_id) if facts.run_id else None)
            owner = info.peer_uid if info is not None else facts.peer_uid
            self.access.require_owner(self.access.caller(req.peer), owner, f"run {facts.run_id or body.run}",
                                      "bundle")
            users, homes = local_identities([req.peer.uid if req.peer else None, facts.peer_uid],
                                            d.env.get("HOME"))
            scrubber = make_scrubber(d.redactor, run_dir, runs_root=runs_root, state_dir=d.config.state_dir,
                                     homes=homes, users=users, config_path=facts.config_path)
            built = await anyio.to_thread.run_sync(lambda: build_bundle(
                run_dir, scrubber, run_id=facts.run_id or (info.id if info else None),
                run_status=info.status if info else None, attachments=body.matrix))
        except BundleError as exc:
            raise HTTPError(exc.status, exc.code, exc.message) from None
        run_id = built.manifest["run_id"] or ""
        return Response(built.data, content_type="application/zip",
                        headers={"x-kc-bundle-name": built.name,
                                 "x-kc-run-id": run_id if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id) else "",
                                 "content-disposition": f'attachment; filename="{built.name}"'})


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
        from kcd.matrix.runner import MatrixRejected
        from kcd.matrix.types import MatrixRequest

        caller = self.access.caller(req.peer)
        self.access.require_user(caller)
        body = await req.json(MatrixRequest)
        if body.live and not body.dry_run:  # live scenarios spend the daemon's real provider keys
            self.access.require_operator(caller, "run live matrix scenarios (they spend the daemon's keys)")
        try:
            info = await self.daemon.matrix.submit(body, req.peer)
        except MatrixRejected as exc:
            raise HTTPError(400, exc.code, exc.message) from None
        return json_response(info, status=200 if body.dry_run else 201)

    def _matrix_or_404(self, matrix_id: str, req: Request, action: str = "read"):
        info = self.daemon.matrix.get(matrix_id)
        if info is None:
            raise HTTPError(404, "matrix_not_found", f"no matrix with id {matrix_id!r}")
        self.access.require_owner(self.access.caller(req.peer), info.peer_uid, f"matrix {matrix_id}", action)
        return info

    async def get_matrix(self, req: Request) -> Response:
        return json_response(self._matrix_or_404(req.path_params["matrix_id"], req))

    async def matrix_events(self, req: Request) -> Response:
        matrix_id = req.path_params["matrix_id"]
        self._matrix_or_404(matrix_id, req, "read the events of")
        stream = self.daemon.matrix.follow(matrix_id, _int(req.query.get("since"), "since", 0),
                                           _bool(req.query.get("follow")))
        if stream is None:
            raise HTTPError(404, "matrix_not_found", f"no matrix with id {matrix_id!r}")
        return StreamResponse(_detaching(stream), content_type="application/x-ndjson",
                              headers={"cache-control": "no-store"})

    async def cancel_matrix(self, req: Request) -> Response:
        matrix_id = req.path_params["matrix_id"]
        self._matrix_or_404(matrix_id, req, "cancel")
        return json_response(self.daemon.matrix.cancel(matrix_id), status=202)

    async def simulator(self, req: Request) -> Response:
        base_url = await self.daemon.simulator_url()
        return json_response({"base_url": base_url, "control_url": f"{base_url.removesuffix('/v1')}/_sim"})

    # ---- end of the regression matrix block ----

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
