"""Admission helpers: the config cache reuses a load only while its files are unchanged, and
the state store saves a batch of runs in one transaction."""

from __future__ import annotations

import os
from pathlib import Path

from kcd.api.types import PeerInfo, RunInfo
from kcd.runs import ConfigCache, RunRejected
from kcd.state import StateStore

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _config(tmp_path: Path, model: str = "mock/dev") -> tuple[str, str]:
    path = tmp_path / "run.yaml"
    text = (f"extends: {CONFIGS / 'demo.yaml'}\nproviders:\n  default_model: {model}\n"
            f"  models:\n    - id: {model}\n      adapter: mock\n")
    path.write_text(text)
    return text, str(path)


def test_the_same_config_is_loaded_once_while_its_files_are_unchanged(tmp_path) -> None:
    cache = ConfigCache()
    text, path = _config(tmp_path)
    first = cache.load(text, path, None)
    assert cache.load(text, path, None) is first and cache.hits == 1
    me = PeerInfo(uid=os.getuid(), gid=os.getgid(), pid=os.getpid())
    assert cache.load(text, path, me) is first  # the daemon's own user: nothing is checked per peer
    # A base file changes: loaded afresh.
    base = tmp_path / "base.yaml"
    base.write_text((CONFIGS / "demo.yaml").read_text().replace("base_v2.yaml", str(CONFIGS / "base_v2.yaml")))
    text2 = text.replace(str(CONFIGS / "demo.yaml"), str(base))
    a = cache.load(text2, path, None)
    assert cache.load(text2, path, None) is a
    base.write_text(base.read_text().replace("max_iterations: 8", "max_iterations: 5"))
    b = cache.load(text2, path, None)
    assert b is not a and b.config.max_iterations == 5


def test_another_users_load_is_never_reused_and_errors_keep_their_key_path(tmp_path) -> None:
    cache = ConfigCache()
    text, path = _config(tmp_path)
    other = PeerInfo(uid=os.getuid() + 4242, gid=os.getgid() + 4242, pid=1)
    if os.getuid() == 0:
        other = PeerInfo(uid=4242, gid=4242, pid=1)
    cache.load(text, path, None)
    hits = cache.hits
    try:
        cache.load(text, path, other)
    except RunRejected:
        pass  # it may not read the repository's configs: still not served from the cache
    assert cache.hits == hits
    with pytest.raises(RunRejected) as err:
        cache.load(text + "max_iterations: many\n", path, None)
    assert err.value.code == "config_error" and "$.max_iterations" in err.value.message


def test_save_runs_stores_a_batch(tmp_path) -> None:
    store = StateStore(tmp_path / "state.db")
    infos = [RunInfo(id=f"r{i}", status="running", run_dir=f"/runs/r{i}", created_at=f"2026-01-01T00:00:0{i}Z")
             for i in range(5)]
    store.save_runs(infos)
    store.save_runs([])
    assert [r.id for r in store.list_runs()] == ["r4", "r3", "r2", "r1", "r0"]
    store.save_run(RunInfo(id="r0", status="completed", run_dir="/runs/r0", created_at=infos[0].created_at))
    assert store.get_run("r0").status == "completed"
