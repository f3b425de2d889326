"""StateStore queries: list_runs filters (the viewer's runs list: route, exit reason, time range),
and retention's scope query, each answered by its index rather than a scan of every run's JSON."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kcd.api.types import RunInfo
from kcd.state import StateStore


def test_filters_combine_and_until_includes_the_day_it_names(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    rows = [("a", "2026-01-30T23:59:59.000Z", "mock/dev", "mark_task_complete", 1),
            ("b", "2026-01-31T08:00:00.000Z", "openai/gpt-4o-mini", "provider_error", 1),
            ("c", "2026-01-31T18:30:00.000Z", "mock/dev", "provider_error", 2),
            ("d", "2026-02-01T00:00:00.000Z", "mock/dev", "mark_task_complete", 1)]
    store.save_runs([RunInfo(id=i, status="completed", run_dir=f"/r/{i}", created_at=t, route=r, exit_reason=e,
                             peer_uid=u) for i, t, r, e, u in rows])

    def ids(**kw) -> list[str]:
        return [r.id for r in store.list_runs(limit=10, **kw)]

    assert ids() == ["d", "c", "b", "a"]
    assert ids(route="mock/dev") == ["d", "c", "a"]
    assert ids(exit_reason="provider_error") == ["c", "b"]
    assert ids(since="2026-01-31", until="2026-01-31") == ["c", "b"]
    assert ids(since="2026-01-31T09:00") == ["d", "c"]
    assert ids(until="2026-01-31T08:00") == ["b", "a"]
    assert ids(route="mock/dev", exit_reason="provider_error", owner=2) == ["c"]
    assert ids(route="mock/dev", owner=1) == ["d", "a"]
    assert ids(route="' OR 1=1 --") == []
    store.close()


def test_replay_of_lists_a_runs_replays_by_owner(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.save_runs([RunInfo(id="rec", status="completed", run_dir="/r/rec", created_at="2026-01-01T00:00:00Z",
                             peer_uid=1),
                     RunInfo(id="r1", status="completed", run_dir="/r/r1", created_at="2026-01-01T00:01:00Z",
                             peer_uid=1, replay_of="rec"),
                     RunInfo(id="r2", status="running", run_dir="/r/r2", created_at="2026-01-01T00:02:00Z",
                             peer_uid=0, replay_of="rec"),
                     RunInfo(id="other", status="completed", run_dir="/r/o", created_at="2026-01-01T00:03:00Z",
                             peer_uid=1, replay_of="r1")])
    assert [r.id for r in store.list_runs(replay_of="rec")] == ["r2", "r1"]
    assert [r.id for r in store.list_runs(replay_of="rec", owner=1)] == ["r1"]
    assert store.list_runs(replay_of="' OR 1=1 --") == []
    store.close()


def _plan(store: StateStore, **kw) -> str:
    """The query plan of the statement `list_runs(**kw)` runs (caught as it runs, values bound)."""
    sql: list[str] = []
    store._db.set_trace_callback(sql.append)
    try:
        store.list_runs(limit=20, **kw)
    finally:
        store._db.set_trace_callback(None)
    return " ".join(r[-1] for r in store._db.execute("EXPLAIN QUERY PLAN " + sql[-1]))


def test_a_runs_replays_and_a_users_runs_are_found_by_index_not_by_scanning(tmp_path: Path) -> None:
    # Every run page asks for its replays; without the index that read every run's JSON.
    store = StateStore(tmp_path / "state.db")
    store.save_runs([RunInfo(id=f"r{i}", status="completed", run_dir=f"/r/{i}", peer_uid=i % 3,
                             created_at=f"2026-01-01T00:00:{i:02d}.000Z", replay_of="r0" if i % 5 == 4 else None)
                     for i in range(40)])
    assert "USING INDEX runs_replay_of" in _plan(store, replay_of="r0")
    assert "USING INDEX runs_owner" in _plan(store, owner=1)
    assert [r.id for r in store.list_runs(limit=20, replay_of="r0")] == ["r39", "r34", "r29", "r24", "r19", "r14",
                                                                        "r9", "r4"]
    assert [r.id for r in store.list_runs(limit=3, owner=1)] == ["r37", "r34", "r31"]


def test_a_database_from_before_the_indexes_gets_them_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).save_run(RunInfo(id="a", status="completed", run_dir="/r/a", created_at="2026-01-01T00:00:00Z"))
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX runs_replay_of")
        db.execute("DROP INDEX runs_owner")
    store = StateStore(path)
    assert "USING INDEX runs_replay_of" in _plan(store, replay_of="a")
    assert [r.id for r in store.list_runs()] == ["a"]


def _scope_plan(store: StateStore, owner: int | None, config: str | None) -> str:
    sql: list[str] = []
    store._db.set_trace_callback(sql.append)
    try:
        store.finished_in_scope(owner, config)
    finally:
        store._db.set_trace_callback(None)
    return " ".join(r[-1] for r in store._db.execute("EXPLAIN QUERY PLAN " + sql[-1]))


def test_retentions_scope_query_keeps_its_meaning_and_uses_the_partial_index(tmp_path: Path) -> None:
    # Asked after every run's end, on the event loop: a scan read every run's JSON each time.
    store = StateStore(tmp_path / "state.db")

    def run(i: int, **kw) -> RunInfo:
        base = dict(id=f"r{i:02d}", status="completed", run_dir=f"/r/{i}", created_at=f"2026-01-01T00:00:{i:02d}Z",
                    peer_uid=7, config_path="/c/a.yaml", exit_reason="mark_task_complete")
        return RunInfo(**{**base, **kw})
    store.save_runs([run(0), run(1, status="failed", exit_reason="provider_error"),
                     run(2, status="running", exit_reason=None),
                     run(3, status="interrupted", exit_reason=None),  # recovery not finished: not yet
                     run(4, status="interrupted", exit_reason="interrupted"),
                     run(5, pruned_at="2026-01-02T00:00:00Z"), run(6, peer_uid=8), run(7, config_path="/c/b.yaml"),
                     run(8, status="cancelled", exit_reason="cancelled"),
                     run(9, peer_uid=None, config_path=None), run(10, peer_uid=None, config_path=None)])
    assert [r.id for r in store.finished_in_scope(7, "/c/a.yaml")] == ["r08", "r04", "r01", "r00"]
    assert [r.id for r in store.finished_in_scope(None, None)] == ["r10", "r09"]  # inline configs, no peer
    assert [r.id for r in store.finished_in_scope(8, "/c/a.yaml")] == ["r06"]
    assert store.finished_in_scope(7, "' OR 1=1 --") == []
    for owner, config in ((7, "/c/a.yaml"), (None, None)):
        assert "USING INDEX runs_retained" in _scope_plan(store, owner, config)
    # a run that ends, or is pruned, moves into or out of the index with its row
    store.save_run(run(2, status="completed"))
    store.save_run(run(0, pruned_at="2026-01-02T00:00:00Z"))
    assert [r.id for r in store.finished_in_scope(7, "/c/a.yaml")] == ["r08", "r04", "r02", "r01"]
    store.close()
    with sqlite3.connect(tmp_path / "state.db") as db:  # a database from before the index
        db.execute("DROP INDEX runs_retained")
    store = StateStore(tmp_path / "state.db")
    assert "USING INDEX runs_retained" in _scope_plan(store, 7, "/c/a.yaml")
    store.close()
