"""Finalisation on every exit, and a last resort that a failing disk cannot break.

RunManager runs with a stand-in agent (blocks like a run waiting on a tool) and a
real event log, run directory and state store; the disk failures are real ones
from /dev/full (ENOSPC), not raised by hand.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from types import SimpleNamespace

import anyio
import msgspec
import pytest

import kcd.runs
from kcd.agent.loop import RunServices
from kcd.api.types import Event, RunRequest
from kcd.observe.eventlog import EventLog, append_event, read_events
from kcd.observe.recovery import finish_interrupted
from kcd.observe.rundir import RunDir
from kcd.observe.run_metrics import RunMetrics
from kcd.runs import RunManager
from kcd.state import StateStore
from kcd.workspaces.uploads import UploadStore

pytestmark = pytest.mark.anyio
SHELL_CONFIG = Path(__file__).resolve().parents[1] / "integration" / "configs" / "shell.yaml"


class StuckAgent:
    """Takes two steps, then waits like a run inside `sleep 60`."""

    def __init__(self, spec, services, rundir, events):
        self.events, self.steps = events, 0
        self.metrics, self.served_route, self.last_text = RunMetrics(), None, None

    async def run(self):
        for turn in (1, 2):
            self.steps = turn
            self.events.emit("turn.start", turn=turn)
        await anyio.sleep_forever()


@pytest.fixture
def stuck_agent(monkeypatch):
    monkeypatch.setattr(kcd.runs, "AgentRun", StuckAgent)


def _manager(tmp_path: Path, tg) -> RunManager:
    async def release(workspace: str) -> None:
        pass

    executor = SimpleNamespace(mode="in-process", state="ready", release=release)
    return RunManager(runs_root=tmp_path / "runs", store=StateStore(tmp_path / "state.db"),
                      services=RunServices(dispatcher=None, executor=executor),  # type: ignore[arg-type]
                      task_group=tg, uploads=UploadStore(tmp_path / "uploads", max_workspace_bytes=1 << 20))


async def _submit(runs: RunManager) -> str:
    info = await runs.submit(RunRequest(config_text=SHELL_CONFIG.read_text(), task="sleep 60"), None)
    with anyio.fail_after(5):
        while runs._active[info.id].events.last_seq < 2:
            await anyio.sleep(0.01)
    return info.id


def _last_event(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta/events.jsonl").read_text().splitlines()[-1])


async def test_a_cancel_from_outside_the_runs_scope_still_finalises(tmp_path, stuck_agent):
    # A task-group teardown cancels the run's task from outside its own scope: the old code
    # skipped finalisation (no result.json, no run.end).
    async with anyio.create_task_group() as tg:
        runs = _manager(tmp_path, tg)
        run_id = await _submit(runs)
        tg.cancel_scope.cancel()
    run_dir = Path(runs.store.get_run(run_id).run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["exit_reason"] == "cancelled" and result["steps"] == 2 and result["status"] == "cancelled"
    end = _last_event(run_dir)
    assert end["type"] == "run.end" and end["data"]["status"] == "cancelled"
    assert (run_dir / "workspace.diff").is_file() and (run_dir / "meta/run.json").is_file()
    assert runs.store.get_run(run_id).status == "cancelled"


async def test_enospc_in_finalisation_fails_the_run_not_the_task_group(tmp_path, stuck_agent, monkeypatch):
    # Every write of the failing run hits a full device: result.json and the event log. The
    # old last resort wrote run.end unguarded and its ENOSPC cancelled every task in the group.
    write = RunDir.write_bytes_sync
    full_dirs: set[Path] = set()

    def write_or_enospc(self, relpath, data):
        if self.path in full_dirs:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, relpath, data)

    monkeypatch.setattr(RunDir, "write_bytes_sync", write_or_enospc)
    async with anyio.create_task_group() as tg:
        runs = _manager(tmp_path, tg)
        survivor = await _submit(runs)
        doomed = await _submit(runs)
        active = runs._active[doomed]
        active.events._fd = os.open("/dev/full", os.O_WRONLY)  # the log's disk is full too
        full_dirs.add(Path(active.info.run_dir))
        follower = active.events.follow(0)
        runs.cancel(doomed)
        with anyio.fail_after(10):
            await active.done.wait()
        lines = [line async for line in follower]
        # The failing run is marked, the other one never noticed, and the group still runs.
        info = runs.get(doomed)
        assert info.status == "failed" and info.exit_reason == "finalise_error", info
        assert "No space left" in info.error
        end = msgspec.json.decode(lines[-1], type=Event)
        assert end.type == "run.end" and end.data["exit_reason"] == "finalise_error"
        assert runs.get(survivor).status == "running" and not tg.cancel_scope.cancel_called
        runs.cancel(survivor)
        with anyio.fail_after(10):
            await runs._active[survivor].done.wait()
    assert json.loads((Path(runs.get(survivor).run_dir) / "result.json").read_text())["exit_reason"] == "cancelled"


def test_emit_on_a_full_disk_raises_and_publishes_nothing(tmp_path):
    log = EventLog("r1", tmp_path / "events.jsonl")
    log.emit("turn.start", turn=1)
    os.close(log._fd)
    log._fd = os.open("/dev/full", os.O_WRONLY)
    with pytest.raises(OSError) as caught:
        log.emit("turn.start", turn=2)
    assert caught.value.errno == errno.ENOSPC and log.last_seq == 1
    assert log.finish("run.end", status="failed") is False  # never raises
    assert log.closed and log.last_seq == 2


def test_recovery_finishes_a_killed_run_from_disk(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "workspace").mkdir(parents=True)
    (run_dir / "meta").mkdir()
    (run_dir / "workspace" / "new.txt").write_text("made by the run\n")
    path = run_dir / "meta" / "events.jsonl"
    for seq, turn in ((1, 1), (2, 2)):
        append_event(path, "r1", seq, "turn.start", {"turn": turn})
    with path.open("ab") as fh:
        fh.write(b'{"seq":3,"ts":"x","run_id":"r1","type":"tool.ca')  # the write kill -9 cut
    end = finish_interrupted("r1", run_dir, scrub=None, max_workspace_bytes=1 << 20)
    assert (end.status, end.exit_reason, end.steps) == ("interrupted", "interrupted", 2)
    events = read_events(path)
    assert [e.seq for e in events] == [1, 2, 3] and events[-1].type == "run.end"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "interrupted" and result["steps"] == 2 and result["completed"] is False
    assert "+made by the run" in (run_dir / "workspace.diff").read_text()
    again = finish_interrupted("r1", run_dir, scrub=None, max_workspace_bytes=1 << 20)  # idempotent
    assert again.steps == 2 and len(read_events(path)) == 3
