"""Finalisation against a real kcd: a full disk, `kill -9` and a restart, a follower
whose daemon dies. Each test reproduces a defect the daemon once had."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, Kcd

SHELL = Path(__file__).parent / "configs" / "shell.yaml"
SEED = REPO / "configs" / "workspaces" / "c_project"


def _start(c, task: str, workspace: Path | None = None) -> dict:
    body = {"config_text": SHELL.read_text(), "config_path": str(SHELL), "task": task}
    if workspace is not None:
        body["workspace"] = str(workspace)
    resp = c.post("/v1/runs", json=body)
    assert resp.status_code in (200, 201, 202), resp.text
    return resp.json()


def _events(c, run_id: str) -> list[dict]:
    return [json.loads(x) for x in c.get(f"/v1/runs/{run_id}/events").text.splitlines()]


def _wait_in_tool(c, run_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["type"] == "tool.call" for e in _events(c, run_id)):
            return
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} made no tool call within {timeout:.0f} s")


def _wait_status(c, run_id: str, statuses: set[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = c.get(f"/v1/runs/{run_id}").json()
        if info["status"] in statuses:
            return info
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not reach {statuses}: {info}")


def _kill_9(daemon: Kcd) -> None:
    """SIGKILL the daemon, then the tool processes left in its process group."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    os.kill(pid, signal.SIGKILL)
    daemon.proc.wait(10)
    try:
        os.killpg(pid, signal.SIGKILL)  # the group of the kcd this test started (start_new_session)
    except ProcessLookupError:
        pass


