"""RunManager: accepts runs, runs each as a task, and always finalises them.

A run is validated before it is accepted; then it gets a unique run
directory, its own workspace, an event log, and one task in the daemon's task
group. Whatever happens inside (completion, provider error, crash, cancel, a
task-group teardown), finalisation writes result.json, workspace.diff,
meta/run.json and `run.end`; when it cannot (a full disk), the run ends as
`finalise_error` and the daemon keeps serving. Runs a dead daemon left behind
are finished at the next start (kcd.observe.recovery).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import msgspec

from kcd import __version__
from kcd.agent.loop import AgentRun, RunResult, RunServices, RunSpec
from kcd.api.types import TERMINAL_STATUSES, PeerInfo, RunChanges, RunInfo, RunRequest
from kcd.config.agent import ConfigError, LoadedConfig, load_agent_config_text
from kcd.errors import KcError
from kcd.execution.base import ExecutorError
from kcd.observe.eventlog import EventLog, read_event_lines, utc_now
from kcd.observe.finalise import LAUNCH, Launch, result_document
from kcd.observe.rundir import RunDir, create_run_dir, new_run_id
from kcd.observe.redact import Redactor
from kcd.peer_files import peer_reader
from kcd.retention import RunRetention
from kcd.observe.run_metrics import RunMetrics
from kcd.observe.telemetry import RunEnd, RunStart, provider_metrics_event
from kcd.state import StateStore
from kcd.workspaces.changes import compute_changes
from kcd.workspaces.diff import diff_against_seed
from kcd.workspaces.seed import SEED_ARCHIVE, SEED_MANIFEST, seed_from_archive, seed_from_directory, unreadable_for
from kcd.workspaces.uploads import UploadError, UploadStore


log = logging.getLogger("kcd.runs")


# Called while a run is finalised, before result.json and `run.end`: (run dir, workspace,
# result) -> the result to record. A replay writes its report here (kcd.replay.service).
OnFinish = Callable[[Path, Path, "RunResult"], Awaitable["RunResult"]]
ON_FINISH_TIMEOUT_S = 60.0


class RunRejected(KcError):
    """The request is refused; nothing was started (400 unless the raise says otherwise)."""

    status = 400


@dataclass
class ActiveRun:
    info: RunInfo
    events: EventLog
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    agent: AgentRun | None = None
    result: RunResult | None = None  # None until the work ends, and when it was cancelled
    telemetry_ended: bool = False
    on_finish: OnFinish | None = None


# Admission runs in one worker thread, for up to ADMISSION_BATCH queued submissions per hop;
# workspaces are seeded by at most SEED_THREADS threads. Few on purpose: each thread running
# Python makes every system call of the event loop wait for the GIL (a 500-run burst through
# 40 threads stalled /v1/health for seconds). A burst queues instead; nothing is refused.
ADMISSION_BATCH = 16
SEED_THREADS = 2


@dataclass
class _Prepared:
    info: RunInfo
    loaded: LoadedConfig
    spec: RunSpec
    seed: Path | None
    run_dir: Path
    events: EventLog


@dataclass
class _Admission:
    """A submission waiting for `_admit`; `done` is set with `info` or `error`."""

    req: RunRequest
    peer: PeerInfo | None
    replay_of: str | None = None
    on_finish: OnFinish | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    abandoned: bool = False
    info: RunInfo | None = None
    error: BaseException | None = None


def load_config_for_request(config_text: str, config_path: str | None, peer: PeerInfo | None = None) -> LoadedConfig:
    """The run's config; every file it names is opened only if the peer could read it itself."""
    try:
        return load_agent_config_text(config_text, config_path, peer_reader(peer))
    except ConfigError as exc:
        raise RunRejected("config_error", str(exc)) from None


