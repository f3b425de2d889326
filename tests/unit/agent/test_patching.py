from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kcd.agent.patching import FileChange, apply_begin_patch, apply_unified_diff


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("".join(f"line {i}\n" for i in range(1, 21)))
    (root / "README.md").write_text("# demo\n")
    (root / "noeol.txt").write_bytes(b"one\ntwo\nthree")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
    }


# --------------------------------------------------------------------------- unified diff


def test_modify_one_hunk(ws: Path) -> None:
    patch = "--- a/src/main.c\n+++ b/src/main.c\n@@ -2,3 +2,3 @@\n line 2\n-line 3\n+LINE 3\n line 4\n"
    report = apply_unified_diff(ws, patch)
    assert report.ok, report.error
    assert report.changes == (FileChange("src/main.c", "modified", hunks=1),)
    assert (ws / "src/main.c").read_text().splitlines()[2] == "LINE 3"


def test_multi_hunk_and_multi_file_git_style(ws: Path) -> None:
    patch = (
        "diff --git a/src/main.c b/src/main.c\n"
        "index 1111111..2222222 100644\n"
        "--- a/src/main.c\n+++ b/src/main.c\n"
        "@@ -1,3 +1,4 @@\n line 1\n+inserted after 1\n line 2\n line 3\n"
        "@@ -18,3 +19,2 @@\n line 18\n-line 19\n line 20\n"
        "diff --git a/README.md b/README.md\n"
        "--- a/README.md\n+++ b/README.md\n@@ -1 +1,2 @@\n # demo\n+more\n"
    )
    report = apply_unified_diff(ws, patch)
    assert report.ok, report.error
    assert [c.path for c in report.changes] == ["src/main.c", "README.md"]
    lines = (ws / "src/main.c").read_text().splitlines()
    assert lines[:3] == ["line 1", "inserted after 1", "line 2"]
    assert "line 19" not in lines and lines[-2:] == ["line 18", "line 20"]
    assert (ws / "README.md").read_text() == "# demo\nmore\n"


def test_add_and_delete_with_dev_null(ws: Path) -> None:
    patch = (
        "--- /dev/null\n+++ b/pkg/new.py\n@@ -0,0 +1,2 @@\n+x = 1\n+y = 2\n"
        "--- a/README.md\n+++ /dev/null\n@@ -1 +0,0 @@\n-# demo\n"
    )
    report = apply_unified_diff(ws, patch)
    assert report.ok, report.error
    assert [(c.path, c.action) for c in report.changes] == [("pkg/new.py", "added"), ("README.md", "deleted")]
    assert (ws / "pkg/new.py").read_text() == "x = 1\ny = 2\n"
    assert not (ws / "README.md").exists()


def test_git_new_empty_file_and_rename(ws: Path) -> None:
    patch = (
        "diff --git a/empty.txt b/empty.txt\nnew file mode 100644\nindex 0000000..e69de29\n"
        "diff --git a/README.md b/docs/README.md\nsimilarity index 100%\n"
        "rename from README.md\nrename to docs/README.md\n"
    )
    report = apply_unified_diff(ws, patch)
    assert report.ok, report.error
    assert (ws / "empty.txt").read_bytes() == b""
    assert (ws / "docs/README.md").read_text() == "# demo\n" and not (ws / "README.md").exists()
    assert report.changes[1] == FileChange("docs/README.md", "moved", source="README.md")


def test_no_newline_at_eof_is_kept_and_changed_as_marked(ws: Path) -> None:
    keep = "--- a/noeol.txt\n+++ b/noeol.txt\n@@ -1,3 +1,3 @@\n-one\n+ONE\n two\n three\n\\ No newline at end of file\n"
    assert apply_unified_diff(ws, keep).ok
    assert (ws / "noeol.txt").read_bytes() == b"ONE\ntwo\nthree"
    add_eol = "--- a/noeol.txt\n+++ b/noeol.txt\n@@ -2,2 +2,2 @@\n two\n-three\n\\ No newline at end of file\n+three\n"
    assert apply_unified_diff(ws, add_eol).ok
    assert (ws / "noeol.txt").read_bytes() == b"ONE\ntwo\nthree\n"
    drop_eol = "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# demo\n+# demo\n\\ No newline at end of file\n"
    assert apply_unified_diff(ws, drop_eol).ok
    assert (ws / "README.md").read_bytes() == b"# demo"