def _last_line(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta" / "events.jsonl").read_text().splitlines()[-1])


def test_kill_9_with_ten_runs_in_flight_then_a_restart_finishes_all_ten(make_kcd):
    first = make_kcd("--executor", "in-process")
    with first.http() as c:
        runs = [_start(c, f"echo run {n} > made_{n}.txt; sleep 60", SEED if n % 2 else None) for n in range(10)]
        for info in runs:
            _wait_in_tool(c, info["id"])
    for n, info in enumerate(runs):  # the shell has written the file before sleeping
        deadline = time.monotonic() + 10
        while not (Path(info["run_dir"]) / "workspace" / f"made_{n}.txt").exists():
            assert time.monotonic() < deadline, f"run {n} wrote nothing"
            time.sleep(0.05)
    _kill_9(first)
    for info in runs:
        assert not (Path(info["run_dir"]) / "result.json").exists()  # nothing finalised them

    second = make_kcd("--executor", "in-process")
    deadline = time.monotonic() + 60
    with second.http() as c:
        for n, info in enumerate(runs):
            run_dir = Path(info["run_dir"])
            got = _wait_status(c, info["id"], {"interrupted"}, timeout=max(1.0, deadline - time.monotonic()))
            while got.get("exit_reason") is None:  # recovery sets it last, after the files
                assert time.monotonic() < deadline, f"run {n} was never finished: {got}"
                time.sleep(0.1)
                got = c.get(f"/v1/runs/{info['id']}").json()
            assert got["exit_reason"] == "interrupted" and got["completed"] is False and got["steps"] >= 1
            result = json.loads((run_dir / "result.json").read_text())
            assert result["status"] == "interrupted" and result["exit_reason"] == "interrupted"
            assert result["steps"] == got["steps"] and result["completion_summary"]["max_steps"] == 4
            end = _last_line(run_dir)
            assert end["type"] == "run.end" and end["data"]["status"] == "interrupted", end
            seqs = [e["seq"] for e in _events(c, info["id"])]
            assert seqs == list(range(1, len(seqs) + 1)) and seqs[-1] == end["seq"]
            diff = (run_dir / "workspace.diff").read_text()
            # Against the seed directory for odd runs: its untouched files are not in the diff.
            assert f"+run {n}" in diff and diff.count("diff --git") == 1, diff
        assert c.get("/v1/health").json()["runs_active"] == 0
    # A third start has nothing left to do: nothing is appended twice.
    assert second.stop() == 0
    lengths = {i["id"]: len((Path(i["run_dir"]) / "meta/events.jsonl").read_bytes()) for i in runs}
    make_kcd("--executor", "in-process")
    time.sleep(1.0)
    assert lengths == {i["id"]: len((Path(i["run_dir"]) / "meta/events.jsonl").read_bytes()) for i in runs}


def test_a_follower_whose_daemon_dies_gets_one_line_and_exit_3(make_kcd):
    daemon = make_kcd("--executor", "in-process")
    with daemon.http() as c:
        info = _start(c, "sleep 60")
        _wait_in_tool(c, info["id"])
    follower = subprocess.Popen(
        [sys.executable, "-m", "kcctl.cli", "--socket", str(daemon.socket), "--no-autostart", "runs", "events",
         info["id"], "--follow"], env=daemon.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        time.sleep(1.0)  # attached and streaming
        assert follower.poll() is None
        _kill_9(daemon)
        _, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("kcctl: ") and "went away" in lines[0] and info["id"] in lines[0]


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("a real full filesystem needs root to mount a small tmpfs")
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "kcd-enospc", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def _fill(root: Path) -> Path:
    """Use every free page of the filesystem under `root`."""
    filler = root / "filler"
    with open(filler, "wb", buffering=0) as fh:
        chunk = b"\0" * 65536
        while True:
            try:
                fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                if len(chunk) == 1:
                    return filler
                chunk = chunk[: len(chunk) // 2]


def test_a_full_disk_during_finalisation_fails_that_run_not_the_daemon(make_kcd, kcd_root):
    # The runs root is a real 8 MiB tmpfs, filled while two runs sleep in a tool. Finalising
    # the cancelled one hits ENOSPC everywhere; the old last resort re-raised it into the
    # daemon's task group, which tore down every run and the control socket.
    runs_root = kcd_root / "runs"
    _mount_tmpfs(runs_root, "8m")
    daemon = None
    try:
        daemon = make_kcd("--executor", "in-process")
        with daemon.http() as c:
            survivor, doomed = _start(c, "sleep 60"), _start(c, "sleep 60")
            for info in (survivor, doomed):
                _wait_in_tool(c, info["id"])
            log = Path(doomed["run_dir"]) / "meta" / "events.jsonl"
            with log.open("ab") as fh:  # blank lines (readers skip them) up to a page boundary:
                fh.write(b"\n" * (-log.stat().st_size % 4096))  # the next event needs a new page
            filler = _fill(runs_root)
            assert c.post(f"/v1/runs/{doomed['id']}/cancel").status_code == 202
            failed = _wait_status(c, doomed["id"], {"failed", "cancelled", "completed"})
            assert failed["status"] == "failed" and failed["exit_reason"] == "finalise_error", failed
            assert "No space left" in failed["error"]
            # The daemon, its socket and the other run are untouched.
            assert daemon.proc.poll() is None
            assert c.get("/v1/health").status_code == 200
            assert c.get(f"/v1/runs/{survivor['id']}").json()["status"] == "running"
            filler.unlink()
            assert c.post(f"/v1/runs/{survivor['id']}/cancel").status_code == 202
            assert _wait_status(c, survivor["id"], {"cancelled", "failed"})["status"] == "cancelled"
        result = json.loads((Path(survivor["run_dir"]) / "result.json").read_text())
        assert result["exit_reason"] == "cancelled"
        assert _last_line(Path(survivor["run_dir"]))["type"] == "run.end"
        again = daemon.kcctl("run", str(SHELL), "--task", "echo still serving", "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "finalisation failed" in daemon.log() and "No space left" in daemon.log()
    finally:
        if daemon is not None:
            daemon.stop(timeout=30)
        subprocess.run(["umount", str(runs_root)], check=False)
