"""The agent loop: one LLM call per turn, then that turn's tool calls.

Readable in one sitting on purpose. Provider calls go through the daemon's
dispatcher; tool calls go to the executor (a Ray task or in-process); every turn
is recorded in the run directory and on the run's event stream.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from kcd.agent import probing, prompts, routing
from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.provider_log import RunCallObserver
from kcd.agent.toolset import build_toolset
from kcd.config.agent import LoadedConfig
from kcd.execution.base import Executor
from kcd.observe import conversation as conv
from kcd.observe.conversation import Conversation
from kcd.observe.eventlog import EventLog
from kcd.observe.prometheus import DaemonMetrics
from kcd.observe.rundir import RunDir
from kcd.observe.run_metrics import RunMetrics
from kcd.observe.telemetry import TelemetrySink
from kcd.providers.dispatcher import Dispatcher
from kcd.providers.errors import ProviderFailure
from kcd.providers.probes import ProbeManager
from kcd.providers.types import ChatMessage, ChatResponse, ToolCall

EXCERPT = 400

# Sentinels every config gets (the original's built-in set); matched on word boundaries,
# so a sentinel inside a longer word does not end the run.
DEFAULT_SENTINELS = (">>>>>> END RESPONSE", "TASK COMPLETE", "ALL TESTS PASSED",
                     "IMPLEMENTATION COMPLETE")


class RunResult(msgspec.Struct, omit_defaults=True):
    """How a run ended: exit reason, completion, steps taken and the final text."""

    exit_reason: str
    completed: bool
    steps: int
    method: str
    exit_kind: str = "loop_exit"  # or "provider_error"
    summary: str | None = None  # the final assistant text
    error: str | None = None
    error_type: str | None = None
    hint: str | None = None
    details: dict[str, Any] | None = None


@dataclass
class RunSpec:
    """What to run: the loaded config, task, workspace, step limit and streaming."""

    run_id: str
    loaded: LoadedConfig
    task: str
    workspace: Path
    max_steps: int
    stream: bool
    peer_uid: int | None = None


@dataclass
class RunServices:
    """The daemon-wide services a run uses: dispatcher, executor, probes, tool defaults."""

    dispatcher: Dispatcher
    executor: Executor
    tool_defaults: ToolSettings = field(default_factory=ToolSettings)  # the daemon's sandbox (kcd.sandbox)
    allow_network: bool = True  # whether a run's `tools.network: true` is honoured
    sandbox: dict[str, Any] | None = None  # the daemon's isolation report, for run.start and the marker
    probes: ProbeManager | None = None  # the daemon's capability probe cache
    env: Mapping[str, str] = field(default_factory=dict)  # the daemon's environment (probe switch)
    telemetry: TelemetrySink | None = None  # the daemon's single telemetry writer
    metrics: DaemonMetrics | None = None  # daemon-wide live metrics (/v1/metrics)


def _json_args(arguments: str | None) -> object:
    """A call's arguments as JSON when they parse, else the provider's text as sent."""
    try:
        return msgspec.json.decode(arguments or "{}")
    except msgspec.DecodeError:
        return arguments


def _result_row(o: ToolOutcome, call: ToolCall | None) -> dict[str, object]:
    """A native result as the original recorded it: our tool name, the provider's, the args."""
    return {"fn": o.name, "provider_fn": call.name if call else o.name, "call_id": o.call_id,
            "args": _json_args(call.arguments) if call else None, "ok": o.ok, "out": o.output, "data": o.data}


def _excerpt(text: str | None, limit: int = EXCERPT) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + "…"


def sentinel_hit(text: str, sentinels: list[str]) -> str | None:
    for sentinel in sentinels:
        if re.search(r"(?<!\w)" + re.escape(sentinel) + r"(?!\w)", text):
            return sentinel
    return None


