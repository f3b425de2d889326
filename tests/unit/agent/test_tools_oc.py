"""The OpenCode-named tools (bash, read, write, edit, ...): their parameter names and semantics."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.tools import execute_calls

SETTINGS = ToolSettings()


def run1(ws: Path, name: str, settings: ToolSettings = SETTINGS, **args: object) -> ToolOutcome:
    [outcome] = execute_calls(str(ws), [ToolInvocation("c1", name, dict(args))], settings)
    return outcome


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src" / "lib").mkdir(parents=True)
    (root / "src" / "main.c").write_text('#include "util.h"\nint main(void) { return util(); }\n')
    (root / "src" / "util.h").write_text("int util(void);\n")
    (root / "src" / "lib" / "util.c").write_text("int util(void) { return 0; }\n")
    (root / "README.md").write_text("# demo\nSee src/main.c\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("int util in git internals\n")
    (root / "node_modules" / "dep").mkdir(parents=True)
    (root / "node_modules" / "dep" / "index.js").write_text("x\n")
    return root


# --------------------------------------------------------------------------- bash


def test_bash_runs_with_millisecond_timeout(ws: Path) -> None:
    out = run1(ws, "bash", command="echo hi; echo err >&2", description="Print a greeting")
    assert out.ok and out.output == "<BASH_RESULT>\nhi\nstderr: err\n</BASH_RESULT>"
    assert out.data is not None and out.data["description"] == "Print a greeting"
    started = time.monotonic()
    slow = run1(ws, "bash", command="sleep 60", timeout=500)
    assert time.monotonic() - started < 2.5
    assert not slow.ok and "Command timed out after 0.5 s" in slow.output
    assert slow.data is not None and slow.data["timeout_s"] == 0.5


def test_bash_bad_timeout(ws: Path) -> None:
    out = run1(ws, "bash", command="true", timeout=0)
    assert not out.ok and "'timeout' must be > 0 milliseconds" in out.output


# --------------------------------------------------------------------------- read


def test_read_window_is_zero_based_with_default_limit(ws: Path) -> None:
    (ws / "big.txt").write_text("".join(f"{i}\n" for i in range(3000)))
    out = run1(ws, "read", filePath="big.txt")
    assert out.ok and out.data is not None
    assert out.data["lines"] == 2000 and out.data["content"].startswith("0\n1\n")
    assert "read again with offset=2000" in out.output
    window = run1(ws, "read", filePath="big.txt", offset=10, limit=2)
    assert (
        window.output
        == '<TOOL_OUTPUT tool="read" file="big.txt">10\n11\n'
        "[showing lines 11-12; more lines follow: read again with offset=12]</TOOL_OUTPUT>"
    )


def test_read_absolute_path_inside_the_workspace(ws: Path) -> None:
    out = run1(ws, "read", filePath=str(ws / "src" / "util.h"))
    assert out.ok and out.output == '<TOOL_OUTPUT tool="read" file="src/util.h">int util(void);\n</TOOL_OUTPUT>'
    real = run1(ws, "read", filePath=os.path.realpath(ws / "README.md"))
    assert real.ok


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"filePath": "src"}, "is a directory (use list)"),
        ({"filePath": "nope"}, "no such file"),
        ({"path": "README.md"}, "unexpected parameter 'path'"),
        ({"filePath": "README.md", "offset": -1}, "'offset' must be >= 0"),
    ],
)
def test_read_errors(ws: Path, args: dict[str, object], message: str) -> None:
    out = run1(ws, "read", **args)
    assert not out.ok and message in out.output


# --------------------------------------------------------------------------- write


def test_write_creates_and_replaces(ws: Path) -> None:
    out = run1(ws, "write", filePath="docs/new.md", content="hello\n")
    assert (
        out.ok
        and out.output
        == '<PATCH_RESULT file="docs/new.md">File successfully created with 0 linter errors.</PATCH_RESULT>'
    )
    again = run1(ws, "write", filePath=str(ws / "docs/new.md"), content="bye\n")
    assert again.ok and "written" in again.output
    assert (ws / "docs/new.md").read_text() == "bye\n"


def test_write_refuses_a_directory(ws: Path) -> None:
    out = run1(ws, "write", filePath="src", content="x")
    assert not out.ok and "is an existing directory" in out.output


# --------------------------------------------------------------------------- edit


def test_edit_exact_unique_match(ws: Path) -> None:
    out = run1(ws, "edit", filePath="src/util.h", oldString="int util(void);", newString="int util(int);")
    assert (
        out.ok
        and out.output
        == '<PATCH_RESULT file="src/util.h">File successfully patched with 0 linter errors.</PATCH_RESULT>'
    )
    assert (ws / "src/util.h").read_text() == "int util(int);\n"


def test_edit_multiple_matches_needs_context_or_replace_all(ws: Path) -> None:
    (ws / "m.txt").write_text("x = 1\ny = 2\nx = 1\n")
    ambiguous = run1(ws, "edit", filePath="m.txt", oldString="x = 1", newString="x = 3")
    assert not ambiguous.ok
    assert "oldString matches 2 places in 'm.txt'; include more surrounding lines" in ambiguous.output
    assert (ws / "m.txt").read_text() == "x = 1\ny = 2\nx = 1\n"
    with_context = run1(ws, "edit", filePath="m.txt", oldString="y = 2\nx = 1", newString="y = 2\nx = 4")
    assert with_context.ok and (ws / "m.txt").read_text() == "x = 1\ny = 2\nx = 4\n"
    everything = run1(ws, "edit", filePath="m.txt", oldString="x = ", newString="z = ", replaceAll=True)
    assert everything.ok and everything.data is not None and everything.data["replaced"] == 2
    assert (ws / "m.txt").read_text() == "z = 1\ny = 2\nz = 4\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"oldString": "absent", "newString": "x"}, "oldString text not found in 'src/util.h'"),
        ({"oldString": "int", "newString": "int"}, "oldString and newString are identical"),
        ({"oldString": "", "newString": "x"}, "an empty oldString would overwrite all of 'src/util.h'"),
        ({"oldString": "int", "newString": "x", "replaceAll": "yes"}, "'replaceAll' must be a boolean"),
    ],
)
def test_edit_errors(ws: Path, args: dict[str, object], message: str) -> None:
    out = run1(ws, "edit", filePath="src/util.h", **args)
    assert not out.ok and message in out.output
    assert (ws / "src/util.h").read_text() == "int util(void);\n"


def test_edit_empty_old_string_creates_a_file(ws: Path) -> None:
    out = run1(ws, "edit", filePath="new.txt", oldString="", newString="fresh\n")
    assert out.ok and (ws / "new.txt").read_text() == "fresh\n"


# --------------------------------------------------------------------------- glob


def test_glob_patterns(ws: Path) -> None:
    def files(pattern: str, **kw: object) -> list[str]:
        out = run1(ws, "glob", pattern=pattern, **kw)
        assert out.ok, out.output
        return out.data["files"]  # type: ignore[index,no-any-return]

    assert files("*.c") == ["src/lib/util.c", "src/main.c"]  # no '/': any depth, sorted
    assert files("src/*.c") == ["src/main.c"]
    assert files("**/*.{c,h}") == ["src/lib/util.c", "src/main.c", "src/util.h"]
    assert files("*.[ch]", path="src/lib") == ["src/lib/util.c"]
    assert files("util.?") == ["src/lib/util.c", "src/util.h"]
    assert "node_modules/dep/index.js" in files("**/*.js")
    assert not any(f.startswith(".git/") for f in files("**/*"))
    out = run1(ws, "glob", pattern="*.zig")
    assert out.output == '<TOOL_OUTPUT tool="glob" pattern="*.zig" path=".">\nNo files found\n</TOOL_OUTPUT>'


def test_glob_is_capped(ws: Path) -> None:
    for i in range(30):
        (ws / f"f{i:02d}.txt").write_text("")
    out = run1(ws, "glob", ToolSettings(search_max_results=10), pattern="*.txt")
    assert out.data is not None and len(out.data["files"]) == 10 and out.data["total"] == 30
    assert "[20 more file(s) not shown" in out.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"pattern": "/etc/*"}, "must be relative"),
        ({"pattern": ""}, "the glob pattern is empty"),
        ({"pattern": "*", "path": "missing"}, "no such file or directory"),
    ],
)
def test_glob_errors(ws: Path, args: dict[str, object], message: str) -> None:
    out = run1(ws, "glob", **args)
    assert not out.ok and message in out.output


# --------------------------------------------------------------------------- grep


def test_grep_regex_with_line_numbers_and_include(ws: Path) -> None:
    out = run1(ws, "grep", pattern=r"int util\(")
    assert out.ok
    assert out.output == (
        '<TOOL_OUTPUT tool="grep" pattern="int util\\(" path=".">\n'
        "src/lib/util.c:1: int util(void) { return 0; }\n"
        "src/util.h:1: int util(void);\n"
        "</TOOL_OUTPUT>"
    )
    only_h = run1(ws, "grep", pattern="util", include="*.h")
    assert only_h.data is not None and [m["path"] for m in only_h.data["matches"]] == ["src/util.h"]
    in_dir = run1(ws, "grep", pattern="util", path="src/lib")
    assert in_dir.data is not None and [m["path"] for m in in_dir.data["matches"]] == ["src/lib/util.c"]
    one_file = run1(ws, "grep", pattern="See", path="README.md")
    assert one_file.data is not None and one_file.data["matches"] == [
        {"path": "README.md", "line": 2, "text": "See src/main.c"}
    ]


def test_grep_skips_binary_files_and_caps(ws: Path) -> None:
    (ws / "blob.bin").write_bytes(b"util\x00\x01\x02")
    (ws / "many.txt").write_text("hit\n" * 50)
    out = run1(ws, "grep", ToolSettings(search_max_results=5), pattern="hit|util")
    assert out.ok and out.data is not None
    assert out.data["skipped"]["binary"] == 1
    assert all(m["path"] != "blob.bin" for m in out.data["matches"])
    assert len(out.data["matches"]) == 5 and out.data["total"] > 5
    assert "more match(es) not shown" in out.output and "[files skipped: 1 binary]" in out.output


def test_grep_no_match_and_bad_regex(ws: Path) -> None:
    assert "No matches found" in run1(ws, "grep", pattern="zzz").output
    bad = run1(ws, "grep", pattern="(unclosed")
    assert not bad.ok and "invalid regular expression '(unclosed'" in bad.output


def test_grep_with_a_catastrophic_pattern_stops_within_its_budget(ws: Path) -> None:
    # (a|aa)+$ against a run of a's then "b" backtracks exponentially (hours at 60 a's);
    # the call must end with a clear error instead of hanging the turn.
    (ws / "aaa.txt").write_text("a" * 60 + "b\n")
    out = run1(ws, "grep", ToolSettings(grep_timeout_s=0.5), pattern="(a|aa)+$")
    assert not out.ok and "grep stopped after 0.5s" in out.output and "simplify the pattern" in out.output
    # The patterns Python's `re` takes minutes over, `regex` answers at once.
    assert run1(ws, "grep", ToolSettings(grep_timeout_s=5), pattern="(a+)+$").ok


# --------------------------------------------------------------------------- list


def test_list_tree_skips_vcs_and_dependencies(ws: Path) -> None:
    out = run1(ws, "list")
    assert out.ok
    assert out.output == (
        '<TOOL_OUTPUT tool="list" path=".">\n./\n'
        "  src/\n    lib/\n      util.c\n    main.c\n    util.h\n  README.md\n"
        "</TOOL_OUTPUT>"
    )


def test_list_ignore_patterns(ws: Path) -> None:
    out = run1(ws, "list", path="src", ignore=["*.h", "lib/"])
    assert out.output == '<TOOL_OUTPUT tool="list" path="src">\nsrc/\n  main.c\n</TOOL_OUTPUT>'
    bad = run1(ws, "list", ignore="*.h")
    assert not bad.ok and "'ignore' must be an array of strings" in bad.output


# --------------------------------------------------------------------------- patch


def test_patch_tool(ws: Path) -> None:
    text = (
        "*** Begin Patch\n*** Update File: src/util.h\n@@\n-int util(void);\n+int util(int x);\n"
        "*** Add File: src/extra.h\n+#pragma once\n*** End Patch"
    )
    out = run1(ws, "patch", patchText=text)
    assert out.ok, out.output
    assert out.output == (
        '<PATCH_RESULT file="src/util.h">File successfully patched with 0 linter errors.</PATCH_RESULT>\n'
        '<PATCH_RESULT file="src/extra.h">File successfully created with 0 linter errors.</PATCH_RESULT>'
    )
    assert (ws / "src/util.h").read_text() == "int util(int x);\n"


def test_patch_tool_failure(ws: Path) -> None:
    out = run1(ws, "patch", patchText="*** Begin Patch\n*** Update File: src/util.h\n@@\n-nope\n+x\n*** End Patch\n")
    assert not out.ok and "PATCH_RESULT" not in out.output
    assert "The patch was not applied, and no file was changed: src/util.h: hunk #1 (@@) does not apply" in out.output


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize("name", ["task", "webfetch", "lsp-diagnostics"])
def test_unsupported_opencode_tools_are_refused(ws: Path, name: str) -> None:
    out = run1(ws, name, url="http://example.invalid")
    assert not out.ok
    assert (
        out.output
        == f'<TOOL_ERROR tool="{name}">tool {name!r} is not supported by kcd; '
        "use the file and shell tools instead</TOOL_ERROR>"
    )
