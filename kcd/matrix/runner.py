"""MatrixService: regression matrices as daemon resources (`/v1/matrix`).

A matrix is a set of scenarios run as real runs (a `RunManager`, the run
directory, events and finalisation of any run), up to `parallel` at a time,
with one NDJSON event stream. The daemon judges each run itself, from the run
directory it owns, so a client never needs to read run directories.

Offline scenarios run against the simulator, each in its own sandbox:

* a simulator namespace (`simctl`), so parallel scenarios never share fault
  plans or counters;
* a private provider layer: its own `Dispatcher`, `BreakerBoard` (with
  the scenario's breaker settings) and probe cache, and an environment with
  dummy keys whose base URLs point at the namespace. Injected faults therefore
  never open the breakers, poison the probe cache or move the live metrics of
  the daemon's real routes, and no request can leave for a real provider.

Live scenarios are ordinary runs through the daemon's own run manager and
dispatcher, on real providers, and are skipped (clearly) when kcd lacks a key.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import httpx
import msgspec

from kcd.api.types import PeerInfo, RunRequest
from kcd.config.daemon import BreakerSettings
from kcd.config.keypath import ConfigError
from kcd.matrix.catalogue import SelectionError, load_catalogue, select
from kcd.matrix.configgen import Prepared, RunConfig, prepare, render_config
from kcd.matrix.evidence import marker_lines, read_run
from kcd.matrix.expect import Evidence, Transition, check, grade
from kcd.matrix.scenario import Step
from kcd.matrix.simctl import SimNamespace, SimulatorError
from kcd.matrix.types import (
    Diagnostics,
    MatrixInfo,
    MatrixRequest,
    MatrixSummary,
    ScenarioResult,
    StepResult,
)
from kcd.observe.eventlog import EventLog, utc_now
from kcd.observe.rundir import new_run_id
from kcd.observe.telemetry import TelemetrySink
from kcd.providers.breaker import BreakerBoard, BreakerConfig
from kcd.providers.breaker import Transition as BreakerTransition
from kcd.providers.dispatcher import Dispatcher
from kcd.providers.probes import ProbeManager
from kcd.providers.routes import parse_route
from kcd.runs import RunManager, RunRejected

__all__ = ["MatrixService", "sandbox_env"]

log = logging.getLogger("kcd.matrix")

KEY_ENV = {"openai": "OPENAI_API_KEY", "openrouter": "OPENROUTER_API_KEY"}
DUMMY_KEY = "regression-dummy"  # the original harness's placeholder key
END_GRACE_S = 30.0  # after a cancel, how long finalisation may take
KEEP_FINISHED = 16  # finished matrices kept for GET /v1/matrix/{id}


def sandbox_env(daemon_env: Mapping[str, str], api_base: str, missing_keys: list[str]) -> dict[str, str]:
    """The environment of an offline scenario's provider layer: no real key and no real
    endpoint survive (dummy keys; both providers' base URLs on the namespace)."""
    env = {k: v for k, v in daemon_env.items()
           if not k.endswith("_API_KEY") and k not in ("OPENAI_BASE_URL", "OPENROUTER_BASE_URL",
                                                         "KC_DISABLE_PROVIDER_PROBES")}
    env.update(OPENAI_API_KEY=DUMMY_KEY, OPENROUTER_API_KEY=DUMMY_KEY, OPENAI_BASE_URL=api_base,
               OPENROUTER_BASE_URL=api_base)
    for key in missing_keys:
        env.pop(key, None)
    return env


@dataclass
class _Matrix:
    info: MatrixInfo
    prepared: list[Prepared]
    peer: PeerInfo | None
    events: EventLog
    started: float = field(default_factory=time.monotonic)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class _Sandbox:
    """An offline scenario's own simulator namespace and breaker board, and what it saw of
    them: request counts, breaker states and transitions."""

    ns: SimNamespace
    settings: InitVar[BreakerSettings]
    board: BreakerBoard = field(init=False)
    transitions: list[Transition] = field(default_factory=list)

    def __post_init__(self, settings: BreakerSettings) -> None:
        self.board = BreakerBoard(BreakerConfig(**msgspec.structs.asdict(settings)), on_transition=self._note)

    def _note(self, t: BreakerTransition) -> None:
        self.transitions.append(Transition(t.route, t.from_state, t.to_state))

    async def observe(self, ev: Evidence, mark: int) -> Evidence:
        """`ev` plus what happened since transition `mark` (the start of the run)."""
        return msgspec.structs.replace(ev, upstream=await self.ns.counts(), transitions=self.transitions[mark:],
                                       breaker={r: self.board.state(r) for r in self.board.routes()})


@dataclass
class _Outcome:
    run_id: str | None
    run_dir: Path | None
    ended: bool
    seconds: float
    rejected: str | None = None  # the run was refused (its config did not load)


class MatrixService:
    """Runs matrices in the daemon and keeps their results for `/v1/matrix`."""

    def __init__(self, runs: RunManager, *, simulator_url: Callable[[], Awaitable[str]],
                 task_group: anyio.abc.TaskGroup, keep: int = KEEP_FINISHED):
        self._runs = runs  # the daemon's: live scenarios run here; sandboxes copy its settings
        self._simulator_url = simulator_url
        self._tg = task_group
        self._keep = keep
        self._matrices: dict[str, _Matrix] = {}
        self._telemetry: TelemetrySink | None = None  # scenario runs' own sink: see _sandbox_telemetry
        self._telemetry_lock = anyio.Lock()

    # ---- the resource -----------------------------------------------------------

    async def submit(self, req: MatrixRequest, peer: PeerInfo | None) -> MatrixInfo:
        """Load and check every scenario (400 on the first problem), then start."""
        prepared = await anyio.to_thread.run_sync(_load, req)  # ConfigError, SelectionError: 400
        info = MatrixInfo(id=f"mx-{new_run_id()}", status="running", created_at=utc_now(),
                          parallel=req.parallel, live=req.live, scenarios=[p.scenario.name for p in prepared],
                          descriptions={p.scenario.name: p.scenario.description for p in prepared},
                          peer_uid=peer.uid if peer else None)
        if req.dry_run:
            return msgspec.structs.replace(info, status="planned")
        m = _Matrix(info=info, prepared=prepared, peer=peer, events=EventLog(info.id, None))
        self._matrices[info.id] = m
        self._tg.start_soon(self._run_contained, m, name=f"matrix-{info.id}")
        return info

    def get(self, matrix_id: str) -> MatrixInfo | None:
        m = self._matrices.get(matrix_id)
        return m.info if m else None

    def follow(self, matrix_id: str, since: int, follow: bool) -> AsyncIterator[bytes] | None:
        m = self._matrices.get(matrix_id)
        if m is None:
            return None
        return m.events.follow(since, follow=follow, heartbeat_s=self._runs.heartbeat_s)

    def cancel(self, matrix_id: str) -> MatrixInfo | None:
        m = self._matrices.get(matrix_id)
        if m is None:
            return None
        m.scope.cancel()
        return m.info

    async def shutdown(self, grace: float = 30.0) -> None:
        running = [m for m in self._matrices.values() if not m.done.is_set()]
        for m in running:
            m.scope.cancel()
        with anyio.move_on_after(grace):
            for m in running:
                await m.done.wait()
        if self._telemetry is not None:
            await self._telemetry.aclose()  # flushes and fsyncs the scenario runs' files

    async def _sandbox_telemetry(self) -> TelemetrySink | None:
        """Scenario runs keep their own meta/telemetry.jsonl but stay out of the central file:
        faults injected on purpose are not production evidence for the exporter or a vendor."""
        if self._runs.services.telemetry is None:
            return None
        async with self._telemetry_lock:
            if self._telemetry is None:
                sink = TelemetrySink(None, redact=self._runs.redactor.bytes)
                with anyio.CancelScope(shield=True):  # a cancelled matrix must not half-start it
                    await self._tg.start(sink.run)
                self._telemetry = sink
        return self._telemetry

    # ---- running ----------------------------------------------------------------

    async def _run_contained(self, m: _Matrix) -> None:
        """The matrix's task in the daemon's task group: whatever fails here ends this matrix,
        never the daemon (an exception would tear down every run and the socket)."""
        try:
            await self._run(m)
        except Exception:
            log.exception("matrix %s: the runner failed", m.info.id)
            if not m.done.is_set():
                m.info.status = "failed"
                if not m.events.closed:
                    m.events.close()
                m.done.set()

    async def _run(self, m: _Matrix) -> None:
        """Never raises: whatever happens, every scenario gets a result and matrix.end is sent."""
        limiter = anyio.CapacityLimiter(m.info.parallel)
        m.events.emit("matrix.start", scenarios=m.info.scenarios, parallel=m.info.parallel, live=m.info.live)
        unfinished = "the matrix was cancelled"
        try:
            with m.scope:
                async with httpx.AsyncClient(trust_env=False) as http:
                    sim_root = None
                    if any(not p.scenario.live for p in m.prepared):
                        # Shielded: until it reports started, a task started by task_group.start()
                        # sits in its caller's cancel scope, and a cancel then would leave the
                        # daemon a simulator that no longer accepts connections.
                        with anyio.CancelScope(shield=True):
                            m.info.simulator = await self._simulator_url()
                        sim_root = m.info.simulator.removesuffix("/v1")
                    async with anyio.create_task_group() as tg:
                        for p in m.prepared:
                            tg.start_soon(self._scenario, m, p, limiter, http, sim_root)
        except Exception as exc:  # e.g. the simulator cannot bind its port
            log.exception("matrix %s could not run", m.info.id)
            unfinished = f"the matrix could not run: {type(exc).__name__}: {exc}"
        finished = {r.name for r in m.info.results}
        for p in m.prepared:
            if p.scenario.name not in finished:
                m.info.results.append(_failed(p, unfinished))
        self._finish(m, cancelled=m.scope.cancelled_caught)

    async def _scenario(self, m: _Matrix, p: Prepared, limiter: anyio.CapacityLimiter,
                        http: httpx.AsyncClient, sim_root: str | None) -> None:
        async with limiter:
            sc = p.scenario
            m.events.emit("scenario.start", name=sc.name)
            started = time.monotonic()
            try:
                if sc.live:
                    result = await self._live(m, p)
                else:
                    assert sim_root is not None
                    result = await self._offline(m, p, SimNamespace(sim_root, f"{m.info.id}-{sc.name}", http))
            except (SimulatorError, OSError) as exc:
                result = _failed(p, f"could not run: {exc}")
            except Exception as exc:  # a bug here must fail one scenario, never the daemon
                log.exception("matrix %s: scenario %s crashed", m.info.id, sc.name)
                result = _failed(p, f"the matrix runner crashed: {type(exc).__name__}: {exc}")
            result.seconds = round(time.monotonic() - started, 3)  # waits between runs included
            m.info.results.append(result)
            m.events.emit("scenario.end", result=msgspec.to_builtins(result))

    async def _offline(self, m: _Matrix, p: Prepared, ns: SimNamespace) -> ScenarioResult:
        from kcd.simulator.faults import unused_port  # lazily: the simulator is not needed at start-up

        sc = p.scenario
        sandbox = _Sandbox(ns, sc.breaker)
        base = self._runs.services
        env = sandbox_env(base.env, ns.api_base, list(sc.routes.missing_keys))
        redactor = self._runs.redactor
        dispatcher = Dispatcher(env, breakers=sandbox.board, redactor=redactor,
                                upstream_client=base.dispatcher.upstream_client)
        services = dataclasses.replace(base, dispatcher=dispatcher, env=env, metrics=None,
                                       telemetry=await self._sandbox_telemetry(),
                                       probes=ProbeManager(dispatcher, None, redact=redactor.text))
        runs = self._sibling(services)
        config = render_config(p, sim_base=ns.api_base, closed_url=f"http://127.0.0.1:{unused_port()}/v1")
        try:
            return _combine(p, await self._steps(m, p, runs, config, sandbox))
        finally:
            with anyio.CancelScope(shield=True):
                await runs.shutdown(END_GRACE_S)  # only a cancelled matrix leaves runs behind
                await dispatcher.aclose()
                try:
                    await ns.drop()
                except SimulatorError:
                    pass

    async def _live(self, m: _Matrix, p: Prepared) -> ScenarioResult:
        sc = p.scenario
        env = self._runs.services.env
        needed = sorted({KEY_ENV[r.provider] for r in map(parse_route, p.chain) if r.provider in KEY_ENV})
        missing = [k for k in needed if not (env.get(k) or "").strip()]
        if missing:
            return ScenarioResult(name=sc.name, verdict="skip", description=sc.description, source=sc.source,
                                  live=True, reasons=[f"{', '.join(missing)} not set in kcd's environment"])
        steps = await self._steps(m, p, self._runs, render_config(p, sim_base=None), None)
        return msgspec.structs.replace(_combine(p, steps), live=True)

    async def _steps(self, m: _Matrix, p: Prepared, runs: RunManager, config: RunConfig,
                     sandbox: _Sandbox | None) -> list[StepResult]:
        """Run and judge the scenario's runs in order; the first run that cannot start ends it."""
        steps: list[StepResult] = []
        for step in p.scenario.steps:
            if sandbox is not None:
                await sandbox.ns.program([(p.route(f.route), f) for f in p.scenario.faults(step)])
            if step.wait_s:
                await anyio.sleep(step.wait_s)
            mark = len(sandbox.transitions) if sandbox else 0
            outcomes: list[_Outcome] = []

            async def one() -> None:
                outcomes.append(await self._run_once(runs, config, p, step, m.peer))

            async with anyio.create_task_group() as tg:
                for _ in range(step.concurrent):
                    tg.start_soon(one)
            if any(o.run_dir is None for o in outcomes):
                refused = next(o for o in outcomes if o.run_dir is None)
                steps.append(StepResult(verdict="fail", reasons=[refused.rejected or "the run did not start"]))
                break
            for outcome in outcomes:  # each run judged on its own; upstream counts are the step's
                run_dir = outcome.run_dir
                assert run_dir is not None
                ev = await anyio.to_thread.run_sync(
                    lambda: read_run(run_dir, ended=outcome.ended, seconds=outcome.seconds))
                if sandbox is not None:
                    ev = await sandbox.observe(ev, mark)
                steps.append(_judge(p, step, ev, outcome))
        return steps

    def _sibling(self, services) -> RunManager:
        """A run manager like the daemon's (same runs root, store, uploads), with other services."""
        d = self._runs
        return RunManager(runs_root=d.runs_root, store=d.store, services=services, task_group=self._tg,
                          uploads=d.uploads, heartbeat_s=d.heartbeat_s,
                          max_workspace_bytes=d.max_workspace_bytes, redactor=d.redactor)

    async def _run_once(self, runs: RunManager, config: RunConfig, p: Prepared, step: Step,
                        peer: PeerInfo | None) -> _Outcome:
        sc = p.scenario
        req = RunRequest(config_text=config.text, config_path=config.path, task=step.task or "",
                         workspace=str(sc.workspace) if sc.workspace else None, max_steps=config.max_steps,
                         stream=config.stream)
        started = time.monotonic()
        try:
            info = await runs.submit(req, peer)
        except RunRejected as exc:
            return _Outcome(None, None, False, 0.0, rejected=f"the generated config was refused: {exc.message}")
        ended = False
        try:
            with anyio.move_on_after(step.expect.max_seconds):
                ended = await _wait_end(runs, info.id)
        finally:
            if not ended:  # a hang, or the matrix was cancelled: never leave the run behind
                runs.cancel(info.id)
        seconds = time.monotonic() - started
        if not ended:  # finalisation still writes the evidence of a cancelled run
            with anyio.move_on_after(END_GRACE_S):
                await _wait_end(runs, info.id)
        return _Outcome(info.id, Path(info.run_dir), ended, seconds)

    def _finish(self, m: _Matrix, *, cancelled: bool) -> None:
        results = m.info.results
        verdicts = [r.verdict for r in results]
        grades = {g: 0 for g in ("pass", "partial", "safe", "fail")}
        for r in results:
            if r.grade is not None:
                grades[r.grade] += 1
        m.info.summary = MatrixSummary(total=len(results), passed=verdicts.count("pass"),
                                       failed=verdicts.count("fail"), skipped=verdicts.count("skip"),
                                       grades=grades, seconds=round(time.monotonic() - m.started, 3))
        m.info.status = "cancelled" if cancelled else ("failed" if "fail" in verdicts else "passed")
        m.info.ended_at = utc_now()
        m.events.emit("matrix.end", info=msgspec.to_builtins(m.info))
        m.events.close()
        m.done.set()
        finished = [k for k, v in self._matrices.items() if v.done.is_set()]
        for old in finished[:-self._keep]:
            del self._matrices[old]


# ---- pure helpers --------------------------------------------------------------------------


def _load(req: MatrixRequest) -> list[Prepared]:
    scenarios = select(load_catalogue(req.files), req.scenarios, live=req.live)
    if not req.routes:
        return [prepare(sc) for sc in scenarios]
    wanted, picked = set(req.routes), []
    for sc in scenarios:
        try:
            p = prepare(sc)
        except ConfigError:
            continue  # a broken scenario is no evidence about these routes
        if wanted.intersection(p.chain):
            picked.append(p)
    if not picked:
        raise SelectionError(f"no offline scenario uses {', '.join(sorted(wanted))}")
    return picked


async def _wait_end(runs: RunManager, run_id: str) -> bool:
    """Follow the run's events until run.end; True if it came."""
    stream = await runs.follow(run_id, 0, True)
    if stream is None:
        return False
    try:
        async for line in stream:
            if b'"type":"run.end"' in line:
                return True
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return False


def _judge(p: Prepared, step: Step, ev: Evidence, outcome: _Outcome) -> StepResult:
    reasons = check(step.expect, ev, p.route, p.fill, lambda route: parse_route(route).model)
    fallbacks = ev.metrics.get("fallbacks") or []
    diagnostics = None
    if reasons:
        diagnostics = Diagnostics(
            markers=marker_lines(ev.conversation), stream_overrides=ev.metrics.get("stream_overrides") or [],
            tool_overrides=ev.metrics.get("tool_overrides") or [], fallbacks=fallbacks,
            circuit_skips=ev.metrics.get("circuit_skips") or [],
            attempt_errors=[f"turn {a.turn} attempt {a.attempt} {a.route}: {a.error_type}"
                            + (f" (HTTP {a.status})" if a.status else "") for a in ev.attempt_errors],
            upstream=ev.upstream, breaker=ev.breaker, error=ev.error)
    return StepResult(verdict="fail" if reasons else "pass", grade=grade(ev, step.expect), reasons=reasons,
                      run_id=outcome.run_id, run_dir=str(outcome.run_dir), exit_reason=ev.exit_reason,
                      completed=ev.completed, served_route=ev.served_route, fallbacks=len(fallbacks),
                      seconds=round(ev.seconds, 3), diagnostics=diagnostics)


def _combine(p: Prepared, steps: list[StepResult]) -> ScenarioResult:
    sc = p.scenario
    many = len(sc.steps) > 1
    reasons = [f"step {i}: {r}" if many else r for i, s in enumerate(steps, 1) for r in s.reasons]
    last = steps[-1] if steps else None
    return ScenarioResult(
        name=sc.name, verdict="fail" if reasons or not steps else "pass", grade=last.grade if last else None,
        description=sc.description, source=sc.source, reasons=reasons,
        route_used=last.served_route if last else None, fallbacks=sum(s.fallbacks for s in steps),
        run_dirs=[s.run_dir for s in steps if s.run_dir],
        steps=steps)


def _failed(p: Prepared, reason: str) -> ScenarioResult:
    sc = p.scenario
    return ScenarioResult(name=sc.name, verdict="fail", description=sc.description, source=sc.source,
                          live=sc.live, reasons=[reason])
