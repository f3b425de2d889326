"""The run viewer's pages against the size of the run: 10, 100, 1000 turns, and many runs.

Builds run directories the way real runs look, from a real run directory as the template
(`--template`, default the newest demo run under ~/.local/state/kylecode/runs): its
`events.jsonl` lines, `raw/responses/turn_N_attempt_K.json`, `provider_native/*`, transcript
blocks and diff are repeated per turn, with every 7th turn failing twice (503, a retry) and
falling back, and every 11th turn skipping its breaker-open primary route to the fallback.
Then, in this process, median of `--rounds`:

  floor      `json.loads` of every `events.jsonl` line plus reading the transcript and diff:
             what any page over these files costs at least;
  run page   what `GET /ui/runs/ID` does (read the run, render it, the page shell);
  timeline   what one live refresh `GET /ui/runs/ID/fragment/timeline` does;
  tools      the same for `fragment/tools`;
  runs list  `GET /ui/` with N runs in the state index: the owner's newest 200 and the page
             (a non-operator's list), and the replays-of query every run page makes;

and, for `--http-turns`, the real round trip of the run page and the timeline fragment over a
`kcd serve` control socket (the runs put in its state index before it starts), and what those
page loads cost everyone else: `GET /v1/health` latency on another connection, idle and while
a client loads the run page over and over.

    flock /tmp/kc-bench.lock .venv/bin/python bench/bench_viewer.py [--sizes 10,100,1000]
        [--runs 1000,10000] [--rounds 5] [--http-turns 1000] [--source DIR]

`--source DIR` runs the viewer code of another checkout (e.g. a `git archive` of main) for a
before/after comparison; the bench itself stays this one.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--template", type=Path, default=None)
    p.add_argument("--sizes", default="10,100,1000")
    p.add_argument("--runs", default="1000,10000")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--http-turns", type=int, default=1000)
    p.add_argument("--source", type=Path, default=REPO)
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else None
SOURCE = (ARGS.source if ARGS else REPO).resolve()
sys.path.insert(0, str(SOURCE))

import httpx  # noqa: E402
from _common import pct  # noqa: E402

from kcd.api.types import RunInfo  # noqa: E402
from kcd.state import StateStore  # noqa: E402
from kcd.viewer import pages, routes  # noqa: E402
from kcd.viewer.markup import page  # noqa: E402

FALLBACK = "openai/gpt-4o-mini"


# ---- synthetic runs from a real one ---------------------------------------------------------

def newest_demo_run() -> Path:
    root = Path.home() / ".local/state/kylecode/runs"
    dirs = sorted((d for d in root.glob("*_demo_*") if (d / "meta/events.jsonl").is_file()),
                  key=lambda d: d.stat().st_mtime)
    if not dirs:
        raise SystemExit("no demo run: run `kcctl run configs/demo.yaml ...` first or pass --template")
    return dirs[-1]


class Template:
    """The per-turn pieces of a real run directory."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        events = [json.loads(line) for line in (run_dir / "meta/events.jsonl").read_text().splitlines() if line]
        self.head = [e for e in events if e["type"] in ("policy", "run.start") and e["data"].get("turn", 0) == 0]
        self.end = next(e for e in events if e["type"] == "run.end")
        by_type = {}
        for e in events:
            if e["data"].get("turn") == 2:  # a middle turn: read_file, with a tool result
                by_type.setdefault(e["type"], e)
        self.turn = by_type
        self.route = by_type["turn.start"]["data"]["route"]
        self.response = json.loads((run_dir / "raw/responses/turn_2_attempt_1.json").read_text())
        self.files = {rel: (run_dir / rel).read_bytes() for rel in (
            "raw/requests/turn_2.request.json", "raw/responses/turn_2.response.json",
            "meta/requests/turn_2_attempt_1.json", "provider_native/tool_calls/turn_2.json",
            "provider_native/tool_results/turn_2.json", "provider_native/tools_provided/turn_2.json")
            if (run_dir / rel).is_file()}
        convo = (run_dir / "conversation/conversation.md").read_text()
        cut = convo.index("**Assistant**")
        self.convo_head, self.convo_turn = convo[:cut], convo[cut:cut + 1500]


