"""Path confinement of raw run files: the allow-list, `..`, symlinks anywhere on the path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kcd.errors import BadRequest, NotFound, TooLarge
from kcd.viewer.confine import list_files, read_confined, served


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    for rel, text in {"meta/events.jsonl": "{}\n", "raw/responses/turn_1_attempt_1.json": "{}",
                      "conversation/conversation.md": "# hi\n", "workspace/secret.txt": "ws",
                      "meta/launch.json": "{}", "workspace.diff": "+x\n"}.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    (tmp_path / "outside.txt").write_text("outside")
    return d


@pytest.mark.parametrize("rel", ["../outside.txt", "meta/../../outside.txt", "/etc/passwd", "meta//events.jsonl",
                                 "./meta/events.jsonl", "workspace/secret.txt", "meta/launch.json",
                                 "raw/responses/..", "raw\\responses\\x", "meta/events.jsonl\x00",
                                 "raw/responses/sub/x.json", ""])
def test_paths_off_the_list_are_refused(run_dir: Path, rel: str) -> None:
    assert not served(rel)
    with pytest.raises(BadRequest):
        read_confined(run_dir, rel)


def test_listed_files_are_read(run_dir: Path) -> None:
    assert read_confined(run_dir, "meta/events.jsonl") == b"{}\n"
    assert read_confined(run_dir, "raw/responses/turn_1_attempt_1.json") == b"{}"
    with pytest.raises(NotFound):
        read_confined(run_dir, "raw/responses/turn_9_attempt_1.json")
    assert list_files(run_dir) == ["conversation/conversation.md", "meta/events.jsonl", "workspace.diff",
                                   "raw/responses/turn_1_attempt_1.json"]


def test_a_symlinked_file_is_refused(run_dir: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside.txt", run_dir / "raw/responses/turn_2_attempt_1.json")
    with pytest.raises(BadRequest, match="symbolic link"):
        read_confined(run_dir, "raw/responses/turn_2_attempt_1.json")
    assert "raw/responses/turn_2_attempt_1.json" not in list_files(run_dir)


def test_a_symlinked_directory_on_the_way_is_refused(run_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "turn_1.json").write_text("planted")
    os.symlink(elsewhere, run_dir / "errors")
    with pytest.raises(BadRequest, match="symbolic link"):
        read_confined(run_dir, "errors/turn_1.json")
    assert not any(f.startswith("errors/") for f in list_files(run_dir))


def test_a_fifo_or_a_huge_file_is_refused(run_dir: Path) -> None:
    os.mkfifo(run_dir / "result.json")
    with pytest.raises(BadRequest):
        read_confined(run_dir, "result.json")
    (run_dir / "workspace.diff").write_bytes(b"x" * 2048)
    with pytest.raises(TooLarge):
        read_confined(run_dir, "workspace.diff", limit=1024)


def test_truncate_reads_the_head_of_a_large_file(run_dir: Path) -> None:
    (run_dir / "workspace.diff").write_bytes(b"x" * 2048)
    assert read_confined(run_dir, "workspace.diff", limit=1024, truncate=True) == b"x" * 1024
