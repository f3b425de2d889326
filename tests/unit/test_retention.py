"""kcd.retention: what pruning may delete, and that concurrent passes never over-prune."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from kcd.api.types import RunInfo
from kcd.retention import RunRetention, delete_run_dir, prune_uploads_forever
from kcd.state import StateStore

from kcd.workspaces.uploads import UPLOAD_TTL_S, UploadStore


def _runs(tmp_path: Path, store: StateStore, n: int, *, uid: int = 1000, config: str = "/c/a.yaml") -> list[RunInfo]:
    root = tmp_path / "runs"
    root.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        d = root / f"2025_{config.replace('/', '_')}_{uid}_{i}"
        (d / "meta").mkdir(parents=True)
        (d / "result.json").write_text("{}")
        info = RunInfo(id=f"r{uid}{i:02d}{abs(hash(config)) % 97}", status="completed", run_dir=str(d),
                       created_at=f"2025-01-01T00:00:{i:02d}.000Z", config_path=config, peer_uid=uid,
                       exit_reason="mark_task_complete")
        store.save_run(info)
        out.append(info)
    return out


def test_a_symlinked_run_dir_never_deletes_outside_the_runs_root(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    runs = _runs(tmp_path, store, 3)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    victim = Path(runs[0].run_dir)
    for p in sorted(victim.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    victim.rmdir()
    victim.symlink_to(outside)  # the oldest run's directory replaced by a link out
    ret = RunRetention(tmp_path / "runs", store, set())
    anyio.run(ret.after_run, runs[2], 1)
    assert (outside / "keep.txt").read_text() == "x"
    assert victim.is_symlink()  # left alone, and not marked pruned
    assert store.get_run(runs[0].id).pruned_at is None
    assert not Path(runs[1].run_dir).exists() and store.get_run(runs[1].id).pruned_at
    assert Path(runs[2].run_dir).is_dir()


def test_only_directories_directly_inside_the_runs_root(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    (root / "a" / "nested").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert delete_run_dir(root, str(elsewhere))[0] == "refused"
    assert delete_run_dir(root, str(root / "a" / "nested"))[0] == "refused"
    assert delete_run_dir(root, str(root / "a" / ".." / ".."))[0] == "refused"
    assert delete_run_dir(root, str(root))[0] == "refused"
    (root / "file").write_text("x")
    assert delete_run_dir(root, str(root / "file"))[0] == "refused"
    assert delete_run_dir(root, str(root / "gone"))[0] == "missing"
    # a link inside a run directory is removed, never followed
    (root / "a" / "out").symlink_to(elsewhere)
    (elsewhere / "keep").write_text("x")
    assert delete_run_dir(root, str(root / "a"))[0] == "deleted"
    assert (elsewhere / "keep").exists() and elsewhere.is_dir()
    assert elsewhere.exists() and tmp_path.exists()


def test_concurrent_passes_keep_exactly_max_runs_and_skip_live_runs(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    runs = _runs(tmp_path, store, 8)
    other_user = _runs(tmp_path, store, 3, uid=2000)
    other_config = _runs(tmp_path, store, 3, config="/c/b.yaml")
    live = {runs[0].id}  # the oldest is still running (its row says completed only here)
    ret = RunRetention(tmp_path / "runs", store, live)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for r in runs:
                tg.start_soon(ret.after_run, r, 2)

    anyio.run(main)
    kept = [r for r in runs if Path(r.run_dir).is_dir()]
    assert [r.id for r in kept] == [runs[0].id, runs[6].id, runs[7].id]
    assert all(store.get_run(r.id).pruned_at for r in runs[1:6])
    assert all(Path(r.run_dir).is_dir() for r in other_user + other_config)


def test_unrecovered_interrupted_runs_are_not_pruned(tmp_path: Path) -> None:
    import msgspec

    store = StateStore(tmp_path / "state.db")
    runs = _runs(tmp_path, store, 3)
    store.save_run(msgspec.structs.replace(runs[0], status="interrupted", exit_reason=None))
    anyio.run(RunRetention(tmp_path / "runs", store, set()).after_run, runs[2], 1)
    assert Path(runs[0].run_dir).is_dir() and not Path(runs[1].run_dir).exists()


def test_uploads_are_pruned_while_the_daemon_runs(tmp_path: Path) -> None:
    uploads = UploadStore(tmp_path / "uploads", max_workspace_bytes=1 << 20)
    _, fresh = uploads.new_path()
    fresh.write_bytes(b"x")
    stale_id, stale = uploads.new_path()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(prune_uploads_forever, uploads, 0.05)
            await anyio.sleep(0.2)
            assert fresh.exists()
            stale.write_bytes(b"x")  # arrives after start-up, then goes stale
            old = time.time() - UPLOAD_TTL_S - 10
            os.utime(stale, (old, old))
            with anyio.fail_after(5):
                while stale.exists():
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert fresh.exists() and not stale.exists()
    with pytest.raises(Exception, match="no upload"):
        uploads.take(stale_id)
