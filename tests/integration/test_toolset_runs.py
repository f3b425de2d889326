"""End to end: the OpenCode tool set and every text format in real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import CONFIGS

HERE = Path(__file__).parent / "configs"
TASK = "@" + str(CONFIGS / "tasks" / "enumerate_workspace.md")
SEED = CONFIGS / "workspaces" / "c_project"


@pytest.fixture
def sim_kcd(make_kcd, sim):
    sim.reset()
    return make_kcd("--executor", "in-process",
                    env_extra={"OPENROUTER_BASE_URL": sim.api_base, "OPENAI_BASE_URL": sim.api_base})


def _end(proc) -> dict:
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("config,native", [
    ("opencode_openrouter_glm46_c_fs_perturn_append.yaml", True),
    ("opencode_openrouter_deepseek_v32exp_c_fs_perturn_append.yaml", True),
    ("opencode_openai_gpt4o_mini_c_fs_perturn_append.yaml", False),
    ("opencode_grok4fast_c_fs_v2.yaml", False),
])
def test_canonical_opencode_configs_complete_the_enumerate_task(sim_kcd, sim, config, native):
    proc = sim_kcd.kcctl("run", str(CONFIGS / config), "--task", TASK, "--workspace", str(SEED), "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    end = _end(proc)
    assert end["data"]["exit_reason"] == "mark_task_complete"
    run_dir = Path(end["data"]["run_dir"])
    events = [json.loads(x) for x in (run_dir / "meta/events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["type"] == "run.start")
    assert start["data"]["native_tools"] is native
    assert {"read", "list", "bash", "patch"} <= set(start["data"]["tools"]) | {
        t for e in events if e["type"] == "mode.transition" for t in e["data"]["tools"]}
    first = json.loads((run_dir / "raw/requests/turn_1.request.json").read_text())
    if native:
        assert first["tools"]
    else:
        assert not first["tools"]
        system = first["messages"][0]["content"]
        assert "<FUNCTIONS>" in system or "<FUNCTIONS>" in first["messages"][-1]["content"]


@pytest.mark.parametrize("fmt", ["search_replace", "begin_patch", "unified_diff", "whole_file"])
@pytest.mark.parametrize("mode", ["native", "text"])
def test_editor_edits_an_uploaded_file_and_apply_writes_it_back(kcd, tmp_path, fmt, mode):
    ws = tmp_path / "proj"
    ws.mkdir()
    (ws / "README.md").write_text("# Title\n\nold text here\n")
    task = f'edit README.md: replace "old text" with "new text" format={fmt}'
    proc = kcd.kcctl("run", str(HERE / f"editor_{mode}.yaml"), "--task", task, "--workspace", str(ws),
                     "--apply")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert (ws / "README.md").read_text() == "# Title\n\nnew text here\n"
    assert "applied: modified README.md" in proc.stderr
