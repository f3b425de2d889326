"""A workspace's round trip between kcd's host and a Ray node, and the hostile trees refused."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from kcd.rayplane.wsync import TreeRefused, pack_tree, replace_tree, tree_signature


def _tree(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "empty").mkdir()
    os.symlink("src/main.c", root / "inside")
    os.symlink("/usr/bin/python3", root / "python")  # outside: kept as a link, never followed
    os.link(root / "run.sh", root / "hard")


def test_a_tree_comes_back_exactly(tmp_path: Path) -> None:
    src, dest = tmp_path / "node", tmp_path / "kcd" / "workspace"
    _tree(src)
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("gone after the swap\n")
    replace_tree(pack_tree(src), dest)
    assert (dest / "src" / "main.c").read_text() == "int main(void) { return 0; }\n"
    assert os.stat(dest / "run.sh").st_mode & 0o777 == 0o755 and (dest / "empty").is_dir()
    assert os.readlink(dest / "inside") == "src/main.c" and os.readlink(dest / "python") == "/usr/bin/python3"
    assert (dest / "hard").read_text() == "#!/bin/sh\n" and not (dest / "stale.txt").exists()
    assert not (tmp_path / "kcd" / "workspace.incoming").exists()
    assert tree_signature(src) != tree_signature(tmp_path)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    return info


@pytest.mark.parametrize("members", [
    [(_member("../escape.txt"), b"x")],
    [(_member("/etc/evil"), b"x")],
    [(_member("out", tarfile.SYMTYPE, "/tmp"), None), (_member("out/pwned.txt"), b"x")],
    [(_member("dev", tarfile.CHRTYPE), None)],
    [(_member("h", tarfile.LNKTYPE, "/etc/passwd"), None)],
], ids=["dotdot", "absolute", "through-a-link", "device", "hard-link"])
def test_hostile_trees_are_refused_and_kcds_copy_is_untouched(tmp_path: Path, members) -> None:
    dest = tmp_path / "workspace"
    dest.mkdir()
    (dest / "keep.txt").write_text("kept\n")
    with pytest.raises(TreeRefused):
        replace_tree(_tar(members), dest)
    assert (dest / "keep.txt").read_text() == "kept\n"
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/pwned.txt").exists()
    assert not (tmp_path / "workspace.incoming").exists()


def test_setuid_bits_never_come_back(tmp_path: Path) -> None:
    info = _member("tool")
    info.mode = 0o4755
    dest = tmp_path / "workspace"
    replace_tree(_tar([(info, b"#!/bin/sh\n")]), dest)
    assert os.stat(dest / "tool").st_mode & 0o7777 == 0o755
