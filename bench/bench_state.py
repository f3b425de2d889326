"""The state index under retention: what each run's end costs the daemon's event loop.

After every run, retention (`logging.retention.max_runs`, kcd/retention.py) asks the state
store for the ended, unpruned runs of the run's scope (its user and config). The store's calls
are synchronous on the event loop, so that query's time is a stall for every run in flight.
This builds state databases of N runs the way a long-lived daemon has them (10 users × 5
configs, each scope keeping its newest `--keep`, everything older pruned) and times, median of
`--rounds`, side by side on the same database:

  before   the index `runs_retained` dropped (what the query did before it existed)
  after    the index present (what `StateStore` creates on open)

for `finished_in_scope` (retention's query), `save_run` (the upsert every run state change
makes, which now also maintains the partial index), and once, opening a database from before
the index (its one-time creation).

    flock /tmp/kc-bench.lock .venv/bin/python bench/bench_state.py [--runs 1000,10000,50000]
        [--rounds 15] [--keep 20]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kcd.api.types import RunInfo  # noqa: E402
from kcd.state import StateStore  # noqa: E402

USERS, CONFIGS = 10, 5


def build(path: Path, n: int, keep: int) -> None:
    """`n` ended runs across USERS × CONFIGS scopes, all but each scope's newest `keep` pruned."""
    store = StateStore(path)
    scopes = USERS * CONFIGS
    infos = []
    for i in range(n):
        scope = i % scopes
        newest = i >= n - keep * scopes
        infos.append(RunInfo(
            id=f"{i:012x}", status="completed" if i % 9 else "failed", run_dir=f"/var/lib/kylecode/runs/{i:012x}",
            created_at=f"2026-{1 + i // 2_000_000:02d}-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}."
                       f"{i % 1000:03d}Z",
            config_path=f"/srv/agents/config_{scope % CONFIGS}.yaml", route="openrouter/x-ai/grok-4-fast",
            task="fix the failing test in the parser module " * 4, exit_reason="mark_task_complete",
            completed=True, steps=12, peer_uid=1000 + scope // CONFIGS, peer_pid=4242,
            started_at="2026-01-01T00:00:00.000Z", ended_at="2026-01-01T00:01:00.000Z",
            pruned_at=None if newest else "2026-01-02T00:00:00.000Z"))
    for k in range(0, n, 5000):
        store.save_runs(infos[k:k + 5000])
    store.close()


def median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def measure(path: Path, rounds: int, *, indexed: bool) -> tuple[float, float, int]:
    if not indexed:
        with sqlite3.connect(path) as db:
            db.execute("DROP INDEX IF EXISTS runs_retained")
    store = StateStore.__new__(StateStore)  # open without the schema step, which would add the index back
    store.path = path
    store._db = sqlite3.connect(path, isolation_level=None)
    store._db.execute("PRAGMA journal_mode=WAL")
    store._db.execute("PRAGMA synchronous=NORMAL")
    found = store.finished_in_scope(1003, "/srv/agents/config_2.yaml")
    query = median_ms(lambda: store.finished_in_scope(1003, "/srv/agents/config_2.yaml"), rounds)
    last = msgspec.json.decode(store._db.execute("SELECT info FROM runs ORDER BY created_at DESC LIMIT 1")
                               .fetchone()[0], type=RunInfo)
    counter = iter(range(10**9))

    def upsert() -> None:
        store.save_run(msgspec.structs.replace(last, steps=next(counter)))
    save = median_ms(upsert, rounds * 10)
    store.close()
    return query, save, len(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="1000,10000,50000")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--keep", type=int, default=20)
    args = ap.parse_args()
    print(f"{'runs':>7} {'code':>6} {'finished_in_scope ms':>21} {'save_run ms':>12} {'found':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.runs.split(",")):
            template = Path(tmp) / f"state-{n}.db"
            build(template, n, args.keep)
            rows = {}
            for code, indexed in (("before", False), ("after", True)):
                copy = Path(tmp) / f"{code}-{n}.db"
                shutil.copy(template, copy)
                rows[code] = measure(copy, args.rounds, indexed=indexed)
                q, s, found = rows[code]
                print(f"{n:>7} {code:>6} {q:>21.3f} {s:>12.3f} {found:>6}")
            ratio = rows["before"][0] / rows["after"][0] if rows["after"][0] else float("inf")
            # the one-time cost: a database from before the index, opened by this StateStore
            old = Path(tmp) / f"old-{n}.db"
            shutil.copy(template, old)
            with sqlite3.connect(old) as db:
                db.execute("DROP INDEX runs_retained")
            t = time.perf_counter()
            StateStore(old).close()
            print(f"{n:>7}  query ×{ratio:,.0f} faster; opening a database from before the index: "
                  f"{(time.perf_counter() - t) * 1000:.0f} ms once")


if __name__ == "__main__":
    main()
