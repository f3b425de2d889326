"""kcd: wires the components together and owns their lifetimes and signals.

Start-up order: state store → executor (Ray connects in the background) →
dispatcher → run manager → control socket → READY. Shutdown (SIGTERM/SIGINT or
`POST /v1/shutdown`): stop accepting, cancel runs and wait for their
finalisation, stop the server, close pools and Ray, remove the socket.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import msgspec

from kcd import __version__
from kcd.agent.calls import ToolSettings
from kcd.api.paths import private_runtime_dir, user_runtime_dir
from kcd.agent.loop import RunServices
from kcd.config.daemon import DaemonConfig
from kcd.execution.base import Executor
from kcd.gateway.access import TokenTable
from kcd.gateway.handlers import OpenAIEndpoint
from kcd.gateway.listener import TCPGatewayApp
from kcd.gateway.models import ModelMap
from kcd.observe.prometheus import DaemonMetrics
from kcd.observe.recovery import finish_interrupted
from kcd.observe.redact import Redactor
from kcd.observe.telemetry import Probe, TelemetrySink, circuit_event, default_central_path
from kcd.providers.breaker import BreakerBoard, BreakerConfig, Transition
from kcd.providers.dispatcher import Dispatcher
from kcd.providers.probes import ProbeManager, ProbeResult
from kcd.replay.service import ReplayService
from kcd.retention import prune_uploads_forever
from kcd.runs import RunManager
from kcd.sandbox.host import ToolHost
from kcd.sandbox.modes import IsolationReport, IsolationUnavailable, probe_isolation
from kcd.sdnotify import activated_sockets, notify
from kcd.server.app import ControlAPI, ControlServices
from kcd.server.http import bind_tcp_socket
from kcd.server.listener import bind_unix_socket, make_server, raise_descriptor_limit
from kcd.state import StateStore
from kcd.viewer.history import MetricsHistory
from kcd.viewer.listener import ViewerListenerApp, allowed_hosts
from kcd.viewer.sessions import SessionTable
from kcd.workspaces.uploads import UploadStore

if TYPE_CHECKING:
    from kcd.matrix.runner import MatrixService

log = logging.getLogger("kcd")


class RedactingFilter(logging.Filter):
    """Every log record leaves with secrets scrubbed (message and traceback)."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.text(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self.redactor.text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_redaction(redactor: Redactor) -> None:
    """Every log handler scrubs secret values before a line is written."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(redactor))


def make_executor(config: DaemonConfig) -> Executor:
    """The configured executor: in-process tool host, or the supervised Ray driver."""
    if config.executor == "in-process":
        from kcd.execution.inprocess import InProcessExecutor

        return InProcessExecutor()
    from kcd.execution.ray_plane import RayPlaneExecutor

    state = Path(config.state_dir) if config.state_dir else None
    return RayPlaneExecutor(config.ray_address, num_cpus=config.ray_num_cpus, temp_dir=config.ray_temp_dir,
                            init_timeout=config.ray_init_timeout_s, wait_ready_s=config.executor_wait_s,
                            turn_cpus=config.ray_turn_cpus, turn_resources=config.ray_turn_resources,
                            token_path=state / "ray_auth_token" if state else None,
                            log_path=state / "ray-driver.log" if state else None)


class Daemon:
    """Owns every component and its lifetime: config, state, telemetry, executor, runs,
    probes, breakers, the control socket and the gateway's listener; builds ControlServices."""

    def __init__(self, config: DaemonConfig, env: Mapping[str, str]):
        self.config = config
        self.env = env
        self.stopping = False
        self._stop = anyio.Event()
        self._sim_lock = anyio.Lock()
        self._sim_url: str | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        # Gateway bearer tokens from the config file are secrets too (the env one already is).
        self.redactor = Redactor.from_env(env, extra=config.gateway.tokens.values())
        self.metrics = DaemonMetrics()
        self.telemetry = TelemetrySink(
            default_central_path(env, config.mode, config.state_dir or Path(".")),
            redact=self.redactor.bytes)
        self.executor: Executor = make_executor(config)
        self.store: StateStore | None = None
        self.breakers: BreakerBoard | None = None
        self.probes: ProbeManager | None = None
        self.runs: RunManager  # set in run()
        self._matrix: MatrixService | None = None  # regression matrices, made on first use
        self.openai: OpenAIEndpoint  # set in run(): the OpenAI-compatible gateway endpoint
        self.sandbox: dict[str, object] | None = None  # the isolation report, set in run()
        vw = config.viewer
        self.sessions = SessionTable(session_ttl_s=vw.session_ttl_s, login_ttl_s=vw.login_ttl_s)
        self.history = MetricsHistory(self.metrics, interval_s=vw.sample_interval_s, points=vw.history_points)
        self.viewer_url: str | None = None  # set in run() once the viewer's TCP listener is bound
        self.viewer_local_only = True  # the viewer's listener serves loopback only (not allow_remote)

    def log_exception(self, exc: BaseException) -> None:
        log.error("unhandled error in a request handler", exc_info=exc)

    def metrics_text(self) -> bytes:
        """`GET /v1/metrics`: the live metrics, with the telemetry sink's counters brought up to date."""
        stats = self.telemetry.stats()
        self.metrics.telemetry_stats(stats["written"], stats["dropped"], stats["write_errors"])
        return self.metrics.render()

    def control_services(self) -> ControlServices:
        """What the control API may use of the daemon (`kcd.server.app`); built once `run()`
        has made the components."""
        cfg = self.config
        assert cfg.runs_root is not None and self.probes is not None
        return ControlServices(
            runs=self.runs, uploads=self.uploads, executor=self.executor, probes=self.probes,
            breakers=self.breakers, matrix=lambda: self.matrix, redactor=self.redactor,
            replays=ReplayService(self.runs, self.uploads, self.simulator_url),
            chat_completions=self.openai.chat_completions, list_models=self.openai.list_models,
            mode=cfg.mode, operators_group=cfg.operators_group, max_body_bytes=cfg.max_body_bytes,
            max_upload_bytes=cfg.max_upload_bytes, socket=cfg.socket, runs_root=cfg.runs_root,
            state_dir=cfg.state_dir, upstream_client=cfg.upstream_client, sandbox=self.sandbox,
            home=self.env.get("HOME"), stopping=lambda: self.stopping, metrics_text=self.metrics_text,
            reload=self.reload, request_stop=self.request_stop, log_exception=self.log_exception,
            simulator_url=self.simulator_url, sessions=self.sessions, history=self.history,
            viewer_url=lambda: self.viewer_url, viewer_local_only=self.viewer_local_only)

    def request_stop(self, why: str) -> None:
        if not self._stop.is_set():
            log.info("stopping: %s", why)
            self._stop.set()

    async def reload(self, why: str) -> dict[str, object]:
        """SIGHUP and `POST /v1/reload`: reopen the central telemetry file (logrotate's
        `create`), retry an executor that failed to start, and make every probe stale so the
        next refresh measures the routes afresh. Runs in flight are not touched."""
        log.info("reloading: %s", why)
        notify("RELOADING=1")
        self.telemetry.reopen()
        done: dict[str, object] = {"telemetry_reopened": self.telemetry.central_path is not None}
        if self.executor.state == "degraded" and self._tg is not None:
            await self.executor.start(self._tg)
            done["executor_restarted"] = True
        if self.probes is not None:
            self.probes.invalidate()
            done["probes_invalidated"] = True
        notify("READY=1")
        return {**done, "executor": self.executor.state}

    async def simulator_url(self) -> str:
        """Start the built-in provider simulator on first use (a `mock/` route)."""
        async with self._sim_lock:
            if self._sim_url is None:
                from kcd.simulator.server import serve_simulator

                assert self._tg is not None
                # Shielded: a caller cancelled mid-start would leave a dead simulator behind.
                with anyio.CancelScope(shield=True):
                    handle = await self._tg.start(serve_simulator, self.config.simulator_host,
                                                  self.config.simulator_port)
                self._sim_url = handle.base_url
                log.info("provider simulator listening on %s", self._sim_url)
            return self._sim_url

    @property
    def matrix(self) -> MatrixService:
        """Regression matrices (`/v1/matrix`), set up on first use: nothing at start-up."""
        if self._matrix is None:
            from kcd.matrix.runner import MatrixService

            assert self._tg is not None
            self._matrix = MatrixService(self.runs, simulator_url=self.simulator_url, task_group=self._tg)
        return self._matrix

    def _make_breakers(self) -> BreakerBoard:
        """Breakers are daemon state shared by every run; restored from the store
        so that a restart inside a lockout does not release a burst of calls."""
        settings = self.config.breaker
        board = BreakerBoard(
            BreakerConfig(**msgspec.structs.asdict(settings)),
            overrides={route: BreakerConfig(**msgspec.structs.asdict(o))
                       for route, o in self.config.breaker_overrides.items()},
            store=self.store, on_transition=self._on_transition)
        board.restore()
        return board

    def _on_transition(self, t: Transition) -> None:
        self.telemetry.emit(circuit_event(t))
        self.metrics.breaker_transition(t.route, t.from_state, t.to_state)
        log.info("breaker %s: %s -> %s (%s)%s", t.route, t.from_state, t.to_state, t.reason,
                 f"; last error: {t.last_error}" if t.last_error else "")

    def _on_probe(self, result: ProbeResult, outcomes: Mapping[str, bool | None]) -> None:
        names = {"stream": "stream", "tool": "tool_stream", "json": "json_mode"}
        for key, success in outcomes.items():
            name = names.get(key, key)
            self.telemetry.emit(Probe(route=result.route, probe=name, success=success,
                                      error=result.errors.get(key), elapsed=result.probe_elapsed.get(key, 0.0),
                                      skipped_reason=result.skipped_reason))
            self.metrics.probe(result.route, name, success)

    async def _recover_interrupted(self) -> None:
        """Finish the runs a dead daemon left (`kill -9`): workspace.diff, result.json and
        `run.end` from what is on disk, one at a time in a worker thread, in the background so
        that start-up does not wait on big workspaces. A failure costs that run's artifacts
        (retried at the next start), never the daemon."""
        assert self.store is not None
        pending = self.store.interrupted_unfinished()
        for info in pending:
            try:
                end = await anyio.to_thread.run_sync(functools.partial(
                    finish_interrupted, info.id, Path(info.run_dir), scrub=self.redactor.bytes,
                    max_workspace_bytes=self.config.max_workspace_bytes))
                self.store.save_run(msgspec.structs.replace(
                    info, status=end.status, exit_reason=end.exit_reason, completed=end.completed,
                    steps=end.steps, ended_at=end.ended_at, error=end.error))
            except Exception:
                log.exception("run %s: the artifacts of the interrupted run could not be written", info.id)
        if pending:
            log.info("finished %d interrupted run(s) from what was on disk", len(pending))

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload("SIGHUP")
                    continue
                self.request_stop(signal.Signals(signum).name)

    async def _idle_watch(self, servers: list, idle_exit_s: float) -> None:
        """Exit after `idle_exit_s` with no runs and no open connections on any listener
        (the control socket and the gateway's TCP port) (auto-started daemons)."""
        idle_since = anyio.current_time()
        while True:
            await anyio.sleep(min(30.0, idle_exit_s / 4))
            busy = self.runs.active_count > 0 or any(s.server_state.connections for s in servers)
            now = anyio.current_time()
            if busy:
                idle_since = now
            elif now - idle_since >= idle_exit_s:
                self.request_stop(f"idle for {idle_exit_s:.0f}s")
                return

    def _probe_sandbox(self) -> IsolationReport:
        """Which isolation works here (blocking); refuses a weaker one in system mode unless accepted."""
        sb = self.config.sandbox
        own: ToolHost | None = getattr(self.executor, "host", None)  # the in-process executor's: warm it
        if own is not None:
            report = probe_isolation(own, sb.isolation)
        else:
            with ToolHost() as host:
                report = probe_isolation(host, sb.isolation)
        if report.weaker and self.config.mode == "system" and not sb.accept_weaker:
            raise IsolationUnavailable(
                "no filesystem isolation for tool commands works on this host ("
                + "; ".join(f"{m}: {why}" for m, why in report.probes.items())
                + "): install bubblewrap, or allow unprivileged user namespaces, or set "
                  "sandbox.accept_weaker: true in the daemon config to run with process containment only")
        return report

    def _connection_limits(self, listeners: int) -> dict[str, float | int]:
        """Idle timeout and a connection cap per listener that the descriptor limit can honour."""
        cfg = self.config
        descriptors = raise_descriptor_limit()
        room = max(16, (descriptors - 256) // listeners)  # the rest: runs, files, Ray, pools
        cap = min(cfg.max_connections, room)
        if cap < cfg.max_connections:
            log.warning("max_connections lowered to %d per listener: the descriptor limit is %d",
                        cap, descriptors)
        return {"idle_timeout": cfg.idle_timeout_s, "max_connections": cap}

    def _tool_defaults(self, report: IsolationReport) -> ToolSettings:
        sb = self.config.sandbox
        return ToolSettings(isolation=report.mode, max_processes=sb.max_processes,
                            max_processes_per_run=sb.max_processes_per_run,
                            memory_max_bytes=sb.memory_max_mb * 2**20, run_memory_max_bytes=sb.run_memory_max_mb * 2**20)

    async def run(self) -> None:
        cfg = self.config
        install_log_redaction(self.redactor)
        report = await anyio.to_thread.run_sync(self._probe_sandbox)
        self.sandbox = msgspec.structs.asdict(report)
        (log.warning if report.weaker else log.info)("tool isolation: %s (%s)", report.mode, report.guarantees)
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            # httpx logs every request at INFO: a record and a redaction pass per provider call
            # cost more than the dispatcher's own work per call (docs/benchmarks.md §5).
            logging.getLogger("httpx").setLevel(logging.WARNING)
        assert cfg.state_dir and cfg.runs_root and cfg.socket
        self.store = StateStore(cfg.state_dir / "state.db")
        interrupted = self.store.mark_interrupted()
        if interrupted:
            log.warning("marked %d run(s) from a previous daemon as interrupted", len(interrupted))
        # The gateway's TCP listener is bound first, so a taken port fails start-up cleanly.
        gw = cfg.gateway
        tcp_sock = bind_tcp_socket(gw.tcp.host, gw.tcp.port) if gw.tcp.port is not None else None
        # The run viewer's pages go on the gateway's listener when there is one, else on a
        # loopback port of their own (ephemeral by default: `kcctl view` prints the URL).
        vw = cfg.viewer
        viewer_sock = bind_tcp_socket(vw.host, vw.port) if vw.enabled and tcp_sock is None else None
        viewer_hosts: frozenset[str] = frozenset()
        if vw.enabled:
            listen_host, listen_port = (tcp_sock or viewer_sock).getsockname()[:2]
            url_host = "127.0.0.1" if listen_host in ("0.0.0.0", "::") else listen_host
            self.viewer_url = f"http://{f'[{url_host}]' if ':' in url_host else url_host}:{listen_port}"
            configured = gw.tcp.host if tcp_sock is not None else vw.host
            self.viewer_local_only = not (gw.tcp.allow_remote if tcp_sock is not None else vw.allow_remote)
            viewer_hosts = allowed_hosts(listen_port, [configured if ":" not in configured else f"[{configured}]"])
        sockets = activated_sockets()
        if not sockets and cfg.mode == "user" and cfg.socket.parent == user_runtime_dir(dict(self.env)):
            private_runtime_dir(cfg.socket.parent)  # refuses a directory another user made or can enter
        sock = sockets[0] if sockets else bind_unix_socket(cfg.socket, cfg.socket_mode)
        owns_socket_file = not sockets
        self.breakers = self._make_breakers()
        dispatcher = Dispatcher(self.env, breakers=self.breakers, simulator_url=self.simulator_url,
                                redactor=self.redactor, upstream_client=cfg.upstream_client)
        self.probes = ProbeManager(dispatcher, self.store, redact=self.redactor.text, on_result=self._on_probe)
        self.probes.restore()
        # ---- OpenAI-compatible gateway endpoint: same dispatcher, breakers and probes as runs.
        self.openai = OpenAIEndpoint(
            dispatcher, ModelMap(gw), telemetry=self.telemetry, metrics=self.metrics, probes=self.probes,
            tokens=TokenTable(gw.tokens), env=self.env, max_body=gw.max_body_bytes,
            secrets=self.redactor.known_values, redact=self.redactor.bytes, log_exception=self.log_exception)
        tcp_server = None
        limits = self._connection_limits(listeners=2 if tcp_sock is not None or viewer_sock is not None else 1)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._signals)
                await tg.start(self.telemetry.run)
                await tg.start(self.probes.refresher)
                await tg.start(self.history.run)  # the daemon page's metric charts
                tg.start_soon(self._recover_interrupted)
                for route in self.breakers.routes():
                    self.metrics.set_route_state(route, self.breakers.state(route))
                await self.executor.start(tg)  # Ray connects in the background
                self.uploads = UploadStore(cfg.state_dir / "uploads",
                                           max_workspace_bytes=cfg.max_workspace_bytes)
                tg.start_soon(prune_uploads_forever, self.uploads)  # stale ones, while running too
                self.runs = RunManager(
                    runs_root=cfg.runs_root, store=self.store, task_group=tg, uploads=self.uploads,
                    heartbeat_s=cfg.heartbeat_s, max_workspace_bytes=cfg.max_workspace_bytes,
                    redactor=self.redactor,
                    services=RunServices(dispatcher=dispatcher, executor=self.executor,
                                         tool_defaults=self._tool_defaults(report),
                                         allow_network=cfg.sandbox.allow_network, sandbox=self.sandbox,
                                         probes=self.probes, env=self.env,
                                         telemetry=self.telemetry, metrics=self.metrics))
                api = ControlAPI(self.control_services())
                server = make_server(api.asgi(), log_level="warning", **limits)
                server_done = anyio.Event()

                async def serve() -> None:
                    try:
                        await server.serve([sock])
                    finally:
                        server_done.set()

                tg.start_soon(serve)
                if tcp_sock is not None:  # the gateway's TCP listener: OpenAI routes (bearer tokens), /ui/
                    gateway_app = TCPGatewayApp(self.openai)
                    tcp_app = ViewerListenerApp(api.viewer_asgi(), hosts=viewer_hosts, gateway=gateway_app) \
                        if vw.enabled else gateway_app
                    tcp_server = make_server(tcp_app, log_level="warning", **limits)
                    tg.start_soon(tcp_server.serve, [tcp_sock])
                    host, port = tcp_sock.getsockname()[:2]
                    log.info("OpenAI-compatible gateway listening on http://%s:%d/v1", host, port)
                elif viewer_sock is not None:  # the viewer's own loopback listener: /ui/ only
                    tcp_server = make_server(ViewerListenerApp(api.viewer_asgi(), hosts=viewer_hosts),
                                             log_level="warning", **limits)
                    tg.start_soon(tcp_server.serve, [viewer_sock])
                if self.viewer_url:
                    log.info("run viewer at %s/ui/ (kcctl view prints a login link)", self.viewer_url)
                log.info("kcd %s listening on %s (executor: %s)", __version__, cfg.socket,
                         self.executor.mode)
                notify(f"READY=1\nSTATUS=listening on {cfg.socket}\nMAINPID={os.getpid()}")
                if cfg.idle_exit_s > 0:
                    tg.start_soon(self._idle_watch, [x for x in (server, tcp_server) if x is not None],
                                  cfg.idle_exit_s)
                await self._stop.wait()

                self.stopping = True
                notify("STOPPING=1")
                if self._matrix is not None:  # its runs finalise like any other
                    await self._matrix.shutdown(cfg.shutdown_grace_s)
                await self.runs.shutdown(cfg.shutdown_grace_s)
                server.should_exit = True  # uvicorn closes listeners, drains connections
                if tcp_server is not None:
                    tcp_server.should_exit = True
                with anyio.move_on_after(10):
                    await server_done.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                self.breakers.flush()  # failure windows and decay clocks persist too
                await self.telemetry.aclose()
                await dispatcher.aclose()
                await self.executor.aclose()
            self.store.close()
            for tcp in (tcp_sock, viewer_sock):
                if tcp is not None:
                    tcp.close()
            if owns_socket_file:
                try:
                    Path(cfg.socket).unlink()
                except FileNotFoundError:
                    pass
            log.info("kcd stopped")