def test_missing_marker_keeps_the_files_own_final_newline(ws: Path) -> None:
    # Models often drop the "\ No newline" line: the file's last line keeps its (missing) newline.
    patch = "--- a/noeol.txt\n+++ b/noeol.txt\n@@ -2,2 +2,2 @@\n two\n-three\n+THREE\n"
    report = apply_unified_diff(ws, patch)
    assert report.ok, report.error
    assert (ws / "noeol.txt").read_bytes() == b"one\ntwo\nTHREE"


def test_trailing_newlines_byte_exact(ws: Path) -> None:
    (ws / "blank_end.txt").write_bytes(b"a\n\n\n")
    patch = "--- a/blank_end.txt\n+++ b/blank_end.txt\n@@ -1,3 +1,3 @@\n-a\n+b\n \n \n"
    assert apply_unified_diff(ws, patch).ok
    assert (ws / "blank_end.txt").read_bytes() == b"b\n\n\n"


def test_hunk_found_at_an_offset(ws: Path) -> None:
    patch = "--- a/src/main.c\n+++ b/src/main.c\n@@ -5,3 +5,3 @@\n line 10\n-line 11\n+ELEVEN\n line 12\n"
    report = apply_unified_diff(ws, patch)
    assert report.ok, report.error
    assert (ws / "src/main.c").read_text().splitlines()[10] == "ELEVEN"
    assert any("offset +5" in note for note in report.notes)


def test_wrong_hunk_counts_are_tolerated_but_context_is_checked(ws: Path) -> None:
    patch = "--- a/src/main.c\n+++ b/src/main.c\n@@ -1,2 +1,2 @@\n line 1\n-line 2\n+TWO\n line 3\n line 4\n"
    report = apply_unified_diff(ws, patch)
    assert report.ok, report.error
    assert (ws / "src/main.c").read_text().startswith("line 1\nTWO\nline 3\nline 4\n")
    assert any("not the 2/2 its header says" in n for n in report.notes)


def test_blank_context_line_without_its_space(ws: Path) -> None:
    (ws / "gap.txt").write_text("a\n\nb\n")
    patch = "--- a/gap.txt\n+++ b/gap.txt\n@@ -1,3 +1,3 @@\n a\n\n-b\n+B\n"
    assert apply_unified_diff(ws, patch).ok
    assert (ws / "gap.txt").read_text() == "a\n\nB\n"


def test_failed_hunk_names_file_hunk_and_line_and_changes_nothing(ws: Path) -> None:
    before = snapshot(ws)
    patch = (
        "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# demo\n+# DEMO\n"  # would apply
        "--- a/src/main.c\n+++ b/src/main.c\n@@ -1,2 +1,2 @@\n line 1\n-line 2\n+x\n"  # would apply
        "@@ -12,4 +12,5 @@\n line 12\n line 13\n-line 14 changed meanwhile\n+new\n+new2\n line 15\n"  # fails
    )
    report = apply_unified_diff(ws, patch)
    assert not report.ok
    assert report.file == "src/main.c" and report.hunk == "@@ -12,4 +12,5 @@"
    assert report.error is not None
    assert "src/main.c: hunk #2 @@ -12,4 +12,5 @@ does not apply" in report.error
    assert "line 14 should be 'line 14 changed meanwhile' but the file has 'line 14'" in report.error
    assert snapshot(ws) == before  # all or nothing: README.md was not changed either


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ("just some text\n", "no file changes found"),
        ("@@ -1 +1 @@\n-a\n+b\n", "comes before any ---/+++ file header"),
        ("--- a/missing.txt\n+++ b/missing.txt\n@@ -1 +1 @@\n-a\n+b\n", "cannot patch missing.txt: no such file"),
        ("--- /dev/null\n+++ b/README.md\n@@ -0,0 +1 @@\n+x\n", "cannot add README.md: it already exists"),
        ("--- a/README.md\n+++ /dev/null\n@@ -1 +0,0 @@\n-nope\n", "does not apply"),
        ("--- a/../outside.txt\n+++ b/../outside.txt\n@@ -1 +1 @@\n-a\n+b\n", "outside the workspace"),
        ("--- /dev/null\n+++ /etc/evil\n@@ -0,0 +1 @@\n+x\n", "absolute and outside the workspace"),
        ("diff --git a/x.bin b/x.bin\nGIT binary patch\nliteral 0\n", "binary patches are not supported"),
        ("--- a/src\n+++ b/src\n@@ -1 +1 @@\n-a\n+b\n", "src is a directory"),
    ],
)
def test_unified_errors(ws: Path, patch: str, message: str) -> None:
    before = snapshot(ws)
    report = apply_unified_diff(ws, patch)
    assert not report.ok and report.error is not None
    assert message in report.error
    assert snapshot(ws) == before


