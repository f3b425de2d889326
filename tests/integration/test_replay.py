"""`kcctl replay RUN` against a real kcd over its socket, on real runs.

A replay is a new run whose model side is the recorded responses, served by the daemon's
simulator in a namespace of its own; its tool calls run afresh through the executor and
sandbox. These tests record runs (on the embedded simulator, or on provider routes pointed
at a standalone simulator), replay them, and read the report: identical replays exit 0, a
changed tree or a damaged recording is reported where it happens, and the recorded
provider is never contacted, with no key in the daemon's environment at all.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .conftest import CANARY_KEYS, CONFIGS, Kcd, base_env
from .resilience_support import GROK, model_of, read_json, write_config

DEMO = CONFIGS / "demo.yaml"
TASK = "@" + str(CONFIGS / "tasks" / "enumerate_workspace.md")
C_PROJECT = CONFIGS / "workspaces" / "c_project"
EXIT_DIVERGED = 4


def record_demo(kcd: Kcd, workspace: Path = C_PROJECT) -> str:
    proc = kcd.kcctl("run", str(DEMO), "--task", TASK, "--workspace", str(workspace), "--json", check=True)
    end = json.loads(proc.stdout.splitlines()[-1])
    assert end["type"] == "run.end" and end["data"]["exit_reason"] == "mark_task_complete", proc.stdout
    return end["run_id"]


def replay_json(kcd: Kcd, run_id: str, *args: str) -> tuple[int, dict]:
    proc = kcd.kcctl("replay", run_id, "--json", *args)
    assert proc.returncode in (0, EXIT_DIVERGED), proc.stdout + proc.stderr + kcd.log()[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def run_info(kcd: Kcd, run_id: str) -> dict:
    with kcd.http() as client:
        return client.get(f"/v1/runs/{run_id}").json()


def every_byte(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_replaying_the_demo_run_reports_no_divergence(kcd) -> None:
    recorded = record_demo(kcd)
    proc = kcd.kcctl("replay", recorded)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "✓ no divergence in 3 turn(s) / 3 tool call(s)" in proc.stdout
    assert "── turn 3 · mock/replay" in proc.stdout  # progress is shown while it runs

    with kcd.http() as client:
        runs = client.get("/v1/runs").json()["runs"]
    replays = [r for r in runs if r.get("replay_of") == recorded]
    assert len(replays) == 1 and replays[0]["id"] != recorded
    replay = replays[0]
    assert replay["status"] == "completed" and replay["exit_reason"] == "mark_task_complete"
    run_dir = Path(replay["run_dir"])
    assert run_dir != Path(run_info(kcd, recorded)["run_dir"])
    report = read_json(run_dir / "replay.json")
    assert report["identical"] is True and report["divergences"] == []
    assert (report["recorded_run"], report["replay_run"]) == (recorded, replay["id"])
    assert (report["turns_compared"], report["calls_compared"], report["responses_served"]) == (3, 3, 3)
    assert read_json(run_dir / "meta" / "run.json")["replay_of"] == recorded
    # The tool calls really ran again, in the replay's own workspace from the recorded seed.
    results = read_json(run_dir / "provider_native" / "tool_results" / "turn_2.json")
    assert results[0]["fn"] == "read_file" and "protofs" in results[0]["out"]
    assert (run_dir / "workspace" / "README.md").read_bytes() == (C_PROJECT / "README.md").read_bytes()
    # Same sanitised artifacts as any run; the daemon's canary keys appear nowhere.
    blob = every_byte(run_dir) + proc.stdout.encode() + proc.stderr.encode() + kcd.log().encode()
    for key in CANARY_KEYS.values():
        assert key.encode() not in blob
    # The report is served too, and --no-follow returns at once with the new run's id.
    with kcd.http() as client:
        assert client.get(f"/v1/runs/{replay['id']}/replay").json() == report
        assert client.get(f"/v1/runs/{recorded}/replay").json()["error"]["code"] == "replay_not_found"
    detached = kcd.kcctl("replay", recorded, "--no-follow", "--json", check=True)
    assert json.loads(detached.stdout)["replay_of"] == recorded
    listing = kcd.kcctl("runs", "list", check=True).stdout
    assert f"(replay of {recorded})" in listing


def test_a_changed_readme_diverges_at_the_read_file_turn(kcd, tmp_path: Path) -> None:
    recorded = record_demo(kcd)
    changed = tmp_path / "c_project"
    shutil.copytree(C_PROJECT, changed)
    readme = changed / "README.md"
    readme.write_text(readme.read_text().replace("A toy filesystem in C", "A toy filesystem in Rust"))

    code, report = replay_json(kcd, recorded, "--workspace", str(changed))
    assert code == EXIT_DIVERGED and report["identical"] is False
    first = report["divergences"][0]
    assert (first["turn"], first["call_index"], first["tool"], first["kind"]) == (2, 0, "read_file", "result")
    assert "in C" in first["recorded"] and "in Rust" in first["replayed"]
    assert {d["turn"] for d in report["divergences"]} == {2}  # the listing (turn 1) is the same
    assert {d["field"] for d in report["divergences"]} == {"out", "data.content"}
    assert report["workspace"] == "an uploaded tree"

    human = kcd.kcctl("replay", recorded, "--workspace", str(changed))
    assert human.returncode == EXIT_DIVERGED, human.stdout + human.stderr
    assert "first at turn 2, call 0 (read_file):" in human.stdout
    assert "replay.json" in human.stdout


def test_a_damaged_recording_is_refused_naming_the_file(kcd) -> None:
    recorded = record_demo(kcd)
    run_dir = Path(run_info(kcd, recorded)["run_dir"])
    response = run_dir / "raw" / "responses" / "turn_2.response.json"
    saved = response.read_bytes()
    response.unlink()
    proc = kcd.kcctl("replay", recorded)
    assert proc.returncode == 2 and str(response) in proc.stderr and "missing" in proc.stderr, proc.stderr
    response.write_text('{"id": "chatcmpl-x", "choi')
    with kcd.http() as client:
        r = client.post(f"/v1/runs/{recorded}/replay", json={})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "recording_corrupt" and str(response) in r.json()["error"]["message"]
        assert client.post("/v1/runs/nope/replay", json={}).status_code == 404
        assert client.get("/v1/health").status_code == 200  # the daemon keeps serving
        response.write_bytes(saved)
        assert client.post(f"/v1/runs/{recorded}/replay", json={"bogus": 1}).status_code == 400
    assert kcd.kcctl("replay", recorded).returncode == 0


def _keyless_env(home: Path, sim_base: str) -> dict[str, str]:
    """No provider key at all; the recorded provider's URL still points at the simulator,
    so a request that went there would be counted."""
    env = {k: v for k, v in base_env(home).items() if not k.endswith("_API_KEY")}
    env.update(OPENROUTER_BASE_URL=sim_base, OPENAI_BASE_URL=sim_base)
    return env


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
def test_replay_needs_no_key_and_never_calls_the_recorded_provider(kcd_root: Path, sim, tmp_path: Path,
                                                                   stream: bool) -> None:
    sim.reset()
    config = write_config(tmp_path / "grok.yaml", GROK, stream=stream)
    recorder = Kcd(kcd_root, {**base_env(kcd_root / "home"), "OPENROUTER_BASE_URL": sim.api_base,
                              "KC_DISABLE_PROVIDER_PROBES": "1"}, ["--executor", "in-process"]).start()
    try:
        proc = recorder.kcctl("run", str(config), "--task", "list the workspace", "--workspace", str(C_PROJECT),
                              "--json", check=True)
    finally:
        recorder.stop()
    end = json.loads(proc.stdout.splitlines()[-1])
    recorded, recorded_dir = end["run_id"], Path(end["data"]["run_dir"])
    assert end["data"]["exit_reason"] == "mark_task_complete"
    assert read_json(recorded_dir / "raw" / "responses" / "turn_1_attempt_1.json")["streamed"] is stream
    contacted = len(sim.requests(GROK))
    assert contacted == 3

    replayer = Kcd(kcd_root, _keyless_env(kcd_root / "home", sim.api_base), ["--executor", "in-process"]).start()
    try:
        code, report = replay_json(replayer, recorded)
        assert code == 0 and report["identical"] is True, report
        replay_dir = Path(run_info(replayer, report["replay_run"])["run_dir"])
    finally:
        replayer.stop()
    assert len(sim.requests(GROK)) == contacted  # the recorded provider saw nothing of the replay
    attempt = read_json(replay_dir / "raw" / "responses" / "turn_1_attempt_1.json")
    assert attempt["route"] == "mock/replay" and attempt["streamed"] is stream
    assert read_json(replay_dir / "meta" / "run.json")["route"] == "mock/replay"


def test_a_replay_past_the_recorded_turns_ends_as_replay_exhausted(kcd_root: Path, sim, tmp_path: Path) -> None:
    """The recorded run failed at turn 3 (the provider refused the key); its replay runs the
    two recorded turns and ends at turn 3 as `replay_exhausted`, not hanging or calling out."""
    sim.reset()
    model = model_of(GROK)
    for fault, count in (("missing_usage", 2), ("auth_401", None)):  # two good answers, then 401s
        assert sim.http.post("/_sim/faults", json={"model": model, "fault": fault, "count": count}).status_code == 200
    config = write_config(tmp_path / "grok.yaml", GROK)
    recorder = Kcd(kcd_root, {**base_env(kcd_root / "home"), "OPENROUTER_BASE_URL": sim.api_base,
                              "KC_DISABLE_PROVIDER_PROBES": "1"}, ["--executor", "in-process"]).start()
    try:
        proc = recorder.kcctl("run", str(config), "--task", "list", "--workspace", str(C_PROJECT), "--json")
        end = json.loads(proc.stdout.splitlines()[-1])
        assert (end["data"]["exit_reason"], end["data"]["steps"]) == ("provider_error", 3), proc.stdout
        contacted = len(sim.requests(GROK))
        code, report = replay_json(recorder, end["run_id"])
        info = run_info(recorder, report["replay_run"])
        assert len(sim.requests(GROK)) == contacted  # exhausted: nothing went out either
    finally:
        recorder.stop()
        sim.reset()
    assert code == 0 and report["identical"] is True
    assert (report["recorded_turns"], report["replayed_turns"]) == (3, 3)
    assert (report["responses_recorded"], report["responses_served"]) == (2, 2)
    assert report["replayed_exit_reason"] == "replay_exhausted" == info["exit_reason"]
    assert "recorded 2 response(s)" in info["error"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the recorded seed check reads files as root")
def test_the_replay_uses_the_recorded_seed_not_the_tree_as_it_is_now(kcd, tmp_path: Path) -> None:
    tree = tmp_path / "c_project"
    shutil.copytree(C_PROJECT, tree)
    recorded = record_demo(kcd, tree)
    (tree / "README.md").write_text("changed after the run\n")
    code, report = replay_json(kcd, recorded)
    assert code == 0 and report["workspace"] == "recorded seed", report


def test_a_text_mode_run_replays_and_diverges_on_its_text_results(kcd, tmp_path: Path) -> None:
    """Text-mode tool calls (parsed from the reply's text, results relayed as a user message)
    replay too; their results are compared from artifacts/tool_results."""
    config = tmp_path / "demo_text.yaml"
    config.write_text((DEMO.read_text().replace("extends: base_v2.yaml", f"extends: {CONFIGS / 'base_v2.yaml'}")
                       .replace("use_native: true", "use_native: false")))
    proc = kcd.kcctl("run", str(config), "--task", TASK, "--workspace", str(C_PROJECT), "--json", check=True)
    end = json.loads(proc.stdout.splitlines()[-1])
    assert end["data"]["exit_reason"] == "mark_task_complete"
    recorded_dir = Path(end["data"]["run_dir"])
    assert not (recorded_dir / "provider_native" / "tool_results").exists()
    assert list((recorded_dir / "artifacts" / "tool_results" / "turn_2").iterdir())

    code, report = replay_json(kcd, end["run_id"])
    assert code == 0 and report["identical"] and report["calls_compared"] == 3, report
    # Its packs come from base_v2.yaml's directory, not the config's: a run recorded before
    # run.json kept the resolved paths replays too (they are resolved from the config file).
    meta = read_json(recorded_dir / "meta" / "run.json")
    assert meta.pop("resolved_paths")["packs"]
    (recorded_dir / "meta" / "run.json").write_text(json.dumps(meta))
    assert replay_json(kcd, end["run_id"])[0] == 0

    changed = tmp_path / "tree"
    shutil.copytree(C_PROJECT, changed)
    (changed / "README.md").write_text("# something else\n")
    code, report = replay_json(kcd, end["run_id"], "--workspace", str(changed))
    assert code == EXIT_DIVERGED
    assert [(d["turn"], d["tool"], d["field"]) for d in report["divergences"]] == [(2, "read_file", "out")]


def test_a_sandbox_change_diverges_at_the_shell_turn(make_kcd, kcd_root: Path) -> None:
    """What a replay is for: the same recorded run, replayed on a daemon whose sandbox
    changed, shows where the shell's answers changed."""
    recorder = make_kcd("--executor", "in-process")
    proc = recorder.kcctl("run", str(Path(__file__).parent / "configs" / "shell.yaml"), "--task",
                          "ls -1 / | wc -l; cat /proc/1/comm", "--json", check=True)
    end = json.loads(proc.stdout.splitlines()[-1])
    recorded_dir = Path(end["data"]["run_dir"])
    isolation = read_json(recorded_dir / "provider_native" / "tool_results" / "turn_1.json")[0]["data"]["isolation"]
    if isolation == "process":
        pytest.skip("this host gives tool calls process containment only: nothing weaker to change to")
    same_code, same = replay_json(recorder, end["run_id"])
    recorder.stop()
    assert same_code == 0, same

    config = kcd_root / "weaker.yaml"
    config.write_text("sandbox:\n  isolation: process\n")
    replayer = make_kcd("--config", str(config), "--executor", "in-process")
    code, report = replay_json(replayer, end["run_id"])
    assert code == EXIT_DIVERGED, report
    fields = {(d["turn"], d["call_index"], d["tool"], d["field"]): d for d in report["divergences"]}
    changed = fields[(1, 0, "run_shell", "data.isolation")]
    assert (changed["recorded"], changed["replayed"]) == (isolation, "process")
    assert (1, 0, "run_shell", "out") in fields, report  # the command saw another machine
    assert {d["turn"] for d in report["divergences"]} == {1}, report


@pytest.mark.ray
def test_the_demo_run_on_ray_replays_without_divergence(ray_kcd) -> None:
    """`make demo`'s path: tool calls as Ray tasks (their node id is normalised away)."""
    recorded = record_demo(ray_kcd)
    proc = ray_kcd.kcctl("replay", recorded)
    assert proc.returncode == 0, proc.stdout + proc.stderr + ray_kcd.log()[-3000:]
    assert "✓ no divergence in 3 turn(s) / 3 tool call(s)" in proc.stdout
    assert "executor=ray" in proc.stdout
