"""logging.retention.max_runs through a real kcd: old finished run directories go, runs in
flight stay, the runs index and `kcctl runs show` say what happened."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHELL = Path(__file__).parent / "configs" / "shell.yaml"


def _config(tmp_path: Path, max_runs: int, name: str = "keep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(SHELL.read_text() + f"logging:\n  retention: {{max_runs: {max_runs}}}\n")
    return path


def _start(c, cfg: Path, task: str) -> dict:
    r = c.post("/v1/runs", json={"config_text": cfg.read_text(), "config_path": str(cfg), "task": task})
    assert r.status_code in (200, 201, 202), r.text
    return r.json()


def _wait_end(c, run_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = c.get(f"/v1/runs/{run_id}").json()
        if info["status"] not in ("queued", "running"):
            return info
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


def _wait_pruned(c, run_ids: list[str], timeout: float = 20) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        infos = {i: c.get(f"/v1/runs/{i}").json() for i in run_ids}
        if all(x.get("pruned_at") for x in infos.values()) or time.monotonic() > deadline:
            return infos
        time.sleep(0.1)


def _wait_tool_call(c, run_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(json.loads(x)["type"] == "tool.call" for x in c.get(f"/v1/runs/{run_id}/events").text.splitlines()):
            return
        time.sleep(0.1)
    raise AssertionError("no tool call")


def test_max_runs_keeps_the_newest_finished_and_never_a_live_run(kcd, tmp_path: Path) -> None:
    cfg = _config(tmp_path, 2)
    other = _config(tmp_path, 0, "other.yaml")  # another scope: never touched
    with kcd.http() as c:
        live = _start(c, cfg, "sleep 60")  # the oldest run of the scope, in flight throughout
        _wait_tool_call(c, live["id"])
        unrelated = _wait_end(c, _start(c, other, "true")["id"])
        done = []
        for _ in range(4):
            done.append(_wait_end(c, _start(c, cfg, "true")["id"]))
        assert all(d["status"] == "completed" for d in done)
        old, new = done[:2], done[2:]
        infos = _wait_pruned(c, [d["id"] for d in old])
        for d in old:
            assert infos[d["id"]].get("pruned_at"), infos[d["id"]]
            assert not Path(d["run_dir"]).exists()
            assert infos[d["id"]]["status"] == "completed"  # the row keeps its outcome
            assert c.get(f"/v1/runs/{d['id']}/events").text == ""  # nothing left to replay
            # what needs the directory says why it is gone, not a bare "not found"
            for resp in (c.get(f"/v1/runs/{d['id']}/workspace"), c.get(f"/v1/runs/{d['id']}/changes"),
                         c.post("/v1/bundles", json={"run": d["id"]})):
                error = resp.json()["error"]
                assert resp.status_code == 404 and error["code"] == "run_pruned", resp.text
                assert "deleted by retention" in error["message"] and "max_runs" in error["message"]
            page = c.get(f"/ui/runs/{d['id']}")
            assert page.status_code == 200 and "deleted by retention" in page.text
        for d in new:
            assert Path(d["run_dir"], "result.json").is_file()
            assert not c.get(f"/v1/runs/{d['id']}").json().get("pruned_at")
        assert Path(live["run_dir"]).is_dir()  # older than all, but in flight
        assert c.get(f"/v1/runs/{live['id']}").json()["status"] == "running"
        assert Path(unrelated["run_dir"]).is_dir()

        shown = kcd.kcctl("runs", "show", old[0]["id"], check=True)
        assert json.loads(shown.stdout)["pruned_at"]
        assert "was deleted" in shown.stderr and "logging.retention.max_runs" in shown.stderr
        table = kcd.kcctl("runs", "list", check=True).stdout
        pruned_rows = [line for line in table.splitlines() if line.endswith("(pruned)")]
        assert sorted(line.split()[0] for line in pruned_rows) == sorted(d["id"] for d in old)

        # Once the live run ends it is the oldest finished run of its scope: it goes, the two newest stay.
        assert c.post(f"/v1/runs/{live['id']}/cancel").status_code == 202
        _wait_end(c, live["id"])
        assert _wait_pruned(c, [live["id"]])[live["id"]].get("pruned_at")
        assert not Path(live["run_dir"]).exists()
        for d in new:
            assert Path(d["run_dir"]).is_dir()
    assert "retention: pruned run" in kcd.log()
    scope_dirs = [p for p in kcd.runs_root.iterdir() if "_keep_" in p.name]
    assert sorted(scope_dirs) == sorted(Path(d["run_dir"]) for d in new)


def test_runs_ending_together_never_over_prune(kcd, tmp_path: Path) -> None:
    cfg = _config(tmp_path, 2)
    with kcd.http() as c, ThreadPoolExecutor(6) as pool:
        started = list(pool.map(lambda _: _start(c, cfg, "true"), range(6)))
        ended = list(pool.map(lambda s: _wait_end(c, s["id"]), started))
        assert all(e["status"] == "completed" for e in ended)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = [e for e in ended if Path(e["run_dir"]).exists()]
            if len(left) <= 2:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # any late pass would have run by now
        left = [e for e in ended if Path(e["run_dir"]).exists()]
        newest = sorted(ended, key=lambda e: (e["created_at"], e["id"]))[-2:]
        assert sorted(e["id"] for e in left) == sorted(e["id"] for e in newest)
        pruned = [e["id"] for e in ended if c.get(f"/v1/runs/{e['id']}").json().get("pruned_at")]
        assert len(pruned) == 4


def test_max_runs_zero_keeps_everything(kcd, tmp_path: Path) -> None:
    cfg = _config(tmp_path, 0)
    with kcd.http() as c:
        ended = [_wait_end(c, _start(c, cfg, "true")["id"]) for _ in range(3)]
    time.sleep(0.3)
    assert all(Path(e["run_dir"]).is_dir() for e in ended)