def build_run(t: Template, out: Path, turns: int, run_id: str) -> None:
    """A finished run of `turns` turns in `out`, shaped like the template."""
    shutil.rmtree(out, ignore_errors=True)
    for rel in ("result.json", "workspace.diff", "prompts/compiled_system.md", "meta/provider_metrics.json",
                "meta/capability_probes.json", "meta/run.json", "conversation/index.json"):
        if (t.dir / rel).is_file():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(t.dir / rel, out / rel)
    for d in ("raw/requests", "raw/responses", "meta/requests", "provider_native/tool_calls",
              "provider_native/tool_results", "provider_native/tools_provided", "conversation"):
        (out / d).mkdir(parents=True, exist_ok=True)
    seq, clock = 0, 1_765_000_000.0
    lines: list[str] = []
    convo = [t.convo_head]

    def emit(ev: dict, turn: int, dt: float = 0.002, **data) -> None:
        nonlocal seq, clock
        seq += 1
        clock += dt
        e = copy.deepcopy(ev)
        e["seq"], e["run_id"] = seq, run_id
        e["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(clock)) + f".{int(clock * 1000) % 1000:03d}Z"
        if "turn" in e["data"] or turn:
            e["data"]["turn"] = turn
        e["data"].update(data)
        lines.append(json.dumps(e, separators=(",", ":")))

    def attempt_file(turn: int, k: int, route: str, status: int) -> None:
        r = dict(t.response, turn=turn, attempt=k, route=route, status_code=status, ok=status == 200)
        (out / f"raw/responses/turn_{turn}_attempt_{k}.json").write_text(json.dumps(r, indent=2))

    for e in t.head:
        emit(e, 0)
    policy = {"type": "policy", "data": {}}
    for n in range(1, turns + 1):
        emit(t.turn["turn.start"], n)
        ok = t.turn["llm.attempt"]
        if n % 7 == 0:  # two 503s, then the fallback route
            emit(ok, n, 0.06, attempt=1, kind="primary", ok=False, status=503, error="http_error", retry_in_s=0.04)
            emit(policy, n, marker="provider-retry", text=f"route={t.route} attempt=2 reason=http_503 delay=0.04s")
            emit(ok, n, 0.05, attempt=2, kind="retry", ok=False, status=503, error="http_error", retry_in_s=None)
            emit(policy, n, marker="fallback_route", text=f"from={t.route} to={FALLBACK} reason=http_error")
            emit(ok, n, 0.05, attempt=3, kind="fallback", route=FALLBACK)
            for k, (route, status) in enumerate(((t.route, 503), (t.route, 503), (FALLBACK, 200)), 1):
                attempt_file(n, k, route, status)
        elif n % 11 == 0:  # the primary's breaker is open: skipped, straight to the fallback
            emit(policy, n, marker="circuit-open",
                 text=f"Skipping direct call for route {t.route} (failure_rate, reopens in 2.0s); attempting fallback.")
            emit(ok, n, 0.01, attempt=1, kind="fallback", route=FALLBACK, breaker="closed")
            attempt_file(n, 1, FALLBACK, 200)
        else:
            emit(ok, n, 0.01)
            attempt_file(n, 1, t.route, 200)
        emit(t.turn["llm.response"], n)
        emit(t.turn["tool.call"], n, call_id=f"call_{n}")
        emit(t.turn["tool.result"], n, 0.01, call_id=f"call_{n}")
        for rel, data in t.files.items():
            (out / rel.replace("turn_2", f"turn_{n}")).write_bytes(data)
        convo.append(t.convo_turn)
    emit(t.end, 0, steps=turns, run_dir=str(out))
    (out / "meta/events.jsonl").write_text("\n".join(lines) + "\n")
    (out / "conversation/conversation.md").write_text("".join(convo))


def info_for(run_dir: Path, run_id: str, created: str, uid: int = 1000, **kw) -> RunInfo:
    return RunInfo(id=run_id, status="completed", run_dir=str(run_dir), created_at=created, route="mock/dev",
                   exit_reason="mark_task_complete", completed=True, steps=3, peer_uid=uid,
                   task="Explore the workspace and report on it", **kw)


# ---- what the handlers do, in-process -------------------------------------------------------

def floor(run_dir: Path) -> int:
    with open(run_dir / "meta/events.jsonl", "rb") as f:
        n = sum(1 for line in f if json.loads(line))
    (run_dir / "conversation/conversation.md").read_bytes()
    (run_dir / "workspace.diff").read_bytes()
    return n


def _read_old(info: RunInfo) -> dict:
    """`ViewerAPI._view`'s blocking read as of main 8337f7e (every part, for every request)."""
    from kcd.errors import KcError
    from kcd.viewer.confine import list_files, read_confined
    from kcd.viewer.replays import ReplayView
    from kcd.viewer.rundata import load_run
    run_dir = Path(info.run_dir)

    def text(rel: str) -> str | None:
        try:
            return read_confined(run_dir, rel, truncate=True).decode("utf-8", "replace")
        except KcError:
            return None
    return dict(info=info, live=False, record=load_run(run_dir), conversation=text("conversation/conversation.md"),
                diff=text("workspace.diff"), files=list_files(run_dir), replay=ReplayView())


def read(info: RunInfo, parts: tuple[str, ...]) -> dict:
    if hasattr(routes, "read_view"):  # only what the page or fragment shows
        return routes.read_view(info, parts, live=False)
    return _read_old(info)


def run_page(info: RunInfo) -> str:
    return page(f"Run {info.id}", pages.run_page(**read(info, pages.FRAGMENTS)))


def frag(info: RunInfo, name: str) -> str:
    return pages.fragment(name, **read(info, (name,)))


def runs_list(store: StateStore, uid: int) -> str:
    runs = store.list_runs(limit=200, owner=uid)
    return page("Runs", pages.runs_page(runs, {}, limit=200, who=f"runs of uid {uid}"))


def timed(fn, rounds: int) -> tuple[float, float, float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def ms(t: tuple[float, float, float]) -> str:
    return f"{t[0] * 1000:.1f}"


def fill_store(path: Path, n: int, run_dir: Path) -> StateStore:
    """n runs over 10 users, every 50th a replay of the run before it."""
    store = StateStore(path)
    infos = []
    for i in range(n):
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_765_000_000 + i)) + ".000Z"
        replay = {"replay_of": f"run{i - 1:06d}"} if i % 50 == 49 else {}
        infos.append(info_for(run_dir, f"run{i:06d}", created, uid=1000 + i % 10, **replay))
    for k in range(0, n, 5000):
        store.save_runs(infos[k:k + 5000])
    return store


