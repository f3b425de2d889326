"""StateStore: the daemon's SQLite database (runs index, route breakers, capability probes).

Calls are synchronous: each is a single indexed statement in WAL mode
(tens of microseconds), cheaper than a thread hop, and only the daemon's
event loop touches the connection.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import msgspec

from kcd.api.types import RunInfo

# A run retention may still delete; the index's WHERE and the query's must be the same text
# for SQLite to use the partial index.
_RETAINED = ("status IN ('completed','failed','cancelled','interrupted') "
             "AND json_extract(CAST(info AS TEXT), '$.exit_reason') IS NOT NULL "
             "AND json_extract(CAST(info AS TEXT), '$.pruned_at') IS NULL")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL,
    info BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);
-- The viewer's queries (a run page's replays, a user's runs list): without these each
-- was a scan of every run's JSON. The expressions are list_runs' text, character for character.
CREATE INDEX IF NOT EXISTS runs_replay_of ON runs(json_extract(CAST(info AS TEXT), '$.replay_of'), created_at);
CREATE INDEX IF NOT EXISTS runs_owner ON runs(json_extract(CAST(info AS TEXT), '$.peer_uid'), created_at);
-- Retention's question after every run: the ended, unpruned runs of one scope. Partial, so it
-- holds only the few runs each scope keeps; without it each run's end read the JSON of every
-- run its user ever had, on the event loop (17 ms at 5,000 a user, bench/bench_state.py).
CREATE INDEX IF NOT EXISTS runs_retained ON runs(
    json_extract(CAST(info AS TEXT), '$.peer_uid'), json_extract(CAST(info AS TEXT), '$.config_path'), created_at)
    WHERE {retained};
CREATE TABLE IF NOT EXISTS breakers (
    route TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS probes (
    route TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    checked_at REAL NOT NULL
);
""".replace("{retained}", _RETAINED)


class StateStore:
    """The daemon's SQLite state: runs index, breaker state and probe results."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Runs of every user are in it: the daemon's user's alone. SQLite gives the -wal and
        # -shm files the database file's mode, so creating that 0600 covers all three.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077 and os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o600)  # a database from before this rule
        finally:
            os.close(fd)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def save_run(self, info: RunInfo) -> None:
        self._db.execute(
            "INSERT INTO runs(id, created_at, status, info) VALUES(?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET status=excluded.status, info=excluded.info",
            (info.id, info.created_at, info.status, msgspec.json.encode(info)),
        )

    def save_runs(self, infos: list[RunInfo]) -> None:
        """Several runs in one transaction: one statement call for a burst's whole batch."""
        if not infos:
            return
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                "INSERT INTO runs(id, created_at, status, info) VALUES(?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET status=excluded.status, info=excluded.info",
                [(i.id, i.created_at, i.status, msgspec.json.encode(i)) for i in infos],
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get_run(self, run_id: str) -> RunInfo | None:
        row = self._db.execute("SELECT info FROM runs WHERE id=?", (run_id,)).fetchone()
        return msgspec.json.decode(row[0], type=RunInfo) if row else None

    def list_runs(self, limit: int = 50, status: str | None = None, owner: int | None = None, *,
                  route: str | None = None, exit_reason: str | None = None, since: str | None = None,
                  until: str | None = None, replay_of: str | None = None) -> list[RunInfo]:
        """Newest first; `since`/`until` bound `created_at` (ISO 8601 UTC, compared as text, so
        a prefix such as `2026-01-31` works); `replay_of`: the replays of that run."""
        where, args = [], []
        if status:
            where.append("status=?")
            args.append(status)
        if owner is not None:
            where.append("json_extract(CAST(info AS TEXT), '$.peer_uid')=?")
            args.append(owner)
        for key, value in (("route", route), ("exit_reason", exit_reason), ("replay_of", replay_of)):
            if value:
                where.append(f"json_extract(CAST(info AS TEXT), '$.{key}')=?")
                args.append(value)
        if since:
            where.append("created_at>=?")
            args.append(since)
        if until:  # inclusive of the whole day, minute... that `until` names
            where.append("substr(created_at, 1, ?)<=?")
            args.extend((len(until), until))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._db.execute(f"SELECT info FROM runs {clause}ORDER BY created_at DESC LIMIT ?", (*args, limit))
        return [msgspec.json.decode(r[0], type=RunInfo) for r in rows]

    def finished_in_scope(self, owner: int | None, config_path: str | None) -> list[RunInfo]:
        """Ended, unpruned runs of one retention scope (kcd/retention.py), newest first;
        interrupted runs count only once recovery has finished them (exit_reason set)."""
        rows = self._db.execute(
            f"SELECT info FROM runs WHERE {_RETAINED} "
            "AND json_extract(CAST(info AS TEXT), '$.peer_uid') IS ? "
            "AND json_extract(CAST(info AS TEXT), '$.config_path') IS ? "
            "ORDER BY created_at DESC, id DESC", (owner, config_path))
        return [msgspec.json.decode(r[0], type=RunInfo) for r in rows]

    def mark_interrupted(self) -> list[str]:
        """On start: runs a previous daemon left running did not finish."""
        stale = [msgspec.json.decode(r[0], type=RunInfo)
                 for r in self._db.execute("SELECT info FROM runs WHERE status IN ('queued','running')")]
        for info in stale:
            self.save_run(msgspec.structs.replace(
                info, status="interrupted", error="the daemon stopped before the run ended"))
        return [i.id for i in stale]

    def interrupted_unfinished(self) -> list[RunInfo]:
        """Interrupted runs whose artifacts are not recovered yet: recovery sets exit_reason
        last, so a recovery cut short by another crash is picked up again."""
        rows = self._db.execute(
            "SELECT info FROM runs WHERE status='interrupted' "
            "AND json_extract(CAST(info AS TEXT), '$.exit_reason') IS NULL ORDER BY created_at")
        return [msgspec.json.decode(r[0], type=RunInfo) for r in rows]

    # Route breakers (kcd.providers.breaker.BreakerStore): opaque JSON per route,
    # written on every transition and at shutdown.

    def save_breaker(self, route: str, data: bytes) -> None:
        self._db.execute(
            "INSERT INTO breakers(route, data, updated_at) VALUES(?,?,?) "
            "ON CONFLICT(route) DO UPDATE SET data=excluded.data, updated_at=excluded.updated_at",
            (route, data, datetime.now(timezone.utc).isoformat(timespec="milliseconds")),
        )

    def load_breakers(self) -> dict[str, bytes]:
        return {route: bytes(data) for route, data in self._db.execute("SELECT route, data FROM breakers")}

    # Capability probes (kcd.providers.probes.ProbeManager): one JSON record per
    # route, replaced by each new probe run and loaded at daemon start.

    def save_probe(self, route: str, data: bytes, checked_at: float) -> None:
        self._db.execute(
            "INSERT INTO probes(route, data, checked_at) VALUES(?,?,?) "
            "ON CONFLICT(route) DO UPDATE SET data=excluded.data, checked_at=excluded.checked_at",
            (route, data, checked_at),
        )

    def load_probes(self) -> dict[str, bytes]:
        return {route: bytes(data) for route, data in self._db.execute("SELECT route, data FROM probes")}
