"""Answers kcd's capability probes (`kcd.providers.probes`) for any model.

A probe is a request whose first system message starts with "You are a
diagnostic probe". The answer is what a capable model would give: a call to
the first offered tool with ``{"echo": "ping"}``, else ``{"pong":"yes"}`` in
JSON mode, else ``PING``. Faults are applied afterwards by the delivery layer,
so a faulted route fails its probes the way a real one would (``stream_cut``
breaks the stream probe, ``tool_stripping`` turns the call into prose).

`AnswersProbes` is a mixin listed before an agent class, so the registered
agents stay instances of their own class; `behaviours.default_behaviours`
registers only such agents. Scripts a test adds itself answer probes with
their own script, which is how a model that ignores JSON mode is simulated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kcd.simulator.agents_common import CallSpec, Reply, message_text

__all__ = ["PROBE_SYSTEM_PREFIX", "AnswersProbes", "is_probe", "probe_reply"]

PROBE_SYSTEM_PREFIX = "You are a diagnostic probe"


def is_probe(request: Mapping[str, Any]) -> bool:
    for m in request.get("messages") or ():
        if isinstance(m, dict) and m.get("role") == "system":
            return message_text(m).startswith(PROBE_SYSTEM_PREFIX)
    return False


def _tool_name(tool: Any) -> str:
    fn = tool.get("function") if isinstance(tool, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    return name if isinstance(name, str) and name else "kc_probe_noop"


def probe_reply(request: Mapping[str, Any]) -> Reply | None:
    """The answer to a probe; None when `request` is not one."""
    if not is_probe(request):
        return None
    tools = request.get("tools")
    if isinstance(tools, list) and tools:
        return Reply(tool_calls=[CallSpec(_tool_name(tools[0]), {"echo": "ping"})])
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return Reply(content='{"pong":"yes"}')
    return Reply(content="PING")


class AnswersProbes:
    """Mixin: probes are answered here, every other request by the next class in the MRO."""

    def reply(self, request: dict[str, Any]) -> Reply:
        answer = probe_reply(request)
        if answer is not None:
            return answer
        return super().reply(request)  # type: ignore[misc]  # the agent class mixed in after us