class ConfigCache:
    """Loaded configs of recent submissions, reused while nothing they read has changed.

    A burst of runs usually sends one config many times; parsing and checking it is most of
    the Python an admission runs (about 5 ms). An entry is reused only for the same text and
    path, for a peer whose reads are not checked (no peer, root, the daemon's own user: what
    `peer_reader` lets through for them depends on the files alone), and only when the path
    still resolves to the same file and every file and tool directory the load read has the
    same identity, size, times and mode (`os.stat`); otherwise it loads afresh. A
    LoadedConfig is never modified after loading, so runs share it.
    """

    def __init__(self, size: int = 16):
        self.size = size
        self._entries: OrderedDict[tuple[str, str | None], tuple[tuple, LoadedConfig]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def load(self, config_text: str, config_path: str | None, peer: PeerInfo | None) -> LoadedConfig:
        if peer is not None and peer.uid not in (0, os.getuid()):
            return load_config_for_request(config_text, config_path, peer)
        key = (config_text, config_path)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[0] == _fingerprint(config_path, entry[1]):
            with self._lock:
                self._entries.move_to_end(key)
                self.hits += 1
            return entry[1]
        loaded = load_config_for_request(config_text, config_path, peer)
        stamp = _fingerprint(config_path, loaded)
        if stamp is not None:
            with self._lock:
                self._entries[key] = (stamp, loaded)
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return loaded


def _fingerprint(config_path: str | None, loaded: LoadedConfig) -> tuple | None:
    """What a load depended on, as it is now; None when it cannot be told (never reused)."""
    # files[0] is the top file's name ("<config>" without a path); tool directories may not
    # exist yet; everything else was read, so a missing one means "cannot tell".
    required = [*(loaded.files if config_path is not None else loaded.files[1:]), *loaded.pack_paths.values()]
    stamp: list = [str(Path(config_path).expanduser().resolve()) if config_path is not None else None]
    for path in [*required, *loaded.tool_dirs]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if path in required:
                return None
            stamp.append((path, None))
            continue
        except OSError:
            return None
        stamp.append((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode))
    return tuple(stamp)


class RunManager:
    """Starts, tracks, cancels and finalises the daemon's runs."""

    def __init__(self, *, runs_root: Path, store: StateStore, services: RunServices,
                 task_group: anyio.abc.TaskGroup, uploads: UploadStore, heartbeat_s: float = 15.0,
                 max_workspace_bytes: int = 1 << 30, redactor: Redactor | None = None):
        self.runs_root = runs_root
        self.redactor = redactor or Redactor()
        self.uploads = uploads
        self.max_workspace_bytes = max_workspace_bytes
        self.store = store
        self.services = services
        self._tg = task_group
        self.heartbeat_s = heartbeat_s
        self._active: dict[str, ActiveRun] = {}
        self._accepting = True
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        self.configs = ConfigCache()
        self.retention = RunRetention(runs_root, store, self._active)
        self._queue: list[_Admission] = []
        self._admitting = False

    @property
    def active_count(self) -> int:
        return len(self._active)

    # ---- accepting ------------------------------------------------------------

    def _limiter(self, name: str, tokens: int) -> anyio.CapacityLimiter:
        """A limiter of this manager, made on first use (it must be made on the event loop)."""
        limiter = self._limiters.get(name)
        if limiter is None:
            limiter = self._limiters[name] = anyio.CapacityLimiter(tokens)
        return limiter

    async def submit(self, req: RunRequest, peer: PeerInfo | None, *, replay_of: str | None = None,
                     on_finish: OnFinish | None = None) -> RunInfo:
        """Validate and start one run (`replay_of`, `on_finish`: a replay, kcd.replay.service).

        Everything that reads or writes files (the seed checks, the config load, the run
        directory, its first files and its event log) happens in a worker thread, for a batch
        of queued submissions at a time (`_admit`); the event loop then stores the batch in one
        SQLite transaction and starts the runs. A burst of submissions thus costs the loop a
        few thread hand-offs per batch instead of a dozen system calls per run (each waiting
        for the GIL behind the workers) or dozens of threads taking the GIL from it, and the
        control API keeps answering while the burst is admitted."""
        if not self._accepting:
            raise RunRejected("shutting_down", "the daemon is shutting down", status=503)
        if not req.task.strip():
            raise RunRejected("invalid_request", "task is empty")
        if req.max_steps is not None and req.max_steps < 1:
            raise RunRejected("invalid_request", "max_steps must be at least 1")
        if req.workspace and req.workspace_upload:
            raise RunRejected("invalid_request", "give workspace or workspace_upload, not both")
        job = _Admission(req, peer, replay_of=replay_of, on_finish=on_finish)
        self._queue.append(job)
        if not self._admitting:
            self._admitting = True
            self._tg.start_soon(self._admit, name="run-admission")
        try:
            await job.done.wait()
        except BaseException:
            # The caller left (a cancelled request): a run not prepared yet never will be;
            # one already being prepared is admitted whole (it is in the runs list).
            job.abandoned = True
            raise
        if job.error is not None:
            raise job.error
        assert job.info is not None
        return job.info

    async def _admit(self) -> None:
        """Admit queued submissions, ADMISSION_BATCH at a time, until the queue is empty."""
        try:
            while self._queue:
                batch = self._queue[:ADMISSION_BATCH]
                del self._queue[:ADMISSION_BATCH]
                with anyio.CancelScope(shield=True):  # what the thread made is registered
                    outcomes = await anyio.to_thread.run_sync(self._prepare_batch, batch)
                    self._register_batch(batch, outcomes)
        finally:
            self._admitting = False
            for job in self._queue:  # only when cancelled (the daemon's teardown)
                job.error = RunRejected("shutting_down", "the daemon is shutting down", status=503)
                job.done.set()
            self._queue.clear()

    def _prepare_batch(self, batch: list[_Admission]) -> list[_Prepared | BaseException | None]:
        """In the worker thread: each job's prepared run, or what it raised (None: abandoned)."""
        outcomes: list[_Prepared | BaseException | None] = []
        for job in batch:
            if job.abandoned:
                outcomes.append(None)
                continue
            try:
                outcomes.append(self._prepare(job.req, job.peer, job.replay_of))
            except Exception as exc:  # RunRejected, or a failure the handler reports as a 500
                outcomes.append(exc)
        return outcomes

    def _register_batch(self, batch: list[_Admission], outcomes: list[_Prepared | BaseException | None]) -> None:
        """On the loop, with no checkpoint: store the prepared runs, then start each one."""
        prepared = [p for p in outcomes if isinstance(p, _Prepared)]
        try:
            self.store.save_runs([p.info for p in prepared])
        except Exception as exc:  # the runs never start; their callers get the error
            log.exception("%d runs could not be stored", len(prepared))
            for p in prepared:
                p.events.close()
            outcomes = [exc if isinstance(p, _Prepared) else p for p in outcomes]
        for job, outcome in zip(batch, outcomes):
            if isinstance(outcome, _Prepared):
                try:
                    job.info = self._start(job.req, job.peer, outcome, job.on_finish)
                except Exception as exc:
                    log.exception("run %s could not be started", outcome.info.id)
                    job.error = exc
            elif outcome is not None:
                job.error = outcome
            job.done.set()

    def _start(self, req: RunRequest, peer: PeerInfo | None, p: _Prepared,
               on_finish: OnFinish | None = None) -> RunInfo:
        active = ActiveRun(info=p.info, events=p.events, on_finish=on_finish)
        self._active[p.info.id] = active
        for warning in p.loaded.warnings:
            p.events.emit("warning", message=warning)
        cfg, spec = p.loaded.config, p.spec
        if self.services.telemetry is not None:
            chain = [p.info.route] + [f for f in cfg.routing_for(p.info.route).fallback_models]
            self.services.telemetry.emit(RunStart(
                run_id=p.info.id, route=p.info.route, peer_uid=spec.peer_uid, config_digest=p.loaded.digest,
                route_chain=chain, executor=self.services.executor.mode, config=req.config_path), p.run_dir)
        if self.services.metrics is not None:
            self.services.metrics.run_started()
        self._tg.start_soon(self._run, active, spec, p.seed, peer, name=f"run-{p.info.id}")
        return p.info

    def _prepare(self, req: RunRequest, peer: PeerInfo | None, replay_of: str | None = None) -> _Prepared:
        """The file work of admitting a run, in a worker thread: checks (RunRejected), then the
        run directory with conversation/index.json, meta/launch.json and the event log (its
        wake-up event binds to the event loop on first use)."""
        seed = Path(req.workspace) if req.workspace else None
        if seed is not None and not seed.is_dir():
            raise RunRejected("invalid_request", f"workspace {req.workspace} is not a directory")
        if seed is not None and peer is not None and peer.uid not in (0, os.getuid()):
            # The daemon copies with its own rights: another user gets only what it could read.
            blocked = unreadable_for(seed, peer.uid, peer.gid)
            if blocked is not None:
                raise RunRejected("forbidden", f"workspace {req.workspace}: {blocked} is not readable by uid "
                                               f"{peer.uid}; upload the tree instead (kcctl run --workspace does)",
                                  status=403)
        upload = None
        if req.workspace_upload:
            try:
                upload = self.uploads.take(req.workspace_upload)
            except UploadError as exc:
                raise RunRejected("invalid_request", str(exc)) from None
        loaded = self.configs.load(req.config_text, req.config_path, peer)
        cfg = loaded.config
        route = cfg.default_route()
        entry = cfg.model_entry(route.id)
        stream = req.stream if req.stream is not None else bool(getattr(entry, "stream", False))
        max_steps = req.max_steps or cfg.max_iterations

        run_id = new_run_id()
        stem = Path(req.config_path).stem if req.config_path else "inline"
        run_dir = create_run_dir(self.runs_root, stem, run_id)
        now = utc_now()
        info = RunInfo(id=run_id, status="running", run_dir=str(run_dir), created_at=now,
                       started_at=now, config_path=req.config_path, route=route.id,
                       task=req.task[:200], peer_uid=peer.uid if peer else None,
                       peer_pid=peer.pid if peer else None, warnings=list(loaded.warnings),
                       replay_of=replay_of)
        if upload is not None:  # the upload becomes the run's seed snapshot
            os.replace(upload, run_dir / SEED_ARCHIVE)
        rundir = RunDir(run_dir, self.redactor.bytes)
        rundir.write_json_sync("conversation/index.json", {
            "run_id": run_id, "run_dir": run_dir.name, "created_utc": info.created_at, "session_id": run_id})
        rundir.write_json_sync(LAUNCH, Launch(run_id=run_id, max_steps=max_steps,
                                              seed_dir=str(seed.resolve()) if seed is not None else None))
        events = EventLog(run_id, run_dir / "meta" / "events.jsonl", self.redactor.bytes)
        spec = RunSpec(run_id=run_id, loaded=loaded, task=req.task, workspace=run_dir / "workspace",
                       max_steps=max_steps, stream=stream, peer_uid=peer.uid if peer else None)
        return _Prepared(info=info, loaded=loaded, spec=spec, seed=seed, run_dir=run_dir, events=events)

    # ---- running ----------------------------------------------------------------

    async def _run(self, active: ActiveRun, spec: RunSpec, seed: Path | None, peer: PeerInfo | None) -> None:
        """The run's task in the daemon's task group. Finalisation runs on every exit: done,
        failed, cancelled by the run's own scope, or cancelled from outside it (a task-group
        teardown), shielded so that it completes. Its last resort cannot raise: an exception
        escaping here would tear down every run and the control socket with it."""
        rundir = RunDir(Path(active.info.run_dir), self.redactor.bytes)
        started = time.monotonic()
        try:
            await self._execute(active, spec, seed, rundir)
        finally:
            with anyio.CancelScope(shield=True):
                elapsed = time.monotonic() - started
                with anyio.move_on_after(5):  # a node's copy of the workspace: best effort
                    await self.services.executor.release(str(spec.workspace))
                try:
                    await self._finalise(active, spec, seed, rundir, peer, elapsed)
                except Exception as exc:
                    log.exception("run %s: finalisation failed; ending it as failed", active.info.id)
                    self._end_abruptly(active, spec, f"finalisation failed: {type(exc).__name__}: {exc}", elapsed)
                max_runs = spec.loaded.config.logging.retention.max_runs
                if max_runs > 0:  # older finished runs of this user and config (kcd/retention.py)
                    self._tg.start_soon(self.retention.after_run, active.info, max_runs,
                                        name=f"retention-{active.info.id}")

    async def _execute(self, active: ActiveRun, spec: RunSpec, seed: Path | None, rundir: RunDir) -> None:
        """The run's work in its own cancel scope; leaves the outcome in `active.result`
        (None when it was cancelled)."""
        with active.scope:
            try:
                await self._seed(rundir, spec, seed)
                active.agent = AgentRun(spec, self.services, rundir, active.events)
                if self.services.executor.state != "ready":
                    active.events.emit("executor.wait", mode=self.services.executor.mode,
                                       state=self.services.executor.state)
                    await self.services.executor.wait_ready()
                active.result = await active.agent.run()
            except ExecutorError as exc:  # the cluster went away: a typed end, not a loop crash
                agent = active.agent
                active.result = RunResult(exit_reason="executor_unavailable", completed=False,
                                          steps=agent.steps if agent else 0, method="loop_exit",
                                          error=f"{self.services.executor.mode} executor: {exc}",
                                          error_type="executor_unavailable")
            except Exception as exc:  # the loop itself failed: record it, never lose the run
                agent = active.agent
                active.result = RunResult(exit_reason="run_loop_exception", completed=False,
                                          steps=agent.steps if agent else 0, method="loop_exit",
                                          error=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
                try:
                    rundir.write_json_sync("errors/run_loop_exception.json", {
                        "type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()})
                except OSError:
                    log.exception("run %s: errors/run_loop_exception.json not written", spec.run_id)
        if active.scope.cancelled_caught:
            active.result = None

    async def _seed(self, rundir: RunDir, spec: RunSpec, seed: Path | None) -> None:
        archive = rundir.path / SEED_ARCHIVE
        limiter = self._limiter("seed", SEED_THREADS)
        if archive.is_file():
            manifest = await anyio.to_thread.run_sync(seed_from_archive, archive, spec.workspace,
                                                      self.max_workspace_bytes, limiter=limiter)
        else:
            manifest = await anyio.to_thread.run_sync(seed_from_directory, seed, spec.workspace, limiter=limiter)
        await rundir.write_json(SEED_MANIFEST, manifest)

    async def _finalise(self, active: ActiveRun, spec: RunSpec, seed: Path | None, rundir: RunDir,
                        peer: PeerInfo | None, elapsed: float) -> None:
        """result.json, workspace.diff, meta/run.json, then `run.end` and the store. Any
        failure raises (the caller's last resort takes over); nothing is published twice."""
        info, agent = active.info, active.agent
        result = active.result or RunResult(exit_reason="cancelled", completed=False,
                                            steps=agent.steps if agent else 0, method="loop_exit",
                                            summary=agent.last_text if agent else None)
        status = ("completed" if result.completed else
                  "cancelled" if result.exit_reason == "cancelled" else "failed")
        try:
            diff = await anyio.to_thread.run_sync(diff_against_seed, rundir.path, seed, spec.workspace,
                                                  self.max_workspace_bytes)
            await rundir.write_text("workspace.diff", diff)
        except Exception as exc:  # a diff failure must not lose the result
            active.events.emit("warning", message=f"workspace.diff not written: {exc}")
        if active.on_finish is not None:
            try:
                with anyio.fail_after(ON_FINISH_TIMEOUT_S):
                    result = await active.on_finish(rundir.path, spec.workspace, result)
            except Exception as exc:  # the run's own record comes first
                log.exception("run %s: its finishing step failed", info.id)
                active.events.emit("warning", message=f"finishing step failed: {type(exc).__name__}: {exc}")
        metrics = agent.metrics.snapshot() if agent is not None else RunMetrics().snapshot()
        rundir.write_json_sync("meta/provider_metrics.json", metrics)
        rundir.write_json_sync("result.json", result_document(
            run_id=info.id, status=status, max_steps=spec.max_steps,
            served_route=agent.served_route if agent else None, **msgspec.structs.asdict(result)))
        ended = utc_now()
        rundir.write_json_sync("meta/run.json", {
            "run_id": info.id, "kcd_version": __version__, "config_path": info.config_path,
            "config_digest": spec.loaded.digest, "route": info.route, "task": spec.task,
            "max_steps": spec.max_steps, "stream": spec.stream,
            "executor": self.services.executor.mode,
            "nodes": sorted(getattr(agent, "nodes", ())),  # Ray nodes its tool calls ran on
            "peer": {"uid": peer.uid, "pid": peer.pid, "gid": peer.gid} if peer else None,
            "daemon_pid": os.getpid(),
            "timings": {"created_at": info.created_at, "started_at": info.started_at,
                        "ended_at": ended, "duration_s": round(elapsed, 3)},
            "warnings": info.warnings, "resolved_config": spec.loaded.merged,
            # Where its relative paths pointed (each resolved against the file that wrote it,
            # which resolved_config no longer says): a replay loads the config from elsewhere.
            "resolved_paths": {"packs": spec.loaded.pack_paths, "tool_dirs": spec.loaded.tool_dirs},
            **({"replay_of": info.replay_of} if info.replay_of else {})})
        final = active.info = msgspec.structs.replace(
            info, status=status, ended_at=ended, exit_reason=result.exit_reason,
            completed=result.completed, steps=result.steps,
            error=self.redactor.text(result.error) if result.error else None)
        self._telemetry_end(active, spec, metrics, result, elapsed)
        # emit() raises before publishing when the disk refuses the line: then the last
        # resort publishes the one run.end, with the finalise_error status.
        active.events.emit("run.end", status=status, exit_reason=result.exit_reason,
                           completed=result.completed, steps=result.steps, run_dir=info.run_dir,
                           error=result.error, duration_s=round(elapsed, 3))
        active.events.close()
        self.store.save_run(final)
        self._active.pop(info.id, None)
        active.done.set()

    def _end_abruptly(self, active: ActiveRun, spec: RunSpec, error: str, elapsed: float) -> None:
        """Last resort when finalising raised (a full disk, a replaced run directory): the store
        records `finalise_error`, followers get `run.end`, the run leaves the active set. Every
        step is guarded: this must not raise, whatever the disk does."""
        try:
            info = active.info = msgspec.structs.replace(
                active.info, status="failed", ended_at=utc_now(), exit_reason="finalise_error",
                completed=False, steps=active.info.steps if active.info.steps is not None else (
                    active.agent.steps if active.agent else 0),
                error=self.redactor.text(error))
        except Exception:
            log.exception("run %s: its final status could not be built", active.info.id)
            info = active.info
        try:
            self.store.save_run(info)
        except Exception:
            log.exception("run %s: its final status could not be stored", info.id)
        if not active.telemetry_ended:
            try:
                self._telemetry_end(active, spec, RunMetrics().snapshot(), RunResult(
                    exit_reason="finalise_error", completed=False, steps=info.steps or 0,
                    method="loop_exit"), elapsed)
            except Exception:
                log.exception("run %s: its end could not be counted", info.id)
        if not active.events.closed:  # else run.end was already published
            active.events.finish("run.end", status=info.status, exit_reason=info.exit_reason,
                                 completed=False, steps=info.steps, run_dir=info.run_dir, error=info.error)
        self._active.pop(info.id, None)
        active.done.set()

    def _telemetry_end(self, active: ActiveRun, spec: RunSpec, metrics: dict, result: RunResult,
                       elapsed: float) -> None:
        """The run's last telemetry: provider_metrics in the original's shape, then run.end."""
        active.telemetry_ended = True
        info = active.info
        sink, live, run_dir = self.services.telemetry, self.services.metrics, Path(info.run_dir)
        if sink is not None:
            sink.emit(provider_metrics_event(metrics, run_id=info.id, route_id=info.route), run_dir)
            sink.emit(RunEnd(run_id=info.id, route=info.route, peer_uid=spec.peer_uid,
                             exit_reason=result.exit_reason, completed=result.completed, steps=result.steps,
                             duration_s=round(elapsed, 3)), run_dir)
            sink.close_run(run_dir)
        if live is not None:
            live.run_ended(result.exit_reason, elapsed)

    # ---- queries and control ----------------------------------------------------

    def get(self, run_id: str) -> RunInfo | None:
        active = self._active.get(run_id)
        return active.info if active else self.store.get_run(run_id)

    def list(self, limit: int = 50, status: str | None = None, owner: int | None = None,
             **filters: str | None) -> list[RunInfo]:
        """The newest runs; with `owner`, only that uid's; `filters`: route, exit_reason, since,
        until, replay_of (`StateStore.list_runs`)."""
        return self.store.list_runs(limit=limit, status=status, owner=owner, **filters)

    def cancel(self, run_id: str) -> RunInfo | None:
        active = self._active.get(run_id)
        if active is None:
            return self.store.get_run(run_id)
        active.scope.cancel()
        return active.info

    async def follow(self, run_id: str, since: int, follow: bool) -> AsyncIterator[bytes] | None:
        active = self._active.get(run_id)
        if active is not None:
            return active.events.follow(since, follow=follow, heartbeat_s=self.heartbeat_s)
        info = self.store.get_run(run_id)
        if info is None:
            return None
        lines = read_event_lines(Path(info.run_dir) / "meta" / "events.jsonl", since)

        async def replay() -> AsyncIterator[bytes]:
            for line in lines:
                yield line
        return replay()

    async def changes(self, run_id: str) -> RunChanges | None:
        """What the run changed relative to its seed (for `kcctl run --apply`)."""
        info = self.get(run_id)
        if info is None:
            return None
        if info.status not in TERMINAL_STATUSES:
            raise RunRejected("run_active", f"run {run_id} has not ended yet", status=409)
        run_dir = Path(info.run_dir)
        manifest_path = run_dir / SEED_MANIFEST
        manifest = msgspec.json.decode(manifest_path.read_bytes()) if manifest_path.exists() else {}
        changes = await anyio.to_thread.run_sync(compute_changes, manifest, run_dir / "workspace")
        diff_path = run_dir / "workspace.diff"
        return RunChanges(run_id=run_id, changes=changes,
                          diff=diff_path.read_text(errors="replace") if diff_path.exists() else "")

    async def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting, cancel every run, and wait for their finalisation."""
        self._accepting = False
        runs = list(self._active.values())
        for active in runs:
            active.scope.cancel()
        with anyio.move_on_after(grace):
            for active in runs:
                await active.done.wait()

    def is_terminal(self, info: RunInfo) -> bool:
        return info.status in TERMINAL_STATUSES
