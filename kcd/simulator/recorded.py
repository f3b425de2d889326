"""A recorded script: a run's model responses, served back in order (`kcctl replay`).

Loaded into one namespace with ``POST /ns/<name>/_sim/script`` (a `ScriptLoad`); the
namespace's requests for the model `replay` then get the recorded turns one after the
other, each with the tool call ids and argument text the model sent (arguments that
are not JSON included, so a rejected call is rejected again). Capability probes are
answered as by every agent and do not use a turn. A request past the last turn is
refused with 400 `replay_exhausted` (a request fault: the dispatcher neither retries
nor falls back), and counted, so the replay can end as `replay_exhausted`.
``GET .../_sim/script`` reports the cursor; ``DELETE .../_sim/faults`` drops the script.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kcd.simulator.agents_common import CallSpec, Reply
from kcd.simulator.agents_probe import probe_reply

__all__ = ["SCRIPT_MODEL", "RecordedCall", "RecordedScript", "RecordedTurn", "ScriptExhausted", "ScriptLoad"]

SCRIPT_MODEL = "replay"  # the model name a namespace's script answers


class RecordedCall(msgspec.Struct, frozen=True):
    id: str
    name: str
    arguments: str  # exactly as recorded; need not be JSON


class RecordedTurn(msgspec.Struct, frozen=True, kw_only=True):
    """One turn's final model response, reduced to what the agent loop reads."""

    content: str | None = None
    tool_calls: list[RecordedCall] = []
    finish_reason: str | None = None


class ScriptLoad(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /_sim/script``: the turns, and which run they come from (shown in status)."""

    turns: list[RecordedTurn]
    source: str | None = None


class ScriptExhausted(Exception):
    """A request after the script's last turn."""


def _call_spec(call: RecordedCall) -> CallSpec:
    try:
        args = msgspec.json.decode(call.arguments or "{}")
    except msgspec.DecodeError:
        args = {}
    return CallSpec(call.name, args if isinstance(args, dict) else {})


class RecordedScript:
    """The recorded turns of one namespace and how far they have been served."""

    def __init__(self, load: ScriptLoad) -> None:
        self.turns = list(load.turns)
        self.source = load.source
        self.served = 0
        self.over_asked = 0  # requests refused because every turn had been served

    def reply(self, request: dict[str, Any]) -> Reply:
        probe = probe_reply(request)
        if probe is not None:
            return probe
        if self.served >= len(self.turns):
            self.over_asked += 1
            raise ScriptExhausted(f"the recorded run has {len(self.turns)} model response(s) and all were "
                                  "served; the replay asked for another")
        turn = self.turns[self.served]
        self.served += 1
        return Reply(content=turn.content, tool_calls=[_call_spec(c) for c in turn.tool_calls],
                     finish_reason=turn.finish_reason, call_ids=[c.id for c in turn.tool_calls],
                     raw_arguments=[c.arguments for c in turn.tool_calls])

    def status(self) -> dict[str, Any]:
        return {"source": self.source, "turns": len(self.turns), "served": self.served,
                "over_asked": self.over_asked, "exhausted": self.over_asked > 0}
