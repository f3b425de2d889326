from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kcd.workspaces.confine import WorkspaceEscape, relative_to_workspace, resolve_in_workspace
from kcd.workspaces.diff import workspace_diff
from kcd.workspaces.seed import prepare_workspace


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace with in-tree content and an 'outside' sibling full of bait."""
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "README.md").write_text("hello\n")
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    (outside / "sub").mkdir()
    # Escape hatches planted inside the workspace.
    os.symlink("/etc", root / "etc_link")
    os.symlink(outside / "secret.txt", root / "secret_link")
    os.symlink("../outside", root / "rel_out")
    os.symlink(outside / "missing.txt", root / "dangling_out")
    os.symlink("hop2", root / "hop1")
    os.symlink("hop3", root / "hop2")
    os.symlink(str(outside), root / "hop3")
    os.symlink("src", root / "src_link")  # inside: allowed
    os.symlink("src/pkg/mod.py", root / "mod_link")  # inside: allowed
    (root / "src" / "up").symlink_to("../..")  # points at ws's parent
    return root, outside


ESCAPES = [
    "/etc/passwd",
    "/",
    "//etc/passwd",
    "..",
    "../outside/secret.txt",
    "../../../../../etc/passwd",
    "a/../../x",
    "src/../../outside",
    "src/pkg/../../../outside/secret.txt",
    "./../outside",
    "etc_link/passwd",
    "etc_link",
    "secret_link",
    "rel_out/secret.txt",
    "rel_out/new_file.txt",
    "dangling_out",
    "hop1/secret.txt",
    "hop1",
    "src/up/outside/secret.txt",
    "src/up",
    "~",
    "~/.ssh/id_rsa",
    "~root/.bashrc",
    "secret\x00.txt",
    "src/\x00",
    "rel_out/sub/../secret.txt",
    "src_link/../../outside",
]


@pytest.mark.parametrize("user_path", ESCAPES)
def test_escapes_are_rejected(layout: tuple[Path, Path], user_path: str) -> None:
    root, _ = layout
    with pytest.raises(WorkspaceEscape) as info:
        resolve_in_workspace(root, user_path)
    message = str(info.value)
    assert repr(user_path) in message  # the message names the offending path


def test_at_least_twenty_escape_cases() -> None:
    assert len(ESCAPES) >= 20


def test_escape_messages_say_why(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with pytest.raises(WorkspaceEscape, match="absolute"):
        resolve_in_workspace(root, "/etc/passwd")
    with pytest.raises(WorkspaceEscape, match="outside the workspace"):
        resolve_in_workspace(root, "etc_link/passwd")
    with pytest.raises(WorkspaceEscape, match="NUL"):
        resolve_in_workspace(root, "a\x00b")
    with pytest.raises(WorkspaceEscape, match="home directory"):
        resolve_in_workspace(root, "~/x")


def test_is_a_value_error() -> None:
    assert issubclass(WorkspaceEscape, ValueError)


@pytest.mark.parametrize(
    ("user_path", "expected"),
    [
        (".", "."),
        ("", "."),
        ("README.md", "README.md"),
        ("src/pkg/mod.py", "src/pkg/mod.py"),
        ("./src//pkg/./mod.py", "src/pkg/mod.py"),
        ("src/pkg/../pkg/mod.py", "src/pkg/mod.py"),
        ("src_link/pkg/mod.py", "src/pkg/mod.py"),  # in-tree symlink resolves to its target
        ("mod_link", "src/pkg/mod.py"),
        ("new/dir/file.txt", "new/dir/file.txt"),  # not yet existing
        ("src/pkg/new.py", "src/pkg/new.py"),
        ("weird name with spaces.txt", "weird name with spaces.txt"),
        ("file~backup", "file~backup"),
        ("..hidden", "..hidden"),
    ],
)
def test_legit_paths(layout: tuple[Path, Path], user_path: str, expected: str) -> None:
    root, _ = layout
    resolved = resolve_in_workspace(root, user_path)
    assert resolved.is_absolute()
    assert relative_to_workspace(root, resolved) == expected


def test_root_itself_reached_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "f").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(real)
    assert resolve_in_workspace(link, "f") == real.resolve() / "f"
    # '..' is taken from the real root, so leaving and re-entering the tree is fine...
    assert resolve_in_workspace(link, "../real/f") == real.resolve() / "f"
    with pytest.raises(WorkspaceEscape):
        resolve_in_workspace(link, "../elsewhere")  # ...but anything beside it is outside


def test_sibling_with_common_prefix_is_outside(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws-evil").mkdir()
    with pytest.raises(WorkspaceEscape):
        resolve_in_workspace(tmp_path / "ws", "../ws-evil/x")


# --------------------------------------------------------------------------- prepare


def test_prepare_copies_seed_and_skips_outside_links(layout: tuple[Path, Path], tmp_path: Path) -> None:
    seed, _ = layout
    (seed / "run.sh").write_text("#!/bin/sh\n")
    (seed / "run.sh").chmod(0o755)
    os.symlink(seed / "README.md", seed / "abs_inside_link")
    dest = tmp_path / "dest"
    skipped = prepare_workspace(dest, seed)
    assert (dest / "src" / "pkg" / "mod.py").read_text() == "x = 1\n"
    assert os.access(dest / "run.sh", os.X_OK)
    # Links inside the tree are kept as links, pointing into dest.
    assert os.path.islink(dest / "src_link") and os.readlink(dest / "src_link") == "src"
    assert os.path.islink(dest / "abs_inside_link")
    assert os.path.realpath(dest / "abs_inside_link") == str((dest / "README.md").resolve())
    # Links out of the tree are not copied at all.
    for name in ("etc_link", "secret_link", "rel_out", "dangling_out", "hop1", "hop2", "hop3"):
        assert not os.path.lexists(dest / name), name
    assert not os.path.lexists(dest / "src" / "up")
    assert set(skipped) >= {"etc_link", "secret_link", "rel_out", "dangling_out", "hop3", "src/up"}


def test_prepare_without_seed_and_refuses_non_empty(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b"
    assert prepare_workspace(dest, None) == []
    assert dest.is_dir()
    (dest / "x").write_text("keep me")
    with pytest.raises(FileExistsError):
        prepare_workspace(dest, None)
    assert (dest / "x").read_text() == "keep me"


# --------------------------------------------------------------------------- diff


def test_diff_added_modified_deleted_binary(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    final = tmp_path / "final"
    seed.mkdir()
    (seed / "keep.txt").write_text("same\n")
    (seed / "mod.txt").write_text("a\nb\nc\n")
    (seed / "gone.txt").write_text("bye\n")
    (seed / "blob.bin").write_bytes(b"\x00\x01")
    prepare_workspace(final, seed)
    (final / "mod.txt").write_text("a\nB\nc\n")
    (final / "gone.txt").unlink()
    (final / "new").mkdir()
    (final / "new" / "file.py").write_text("print(1)")  # no trailing newline
    (final / "blob.bin").write_bytes(b"\x00\x02")
    (final / ".git").mkdir()
    (final / ".git" / "HEAD").write_text("ref\n")

    diff = workspace_diff(seed, final)
    assert "keep.txt" not in diff
    assert ".git" not in diff
    assert "--- a/mod.txt\n+++ b/mod.txt\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n" in diff
    assert "deleted file mode 100644\n--- a/gone.txt\n+++ /dev/null\n" in diff
    assert "new file mode 100644\n--- /dev/null\n+++ b/new/file.py\n@@ -0,0 +1 @@\n+print(1)\n\\ No newline at end of file\n" in diff
    assert "Binary files a/blob.bin and b/blob.bin differ" in diff
    assert diff.index("blob.bin") < diff.index("gone.txt") < diff.index("mod.txt") < diff.index("new/file.py")


def test_diff_applies_with_patch(tmp_path: Path) -> None:
    """The output is a real patch: GNU patch reproduces the final tree from the seed."""
    if subprocess.run(["which", "patch"], capture_output=True).returncode != 0:
        pytest.skip("patch(1) not installed")
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "a.txt").write_text("".join(f"line {i}\n" for i in range(30)))
    (seed / "b.txt").write_text("tail without newline")
    final = tmp_path / "final"
    prepare_workspace(final, seed)
    (final / "a.txt").write_text("".join(f"line {i}\n" for i in range(30) if i != 3) + "extra\n")
    (final / "b.txt").write_text("tail without newline, changed")
    (final / "c.txt").write_text("brand new\n")
    diff = workspace_diff(seed, final)
    work = tmp_path / "work"
    prepare_workspace(work, seed)
    subprocess.run(["patch", "-p1", "-s"], cwd=work, input=diff.encode(), check=True)
    assert workspace_diff(work, final) == ""


def test_diff_empty_seed_and_symlinks(tmp_path: Path) -> None:
    final = tmp_path / "final"
    final.mkdir()
    (final / "empty.txt").write_text("")
    os.symlink("/etc/passwd", final / "link")
    diff = workspace_diff(None, final)
    assert "diff --git a/empty.txt b/empty.txt\nnew file mode 100644\n" in diff
    assert "new file mode 120000\n--- /dev/null\n+++ b/link\n@@ -0,0 +1 @@\n+/etc/passwd\n" in diff
    assert "root:" not in diff  # the link was not followed


def _seed_run(tmp_path: Path, build) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """A run dir whose `meta/seed.tar.gz` packs the tree `build(seed)` makes, and its workspace
    seeded from that archive as a run's is."""
    from kcd.workspaces.archive import pack_all
    from kcd.workspaces.seed import SEED_ARCHIVE, seed_from_archive

    seed = tmp_path / "seed"
    seed.mkdir()
    build(seed)
    run_dir = tmp_path / "run"
    (run_dir / "meta").mkdir(parents=True)
    packed = pack_all(seed)
    (run_dir / SEED_ARCHIVE).write_bytes(packed.file.read())
    workspace = run_dir / "workspace"
    seed_from_archive(run_dir / SEED_ARCHIVE, workspace, 1 << 30)
    return run_dir, workspace


