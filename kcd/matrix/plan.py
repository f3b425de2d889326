"""The original's plan file (`docs/phase_4/regression_matrix_plan.json`), read as is.

    {"axes": {"streams": [true, false], "tool_turn": [true, false]},   # or both keys at the top
     "scenarios": [{"name", "config", "max_steps", "stream", "tool_turn",
                    "model_override", "expected": {...}}, ...]}

A plan scenario that leaves `stream` or `tool_turn` out is expanded over that
axis: `plan_openai_direct` becomes `plan_openai_direct_stream_tools`,
`..._stream_text`, `..._nostream_tools` and `..._nostream_text`. So one line
per provider gives the providers × stream × tool-turn grid.

The original's `expected` keys: `fallback_target` and `fallback_allowed`
(false: no fallback) are checked; `stream_policy` and `json_mode` were prose
in the original and are kept in the description. Every cell also checks its
axes: native tools on or off as `tool_turn` says and, for a cell without its
own `expect` (a healthy one), streamed calls on the primary exactly when
`stream` is on. kcd additions per scenario: `description`, `fallbacks`, `probes`,
`fault`, `expect` (the scenario schema's), `task`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta, field

from kcd.api.typeinfo import prepare_types
from kcd.config.keypath import ConfigError
from kcd.matrix.scenario import (
    DEFAULT_TASK,
    NAME_PATTERN,
    Expect,
    FaultRef,
    RouteSetup,
    Scenario,
    ScenarioDoc,
    decode_document,
    normalise,
)

__all__ = ["load_plan_text"]


class _S(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class PlanExpected(_S, kw_only=True, forbid_unknown_fields=True):
    fallback_target: str | None = None
    fallback_allowed: bool | None = None
    stream_policy: str | None = None  # prose in the original
    json_mode: str | None = None  # prose in the original


class PlanAxes(_S, kw_only=True, forbid_unknown_fields=True):
    streams: Annotated[list[bool], Meta(min_length=1)] = field(default_factory=lambda: [True, False])
    tool_turn: Annotated[list[bool], Meta(min_length=1)] = field(default_factory=lambda: [True, False])


class PlanScenario(_S, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(pattern=NAME_PATTERN)]
    config: str | None = None
    max_steps: Annotated[int, Meta(ge=1)] | None = None
    stream: bool | None = None
    tool_turn: bool | None = None
    model_override: str | None = None
    expected: PlanExpected = field(default_factory=PlanExpected)
    # kcd additions
    description: str = ""
    fallbacks: list[str] | None = None
    probes: bool | None = None
    fault: FaultRef | list[FaultRef] | None = None
    expect: Expect | None = None
    task: str = DEFAULT_TASK


class PlanDoc(_S, kw_only=True, forbid_unknown_fields=True):
    scenarios: Annotated[list[PlanScenario], Meta(min_length=1)]
    axes: PlanAxes | None = None
    streams: list[bool] | None = None
    tool_turn: list[bool] | None = None
    description: str = ""


def load_plan_text(text: str, path: str | None) -> list[Scenario]:
    file = path or "<plan>"
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(file, "$", f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(file, "$", "a plan file is a JSON object with `scenarios`")
    doc: PlanDoc = decode_document(data, PlanDoc, file)
    if doc.axes is not None and (doc.streams is not None or doc.tool_turn is not None):
        raise ConfigError(file, "$.axes", "give the axes under `axes` or at the top level, not both")
    axes = doc.axes or PlanAxes(streams=doc.streams or [True, False], tool_turn=doc.tool_turn or [True, False])
    directory = Path(path).resolve().parent if path else None
    out: list[Scenario] = []
    for i, entry in enumerate(doc.scenarios):
        streams = [entry.stream] if entry.stream is not None else axes.streams
        tools = [entry.tool_turn] if entry.tool_turn is not None else axes.tool_turn
        for stream in streams:
            for tool_turn in tools:
                name = entry.name
                if entry.stream is None:
                    name += "_stream" if stream else "_nostream"
                if entry.tool_turn is None:
                    name += "_tools" if tool_turn else "_text"
                cell = _cell(entry, name, stream, tool_turn)
                out.append(normalise(cell, file, directory, prefix=("scenarios", i)))
    return out


def _cell(entry: PlanScenario, name: str, stream: bool, tool_turn: bool) -> ScenarioDoc:
    expect = entry.expect or Expect(completed=True, exit_reason="mark_task_complete")
    wanted = entry.expected
    changes: dict = {}
    if wanted.fallback_target is not None and expect.fallback_target is None:
        changes["fallback_target"] = wanted.fallback_target
    if wanted.fallback_allowed is False and expect.fallbacks_max is None:
        changes["fallbacks_max"] = 0
    if expect.native_tools is None and expect.tool_policy in (None, "unchanged"):
        changes["native_tools"] = tool_turn
    stream_key = "routes[{primary}].stream_calls"
    if entry.expect is None:  # a healthy cell: the primary serves, streamed exactly when asked
        changes["metrics"] = {**expect.metrics, stream_key: ">0" if stream else 0}
    notes = [f"original expectation {k}: {v}" for k, v in
             (("stream_policy", wanted.stream_policy), ("json_mode", wanted.json_mode)) if v]
    description = " ".join(filter(None, [entry.description, f"(stream={'on' if stream else 'off'}, "
                                                             f"tool turn={'on' if tool_turn else 'off'})", *notes]))
    return ScenarioDoc(
        name=name, description=description, config=entry.config, task=entry.task,
        routes=RouteSetup(primary=entry.model_override, fallbacks=entry.fallbacks, stream=stream,
                          native_tools=tool_turn, probes=entry.probes, max_steps=entry.max_steps),
        fault=entry.fault, expect=msgspec.structs.replace(expect, **changes))


prepare_types(PlanDoc)  # converted in worker threads: see kcd/api/typeinfo.py
