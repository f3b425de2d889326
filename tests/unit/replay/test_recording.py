"""Reading a recording: responses turned into script turns, and a missing or corrupt file
refused with a 422 that names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kcd.replay.config import REPLAY_ROUTE, replay_config
from kcd.replay.recording import RecordingUnusable, load_recording, recorded_turn


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def completion(content=None, calls=()) -> dict:
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, n, a in calls]
    return {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}]}


def make_run(tmp_path: Path, steps: int = 2, exit_reason: str = "mark_task_complete") -> Path:
    run = tmp_path / "run"
    _write(run / "meta" / "run.json", {"run_id": "r1", "config_path": "/x/c.yaml", "route": "mock/dev",
                                       "task": "t", "max_steps": 5, "resolved_config": {"providers": {}}})
    _write(run / "result.json", {"steps": steps, "exit_reason": exit_reason})
    _write(run / "meta" / "launch.json", {"run_id": "r1", "max_steps": 5, "seed_dir": None})
    _write(run / "meta" / "events.jsonl", json.dumps({"seq": 1, "ts": "t", "run_id": "r1", "type": "run.start",
                                                      "data": {"native_tools": True, "stream": True}}) + "\n")
    _write(run / "raw" / "responses" / "turn_1.response.json",
           completion(calls=[("call_9", "read_file", '{"path": "a"}')]))
    _write(run / "raw" / "responses" / "turn_2.response.json", completion("done"))
    return run


def test_a_recording_has_its_turns_tool_mode_and_streaming(tmp_path: Path) -> None:
    rec = load_recording(make_run(tmp_path))
    assert (rec.run_id, rec.steps, rec.native_tools, rec.stream, rec.max_steps) == ("r1", 2, True, True, 5)
    assert rec.turns[0].tool_calls[0].id == "call_9" and rec.turns[0].tool_calls[0].arguments == '{"path": "a"}'
    assert rec.turns[1].content == "done" and rec.seed_archive is None


def test_a_last_turn_without_an_answer_is_fine_after_a_provider_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, steps=3, exit_reason="provider_error")
    assert len(load_recording(run).turns) == 2


@pytest.mark.parametrize("damage,code", [("missing", "recording_incomplete"), ("corrupt", "recording_corrupt"),
                                         ("shape", "recording_corrupt")])
def test_a_missing_or_corrupt_response_is_a_422_naming_the_file(tmp_path: Path, damage: str, code: str) -> None:
    run = make_run(tmp_path)
    path = run / "raw" / "responses" / "turn_1.response.json"
    if damage == "missing":
        path.unlink()
    else:
        path.write_text("{not json" if damage == "corrupt" else '{"choices": []}')
    with pytest.raises(RecordingUnusable) as info:
        load_recording(run)
    assert info.value.status == 422 and info.value.code == code
    assert str(path) in info.value.message


def test_recorded_turn_refuses_what_is_not_a_completion(tmp_path: Path) -> None:
    with pytest.raises(RecordingUnusable):
        recorded_turn({"choices": [{"message": {"content": 5}}]}, tmp_path / "x.json")


def test_the_replay_config_has_one_keyless_route_and_keeps_the_rest() -> None:
    resolved = {
        "providers": {"default_model": "openrouter/x-ai/grok-4-fast", "models": [
            {"id": "openrouter/x-ai/grok-4-fast", "adapter": "openrouter", "params": {"temperature": 0.1},
             "routing": {"fallback_models": ["openai/gpt-4o-mini"]}, "retry": {"max_attempts_per_turn": 2}},
            {"id": "openai/gpt-4o-mini", "adapter": "openai"}]},
        "provider_tools": {"use_native": None}, "tools": {"registry": {"include": ["read_file"]}},
        "dialect_profiles": {"x-ai/*": {"preferred_dialects": ["pythonic"]}, "*": {"preferred_dialects": ["json"]}},
        "max_iterations": 9}
    cfg = replay_config(resolved, route="openrouter/x-ai/grok-4-fast", base_url="http://127.0.0.1:1/ns/r/v1",
                        native_tools=False, stream=True)
    assert cfg["providers"] == {"default_model": REPLAY_ROUTE, "models": [{
        "params": {"temperature": 0.1}, "retry": {"max_attempts_per_turn": 2}, "id": REPLAY_ROUTE,
        "adapter": "mock", "base_url": "http://127.0.0.1:1/ns/r/v1", "stream": True, "native_tools": False}]}
    assert cfg["provider_tools"]["use_native"] is False and cfg["provider_probes"]["enabled"] is False
    assert cfg["dialect_profiles"] == {REPLAY_ROUTE: {"preferred_dialects": ["pythonic"]}}
    assert cfg["tools"] == resolved["tools"] and cfg["max_iterations"] == 9
    assert resolved["providers"]["default_model"] == "openrouter/x-ai/grok-4-fast"  # not modified


def test_relative_pack_paths_and_tool_dirs_are_written_as_the_run_resolved_them() -> None:
    resolved = {"providers": {}, "prompts": {"packs": {"base": {"system": "prompts/system.md"}}},
                "tools": {"defs_dir": "defs", "registry": {"include": ["read_file"]}}}
    cfg = replay_config(resolved, route="mock/dev", base_url="http://127.0.0.1:1/v1", native_tools=True,
                        stream=False, pack_paths={"@pack(base).system": "/etc/kc/prompts/system.md"},
                        tool_dirs=["/etc/kc/defs", "/opt/more"])
    assert cfg["prompts"]["packs"]["base"]["system"] == "/etc/kc/prompts/system.md"
    assert cfg["tools"]["defs_dir"] == "/etc/kc/defs"
    assert cfg["tools"]["registry"] == {"include": ["read_file"], "paths": ["/etc/kc/defs", "/opt/more"]}
