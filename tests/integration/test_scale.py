"""A burst of runs submitted at once through the socket API: every one is admitted, every one
completes with its artifacts, and the control API answers throughout.

No timing assertions (bench/bench_scale.py measures the latencies, with 500 runs): the health
poller only checks that every poll got a 200. The burst here is smaller than the bench's so
the suite stays quick; the runs' model answers are delayed so that they overlap.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import anyio
import httpx

from .conftest import CONFIGS

N = 150
SEED = CONFIGS / "workspaces" / "c_project"


def _submit_all(socket: Path, body: bytes, n: int) -> list[tuple[int, dict]]:
    """`n` POST /v1/runs in flight at once from one client, as fast as the socket takes them."""
    answers: list[tuple[int, dict]] = []
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket), limits=limits),
                                     base_url="http://kcd", timeout=300, limits=limits) as client:
            async def one() -> None:
                r = await client.post("/v1/runs", content=body, headers={"content-type": "application/json"})
                answers.append((r.status_code, r.json()))

            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)

    anyio.run(main)
    return answers


def test_a_burst_of_runs_is_admitted_and_completes_while_health_answers(kcd, kcd_root) -> None:
    config = kcd_root / "slow.yaml"  # demo.yaml with each model answer 0.3 s late
    config.write_text(f"extends: {CONFIGS / 'demo.yaml'}\n"
                      "providers:\n"
                      "  default_model: \"mock/dev+slow_ttft;delay=0.3\"\n"
                      "  models:\n"
                      "    - id: \"mock/dev+slow_ttft;delay=0.3\"\n"
                      "      adapter: mock\n")
    body = json.dumps({"config_text": config.read_text(), "config_path": str(config), "task": "list the files",
                       "workspace": str(SEED)}).encode()
    statuses: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        with kcd.http(timeout=60) as client:
            while not stop.is_set():
                try:
                    statuses.append(client.get("/v1/health").status_code)
                except httpx.HTTPError as exc:
                    statuses.append(-1)
                    print(f"health poll failed: {exc!r}")
                time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        answers = _submit_all(kcd.socket, body, N)
        assert [s for s, _ in answers] == [201] * N, [a for a in answers if a[0] != 201][:3]
        runs = [info for _, info in answers]
        assert len({r["id"] for r in runs}) == N and len({r["run_dir"] for r in runs}) == N
        deadline = time.monotonic() + 300
        with kcd.http() as c:
            while c.get("/v1/health").json()["runs_active"] and time.monotonic() < deadline:
                time.sleep(0.2)
            listed = {r["id"]: r for r in c.get("/v1/runs", params={"limit": 1000}).json()["runs"]}
    finally:
        stop.set()
        poller.join(60)
    assert statuses and set(statuses) == {200}, f"{len(statuses)} polls, not all 200: {sorted(set(statuses))}"
    for run in runs:
        run_dir = Path(run["run_dir"])
        assert listed[run["id"]]["status"] == "completed", listed[run["id"]]
        result = json.loads((run_dir / "result.json").read_text())
        assert result["completed"] is True and result["exit_reason"] == "mark_task_complete", result
        events = [json.loads(x) for x in (run_dir / "meta" / "events.jsonl").read_text().splitlines()]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["type"] == "run.end" and events[-1]["data"]["status"] == "completed"
        for name in ("meta/run.json", "meta/launch.json", "conversation/index.json", "workspace.diff",
                     "workspace/README.md"):
            assert (run_dir / name).is_file(), (run_dir, name)
