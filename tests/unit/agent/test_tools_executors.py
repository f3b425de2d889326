"""Every tool through both executors: in-process (a daemon thread) and Ray (a worker process).

The Ray executor is shared by this module's tests (Ray's connection is
process-global, and connecting costs seconds); it is closed when the module ends.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.tools import TOOL_SPECS
from kcd.execution.base import Executor
from kcd.execution.inprocess import InProcessExecutor
from kcd.execution.ray_plane import RayPlaneExecutor

pytestmark = pytest.mark.anyio

Check = Callable[[Path, ToolOutcome], bool]

# tool -> (arguments, check of the workspace and outcome after the call)
CASES: dict[str, tuple[dict[str, Any], Check]] = {
    "list_dir": ({"path": ".", "depth": 2}, lambda ws, o: "main.c" in o.output),
    "read_file": ({"path": "README.md"}, lambda ws, o: o.data is not None and o.data["content"] == "# demo\n"),
    "create_file": ({"path": "new/x.txt", "content": "x"}, lambda ws, o: (ws / "new/x.txt").read_text() == "x"),
    "create_file_from_block": (
        {"file_name": "README.md", "content": "# block\n"},
        lambda ws, o: (ws / "README.md").read_text() == "# block\n",
    ),
    "apply_search_replace": (
        {"file_name": "README.md", "search": "demo", "replace": "done"},
        lambda ws, o: (ws / "README.md").read_text() == "# done\n",
    ),
    "apply_unified_patch": (
        {"patch": "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# demo\n+# patched\n"},
        lambda ws, o: (ws / "README.md").read_text() == "# patched\n",
    ),
    "run_shell": ({"command": "cat README.md"}, lambda ws, o: o.data is not None and o.data["stdout"] == "# demo\n"),
    "mark_task_complete": ({}, lambda ws, o: o.completes),
    "bash": (
        # In the workspace: kcd's own (in-process) or a Ray node's copy, whose files come back.
        {"command": "echo $PWD > pwd.txt; cat pwd.txt", "timeout": 5000},
        lambda ws, o: o.data is not None and (ws / "pwd.txt").read_text().strip() == o.data["stdout"].strip()
        and o.data["stdout"].strip() in (os.path.realpath(ws),) + ((o.data["stdout"].strip(),)
                                                                     if "kylecode-ws" in o.data["stdout"] else ()),
    ),
    "read": ({"filePath": "src/main.c", "offset": 0, "limit": 1}, lambda ws, o: "int main" in o.output),
    "write": ({"filePath": "w.txt", "content": "w\n"}, lambda ws, o: (ws / "w.txt").read_text() == "w\n"),
    "edit": (
        {"filePath": "src/main.c", "oldString": "return 0", "newString": "return 1"},
        lambda ws, o: "return 1" in (ws / "src/main.c").read_text(),
    ),
    "glob": ({"pattern": "**/*.c"}, lambda ws, o: o.data is not None and o.data["files"] == ["src/main.c"]),
    "grep": ({"pattern": r"main\(", "include": "*.c"}, lambda ws, o: "src/main.c:1:" in o.output),
    "list": ({}, lambda ws, o: "  src/\n    main.c" in o.output),
    "patch": (
        {"patchText": "*** Begin Patch\n*** Add File: added.txt\n+added\n*** End Patch\n"},
        lambda ws, o: (ws / "added.txt").read_text() == "added\n",
    ),
}


def test_every_tool_has_a_case() -> None:
    assert set(CASES) == set(TOOL_SPECS)


@pytest.fixture(scope="module")
async def ray_executor(ray_cluster: str, ray_client_env: dict[str, str],
                       tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RayPlaneExecutor]:
    home = tmp_path_factory.mktemp("ray-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(ray_client_env, HOME=str(home))
    executor = RayPlaneExecutor(ray_cluster, init_timeout=60, log_path=home / "driver.log", environ=env)
    async with anyio.create_task_group() as tg:
        await executor.start(tg)
        await executor.wait_ready(60)
        try:
            yield executor
        finally:
            await executor.aclose()


@pytest.fixture
def executor(request: pytest.FixtureRequest, mode: str) -> Executor:
    if mode == "ray":
        return request.getfixturevalue("ray_executor")  # type: ignore[no-any-return]
    return InProcessExecutor()


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "README.md").write_text("# demo\n")
    return root


@pytest.mark.parametrize("tool", list(CASES))
@pytest.mark.parametrize("mode", ["in-process", pytest.param("ray", marks=pytest.mark.ray)])
async def test_tool_through_executor(executor: Executor, mode: str, ws: Path, tool: str) -> None:
    args, check = CASES[tool]
    [outcome] = await executor.run_turn(str(ws), [ToolInvocation("c1", tool, args)], ToolSettings(shell_timeout_s=20))
    assert outcome.ok, outcome.output
    assert (outcome.call_id, outcome.name) == ("c1", tool)
    assert check(ws, outcome), outcome.output
    if outcome.data is not None and "worker_pid" in outcome.data:
        in_this_process = outcome.data["worker_pid"] == os.getpid()
        assert in_this_process == (mode == "in-process")


@pytest.mark.parametrize("mode", ["in-process", pytest.param("ray", marks=pytest.mark.ray)])
async def test_parallel_reply_and_policy_through_executor(executor: Executor, mode: str, ws: Path) -> None:
    reads = [ToolInvocation(f"r{i}", "read", {"filePath": "README.md"}) for i in range(4)]
    outcomes = await executor.run_turn(str(ws), [*reads, ToolInvocation("g", "glob", {"pattern": "*"})], ToolSettings())
    assert [o.call_id for o in outcomes] == ["r0", "r1", "r2", "r3", "g"] and all(o.ok for o in outcomes)
    refused = await executor.run_turn(
        str(ws),
        [ToolInvocation("a", "bash", {"command": "true"}), ToolInvocation("b", "run_shell", {"command": "true"})],
        ToolSettings(),
    )
    assert all(o.output.startswith("<VALIDATION_ERROR>") for o in refused)