def test_crlf_file_with_lf_patch(ws: Path) -> None:
    (ws / "win.txt").write_bytes(b"a\r\nb\r\nc\r\n")
    patch = "--- a/win.txt\n+++ b/win.txt\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
    assert apply_unified_diff(ws, patch).ok
    assert (ws / "win.txt").read_bytes() == b"a\r\nB\r\nc\r\n"


def test_same_file_twice_applies_in_sequence(ws: Path) -> None:
    patch = (
        "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# demo\n+# one\n"
        "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# one\n+# two\n"
    )
    assert apply_unified_diff(ws, patch).ok
    assert (ws / "README.md").read_text() == "# two\n"


def test_mode_is_kept_and_hard_linked_files_are_refused(ws: Path, tmp_path: Path) -> None:
    script = ws / "run.sh"
    script.write_text("echo a\n")
    script.chmod(0o755)
    assert apply_unified_diff(ws, "--- a/run.sh\n+++ b/run.sh\n@@ -1 +1 @@\n-echo a\n+echo b\n").ok
    assert script.stat().st_mode & 0o777 == 0o755
    # A hard link cannot be seen by path checks, and patching it would copy the outside file's
    # contents into the workspace: the file tools refuse it, all-or-nothing.
    outside = tmp_path / "outside.txt"
    outside.write_text("# demo\n")
    os.unlink(ws / "README.md")
    os.link(outside, ws / "README.md")
    patch = "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# demo\n+# changed\n"
    report = apply_unified_diff(ws, patch)
    assert not report.ok and "several hard links" in (report.error or "")
    assert outside.read_text() == "# demo\n" and (ws / "README.md").read_text() == "# demo\n"


