"""The internal editing tools: create_file_from_block, apply_search_replace, apply_unified_patch."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.tools import execute_calls


def run1(ws: Path, name: str, **args: object) -> ToolOutcome:
    [outcome] = execute_calls(str(ws), [ToolInvocation("c1", name, dict(args))], ToolSettings())
    return outcome


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main(void) {\n    return 0;\n}\n")
    (root / "README.md").write_text("# demo\n")
    return root


# --------------------------------------------------------------------------- create_file_from_block


def test_create_file_from_block_creates_and_overwrites(ws: Path) -> None:
    out = run1(ws, "create_file_from_block", file_name="pkg/a.py", content="x = 1\n")
    assert out.ok
    assert out.output == '<PATCH_RESULT file="pkg/a.py">File successfully created with 0 linter errors.</PATCH_RESULT>'
    assert (ws / "pkg/a.py").read_text() == "x = 1\n"
    (ws / "pkg/a.py").chmod(0o755)
    again = run1(ws, "create_file_from_block", file_name="pkg/a.py", content="x = 2\n")
    assert again.ok and "File successfully written" in again.output
    assert (ws / "pkg/a.py").read_text() == "x = 2\n"
    assert (ws / "pkg/a.py").stat().st_mode & 0o777 == 0o755  # the mode is kept
    assert again.data == {"path": "pkg/a.py", "bytes": 6, "created": False}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"file_name": "src", "content": "x"}, "is an existing directory"),
        ({"file_name": ".", "content": "x"}, "names the workspace root"),
        ({"file_name": "README.md/x", "content": "x"}, "a parent of this path is a file"),
        ({"file_name": "a.txt"}, "missing required parameter 'content'"),
    ],
)
def test_create_file_from_block_errors(ws: Path, args: dict[str, object], message: str) -> None:
    out = run1(ws, "create_file_from_block", **args)
    assert not out.ok and message in out.output and "PATCH_RESULT" not in out.output


# --------------------------------------------------------------------------- apply_search_replace


def test_search_replace_first_exact_match_only(ws: Path) -> None:
    (ws / "dup.txt").write_text("a = 1\na = 1\n")
    out = run1(ws, "apply_search_replace", file_name="dup.txt", search="a = 1", replace="a = 2")
    assert out.ok
    assert out.output == '<PATCH_RESULT file="dup.txt">File successfully patched with 0 linter errors.</PATCH_RESULT>'
    assert (ws / "dup.txt").read_text() == "a = 2\na = 1\n"
    assert out.data == {"path": "dup.txt", "matches": 2, "replaced": 1}


def test_search_replace_zero_matches_is_an_error_with_a_hint(ws: Path) -> None:
    out = run1(ws, "apply_search_replace", file_name="src/main.c", search="int main(void)\n{\n\treturn 0;", replace="x")
    assert not out.ok and out.output.startswith('<TOOL_ERROR tool="apply_search_replace">')
    assert "SEARCH text not found in 'src/main.c'" in out.output
    assert "different whitespace or indentation" in out.output
    other = run1(
        ws, "apply_search_replace", file_name="src/main.c", search="int main(void) {\n    return 2;", replace=""
    )
    assert "its first line 'int main(void) {' is at line 1, but the lines after it differ" in other.output
    assert (ws / "src/main.c").read_text() == "int main(void) {\n    return 0;\n}\n"


def test_search_replace_empty_search(ws: Path) -> None:
    created = run1(ws, "apply_search_replace", file_name="new/file.txt", search="", replace="hello\n")
    assert created.ok and "File successfully created" in created.output
    assert (ws / "new/file.txt").read_text() == "hello\n"
    (ws / "empty.txt").write_text("")
    assert run1(ws, "apply_search_replace", file_name="empty.txt", search="", replace="now\n").ok
    assert (ws / "empty.txt").read_text() == "now\n"
    refused = run1(ws, "apply_search_replace", file_name="README.md", search="", replace="gone\n")
    assert not refused.ok and "an empty SEARCH would overwrite all of 'README.md'" in refused.output
    assert (ws / "README.md").read_text() == "# demo\n"


def test_search_replace_missing_file_and_binary(ws: Path) -> None:
    missing = run1(ws, "apply_search_replace", file_name="nope.txt", search="a", replace="b")
    assert not missing.ok and "no such file: 'nope.txt' (to create a file, use an empty SEARCH)" in missing.output
    (ws / "blob.bin").write_bytes(b"\xff\xfe\x00a")
    binary = run1(ws, "apply_search_replace", file_name="blob.bin", search="a", replace="b")
    assert not binary.ok and "is not UTF-8 text" in binary.output


def test_search_replace_crlf_file(ws: Path) -> None:
    (ws / "win.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    out = run1(ws, "apply_search_replace", file_name="win.txt", search="one\ntwo", replace="1\n2")
    assert out.ok, out.output
    assert (ws / "win.txt").read_bytes() == b"1\r\n2\r\nthree\r\n"


# --------------------------------------------------------------------------- apply_unified_patch


def test_unified_patch_tool_success(ws: Path) -> None:
    patch = (
        "--- a/src/main.c\n+++ b/src/main.c\n@@ -1,3 +1,3 @@\n int main(void) {\n-    return 0;\n+    return 1;\n }\n"
        "--- /dev/null\n+++ b/NEW.md\n@@ -0,0 +1 @@\n+new\n"
        "--- a/README.md\n+++ /dev/null\n@@ -1 +0,0 @@\n-# demo\n"
    )
    out = run1(ws, "apply_unified_patch", patch=patch)
    assert out.ok, out.output
    assert out.output == (
        '<PATCH_RESULT file="src/main.c">File successfully patched with 0 linter errors.</PATCH_RESULT>\n'
        '<PATCH_RESULT file="NEW.md">File successfully created with 0 linter errors.</PATCH_RESULT>\n'
        '<PATCH_RESULT file="README.md">File successfully deleted.</PATCH_RESULT>'
    )
    assert out.data is not None
    assert out.data["status"] == {
        "added": ["NEW.md"],
        "modified": ["src/main.c"],
        "deleted": ["README.md"],
        "moved": [],
    }
    assert (ws / "src/main.c").read_text() == "int main(void) {\n    return 1;\n}\n"


def test_unified_patch_tool_failure_tells_the_truth(ws: Path) -> None:
    patch = (
        "--- a/src/main.c\n+++ b/src/main.c\n@@ -1,3 +1,3 @@\n int main(void) {\n-    return 7;\n+    return 1;\n }\n"
    )
    out = run1(ws, "apply_unified_patch", patch=patch)
    assert not out.ok
    assert "PATCH_RESULT" not in out.output
    assert out.output.startswith(
        '<TOOL_ERROR tool="apply_unified_patch">The patch was not applied, and no file was changed: '
        "src/main.c: hunk #1 @@ -1,3 +1,3 @@ does not apply: line 2 should be '    return 7;' but the file has "
        "'    return 0;'"
    )
    assert out.data is not None
    assert (out.data["ok"], out.data["file"], out.data["hunk"]) == (False, "src/main.c", "@@ -1,3 +1,3 @@")
