"""The per-reply policy (what may run together, and in which order) and the parallel
execution of read-only calls."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from kcd.agent.calls import DEFAULT_NONBLOCKING_TOOLS, GroupRule, ToolInvocation, ToolLimit, ToolSettings
from kcd.agent.tools import execute_calls
from kcd.agent.tools.reading import read_file
from kcd.agent.tools.results import Result
from kcd.config.agent_schema import DEFAULT_NONBLOCKING_TOOLS as CONFIG_DEFAULT_NONBLOCKING


def call(name: str, call_id: str, **args: object) -> ToolInvocation:
    return ToolInvocation(call_id=call_id, name=name, args=dict(args))


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    for name in ("a", "b", "c", "d"):
        (root / f"{name}.txt").write_text(f"{name}\n")
    return root


class Probe:
    """An injected read_file that records how many calls run at once."""

    def __init__(self, delay: float = 0.15) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.threads: set[int] = set()

    def __call__(self, root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Any) -> Result:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.threads.add(threading.get_ident())
        try:
            time.sleep(self.delay)
            return read_file(root, args, settings, cancel)
        finally:
            with self.lock:
                self.active -= 1


def reads(n: int) -> list[ToolInvocation]:
    return [call("read_file", f"r{i}", path=f"{'abcd'[i % 4]}.txt") for i in range(n)]


# --------------------------------------------------------------------------- settings


def test_default_nonblocking_tools_match_the_config_default() -> None:
    assert DEFAULT_NONBLOCKING_TOOLS == CONFIG_DEFAULT_NONBLOCKING


def test_settings_serialise_for_ray_workers() -> None:
    settings = ToolSettings(
        groups=(GroupRule("fs", ("read_*", "list_dir"), max_parallel=2, barrier_after="run_shell"),),
        at_most_one_of=("run_shell", "bash"),
        max_per_turn=(ToolLimit("read_file", 3),),
        isolation="bwrap",
    )
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(settings), type=ToolSettings) == settings
    assert msgspec.json.decode(msgspec.json.encode(settings), type=ToolSettings) == settings


# --------------------------------------------------------------------------- refusals


def test_run_shell_and_bash_together_is_a_validation_error(ws: Path) -> None:
    outcomes = execute_calls(
        str(ws), [call("run_shell", "a", command="touch one"), call("bash", "b", command="touch two")], ToolSettings()
    )
    assert all(o.output.startswith("<VALIDATION_ERROR>At most one run_shell/bash call") for o in outcomes)
    assert not (ws / "one").exists() and not (ws / "two").exists()


def test_max_per_turn_from_settings(ws: Path) -> None:
    settings = ToolSettings(max_per_turn=(ToolLimit("read_file", 2),))
    outcomes = execute_calls(str(ws), [call("create_file", "w", path="new.txt"), *reads(3)], settings)
    assert all(not o.ok and o.data == {"policy_error": "VALIDATION_ERROR"} for o in outcomes)
    assert "read_file may be called at most 2 time(s) per reply; this reply had 3" in outcomes[0].output
    assert not (ws / "new.txt").exists()
    assert all(o.ok for o in execute_calls(str(ws), reads(2), settings))


def test_at_most_one_of(ws: Path) -> None:
    settings = ToolSettings(at_most_one_of=("create_file", "write"))
    outcomes = execute_calls(
        str(ws), [call("create_file", "a", path="x.txt"), call("write", "b", filePath="y.txt", content="y")], settings
    )
    assert all(o.output.startswith("<CONSTRAINT_ERROR>At most one call of create_file, write") for o in outcomes)
    assert not (ws / "x.txt").exists() and not (ws / "y.txt").exists()
    assert all(o.ok for o in execute_calls(str(ws), [call("create_file", "a", path="x.txt"), *reads(2)], settings))


def test_mark_task_complete_is_alone_even_with_reads(ws: Path) -> None:
    outcomes = execute_calls(str(ws), [*reads(2), call("mark_task_complete", "m")], ToolSettings())
    assert all(o.output.startswith("<CONSTRAINT_ERROR>") and not o.completes for o in outcomes)


# --------------------------------------------------------------------------- parallel reads


def test_nonblocking_reads_really_overlap(ws: Path) -> None:
    barrier = threading.Barrier(2, timeout=5)

    def meet(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Any) -> Result:
        barrier.wait()  # raises BrokenBarrierError after 5 s unless both calls run at once
        return read_file(root, args, settings, cancel)

    started = time.monotonic()
    outcomes = execute_calls(str(ws), reads(2), ToolSettings(), handlers={"read_file": meet})
    assert time.monotonic() - started < 2
    assert all(o.ok for o in outcomes), [o.output for o in outcomes]


def test_parallel_results_keep_call_order_and_own_failures(ws: Path) -> None:
    delays = {"a.txt": 0.2, "b.txt": 0.0, "c.txt": 0.1}

    def staggered(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Any) -> Result:
        time.sleep(delays.get(args["path"], 0))
        return read_file(root, args, settings, cancel)

    calls = [
        call("read_file", "r0", path="a.txt"),
        call("read_file", "r1", path="missing.txt"),
        call("read_file", "r2", path="c.txt"),
        call("glob", "g", pattern="*.txt"),
    ]
    outcomes = execute_calls(str(ws), calls, ToolSettings(), handlers={"read_file": staggered})
    assert [o.call_id for o in outcomes] == ["r0", "r1", "r2", "g"]
    assert [o.ok for o in outcomes] == [True, False, True, True]  # one failure cancels nothing
    assert "no such file: 'missing.txt'" in outcomes[1].output
    assert outcomes[0].data is not None and outcomes[0].data["content"] == "a\n"


def test_group_max_parallel_bounds_concurrency(ws: Path) -> None:
    probe = Probe()
    settings = ToolSettings(groups=(GroupRule("fs", ("read_*",), max_parallel=2),))
    outcomes = execute_calls(str(ws), reads(6), settings, handlers={"read_file": probe})
    assert all(o.ok for o in outcomes)
    assert probe.peak == 2


@pytest.mark.parametrize(
    "settings",
    [
        ToolSettings(groups=(GroupRule("fs", ("read_file",), max_parallel=1),)),  # a serialising group
        ToolSettings(groups=(GroupRule("fs", ("*",), max_parallel=4, barrier_after="list_dir"),)),  # barrier tool
        ToolSettings(nonblocking_tools=("list_dir",)),  # read_file not declared non-blocking
        ToolSettings(max_parallel_calls=1),
    ],
    ids=["max_parallel_1", "barrier", "not_nonblocking", "one_worker"],
)
def test_sequential_when_policy_requires(ws: Path, settings: ToolSettings) -> None:
    probe = Probe(delay=0.05)
    outcomes = execute_calls(
        str(ws), [*reads(3), call("list_dir", "l", path=".")], settings, handlers={"read_file": probe}
    )
    assert all(o.ok for o in outcomes)
    assert probe.peak == 1


def test_a_blocking_call_makes_the_reply_sequential(ws: Path) -> None:
    probe = Probe(delay=0.05)
    calls = [*reads(3), call("run_shell", "s", command="true")]
    outcomes = execute_calls(str(ws), calls, ToolSettings(), handlers={"read_file": probe})
    assert all(o.ok for o in outcomes) and probe.peak == 1


def test_writes_never_run_in_parallel_even_if_declared_nonblocking(ws: Path) -> None:
    # The default nonblocking list names edit tools; two edits of one reply may touch one file.
    calls = [
        call("apply_search_replace", "e1", file_name="a.txt", search="a", replace="b"),
        call("apply_search_replace", "e2", file_name="a.txt", search="b", replace="c"),
    ]
    outcomes = execute_calls(str(ws), calls, ToolSettings())
    assert all(o.ok for o in outcomes)
    assert (ws / "a.txt").read_text() == "c\n"


def test_cancelled_parallel_reply(ws: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    outcomes = execute_calls(str(ws), reads(3), ToolSettings(), cancel)
    assert all(o.data == {"cancelled": True} and "the turn was cancelled" in o.output for o in outcomes)


def test_sequential_failure_reports_each_remaining_call(ws: Path) -> None:
    calls = [
        call("edit", "e", filePath="a.txt", oldString="zzz", newString="x"),
        call("read_file", "r", path="a.txt"),
        call("run_shell", "s", command="touch ran"),
    ]
    outcomes = execute_calls(str(ws), calls, ToolSettings())
    assert [o.call_id for o in outcomes] == ["e", "r", "s"]
    assert not outcomes[0].ok and "oldString text not found" in outcomes[0].output
    for o in outcomes[1:]:
        assert o.data == {"cancelled": True}
        assert o.output.startswith(
            f'<TOOL_ERROR tool="{o.name}">Not executed: the earlier call edit (call_id e) failed'
        )
    assert not (ws / "ran").exists()