class AgentRun:
    """One run of the agent loop: drives its turns and writes its artifacts and events."""

    def __init__(self, spec: RunSpec, services: RunServices, rundir: RunDir, events: EventLog):
        self.spec = spec
        self.services = services
        self.rundir = rundir
        self.events = events
        self.conversation = Conversation(rundir)
        self.cfg = spec.loaded.config
        self.route = self.cfg.default_route()
        self.features = dict(self.cfg.features)
        self.mode = self.cfg.active_mode(self.features)
        self.plan_turns = 0
        self.toolset = build_toolset(spec.loaded, defaults=services.tool_defaults, scope=spec.run_id,
                                     allow_network=services.allow_network, mode=self.mode,
                                     route=self.route)
        self.chain = routing.build_chain(self.cfg, self.route, primary_stream=spec.stream)
        self.policy = routing.retry_policy(self.cfg, self.route)
        self.stream_off: set[str] = set()  # routes whose stream broke during this run
        self.metrics = RunMetrics()
        self.observer = RunCallObserver(rundir, events, self.conversation, self.metrics, lambda: self.steps,
                                        telemetry=services.telemetry, live=services.metrics,
                                        run_id=spec.run_id, peer_uid=spec.peer_uid)
        self.served_route: str | None = None
        self.steps = 0
        self.nodes: set[str] = set()  # Ray nodes its tool calls ran on
        self.messages: list[ChatMessage] = []
        self.last_text: str | None = None

    # ---- set-up -------------------------------------------------------------

    def _pack_texts(self) -> list[str]:
        refs = list(getattr(getattr(self.cfg.prompts, "injection", None), "system_order", None) or [])
        return [self.spec.loaded.pack_text(ref) for ref in refs]

    async def _apply_probes(self, native: bool) -> str | None:
        """Probe results (daemon-cached) for every route of the chain, and their policies.
        Returns the reason when the primary must leave native tools."""
        enabled = probing.probes_enabled(self.cfg, self.services.env)
        results = await probing.probe_chain(self.services.probes, self.chain, enabled)
        await self.rundir.write_json("meta/capability_probes.json", [r.record() for r in results.values()])
        policy = probing.apply_probes(self.cfg, self.chain, results, native=native)
        self.chain = policy.chain
        for line in policy.notes:  # raw lines, as the original wrote them
            await self.rundir.append_text("conversation/conversation.md", f"[capability-probe] {line}\n")
            self.events.emit("policy", marker="capability-probe", text=line, turn=0)
        for route, reason in policy.stream_off.items():
            self.stream_off.add(route)
            if any(e.route.id == route and e.stream for e in self.chain):
                self.metrics.stream_override(route, reason)
                await self.observer.marker("stream-policy", f"Disabled streaming for route '{route}' based "
                                                            "on capability probe results.")
        return policy.primary_native_off

    async def _setup(self) -> tuple[list[str], bool, str | None]:
        tools = self.toolset.names
        native, override = routing.tool_mode(self.cfg, self.route)
        await self.conversation.start()
        probe_override = await self._apply_probes(native)
        if probe_override:
            native, override = False, probe_override
        mode = self.cfg.prompts.tool_prompt_mode
        if native:
            # With native tools the catalogue travels as schemas, not prompt text.
            catalogue = None
        else:
            catalogue = self.toolset.catalogue()
        system = prompts.system_prompt(self._pack_texts(), catalogue, mode)
        per_turn = prompts.per_turn_catalogue(catalogue, mode)
        self.messages = [ChatMessage(role="system", content=system),
                         ChatMessage(role="user", content=self.spec.task)]
        await self.rundir.write_text("prompts/compiled_system.md", system)
        if override:
            self.metrics.tool_override(self.route.id, override)
            await self.observer.marker("tool-policy", f"Disabled native tool usage for route "
                                                      f"'{self.route.id}' ({override}); tools are offered "
                                                      "in the prompt and parsed from the reply's text.")
        await self.conversation.section(conv.SYSTEM, system)
        await self.conversation.section(conv.USER, self.spec.task)
        if native:
            await self.conversation.section(conv.TOOLS_NATIVE, "\n".join(f"- {t}" for t in tools))
        for warning in self.toolset.warnings:
            self.events.emit("warning", message=warning)
        return tools, native, per_turn

    # ---- one turn -----------------------------------------------------------

    def _outgoing(self, per_turn: str | None) -> list[ChatMessage]:
        """The messages to send: history, with the per-turn catalogue appended
        to the last user message of this copy only (never persisted)."""
        if not per_turn:
            return list(self.messages)
        out = list(self.messages)
        for i in range(len(out) - 1, -1, -1):
            if out[i].role == "user":
                out[i] = msgspec.structs.replace(out[i], content=f"{out[i].content}\n\n{per_turn}")
                break
        return out

    async def _call_model(self, tools: list[str], native: bool, per_turn: str | None) -> ChatResponse:
        turn = self.steps
        messages = self._outgoing(per_turn)
        schemas = self.toolset.schemas() if native else []
        await self.rundir.write_json(f"raw/requests/turn_{turn}.request.json", {
            "model": self.route.id, "messages": messages, "tools": schemas or None,
            "stream": self.chain[0].stream and self.route.id not in self.stream_off,
            "params": dict(self.chain[0].params)})
        if schemas:  # the original's per-turn record of the native tool schemas sent
            await self.rundir.write_json(f"provider_native/tools_provided/turn_{turn}.json", [
                {"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.parameters}} for t in schemas])
        if per_turn and turn == 1:
            await self.conversation.section(conv.TOOLS_PROMPT, per_turn)
        served = await self.services.dispatcher.complete(
            self.chain, messages, schemas, policy=self.policy, turn_key=f"{self.spec.run_id}:{turn}",
            observer=self.observer, stream_off=self.stream_off)
        self.served_route = served.entry.route.id
        if self.services.probes is not None:
            self.services.probes.note_used(served.entry.route.id, served.entry,
                                           model_reported=served.response.model)
        response = served.response
        await self.rundir.write_json(f"raw/responses/turn_{turn}.response.json",
                                     response.raw or msgspec.to_builtins(response))
        return response

    def _native_invocations(self, response: ChatResponse) -> tuple[list[ToolInvocation], list[ToolOutcome]]:
        calls, rejected = [], []
        for tc in response.tool_calls:
            name = self.toolset.canonical(tc.name)
            try:
                args = msgspec.json.decode(tc.arguments or "{}")
                if not isinstance(args, dict):
                    raise ValueError("arguments must be a JSON object")
            except (msgspec.DecodeError, ValueError) as exc:
                self.metrics.invalid_tool_arguments += 1
                rejected.append(ToolOutcome(
                    call_id=tc.id, name=name, ok=False,
                    output=f'<TOOL_ERROR tool="{name}">arguments are not valid JSON ({exc}); '
                           f'nothing was executed</TOOL_ERROR>'))
                continue
            calls.append(ToolInvocation(call_id=tc.id, name=name, args=args, source="native"))
        return calls, rejected

    async def _execute(self, calls: list[ToolInvocation], allowed: list[str]) -> list[ToolOutcome]:
        outcomes: list[ToolOutcome] = []
        runnable = []
        for call in calls:
            if call.name not in allowed:
                # Mode and config selection are enforced here, not only in the prompt.
                outcomes.append(ToolOutcome(
                    call_id=call.call_id, name=call.name, ok=False,
                    output=f'<TOOL_ERROR tool="{call.name}">tool {call.name!r} is not available '
                           f'in this mode; available: {", ".join(allowed)}</TOOL_ERROR>'))
            else:
                runnable.append(call)
        for call in runnable:
            self.events.emit("tool.call", turn=self.steps, call_id=call.call_id, name=call.name,
                             args=_excerpt(msgspec.json.encode(call.args).decode(), 200))
        if runnable:
            outcomes.extend(await self.services.executor.run_turn(
                str(self.spec.workspace), runnable, self.toolset.settings))
        order = {c.call_id: i for i, c in enumerate(calls)}
        outcomes.sort(key=lambda o: order.get(o.call_id, len(order)))
        for o in outcomes:
            node = (o.data or {}).get("node_id")  # Ray: the node the call ran on
            if node:
                self.nodes.add(node)
            self.events.emit("tool.result", turn=self.steps, call_id=o.call_id, name=o.name,
                             ok=o.ok, output=_excerpt(o.output, 300), **({"node": node} if node else {}))
            if self.services.metrics is not None:
                self.services.metrics.tool_call(o.name, o.ok)
        return outcomes

    async def _relay_native(self, response: ChatResponse, outcomes: list[ToolOutcome]) -> None:
        turn = self.steps
        self.messages.append(ChatMessage(role="assistant", content=response.content or None,
                                         tool_calls=list(response.tool_calls)))
        await self.conversation.section(conv.NATIVE_CALLS, "\n".join(
            f"- {tc.name} (id={tc.id})" for tc in response.tool_calls))
        await self.rundir.write_json(f"provider_native/tool_calls/turn_{turn}.json", [
            {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
            for tc in response.tool_calls])
        by_id = {o.call_id: o for o in outcomes}
        for tc in response.tool_calls:
            o = by_id.get(tc.id)
            content = o.output if o else f'<TOOL_ERROR tool="{tc.name}">no result</TOOL_ERROR>'
            self.messages.append(ChatMessage(role="tool", tool_call_id=tc.id, name=tc.name, content=content))
        called = {tc.id: tc for tc in response.tool_calls}
        await self.rundir.write_json(f"provider_native/tool_results/turn_{turn}.json", [
            _result_row(o, called.get(o.call_id)) for o in outcomes])
        await self.conversation.section(conv.NATIVE_RESULTS, "\n\n".join(o.output for o in outcomes))

    async def _relay_text(self, outcomes: list[ToolOutcome], errors: list[str]) -> None:
        turn = self.steps
        blocks: list[str] = []
        for o in outcomes:  # a policy error is repeated on every call: relay it once
            if o.output not in blocks or not (o.data or {}).get("policy_error"):
                blocks.append(o.output)
        blocks += errors
        links = []
        for i, o in enumerate(outcomes, 1):
            rel = f"artifacts/tool_results/turn_{turn}/{i:02d}_{o.name}.txt"
            await self.rundir.write_text(rel, o.output)
            links.append(f"- {o.name}: See: {rel}")
        self.messages.append(ChatMessage(role="user", content="Tool execution results:\n\n" + "\n\n".join(blocks)))
        await self.conversation.section(conv.TEXT_RESULTS, "\n".join(links + errors) or "(none)")

    async def _maybe_leave_plan_mode(self, tools: list[str], native: bool) -> list[str]:
        """`loop.plan_turn_limit`: after N real plan turns, switch plan → build."""
        limit = self.cfg.loop.plan_turn_limit
        if not self.features.get("plan") or limit is None:
            return tools
        self.plan_turns += 1
        if self.plan_turns < limit:
            return tools
        self.features["plan"] = False  # per-run state: the shared config is never mutated
        previous, self.mode = self.mode.name, self.cfg.active_mode(self.features)
        self.toolset = build_toolset(self.spec.loaded, defaults=self.services.tool_defaults, scope=self.spec.run_id,
                                     allow_network=self.services.allow_network, mode=self.mode,
                                     route=self.route)
        self.events.emit("mode.transition", turn=self.steps, **{"from": previous, "to": self.mode.name},
                         tools=self.toolset.names)
        note = (f"Mode changed from {previous} to {self.mode.name}. Available tools now: "
                f"{', '.join(self.toolset.names)}.")
        if not native:
            note += "\n\n" + self.toolset.catalogue()
        self.messages.append(ChatMessage(role="user", content=note))
        await self.conversation.section(conv.USER, note)
        return self.toolset.names

    def _isolation(self) -> dict[str, Any]:
        """What contains this run's shell commands (run.start)."""
        s = self.toolset.settings
        report = self.services.sandbox or {}
        return {"mode": s.isolation, "network": s.isolation_network, "weaker": report.get("weaker", False),
                "guarantees": report.get("guarantees"), "max_processes": s.max_processes,
                "max_processes_per_run": s.max_processes_per_run, "memory_max_bytes": s.memory_max_bytes,
                "processes_capped_by": report.get("processes_capped_by"),
                "memory_capped_by": report.get("memory_capped_by")}

    # ---- the loop -----------------------------------------------------------

    async def run(self) -> RunResult:
        tools, native, per_turn = await self._setup()
        sentinels = list(DEFAULT_SENTINELS) + list(self.cfg.completion.text_sentinels)
        self.events.emit("run.start", route=self.route.id, chain=[e.route.id for e in self.chain],
                         native_tools=native, tools=tools,
                         max_steps=self.spec.max_steps, stream=self.spec.stream,
                         executor=self.services.executor.mode, isolation=self._isolation())
        if self.services.sandbox is not None and self.services.sandbox.get("weaker"):
            await self.observer.marker("sandbox", f"Shell commands run with {self.services.sandbox['guarantees']}.")
        while self.steps < self.spec.max_steps:
            self.steps += 1
            turn = self.steps
            self.events.emit("turn.start", turn=turn, route=self.route.id)
            if self.services.metrics is not None:
                self.services.metrics.turn()
            started = time.perf_counter()
            try:
                response = await self._call_model(tools, native, per_turn)
            except ProviderFailure as failure:
                await self.conversation.marker("provider-error", f"{failure.classification}: {failure}")
                return RunResult(exit_reason="provider_error", completed=False, steps=turn,
                                 method="provider_error", exit_kind="provider_error",
                                 error=str(failure), error_type=failure.classification,
                                 hint=failure.details.get("hint") if failure.details else None,
                                 details=failure.details or None)
            self.last_text = response.content or self.last_text
            self.events.emit("llm.response", turn=turn, route=self.route.id,
                             finish_reason=response.finish_reason, model=response.model,
                             latency_s=round(time.perf_counter() - started, 4),
                             usage=msgspec.to_builtins(response.usage) if response.usage else None,
                             tool_calls=[tc.name for tc in response.tool_calls],
                             text=_excerpt(response.content, 300))
            await self.conversation.section(conv.ASSISTANT, response.content or "(no text)")

            if native and response.tool_calls:
                calls, rejected = self._native_invocations(response)
                outcomes = rejected + await self._execute(calls, tools)
                await self._relay_native(response, outcomes)
            elif not native and response.content:
                parsed = self.toolset.parse(response.content, turn)
                self.messages.append(ChatMessage(role="assistant", content=response.content))
                if not parsed.calls and not parsed.errors:
                    outcomes = None
                else:
                    outcomes = await self._execute(parsed.calls, tools)
                    await self._relay_text(outcomes, list(parsed.errors))
            else:
                outcomes = None
                if response.content:
                    self.messages.append(ChatMessage(role="assistant", content=response.content))

            tools = await self._maybe_leave_plan_mode(tools, native)
            if outcomes is not None:
                done = next((o for o in outcomes if o.completes), None)
                if done is not None:
                    return RunResult(exit_reason="mark_task_complete", completed=True, steps=turn,
                                     method="tool_mark_task_complete", summary=self.last_text)
                continue

            # A reply with no tool calls: completion by sentinel, an empty reply, or a nudge.
            text = response.content or ""
            hit = sentinel_hit(text, sentinels)
            if hit:
                return RunResult(exit_reason="completion_detected", completed=True, steps=turn,
                                 method="text_sentinel", summary=text)
            if not text.strip():
                return RunResult(exit_reason="empty_response", completed=False, steps=turn,
                                 method="provider_empty", summary=self.last_text)
            self.messages.append(ChatMessage(role="user", content=prompts.TEXT_NUDGE))
        return RunResult(exit_reason="max_steps_exhausted", completed=False, steps=self.steps,
                         method="loop_exit", summary=self.last_text)
