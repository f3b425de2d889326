"""A run's use of the daemon's capability probes.

The daemon owns the probes and their cache; a run asks for the results of its
routes (no calls while they are fresh), records them in
`meta/capability_probes.json`, and applies the routing policies: a failed
stream probe turns streaming off for that route, a failed tool probe turns
native tools off (text mode for the primary; the route leaves native turns'
fallback candidates otherwise).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from kcd.config.agent_schema import AgentConfig
from kcd.providers.dispatcher import ChainEntry
from kcd.providers.probes import ProbeManager, ProbeResult, skipped_result

TRUTHY = ("1", "true", "yes")
FALSY = ("0", "false", "no")


def probes_enabled(cfg: AgentConfig, env: Mapping[str, str]) -> bool:
    """`KC_DISABLE_PROVIDER_PROBES=1` turns probing off, `0` turns it on; unset,
    the config's `provider_probes.enabled` decides."""
    flag = env.get("KC_DISABLE_PROVIDER_PROBES", "").strip().lower()
    if flag in TRUTHY:
        return False
    if flag in FALSY:
        return True
    return bool(cfg.provider_probes.enabled)


async def probe_chain(manager: ProbeManager | None, chain: Sequence[ChainEntry],
                      enabled: bool) -> dict[str, ProbeResult]:
    """Results for every route of the chain, probed in parallel when not fresh."""
    results: dict[str, ProbeResult] = {}
    if not enabled or manager is None:
        now = time.time()
        return {e.route.id: skipped_result(e.route.id, "disabled", checked_at=now) for e in chain}

    async def one(entry: ChainEntry) -> None:
        results[entry.route.id] = await manager.get(entry)

    async with anyio.create_task_group() as tg:
        for entry in {e.route.id: e for e in chain}.values():
            tg.start_soon(one, entry)
    return {e.route.id: results[e.route.id] for e in chain}


@dataclass
class ProbePolicy:
    """What the probe results change for this run."""

    chain: list[ChainEntry]
    stream_off: dict[str, str] = field(default_factory=dict)  # route -> reason
    primary_native_off: str | None = None  # reason, when the primary must run in text mode
    notes: list[str] = field(default_factory=list)  # [capability-probe] lines


def probe_line(result: ProbeResult) -> str:
    def b(value: bool | None) -> str:
        return "n/a" if value is None else str(value).lower()

    line = (f"model={result.model_id} stream={b(result.stream_success)} "
            f"tool_stream={b(result.tool_stream_success)} json={b(result.json_mode_success)}")
    if result.skipped_reason:
        line += f" skipped={result.skipped_reason}"
    if result.error:
        line += f" error={result.error}"
    return line


def apply_probes(cfg: AgentConfig, chain: list[ChainEntry], results: Mapping[str, ProbeResult],
                 *, native: bool) -> ProbePolicy:
    policy = ProbePolicy(chain=list(chain))
    for index, entry in enumerate(chain):
        result = results.get(entry.route.id)
        if result is None:
            continue
        if result.attempted:
            policy.notes.append(probe_line(result))
        if not result.attempted:
            continue
        prefs = cfg.routing_for(entry.route.id)
        if result.stream_success is False and prefs.disable_stream_on_probe_failure:
            policy.stream_off[entry.route.id] = "capability_probe_stream_failure"
        if result.tool_stream_success is False and prefs.disable_native_tools_on_probe_failure:
            if index == 0:
                if native:
                    policy.primary_native_off = "capability_probe_tool_failure"
            elif entry.native_tools:
                policy.chain[index] = dataclasses.replace(entry, native_tools=False)
    return policy
