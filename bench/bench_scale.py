"""N long runs in flight on one daemon: completion, throughput, turn latency, memory, and
how the control API answers while the burst is admitted.

One `kcd serve` (in-process executor by default, or `--executor ray` with a local Ray
instance) gets N runs submitted at once through the socket API from this one process
(`POST /v1/runs`, N requests in flight on one event loop: no `kcctl` start-up is measured).
Every run is the demo task on the built-in simulator's `dev` agent (list_dir, read_file,
mark_task_complete: 3 turns), with the model delayed by the simulator's `slow_ttft` fault
(`--delay` seconds before each answer), so the N runs overlap. Meanwhile a thread polls
`GET /v1/health` every 20 ms on its own connection and a sampler reads the daemon's RSS and
its process tree's RSS every 100 ms.

    .venv/bin/python bench/bench_scale.py [--n 100 500] [--delay 1.0] [--executor in-process|ray]

Prints, per N: runs completed, runs/s (N / first submit to last run.end), admission time,
p50/p99 turn latency (turn.start to the turn's end, from the runs' events.jsonl, and the
model call's own latency_s), daemon RSS and tree RSS peak, and /v1/health p50/p99/max while
the burst is admitted and over the whole run; then Markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import anyio
import httpx

from _common import REPO, pct, proc_cpu

CONFIGS = REPO / "configs"
SEED = CONFIGS / "workspaces" / "c_project"  # each run's workspace is seeded from it
PAGE = os.sysconf("SC_PAGE_SIZE")
TURN_CPUS = 0.05


class Cluster:
    """A private Ray cluster for `--nodes`: one node with every core, or the same cores split
    over a head and a worker (the tests' RayNode helper: own process groups, free ports)."""

    def __init__(self, nodes: int) -> None:
        sys.path.insert(0, str(REPO))
        from tests.raynodes import RayNode

        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        cores = os.cpu_count() or 2
        head_cpus = cores if nodes == 1 else max(1, cores // 2)
        self.nodes = [RayNode(env, head=True, num_cpus=head_cpus).start()]
        if nodes == 2:
            self.nodes.append(RayNode(env, head=False, address=self.nodes[0].address,
                                      num_cpus=max(1, cores - head_cpus)).start())
        self.nodes[0].wait_driver()
        self.address = self.nodes[0].address

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def bench_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and not k.startswith(("KYLECODE_", "RAY_", "XDG_", "OPENAI_", "OPENROUTER_"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return env


def write_config(root: Path, delay: float) -> Path:
    """demo.yaml with its model answering after `delay` s (the simulator's slow_ttft fault)."""
    path = root / "scale.yaml"
    path.write_text(f"extends: {CONFIGS / 'demo.yaml'}\n"
                    "providers:\n"
                    f"  default_model: \"mock/dev+slow_ttft;delay={delay}\"\n"
                    "  models:\n"
                    f"    - id: \"mock/dev+slow_ttft;delay={delay}\"\n"
                    "      adapter: mock\n")
    return path


class Daemon:
    def __init__(self, root: Path, executor: str, ray_address: str | None, source: Path = REPO):
        self.root = root
        self.socket = root / "kcd.sock"
        self.runs_root = root / "runs"
        args = ["--executor", executor] + (["--ray-address", ray_address] if ray_address else [])
        if executor == "ray":  # tool calls are light here: many turns share a CPU slot
            (root / "kcd.yaml").write_text(f"ray_turn_cpus: {TURN_CPUS}\n")
            args += ["--config", str(root / "kcd.yaml")]
        (root / "home").mkdir(exist_ok=True)
        self.log = open(root / "kcd.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kcd", "serve", "--socket", str(self.socket), "--state-dir", str(root / "state"),
             "--runs-root", str(self.runs_root), *args],
            env={**bench_env(root / "home"), "PYTHONPATH": str(source)}, stdout=self.log, stderr=self.log,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=source)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"kcd exited with {self.proc.returncode}: see {root / 'kcd.log'}")
            try:
                with self.http() as c:
                    if c.get("/v1/health").json()["executor"]["state"] == "ready":
                        return
            except (httpx.TransportError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        raise SystemExit("kcd did not become ready")

    def http(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://kcd", timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
        except OSError:
            pass
    return out


class Watch:
    """A thread polling /v1/health and sampling memory until stopped."""

    def __init__(self, daemon: Daemon, every: float):
        self.daemon, self.every = daemon, every
        self.health: list[tuple[float, float, int]] = []  # (sent at, latency s, status)
        self.rss_peak = self.tree_peak = self.active_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="health-watch")
        self._mem = threading.Thread(target=self._sample, daemon=True, name="rss-sampler")

    def __enter__(self) -> Watch:
        self._thread.start()
        self._mem.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        self._mem.join(30)

    def _poll(self) -> None:
        with self.daemon.http(timeout=30) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    r = client.get("/v1/health")
                    status = r.status_code
                    self.active_peak = max(self.active_peak, r.json().get("runs_active", 0))
                except (httpx.HTTPError, ValueError):
                    status = 0
                self.health.append((t0, time.monotonic() - t0, status))
                time.sleep(self.every)

    def _sample(self) -> None:
        pid = self.daemon.proc.pid
        while not self._stop.is_set():
            self.rss_peak = max(self.rss_peak, rss(pid))
            self.tree_peak = max(self.tree_peak, sum(rss(p) for p in tree(pid)))
            time.sleep(0.1)

    def latencies(self, start: float, end: float) -> list[float]:
        return [lat for t0, lat, _ in self.health if t0 + lat >= start and t0 <= end]


async def submit_all(socket: Path, body: bytes, n: int) -> tuple[list[dict], list[float], float, float]:
    """N POST /v1/runs in flight at once: (answers, latencies, first sent, last answered)."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    answers: list[dict] = [{}] * n
    lat: list[float] = [0.0] * n
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket), limits=limits),
                                 base_url="http://kcd", timeout=600, limits=limits) as client:
        async def one(i: int) -> None:
            t0 = time.monotonic()
            r = await client.post("/v1/runs", content=body, headers={"content-type": "application/json"})
            lat[i] = time.monotonic() - t0
            answers[i] = {**r.json(), "http": r.status_code}

        first = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        last = time.monotonic()
    return answers, lat, first, last


def parse_ts(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def run_figures(run_dirs: list[Path]) -> dict:
    """From each run's events.jsonl: turn wall times, model-call latencies, end times."""
    turns, calls, ends, completed, artifacts = [], [], [], 0, 0
    for d in run_dirs:
        try:
            events = [json.loads(x) for x in (d / "meta" / "events.jsonl").read_text().splitlines()]
        except OSError:
            continue
        open_turn = None
        for e in events:
            if e["type"] == "turn.start":
                if open_turn is not None:
                    turns.append(parse_ts(e["ts"]) - open_turn)
                open_turn = parse_ts(e["ts"])
            elif e["type"] == "llm.response":
                calls.append(e["data"]["latency_s"])
            elif e["type"] == "run.end":
                if open_turn is not None:
                    turns.append(parse_ts(e["ts"]) - open_turn)
                ends.append(parse_ts(e["ts"]))
                completed += bool(e["data"].get("completed"))
        artifacts += (d / "result.json").is_file() and (d / "meta" / "run.json").is_file()
    return {"turns": turns, "calls": calls, "ends": ends, "completed": completed, "artifacts": artifacts}


def one(n: int, executor: str, delay: float, every: float, ray_address: str | None, keep: bool,
        source: Path = REPO) -> dict:
    root = Path(tempfile.mkdtemp(prefix="kcs-", dir="/tmp"))
    config = write_config(root, delay)
    body = json.dumps({"config_text": config.read_text(), "config_path": str(config),
                       "task": "list the files and read one", "workspace": str(SEED)}).encode()
    daemon = Daemon(root, executor, ray_address, source)
    try:
        # One run first: the simulator and the provider pool start, the route's probe runs.
        answers, _, _, _ = anyio.run(submit_all, daemon.socket, body, 1)
        with daemon.http() as c:
            while c.get("/v1/health").json()["runs_active"]:
                time.sleep(0.1)
        with Watch(daemon, every) as watch:
            time.sleep(0.5)  # a quiet baseline
            wall0 = time.time()
            cpu0, mono0 = proc_cpu(daemon.proc.pid), time.monotonic()
            answers, admit_lat, first, last = anyio.run(submit_all, daemon.socket, body, n)
            admitted = [a for a in answers if a["http"] == 201]
            deadline = time.monotonic() + 60 + n * delay * 3
            with daemon.http() as c:
                while time.monotonic() < deadline and c.get("/v1/health").json()["runs_active"]:
                    time.sleep(0.2)
            done = time.monotonic()
            cpu = proc_cpu(daemon.proc.pid) - cpu0
        figs = run_figures([Path(a["run_dir"]) for a in admitted])
        during = watch.latencies(first, last)
        overall = watch.latencies(first, done)
        bad = sum(1 for _, _, s in watch.health if s != 200)
        span = (max(figs["ends"]) - wall0) if figs["ends"] else float("nan")
        return {
            "n": n, "executor": executor, "in_flight": watch.active_peak, "delay": delay, "admitted": len(admitted),
            "rejected": [a for a in answers if a["http"] != 201][:3],
            "completed": figs["completed"], "artifacts": figs["artifacts"],
            "runs_per_s": len(figs["ends"]) / span if figs["ends"] else 0.0, "span_s": span,
            "admit_s": last - first, "admit_p50": pct(admit_lat, 50), "admit_max": max(admit_lat),
            "turn_p50": pct(figs["turns"], 50), "turn_p99": pct(figs["turns"], 99),
            "call_p50": pct(figs["calls"], 50), "call_p99": pct(figs["calls"], 99), "turns": len(figs["turns"]),
            "cpu_per_run_ms": cpu / n * 1e3, "cpu_share": cpu / (done - mono0),
            "rss_mib": watch.rss_peak / 2**20, "tree_mib": watch.tree_peak / 2**20,
            "health_n": len(during), "health_p50": pct(during, 50) * 1e3, "health_p99": pct(during, 99) * 1e3,
            "health_max": max(during) * 1e3, "health_all_p99": pct(overall, 99) * 1e3,
            "health_all_max": max(overall) * 1e3, "health_non200": bad,
        }
    finally:
        daemon.stop()
        if keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--delay", type=float, default=1.0, help="seconds before each model answer")
    ap.add_argument("--executor", choices=["in-process", "ray"], default="in-process")
    ap.add_argument("--ray-address", default=None, help="join this Ray instance instead of starting one")
    ap.add_argument("--nodes", type=int, choices=[1, 2], default=None,
                    help="with --executor ray: start a private cluster of this many nodes (same cores in total)")
    ap.add_argument("--every", type=float, default=0.02, help="health poll interval, s")
    ap.add_argument("--keep", action="store_true", help="keep the daemon's directory")
    ap.add_argument("--source", type=Path, default=REPO,
                    help="run kcd from this checkout (e.g. a `git worktree` of an older commit, for a before/after)")
    args = ap.parse_args()
    rows = []
    cluster = Cluster(args.nodes) if args.executor == "ray" and args.nodes else None
    address = cluster.address if cluster else args.ray_address
    try:
        for n in args.n:
            rows.append(one(n, args.executor, args.delay, args.every, address, args.keep, args.source))
            if cluster:
                rows[-1]["executor"] = f"ray, {args.nodes} node(s)"
    finally:
        if cluster:
            cluster.stop()
    for r in rows:
        n = r["n"]
        print(f"N={n} {r['executor']}: admitted {r['admitted']}/{n} in {r['admit_s']:.2f} s "
              f"(POST p50 {r['admit_p50']*1e3:.0f} ms, max {r['admit_max']*1e3:.0f} ms), "
              f"completed {r['completed']}, artifacts {r['artifacts']}; {r['runs_per_s']:.1f} runs/s over "
              f"{r['span_s']:.1f} s; at most {r['in_flight']} in flight")
        print(f"  turn p50/p99 {r['turn_p50']:.2f}/{r['turn_p99']:.2f} s ({r['turns']} turns; model call "
              f"p50/p99 {r['call_p50']:.2f}/{r['call_p99']:.2f} s with {args.delay} s delay); "
              f"RSS daemon {r['rss_mib']:.0f} MiB, tree {r['tree_mib']:.0f} MiB; daemon CPU "
              f"{r['cpu_per_run_ms']:.0f} ms per run, {r['cpu_share']:.2f} cores on average")
        print(f"  /v1/health during admission: p50 {r['health_p50']:.1f} ms, p99 {r['health_p99']:.1f} ms, "
              f"max {r['health_max']:.1f} ms ({r['health_n']} polls); whole run p99 {r['health_all_p99']:.1f} ms, "
              f"max {r['health_all_max']:.1f} ms; non-200: {r['health_non200']}")
        if r["rejected"]:
            print(f"  rejected: {r['rejected']}")
    print()
    print("| N | executor | admitted / completed | runs/s | admission s | turn p50 / p99 s | "
          "daemon RSS / tree MiB | health p50 / p99 / max ms (admission) |")
    for r in rows:
        print(f"| {r['n']} | {r['executor']} | {r['admitted']} / {r['completed']} | {r['runs_per_s']:.1f} | "
              f"{r['admit_s']:.2f} | {r['turn_p50']:.2f} / {r['turn_p99']:.2f} | {r['rss_mib']:.0f} / "
              f"{r['tree_mib']:.0f} | {r['health_p50']:.1f} / {r['health_p99']:.1f} / {r['health_max']:.1f} |")
    print(f"(Python {platform.python_version()}, {os.cpu_count()} cores, delay {args.delay} s)")


if __name__ == "__main__":
    main()