# ---- over the socket ------------------------------------------------------------------------

def health_under_load(sock: Path, page: str, rounds: int) -> dict[str, list[float]]:
    """`GET /v1/health` every 10 ms on its own connection, idle and while another client loads
    `page` over and over: what a page load costs everyone else on the daemon's event loop."""
    def probe(stop: threading.Event, seconds: float) -> list[float]:
        out: list[float] = []
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://kcd", timeout=60) as c:
            end = time.monotonic() + seconds
            while time.monotonic() < end and not stop.is_set():
                t0 = time.perf_counter()
                c.get("/v1/health").raise_for_status()
                out.append(time.perf_counter() - t0)
                time.sleep(0.01)
        return out

    idle = probe(threading.Event(), 2.0)
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://kcd", timeout=60) as c:
            for _ in range(rounds * 4):
                c.get(page).raise_for_status()
        stop.set()
    loader = threading.Thread(target=load)
    loader.start()
    busy = probe(stop, 120.0)
    loader.join()
    return {"idle": idle, "loading pages": busy}


def http_round_trip(work: Path, run_dir: Path, run_id: str, rounds: int) -> dict[str, tuple]:
    state = work / "state"
    state.mkdir()
    store = StateStore(state / "state.db")
    store.save_run(info_for(run_dir, run_id, "2026-12-08T00:00:00.000Z", uid=os.getuid()))
    del store
    sock = work / "kcd.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KYLECODE_", "XDG_"))}
    env.update(HOME=str(work), PYTHONPATH=str(SOURCE))
    log = open(work / "kcd.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "kcd", "serve", "--executor", "in-process", "--socket", str(sock),
                             "--state-dir", str(state), "--runs-root", str(work / "runs")],
                            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                            cwd=SOURCE)
    try:
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://kcd", timeout=60)
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"kcd exited: see {work / 'kcd.log'}")
            try:
                client.get("/v1/health")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        out = {}
        for name, path in (("run page", f"/ui/runs/{run_id}"), ("timeline", f"/ui/runs/{run_id}/fragment/timeline")):
            r = client.get(path)
            assert r.status_code == 200, (r.status_code, r.text[:300])
            out[name] = timed(lambda: client.get(path).raise_for_status(), rounds) + (len(r.content),)
        out["health"] = health_under_load(sock, f"/ui/runs/{run_id}", rounds)
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def main() -> None:
    a = ARGS
    template = Template(a.template or newest_demo_run())
    sizes = [int(s) for s in a.sizes.split(",") if s]
    code = "this checkout" if SOURCE == REPO else str(SOURCE)
    print(f"template {template.dir}; viewer code from {code}; median of {a.rounds} (ms)")
    with tempfile.TemporaryDirectory(prefix="kc-viewbench-") as tmp:
        work = Path(tmp)
        print("| turns | events | floor | run page | ×floor | timeline frag | tools frag | run page KiB | svg KiB |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        dirs = {}
        for n in sizes:
            d = work / f"run{n}"
            build_run(template, d, n, f"bench{n}")
            dirs[n] = d
            info = info_for(d, f"bench{n}", "2026-12-08T00:00:00.000Z")
            events = floor(d)
            f = timed(lambda: floor(d), a.rounds)
            p = timed(lambda: run_page(info), a.rounds)
            tl = timed(lambda: frag(info, "timeline"), a.rounds)
            to = timed(lambda: frag(info, "tools"), a.rounds)
            html = run_page(info)
            svg = html[html.index("<svg id=\"timeline-chart\""):html.index("</svg>")]
            print(f"| {n} | {events} | {ms(f)} | {ms(p)} | {p[0] / f[0]:.1f} | {ms(tl)} | {ms(to)} | "
                  f"{len(html) / 1024:.0f} | {len(svg) / 1024:.0f} |")
        print()
        print("| runs in index | owner's list + page | replays-of query |")
        print("| --- | --- | --- |")
        for n in (int(s) for s in a.runs.split(",") if s):
            store = fill_store(work / f"state{n}.db", n, dirs[sizes[0]])
            lst = timed(lambda: runs_list(store, 1003), a.rounds)
            rep = timed(lambda: store.list_runs(limit=20, replay_of=f"run{n // 2:06d}"), a.rounds)
            plan = " ".join(r[-1] for r in sqlite3.connect(work / f"state{n}.db").execute(
                "EXPLAIN QUERY PLAN SELECT info FROM runs WHERE json_extract(CAST(info AS TEXT), '$.replay_of')=? "
                "ORDER BY created_at DESC LIMIT 20", ("x",)))
            print(f"| {n} | {ms(lst)} | {ms(rep)} ({plan}) |")
        if a.http_turns:
            n = a.http_turns
            d = dirs.get(n) or work / f"run{n}"
            if n not in dirs:
                build_run(template, d, n, f"bench{n}")
            res = http_round_trip(work / "http", d, f"bench{n}", a.rounds) if (work / "http").mkdir() is None else {}
            print()
            health = res.pop("health", {})
            for name, t in res.items():
                print(f"HTTP over the socket, {n} turns, {name}: median {t[0] * 1000:.1f} ms "
                      f"(min {t[1] * 1000:.1f}, max {t[2] * 1000:.1f}), {t[3] / 1024:.0f} KiB")
            for name, lat in health.items():
                print(f"GET /v1/health, {name}: {len(lat)} calls, median {pct(lat, 50) * 1000:.1f} ms, "
                      f"p99 {pct(lat, 99) * 1000:.1f}, max {max(lat) * 1000:.1f}")


if __name__ == "__main__":
    main()