def test_never_runs_git(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("patching must not start processes")

    monkeypatch.setattr(subprocess, "Popen", forbidden)
    patch = "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# demo\n+# x\n"
    assert apply_unified_diff(ws, patch).ok
    assert not (ws / ".git").exists()


# --------------------------------------------------------------------------- *** Begin Patch


def bp(*body: str) -> str:
    return "*** Begin Patch\n" + "".join(body) + "*** End Patch\n"


def test_begin_patch_add_update_delete(ws: Path) -> None:
    text = bp(
        "*** Add File: pkg/hello.py\n+def hello():\n+    return 1\n",
        "*** Update File: src/main.c\n@@\n line 4\n-line 5\n+FIVE\n line 6\n",
        "*** Delete File: README.md\n",
    )
    report = apply_begin_patch(ws, text)
    assert report.ok, report.error
    assert [(c.path, c.action) for c in report.changes] == [
        ("pkg/hello.py", "added"), ("src/main.c", "modified"), ("README.md", "deleted"),
    ]  # fmt: skip
    assert (ws / "pkg/hello.py").read_text() == "def hello():\n    return 1\n"
    assert (ws / "src/main.c").read_text().splitlines()[4] == "FIVE"
    assert not (ws / "README.md").exists()


def test_begin_patch_move_and_multiple_hunks(ws: Path) -> None:
    text = bp(
        "*** Update File: src/main.c\n*** Move to: src/renamed.c\n",
        "@@ line 2\n-line 3\n+THREE\n",
        "@@\n line 17\n-line 18\n+EIGHTEEN\n",
    )
    report = apply_begin_patch(ws, text)
    assert report.ok, report.error
    assert report.changes == (FileChange("src/renamed.c", "moved", source="src/main.c", hunks=2),)
    lines = (ws / "src/renamed.c").read_text().splitlines()
    assert lines[2] == "THREE" and lines[17] == "EIGHTEEN"
    assert not (ws / "src/main.c").exists()


def test_begin_patch_end_of_file_and_kept_missing_newline(ws: Path) -> None:
    text = bp("*** Update File: noeol.txt\n@@\n two\n-three\n+3\n+4\n*** End of File\n")
    assert apply_begin_patch(ws, text).ok
    assert (ws / "noeol.txt").read_bytes() == b"one\ntwo\n3\n4"


def test_begin_patch_anchor_inserts_after_it(ws: Path) -> None:
    text = bp("*** Update File: src/main.c\n@@ line 10\n+after ten\n")
    assert apply_begin_patch(ws, text).ok
    lines = (ws / "src/main.c").read_text().splitlines()
    assert lines[9:12] == ["line 10", "after ten", "line 11"]


def test_begin_patch_ambiguous_context_is_an_error(ws: Path) -> None:
    (ws / "dup.txt").write_text("x\nsame\nx\nsame\n")
    before = snapshot(ws)
    report = apply_begin_patch(ws, bp("*** Update File: dup.txt\n@@\n-same\n+other\n"))
    assert not report.ok and report.error is not None
    assert "dup.txt: hunk #1 (@@) is ambiguous: its context matches 2 places (starting at lines 2, 4)" in report.error
    assert snapshot(ws) == before
    # More context picks the place...
    fixed = apply_begin_patch(ws, bp("*** Update File: dup.txt\n@@\n x\n same\n x\n-same\n+other\n"))
    assert fixed.ok, fixed.error
    assert (ws / "dup.txt").read_text() == "x\nsame\nx\nother\n"
    # ...and so does an anchor: the first match after the anchor line.
    (ws / "dup.txt").write_text("x\nsame\ny\nsame\n")
    anchored = apply_begin_patch(ws, bp("*** Update File: dup.txt\n@@ y\n-same\n+other\n"))
    assert anchored.ok, anchored.error
    assert (ws / "dup.txt").read_text() == "x\nsame\ny\nother\n"


def test_begin_patch_missing_context_names_the_hunk(ws: Path) -> None:
    before = snapshot(ws)
    text = bp(
        "*** Add File: created.txt\n+new\n",
        "*** Update File: src/main.c\n@@\n-line 99\n+x\n",
    )
    report = apply_begin_patch(ws, text)
    assert not report.ok and report.error is not None
    assert report.file == "src/main.c" and report.hunk == "@@"
    assert "hunk #1 (@@) does not apply" in report.error and "'line 99'" in report.error
    assert snapshot(ws) == before and not (ws / "created.txt").exists()


def test_begin_patch_trailing_whitespace_fallback_keeps_file_lines(ws: Path) -> None:
    (ws / "ws.txt").write_text("keep   \nold\n")
    report = apply_begin_patch(ws, bp("*** Update File: ws.txt\n@@\n keep\n-old\n+new\n"))
    assert report.ok, report.error
    assert (ws / "ws.txt").read_text() == "keep   \nnew\n"
    assert any("ignoring trailing whitespace" in n for n in report.notes)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*** Update File: README.md\n", "must start with a '*** Begin Patch' line"),
        ("*** Begin Patch\n*** Add File: a.txt\n+a\n", "no '*** End Patch' line"),
        (bp(""), "contains no file sections"),
        (bp("garbage\n"), "expected '*** Add File:'"),
        (bp("*** Frobnicate File: x\n"), "unknown directive"),
        (bp("*** Update File: README.md\n"), "has no hunks"),
        (bp("*** Add File: README.md\n+x\n"), "cannot add README.md: it already exists"),
        (bp("*** Delete File: nope.txt\n"), "cannot delete nope.txt: no such file"),
        (bp("*** Update File: nope.txt\n@@\n-a\n+b\n"), "cannot update nope.txt: no such file"),
        (bp("*** Update File: README.md\n@@ no such anchor\n-# demo\n+x\n"), "no line matching the anchor"),
        (bp("*** Update File: src/main.c\n@@\n+floating\n"), "where to insert is unknown"),
        (bp("*** Update File: README.md\n*** Move to: src/main.c\n@@\n-# demo\n+x\n"), "the target exists"),
        (bp("*** Add File: ../escape.txt\n+x\n"), "outside the workspace"),
        (bp("*** Delete File: /etc/passwd\n"), "absolute and outside the workspace"),
    ],
)
def test_begin_patch_errors(ws: Path, text: str, message: str) -> None:
    before = snapshot(ws)
    report = apply_begin_patch(ws, text)
    assert not report.ok and report.error is not None
    assert message in report.error, report.error
    assert snapshot(ws) == before


def test_begin_patch_inside_prose_and_fences(ws: Path) -> None:
    text = "Here is the patch:\n```\n" + bp("*** Update File: README.md\n@@\n-# demo\n+# new\n") + "```\n"
    assert apply_begin_patch(ws, text).ok
    assert (ws / "README.md").read_text() == "# new\n"