def _extracted_diff(run_dir: Path, workspace: Path) -> str:
    """Today's way, kept as the fallback: extract the seed archive, then diff two trees."""
    from kcd.workspaces.seed import SEED_ARCHIVE, seed_from_archive

    seed = run_dir.parent / "extracted"
    seed_from_archive(run_dir / SEED_ARCHIVE, seed, 1 << 30)
    return workspace_diff(seed, workspace)


def test_diff_read_from_the_seed_archive_matches_the_extracted_seed(tmp_path: Path) -> None:
    import kcd.workspaces.diff as wdiff

    def build(seed: Path) -> None:
        (seed / "src" / "deep").mkdir(parents=True)
        (seed / "same.txt").write_text("unchanged\n")
        (seed / "mod.txt").write_text("one\ntwo\nthree\n")
        (seed / "noeol.txt").write_text("no newline")
        (seed / "gone.txt").write_text("deleted later\n")
        (seed / "run.sh").write_text("#!/bin/sh\necho hi\n")
        (seed / "exec_then_not.sh").write_text("#!/bin/sh\n")
        os.chmod(seed / "exec_then_not.sh", 0o755)
        (seed / "bin.dat").write_bytes(b"\x00\x01\x02" * 100)
        (seed / "latin1.txt").write_bytes(b"caf\xe9\n")
        (seed / "big.bin").write_bytes(b"x" * (2 * 1024 * 1024 + 1))  # over the diff's per-file cap
        (seed / "src" / "deep" / "m.py").write_text("x = 1\n")
        (seed / ".git").mkdir()
        (seed / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        os.symlink("same.txt", seed / "link")
        os.symlink("src", seed / "dirlink")
        os.symlink("missing", seed / "dangling")

    run_dir, ws = _seed_run(tmp_path, build)
    (ws / "mod.txt").write_text("one\n2\nthree\nfour\n")
    (ws / "noeol.txt").write_text("no newline, still")
    (ws / "gone.txt").unlink()
    (ws / "added.txt").write_text("new\n")
    os.chmod(ws / "run.sh", 0o755)
    os.chmod(ws / "exec_then_not.sh", 0o644)
    (ws / "bin.dat").write_bytes(b"\x00\x09" * 100)
    (ws / "latin1.txt").write_bytes(b"caf\xe9s\n")
    (ws / "src" / "deep" / "m.py").write_text("x = 2\n")
    (ws / ".git" / "HEAD").write_text("ref: refs/heads/other\n")
    (ws / "link").unlink()
    os.symlink("mod.txt", ws / "link")
    os.link(ws / "same.txt", tmp_path / "hardlink")  # the final copy now has two names

    expected = _extracted_diff(run_dir, ws)
    for part in ("a/mod.txt", "a/gone.txt", "b/added.txt", "old mode 100644\nnew mode 100755",
                 "old mode 100755\nnew mode 100644", "Binary files a/bin.dat", "a/big.bin and b/big.bin",
                 "-same.txt\n\\ No newline at end of file\n+mod.txt", "\\ No newline at end of file", "a/src/deep/m.py", "a/same.txt"):
        assert part in expected, part
    assert ".git" not in expected
    fast = wdiff._diff_from_archive(run_dir / "meta" / "seed.tar.gz", ws, 1 << 30)
    assert fast == expected
    assert wdiff.diff_against_seed(run_dir, None, ws, 1 << 30) == expected


def test_diff_from_an_unusual_seed_archive_falls_back_to_extracting(tmp_path: Path) -> None:
    import kcd.workspaces.diff as wdiff

    def build(seed: Path) -> None:
        (seed / "real").mkdir()
        (seed / "real" / "f.txt").write_text("f\n")
        os.symlink("real", seed / ".git")  # a link named like a skipped directory

    run_dir, ws = _seed_run(tmp_path, build)
    (ws / "real" / "f.txt").write_text("g\n")
    assert wdiff._diff_from_archive(run_dir / "meta" / "seed.tar.gz", ws, 1 << 30) is None
    assert wdiff.diff_against_seed(run_dir, None, ws, 1 << 30) == _extracted_diff(run_dir, ws)


@pytest.fixture
def open_tmp():
    """A temp dir whose ancestors others may search (pytest's own base is 0700)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="kcd-perm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown files to another uid")
def test_another_user_may_seed_only_from_what_it_could_read(open_tmp):
    from kcd.workspaces.seed import unreadable_for

    tmp_path = open_tmp

    other = (12345, 12345)  # a socket peer that is neither root nor the daemon's user
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    os.chmod(tmp_path, 0o755)
    for d in (tree, tree / "sub"):
        os.chmod(d, 0o755)
    for f in (tree / "a.txt", tree / "sub" / "b.txt"):
        os.chmod(f, 0o644)
    assert unreadable_for(tree, *other) is None  # world-readable: what the peer could copy itself
    os.chmod(tree / "sub" / "b.txt", 0o600)
    assert unreadable_for(tree, *other) == str(tree / "sub" / "b.txt")
    os.chown(tree / "sub" / "b.txt", *other)
    assert unreadable_for(tree, *other) is None  # the peer's own file
    os.chmod(tree / "sub", 0o700)
    assert unreadable_for(tree, *other) == str(tree / "sub")
    os.chmod(tree / "sub", 0o750)
    os.chown(tree / "sub", 0, other[1])
    assert unreadable_for(tree, *other) is None  # readable through the group
    os.chmod(tmp_path, 0o700)
    assert unreadable_for(tree, *other) == str(tmp_path)  # a locked ancestor hides the tree
