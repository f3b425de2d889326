"""What a finished run left that a replay needs, read and checked from its run directory.

Its config (`meta/run.json` → `resolved_config`, loaded again from `config_path` so
relative pack paths resolve as they did), task, step limit, tool mode and streaming (the
`run.start` event), its final model response of each turn (`raw/responses/turn_N.response.json`)
and its seed (`meta/seed.tar.gz`, else the directory `meta/launch.json` names). A file
missing or unreadable is a `RecordingUnusable` (422) naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from kcd.errors import Unprocessable
from kcd.observe.eventlog import read_event_lines
from kcd.simulator.recorded import RecordedCall, RecordedTurn
from kcd.workspaces.seed import SEED_ARCHIVE

__all__ = ["Recording", "RecordingUnusable", "load_recording", "recorded_turn"]

# Exit reasons with a model response in the last turn; any other end may lack one.
_ANSWERED_LAST = frozenset({"mark_task_complete", "completion_detected", "empty_response", "max_steps_exhausted"})


class RecordingUnusable(Unprocessable):
    """The run directory lacks (or has a corrupt) file a replay needs (422)."""


class Recording(msgspec.Struct, kw_only=True):
    run_id: str
    run_dir: str
    config_path: str | None
    resolved_config: dict[str, Any]
    route: str
    task: str
    max_steps: int
    stream: bool
    native_tools: bool
    steps: int
    exit_reason: str | None
    turns: list[RecordedTurn]
    seed_archive: str | None  # the recorded seed, or
    seed_dir: str | None  # the directory it was seeded from (same-host API runs)
    # Pack files ("@pack(p).key" -> path) and tool directories as the run resolved them;
    # None for runs recorded before run.json kept them.
    pack_paths: dict[str, str] | None = None
    tool_dirs: list[str] | None = None


def _json(path: Path, what: str) -> Any:
    try:
        return msgspec.json.decode(path.read_bytes())
    except FileNotFoundError:
        raise RecordingUnusable("recording_incomplete", f"{path} is missing ({what})") from None
    except (OSError, msgspec.DecodeError) as exc:
        raise RecordingUnusable("recording_corrupt", f"{path} cannot be read as JSON ({what}): {exc}") from None


def recorded_turn(obj: Any, path: Path) -> RecordedTurn:
    """A chat.completion object (as written for every turn, streamed ones assembled) → its turn."""
    try:
        message = obj["choices"][0]["message"]
        finish = obj["choices"][0].get("finish_reason")
        content = message.get("content")
        calls = [RecordedCall(id=str(tc["id"]), name=str(tc["function"]["name"]),
                              arguments=tc["function"].get("arguments") or "")
                 for tc in message.get("tool_calls") or ()]
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise RecordingUnusable("recording_corrupt", f"{path} is not a chat completion "
                                                     f"(no choices[0].message: {exc!r})") from None
    if content is not None and not isinstance(content, str):
        raise RecordingUnusable("recording_corrupt", f"{path}: message content is not text")
    return RecordedTurn(content=content, tool_calls=calls, finish_reason=finish)


def _run_start(run_dir: Path) -> dict[str, Any]:
    for line in read_event_lines(run_dir / "meta" / "events.jsonl", 0):
        event = msgspec.json.decode(line)
        if event.get("type") == "run.start":
            return event.get("data") or {}
    raise RecordingUnusable("recording_incomplete",
                            f"{run_dir / 'meta' / 'events.jsonl'} has no run.start event (tool mode, streaming)")


def load_recording(run_dir: Path) -> Recording:
    meta = _json(run_dir / "meta" / "run.json", "the run's config and task")
    result = _json(run_dir / "result.json", "how the run ended")
    launch = _json(run_dir / "meta" / "launch.json", "the run's seed")
    config = meta.get("resolved_config")
    if not isinstance(config, dict) or not isinstance(meta.get("task"), str):
        raise RecordingUnusable("recording_corrupt", f"{run_dir / 'meta' / 'run.json'} has no resolved_config "
                                                     "or task")
    start = _run_start(run_dir)
    steps = int(result.get("steps") or 0)
    exit_reason = result.get("exit_reason")
    turns = []
    for n in range(1, steps + 1):
        path = run_dir / "raw" / "responses" / f"turn_{n}.response.json"
        if n == steps and not path.exists() and exit_reason not in _ANSWERED_LAST:
            break  # the last turn ended without an answer (a provider error, a cancel)
        turns.append(recorded_turn(_json(path, f"the model's response of turn {n}"), path))
    archive = run_dir / SEED_ARCHIVE
    paths = meta.get("resolved_paths") if isinstance(meta.get("resolved_paths"), dict) else {}
    return Recording(
        run_id=str(meta.get("run_id") or result.get("run_id") or run_dir.name), run_dir=str(run_dir),
        config_path=meta.get("config_path"), resolved_config=config, route=str(meta.get("route") or ""),
        task=meta["task"], max_steps=int(meta.get("max_steps") or launch.get("max_steps") or steps or 1),
        stream=bool(start.get("stream", meta.get("stream"))), native_tools=bool(start.get("native_tools")),
        steps=steps, exit_reason=exit_reason, turns=turns,
        seed_archive=str(archive) if archive.is_file() else None, seed_dir=launch.get("seed_dir"),
        pack_paths=paths.get("packs"), tool_dirs=paths.get("tool_dirs"))
