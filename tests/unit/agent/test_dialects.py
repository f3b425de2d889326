"""Text tool-call formats: every format's grammar, prose that must
never run, per-mode availability, ordering, duplicates, and the prompt catalogue.
Multi-block replies are replayed from fixtures (the original's DRY_RUN style)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kcd.agent.calls import ToolInvocation, ToolSettings
from kcd.agent.dialects import parse_text_calls, render_text_catalogue
from kcd.agent.tools import TOOL_SPECS, execute_calls

FIXTURES = Path(__file__).parents[1] / "fixtures" / "dialects"
ALL = frozenset(TOOL_SPECS)
INTERNAL = frozenset({"list_dir", "read_file", "create_file", "create_file_from_block", "apply_search_replace",
                      "apply_unified_patch", "run_shell", "mark_task_complete"})
OPENCODE = frozenset({"bash", "read", "write", "edit", "glob", "grep", "list", "patch", "mark_task_complete"})
EVERYTHING = INTERNAL | OPENCODE


def parse(text: str, tools: frozenset[str] = ALL, turn: int = 3):
    return parse_text_calls(text, tools, turn=turn)


def named(parsed) -> list[tuple[str, dict[str, Any]]]:
    return [(c.name, c.args) for c in parsed.calls]


# ------------------------------------------------------------------ scripted replay fixtures


def replies(file: str) -> dict[str, str]:
    """`<!-- reply: id -->` delimited replies, byte-exact (read as bytes: no newline translation)."""
    raw = (FIXTURES / file).read_bytes().decode("utf-8")
    parts = re.split(r"^<!-- reply: ([\w-]+) -->\n", raw, flags=re.MULTILINE)
    assert parts[0] == ""
    return dict(zip(parts[1::2], parts[2::2], strict=True))


EXPECTED: dict[str, dict[str, Any]] = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_replayed_replies(key: str) -> None:
    file, reply_id = key.split("#")
    expected = EXPECTED[key]
    parsed = parse(replies(file)[reply_id], frozenset(expected["tools"]), turn=5)
    assert [{"name": c.name, "args": c.args} for c in parsed.calls] == expected["calls"]
    assert [c.call_id for c in parsed.calls] == [f"text_5_{i}" for i in range(len(parsed.calls))]
    assert all(c.source == "text" for c in parsed.calls)
    assert len(parsed.errors) == len(expected["errors"])
    for error, fragment in zip(parsed.errors, expected["errors"], strict=True):
        assert fragment in error


def test_every_fixture_reply_has_an_expectation() -> None:
    ids = {f"{p.name}#{rid}" for p in FIXTURES.glob("*.replay.md") for rid in replies(p.name)}
    assert ids == set(EXPECTED)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_replayed_diff_applies_byte_exactly_with_git(tmp_path: Path) -> None:
    """The multi-file diff, with its no-newline-at-EOF marker, is what git accepts."""
    [call, _] = parse(replies("internal.replay.md")["diff_two_files"], INTERNAL).calls
    (tmp_path / "README.md").write_text("# demo\n\nOld text.\n")
    (tmp_path / "notes.txt").write_text("last line without newline")
    (tmp_path / "p.diff").write_text(call.args["patch"])
    git = ["git", "-c", "core.autocrlf=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    result = subprocess.run([*git, "apply", "p.diff"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "README.md").read_text() == "# demo\n\nNew text.\n"
    assert (tmp_path / "notes.txt").read_text() == "last line, now with one\n"


# ------------------------------------------------------------------ <TOOL_CALL>


def test_keyword_call() -> None:
    parsed = parse('Let me look.\n<TOOL_CALL> list_dir(path=".", depth=2) </TOOL_CALL>')
    assert parsed.errors == []
    assert parsed.calls == [
        ToolInvocation(call_id="text_3_0", name="list_dir", args={"path": ".", "depth": 2}, source="text")
    ]


def test_positional_args_follow_declared_order() -> None:
    parsed = parse('<TOOL_CALL>read_file("src/main.c", 10, 5)</TOOL_CALL>')
    assert parsed.calls[0].args == {"path": "src/main.c", "offset": 10, "limit": 5}
    mixed = parse('<TOOL_CALL>list_dir(".", depth=3)</TOOL_CALL>')
    assert mixed.calls[0].args == {"path": ".", "depth": 3}


def test_literal_values_and_multiline_content() -> None:
    text = '''<TOOL_CALL>
create_file(path="a.py", content="""def f():
    return {'k': [1, 2.5, None, True]}
""")
</TOOL_CALL>'''
    [c] = parse(text).calls
    assert c.args["content"] == "def f():\n    return {'k': [1, 2.5, None, True]}\n"


def test_colon_keywords_are_tolerated() -> None:
    parsed = parse('<TOOL_CALL> read_file(path: "notes: a.txt", offset: 2) </TOOL_CALL>')
    assert parsed.errors == []
    assert parsed.calls[0].args == {"path": "notes: a.txt", "offset": 2}
    # Unusual line separators inside strings must not shift the rewrite.
    odd = parse('<TOOL_CALL>create_file(path: "a\u2028b",\n content: "x\u2028y: z")</TOOL_CALL>')
    assert odd.errors == [] and odd.calls[0].args == {"path": "a\u2028b", "content": "x\u2028y: z"}


def test_several_calls_in_order_with_ids() -> None:
    text = (
        '<TOOL_CALL>create_file(path="x.c")</TOOL_CALL> some words '
        "<BASH>gcc x.c && ./a.out</BASH>\n"
        '<TOOL_CALL>\nlist_dir(path="src")\nread_file(path="x.c")\n</TOOL_CALL>'
    )
    parsed = parse(text, turn=7)
    assert [(c.call_id, c.name) for c in parsed.calls] == [
        ("text_7_0", "create_file"),
        ("text_7_1", "run_shell"),
        ("text_7_2", "list_dir"),
        ("text_7_3", "read_file"),
    ]
    assert parsed.calls[1].args == {"command": "gcc x.c && ./a.out"}


def test_fenced_call_inside_tag_and_keyword_only_for_unlisted_specs() -> None:
    parsed = parse('<TOOL_CALL>\n```python\nlist_dir(path=".")\n```\n</TOOL_CALL>')
    assert parsed.errors == [] and parsed.calls[0].name == "list_dir"
    # A tool without a known parameter order takes keyword arguments only.
    [error] = parse('<TOOL_CALL>fancy("x")</TOOL_CALL>', frozenset({"fancy"})).errors
    assert "fancy takes keyword arguments only" in error


def test_unknown_or_unavailable_tool_is_an_error_not_a_call() -> None:
    parsed = parse('<TOOL_CALL>delete_repo(name="x")</TOOL_CALL>')
    assert parsed.calls == []
    assert parsed.errors[0].startswith('<TOOL_ERROR tool="delete_repo">tool \'delete_repo\' is unknown')
    limited = parse('<TOOL_CALL>run_shell(command="ls")</TOOL_CALL>', tools=frozenset({"read_file", "list_dir"}))
    assert limited.calls == []
    assert limited.errors == ['<TOOL_ERROR tool="run_shell">tool \'run_shell\' is not available in this mode; '
                              "available tools: list_dir, read_file. Nothing was executed.</TOOL_ERROR>"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<TOOL_CALL>list_dir(path=os.getcwd())</TOOL_CALL>", "parameter 'path' must be a Python literal"),
        ("<TOOL_CALL>list_dir(path=__import__('os').system('id'))</TOOL_CALL>", "must be a Python literal"),
        ("<TOOL_CALL>list_dir(path=f'{x}')</TOOL_CALL>", "must be a Python literal"),
        ("<TOOL_CALL>list_dir(**{'path': '.'})</TOOL_CALL>", "**kwargs are not supported"),
        ("<TOOL_CALL>list_dir(*['.'])</TOOL_CALL>", "*args are not supported"),
        ("<TOOL_CALL>list_dir('.', 1, 2)</TOOL_CALL>", "at most 2 positional"),
        ("<TOOL_CALL>list_dir('.', path='x')</TOOL_CALL>", "'path' given more than once"),
        ("<TOOL_CALL>list_dir(path='.'</TOOL_CALL>", "could not parse"),
        ("<TOOL_CALL>x = 1</TOOL_CALL>", "expected a call"),
        ("<TOOL_CALL>os.system('id')</TOOL_CALL>", "expected a call"),
        ("<TOOL_CALL>   </TOOL_CALL>", "empty <TOOL_CALL> block"),
    ],
)
def test_malformed_calls_are_reported(text: str, message: str) -> None:
    parsed = parse(text)
    assert parsed.calls == []
    assert len(parsed.errors) == 1 and message in parsed.errors[0]
    assert parsed.errors[0].startswith("<TOOL_ERROR") and parsed.errors[0].endswith("</TOOL_ERROR>")


def test_nothing_is_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    parse(f"<TOOL_CALL>list_dir(path=open({str(marker)!r}, 'w'))</TOOL_CALL>")
    assert not marker.exists()


def test_no_eval_in_the_parsers() -> None:
    import kcd.agent.dialects as package

    for source in Path(package.__file__).parent.glob("*.py"):
        code = source.read_text()
        assert not re.search(r"(?<![\w.])(eval|exec)\(", code), source.name


def test_one_bad_call_does_not_hide_the_good_ones() -> None:
    parsed = parse("<TOOL_CALL>\nlist_dir(path='.')\nnope()\n</TOOL_CALL>")
    assert [c.name for c in parsed.calls] == ["list_dir"]
    assert len(parsed.errors) == 1


# ------------------------------------------------------------------ <BASH>


def test_bash_block_prefers_run_shell_then_bash() -> None:
    assert named(parse("<BASH>\nmake test\n</BASH>", frozenset({"run_shell", "bash"}))) == [
        ("run_shell", {"command": "make test"})]
    assert named(parse("<bash> ls -la </bash>", frozenset({"bash"}))) == [("bash", {"command": "ls -la"})]


def test_bash_block_without_a_shell_tool_or_command() -> None:
    refused = parse("<BASH>make</BASH>", frozenset({"read_file"}))
    assert refused.calls == []
    assert refused.errors == ['<TOOL_ERROR tool="run_shell"><BASH> blocks need the run_shell or bash tool, and none '
                              "of them is available in this mode; available tools: read_file. Nothing was "
                              "executed.</TOOL_ERROR>"]
    assert "empty <BASH> block" in parse("<BASH>  </BASH>").errors[0]


def test_tags_inside_a_block_belong_to_it() -> None:
    inner = parse("<BASH>echo '<TOOL_CALL>' && echo '*** Begin Patch'</BASH>", EVERYTHING)
    assert named(inner) == [("run_shell", {"command": "echo '<TOOL_CALL>' && echo '*** Begin Patch'"})]
    assert inner.errors == []
    content = "a.txt\n<<<<<<< SEARCH\n=======\n<BASH>rm -rf /</BASH>\n>>>>>>> REPLACE\n"
    call = parse(f'<TOOL_CALL>create_file(path="doc.md", content={content!r})</TOOL_CALL>', EVERYTHING)
    assert named(call) == [("create_file", {"path": "doc.md", "content": content})]
    added = parse("*** Begin Patch\n*** Add File: x.md\n+<BASH>rm -rf /</BASH>\n*** End Patch\n", EVERYTHING)
    assert [c.name for c in added.calls] == ["patch"]
    replaced = parse("a.md\n<<<<<<< SEARCH\nold\n=======\n<BASH>rm</BASH>\n```diff\n>>>>>>> REPLACE\n", EVERYTHING)
    assert [c.name for c in replaced.calls] == ["apply_search_replace"] and replaced.errors == []


# ------------------------------------------------------------------ SEARCH/REPLACE


SR = "<<<<<<< SEARCH\nold line\n=======\nnew line\n>>>>>>> REPLACE\n"


def test_search_replace_prefers_apply_search_replace_then_edit() -> None:
    text = "src/app.py\n" + SR
    assert named(parse(text, frozenset({"apply_search_replace", "edit"}))) == [
        ("apply_search_replace", {"file_name": "src/app.py", "search": "old line\n", "replace": "new line\n"})]
    assert named(parse(text, frozenset({"edit"}))) == [
        ("edit", {"filePath": "src/app.py", "oldString": "old line\n", "newString": "new line\n"})]
    refused = parse(text, frozenset({"read_file", "apply_unified_patch"}))
    assert refused.calls == [] and refused.errors == [
        '<TOOL_ERROR tool="apply_search_replace">SEARCH/REPLACE blocks need the apply_search_replace or edit tool, '
        "and none of them is available in this mode; available tools: apply_unified_patch, read_file. "
        "Nothing was executed.</TOOL_ERROR>"]


@pytest.mark.parametrize(
    "head",
    [
        "src/app.py\n",
        "src/app.py\n```python\n",
        "`src/app.py`\n```\n",
        "**src/app.py**\n\n~~~py\n",
        "src/app.py:\n",
        "Some explanation first.\n\n```\nsrc/app.py\n",
    ],
)
def test_file_name_line_variants(head: str) -> None:
    parsed = parse(head + SR + "```\n", INTERNAL)
    assert parsed.errors == [] and parsed.calls[0].args["file_name"] == "src/app.py"


def test_missing_file_name_is_an_error_and_later_blocks_reuse_the_last_name() -> None:
    [error] = parse("Apply this:\n```python\n" + SR + "```\n", INTERNAL).errors
    assert "at line 3 has no file-name line" in error and error.startswith('<TOOL_ERROR tool="apply_search_replace">')
    two = parse("a.txt\n" + SR + "\n" + SR.replace("old", "other"), INTERNAL)
    assert [c.args["file_name"] for c in two.calls] == ["a.txt", "a.txt"]


def test_search_replace_texts_are_byte_exact() -> None:
    crlf = "a.txt\r\n<<<<<<< SEARCH\r\n  x = 1  \r\n\r\n=======\r\ny\r\n>>>>>>> REPLACE\r\n"
    assert parse(crlf, INTERNAL).calls[0].args == {"file_name": "a.txt", "search": "  x = 1  \r\n\r\n",
                                                    "replace": "y\r\n"}
    create = parse("new.txt\n<<<<<<<< SEARCH\n=====\nhello\n\n>>>>>>>>> REPLACE", INTERNAL)
    assert create.calls[0].args == {"file_name": "new.txt", "search": "", "replace": "hello\n\n"}
    # A divider-looking line in the new text is content once the divider has been seen.
    heading = parse("doc.md\n" + "<<<<<<< SEARCH\nTitle\n=======\nTitle\n=======\n>>>>>>> REPLACE\n", INTERNAL)
    assert heading.calls[0].args["replace"] == "Title\n=======\n"


@pytest.mark.parametrize(
    "text",
    [
        "a.txt\n<<<<<<< SEARCH\nold\n",
        "a.txt\n<<<<<<< SEARCH\nold\n=======\nnew\n",
        "a.txt\n<<<<<<< SEARCH\nold\n>>>>>>> REPLACE\n",
    ],
)
def test_unterminated_search_replace(text: str) -> None:
    parsed = parse(text + "<BASH>make</BASH>\n", INTERNAL)
    assert parsed.calls == []  # the rest of the reply is the broken block's
    assert parsed.errors == ["<TOOL_ERROR>unterminated SEARCH/REPLACE block at line 2: it needs a ======= line, "
                             "then a >>>>>>> REPLACE line. Nothing was applied.</TOOL_ERROR>"]


def test_a_broken_block_does_not_swallow_the_next_one() -> None:
    parsed = parse("a.txt\n<<<<<<< SEARCH\nold\n\nb.txt\n" + SR, INTERNAL)
    assert named(parsed) == [("apply_search_replace", {"file_name": "b.txt", "search": "old line\n",
                                                       "replace": "new line\n"})]
    assert len(parsed.errors) == 1 and "unterminated SEARCH/REPLACE block at line 2" in parsed.errors[0]


# ------------------------------------------------------------------ unified diffs

DIFF = "--- a/x.txt\n+++ b/x.txt\n@@ -1 +1 @@\n-a\n+b\n"


@pytest.mark.parametrize(
    "fence", ["```diff\n{}```\ndone", "```patch\n{}```", "~~~diff\n{}~~~\n", " ```Diff \n{} ```\n"]
)
def test_fenced_diff_variants(fence: str) -> None:
    parsed = parse("Here:\n" + fence.format(DIFF), INTERNAL)
    assert parsed.errors == [] and named(parsed) == [("apply_unified_patch", {"patch": DIFF})]


def test_fence_ends_only_at_its_own_fence_line() -> None:
    # Markdown files hold fences: as diff lines they are prefixed, and a longer outer fence is allowed.
    body = "--- a/R.md\n+++ b/R.md\n@@ -1,3 +1,3 @@\n ```sh\n-make\n+make all\n ```\n"
    assert parse(f"```diff\n{body}```\n", INTERNAL).calls[0].args["patch"] == body
    inner = "--- a/R.md\n+++ b/R.md\n@@ -1 +1,2 @@\n-x\n+```\n+y\n"
    assert parse(f"````diff\n{inner}````\n", INTERNAL).calls[0].args["patch"] == inner


def test_diff_problems() -> None:
    [error] = parse("```diff\n" + DIFF + "```\n", frozenset({"patch", "read"})).errors
    assert error == ('<TOOL_ERROR tool="apply_unified_patch">unified diffs need the apply_unified_patch tool, '
                     "which is not available in this mode; available tools: patch, read. Nothing was "
                     "executed.</TOOL_ERROR>")
    [error] = parse("x\n```diff\n-a\n+b\n```\n", INTERNAL).errors
    assert "the ```diff block at line 2 is not a unified diff" in error
    unterminated = parse("```diff\n" + DIFF + "<BASH>ls</BASH>\n", INTERNAL)
    assert unterminated.calls == []
    assert unterminated.errors == ["<TOOL_ERROR>unterminated ```diff block at line 1: close it with a ``` line. "
                                   "Nothing was applied.</TOOL_ERROR>"]


def test_a_diff_fence_around_other_formats_is_only_a_wrapper() -> None:
    parsed = parse("```diff\na.txt\n" + SR + "```\n```patch\n*** Begin Patch\n*** Delete File: b\n*** End Patch\n```",
                   EVERYTHING)
    assert [c.name for c in parsed.calls] == ["apply_search_replace", "patch"] and parsed.errors == []


def test_raw_git_diff_gets_exactly_one_final_newline() -> None:
    text = "diff --git a/x.txt b/x.txt\n" + DIFF.rstrip("\n")
    assert parse(text, INTERNAL).calls[0].args["patch"] == "diff --git a/x.txt b/x.txt\n" + DIFF
    # In a plain fence the counts end the diff; the closing fence is not part of it.
    fenced = parse("```\ndiff --git a/x.txt b/x.txt\n" + DIFF + "```\n", INTERNAL)
    assert fenced.calls[0].args["patch"] == "diff --git a/x.txt b/x.txt\n" + DIFF


@pytest.mark.parametrize(
    ("hunks", "message"),
    [
        ("@@ -1,3 +1,3 @@\n a\n-b\n+c\nprose\n", "stops 1 old / 1 new line(s) short"),
        ("@@ -1,1 +1,1 @@\n a\n-b\n+c\n", "more lines than its @@ header counts"),
        ("@@ -1 +1 @@ x\n-a\n+b\n@@ bad @@\n", "bad hunk header"),
    ],
)
def test_raw_git_diff_with_wrong_counts_is_refused(hunks: str, message: str) -> None:
    parsed = parse("diff --git a/x b/x\n--- a/x\n+++ b/x\n" + hunks, INTERNAL)
    assert parsed.calls == [] and len(parsed.errors) == 1
    assert "malformed diff --git block at line 1" in parsed.errors[0] and message in parsed.errors[0]


def test_raw_git_diff_without_changes_or_tool() -> None:
    assert "has no diff after it" in parse("diff --git a/x b/x\n\nThat was the header.", INTERNAL).errors[0]
    rename = "diff --git a/x b/y\nsimilarity index 100%\nrename from x\nrename to y\n"
    assert named(parse(rename, INTERNAL)) == [("apply_unified_patch", {"patch": rename})]
    assert "need the apply_unified_patch tool" in parse(rename, OPENCODE).errors[0]


# ------------------------------------------------------------------ *** Begin Patch

PATCH = "*** Begin Patch\n*** Update File: a.txt\n@@ def f():\n-    return 1\n+    return 2\n*** End Patch"


def test_begin_patch_is_exact_and_may_be_fenced() -> None:
    assert named(parse(f"Applying:\n```\n{PATCH}\n```\n", OPENCODE)) == [("patch", {"patchText": PATCH})]
    crlf = PATCH.replace("\n", "\r\n")
    assert parse(crlf + "\r\n", OPENCODE).calls[0].args == {"patchText": crlf}


def test_begin_patch_needs_the_patch_tool_even_with_a_diff_tool() -> None:
    parsed = parse(PATCH, INTERNAL)
    assert parsed.calls == []
    assert parsed.errors == ['<TOOL_ERROR tool="patch">*** Begin Patch blocks need the patch tool, which is not '
                             f"available in this mode; available tools: {', '.join(sorted(INTERNAL))}. Nothing "
                             "was executed.</TOOL_ERROR>"]


def test_begin_patch_unterminated_or_empty() -> None:
    unterminated = parse("*** Begin Patch\n*** Add File: a\n+x\n<BASH>ls</BASH>\n", OPENCODE)
    assert unterminated.calls == [] and unterminated.errors == [
        "<TOOL_ERROR>unterminated *** Begin Patch block at line 1: close it with a line *** End Patch. "
        "Nothing was applied.</TOOL_ERROR>"]
    assert "empty *** Begin Patch block" in parse("*** Begin Patch\n*** End Patch\n", OPENCODE).errors[0]


# ------------------------------------------------------------------ prose, order, duplicates


@pytest.mark.parametrize(
    "text",
    [
        'I will call read_file(path="x") next.',
        "Then mark_task_complete() when done.",
        '```python\nrun_shell(command="rm -rf /")\n```',
        '```python\nedit(filePath="a", oldString="b", newString="c")\nread_file("x")\n```',
        "```bash\nmake clean && rm -rf build\n```",
        '```json\n{"name": "run_shell", "arguments": {"command": "ls"}}\n```',
        "```yaml\ntools:\n  - name: run_shell\n    args: {command: ls}\n```",
        "Inline `list_dir(path=\".\")` and `patch(patchText=\"x\")` are examples.",
        "Use a SEARCH/REPLACE block, or a *** Begin Patch block, or a diff --git patch.",
        "> <<<<<<< SEARCH is how aider marks an edit",
        "The diff was:\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
        "```python\nprint('diff --git a/x b/x')\nMARK = '*** Begin Patch'\n```",
    ],
)
def test_prose_and_code_fences_are_never_calls(text: str) -> None:
    parsed = parse(text, EVERYTHING)
    assert parsed.calls == [] and parsed.errors == []


@pytest.mark.parametrize(
    "text",
    ["Use <TOOL_CALL> blocks like the manual says", "`run_shell` with `<BASH>` would work"],
)
def test_a_lone_opening_tag_is_reported_never_run(text: str) -> None:
    parsed = parse(text, EVERYTHING)
    assert parsed.calls == [] and len(parsed.errors) == 1 and "unterminated" in parsed.errors[0]


def test_order_follows_the_reply_across_formats() -> None:
    text = (
        PATCH + "\n"
        '<TOOL_CALL> read(filePath="a.txt") </TOOL_CALL>\n'
        "b.txt\n" + SR + "```diff\n" + DIFF + "```\n"
        "<BASH>make</BASH>\n"
        "diff --git a/y b/y\n--- a/y\n+++ b/y\n@@ -1 +1 @@\n-1\n+2\n"
        '<TOOL_CALL> list(path=".") </TOOL_CALL>'
    )
    parsed = parse(text, EVERYTHING)
    assert parsed.errors == []
    assert [c.name for c in parsed.calls] == ["patch", "read", "apply_search_replace", "apply_unified_patch",
                                             "run_shell", "apply_unified_patch", "list"]


def test_errors_keep_their_place_and_do_not_stop_later_blocks() -> None:
    text = '<TOOL_CALL>nope()</TOOL_CALL>\n' + PATCH + "\n<BASH>ls</BASH>\n<TOOL_CALL>x=</TOOL_CALL>"
    parsed = parse(text, INTERNAL)
    assert [c.name for c in parsed.calls] == ["run_shell"]
    assert ["'nope' is unknown" in parsed.errors[0], "need the patch tool" in parsed.errors[1],
            "could not parse" in parsed.errors[2]] == [True, True, True]


def test_duplicates_are_removed_across_formats() -> None:
    text = ('<TOOL_CALL>list_dir(path=".")</TOOL_CALL><TOOL_CALL>list_dir(".")</TOOL_CALL>\n'
            '<BASH>ls</BASH>\n<TOOL_CALL>run_shell(command="ls")</TOOL_CALL>\n'
            "a\n" + SR + "a\n" + SR + "```diff\n" + DIFF + "```\n" + "```patch\n" + DIFF + "```\n")
    parsed = parse(text, INTERNAL)
    assert [c.name for c in parsed.calls] == ["list_dir", "run_shell", "apply_search_replace",
                                             "apply_unified_patch"]
    assert [c.call_id for c in parsed.calls] == [f"text_3_{i}" for i in range(4)]


def test_mark_task_complete_is_kept_with_other_calls_for_the_executor_to_refuse(tmp_path: Path) -> None:
    parsed = parse("<BASH>touch made</BASH>\n<TOOL_CALL>mark_task_complete()</TOOL_CALL>", ALL)
    assert [c.name for c in parsed.calls] == ["run_shell", "mark_task_complete"]
    outcomes = execute_calls(str(tmp_path), parsed.calls, ToolSettings())
    assert all(o.output.startswith("<CONSTRAINT_ERROR>") for o in outcomes)
    assert not (tmp_path / "made").exists()
    alone = parse("Done.\n<TOOL_CALL> mark_task_complete() </TOOL_CALL>", ALL)
    assert [o.completes for o in execute_calls(str(tmp_path), alone.calls, ToolSettings())] == [True]


def test_large_reply_is_one_linear_pass() -> None:
    blocks = "".join(f"f{i}.txt\n<<<<<<< SEARCH\n{i}\n=======\n{i + 1}\n>>>>>>> REPLACE\n" for i in range(2000))
    noise = "<< == >> ``` --- +++ @@ " * 20000
    parsed = parse(noise + "\n" + blocks + noise, INTERNAL)
    assert len(parsed.calls) == 2000 and parsed.errors == []
    assert parsed.calls[-1].args == {"file_name": "f1999.txt", "search": "1999\n", "replace": "2000\n"}


# ------------------------------------------------------------------ catalogue


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    description: str
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class Spec:
    description: str
    params: tuple[Param, ...] = ()


def stub_specs(names: frozenset[str]) -> dict[str, Spec]:
    return {n: Spec(f"The {n} tool.", (Param("x", "string", "An x.", True),)) for n in names}


def test_text_catalogue_with_the_daemon_tools() -> None:
    text = render_text_catalogue(["list_dir", "run_shell", "mark_task_complete"])
    assert text.startswith("SYSTEM MESSAGE - AVAILABLE TOOLS\n<FUNCTIONS>\n")
    assert text.endswith("\nEND SYSTEM MESSAGE")
    assert "\nlist_dir(path: str, depth: int = 1)\n    List a workspace directory." in text
    assert "\nrun_shell(command: str, timeout: float | None = None)\n" in text
    assert "\nFORMATS\n" in text and "<TOOL_CALL> tool_name(arg=value, ...) </TOOL_CALL>" in text
    assert "- A shell command (runs run_shell):\n<BASH> command </BASH>" in text
    assert "call mark_task_complete() alone" in text
    assert "read_file" not in text and "SEARCH" not in text and "Begin Patch" not in text
    plain = render_text_catalogue(["read_file"])
    assert "<BASH>" not in plain and "mark_task_complete" not in plain
    with pytest.raises(ValueError, match="nope"):
        render_text_catalogue(["nope"])


@pytest.mark.parametrize(
    ("names", "shown", "hidden"),
    [
        ({"read_file"}, [], ["<BASH>", "SEARCH", "```diff", "Begin Patch"]),
        ({"bash", "edit"}, ["(runs bash)", "(runs edit)", "<<<<<<< SEARCH"], ["```diff", "Begin Patch"]),
        ({"apply_search_replace", "edit"}, ["(runs apply_search_replace)"], ["(runs edit)"]),
        ({"apply_unified_patch"}, ["(runs apply_unified_patch", "```diff\n--- a/"], ["SEARCH", "Begin Patch"]),
        ({"patch"}, ["(runs patch)", "*** Begin Patch\n*** Update File:", "*** End Patch"], ["```diff", "SEARCH"]),
        ({"run_shell", "bash", "patch", "apply_unified_patch", "apply_search_replace"},
         ["(runs run_shell)", "SEARCH", "```diff", "Begin Patch"], ["(runs bash)"]),
    ],
)
def test_catalogue_documents_exactly_the_usable_formats(names: set[str], shown: list[str], hidden: list[str]) -> None:
    text = render_text_catalogue(sorted(names), specs=stub_specs(frozenset(names)))
    for fragment in shown:
        assert fragment in text
    for fragment in hidden:
        assert fragment not in text


def test_catalogue_signatures_for_all_parameter_types() -> None:
    spec = Spec("Edit a file.", (
        Param("filePath", "string", "Path.", True), Param("replaceAll", "boolean", "All.", default=False),
        Param("ignore", "array", "Globs."), Param("timeout", "number", "ms.", default=120000),
    ))
    text = render_text_catalogue(["edit"], specs={"edit": spec})
    assert ("\nedit(filePath: str, replaceAll: bool = False, ignore: list | None = None, timeout: float = 120000)\n"
            "    Edit a file.\n    filePath: Path.\n") in text


def test_catalogue_function_lines_are_the_only_column_zero_calls() -> None:
    """The contract the simulator's agents rely on to find the tool names."""
    names = ["list_dir", "read_file", "run_shell", "mark_task_complete"]
    text = render_text_catalogue(names)
    block = text.split("<FUNCTIONS>\n", 1)[1].split("</FUNCTIONS>", 1)[0]
    assert re.findall(r"^([A-Za-z_][\w-]*)\(", block, flags=re.MULTILINE) == names
    # Nor may it look like a tool result to anything counting turns.
    assert "<TOOL_OUTPUT" not in text and "Tool execution results:" not in text


@pytest.mark.skipif(not OPENCODE <= ALL, reason="the OpenCode tools are not in TOOL_SPECS yet")
def test_catalogue_for_the_opencode_tools() -> None:
    text = render_text_catalogue(sorted(OPENCODE))
    assert "\nread(filePath: str" in text and "\npatch(patchText: str" in text
    assert "(runs bash)" in text and "(runs edit)" in text and "*** Begin Patch" in text and "```diff" not in text


def test_dialect_profiles_narrow_what_is_parsed_and_advertised(tmp_path: Path) -> None:
    # dialect_profiles.<glob>: preferred_dialects keeps only those, exclusions removes; a
    # block of a format left out is plain text, and the prompt no longer documents it.
    from kcd.agent.toolset import build_toolset
    from kcd.config.agent import load_agent_config
    from kcd.providers.routes import parse_route

    configs = Path(__file__).resolve().parents[3] / "configs"
    base = load_agent_config(configs / "demo_text.yaml")
    reply = "<BASH>ls</BASH>\n<TOOL_CALL> list_dir(path=\".\") </TOOL_CALL>\n"
    plain = build_toolset(base, route=parse_route("mock/dev"))
    assert {c.name for c in plain.parse(reply, 1).calls} >= {"list_dir"}

    text = f"version: 2\nextends: {configs / 'demo_text.yaml'}\n"
    narrowed_path = tmp_path / "narrow.yaml"
    narrowed_path.write_text(text + "dialect_profiles:\n  \"mock/*\":\n    exclusions: [pythonic02, nope]\n")
    narrowed = build_toolset(load_agent_config(narrowed_path), route=parse_route("mock/dev"))
    assert "pythonic02" not in narrowed.formats and "bash_block" in narrowed.formats
    assert not [c for c in narrowed.parse(reply, 1).calls if c.name == "list_dir"]
    assert "<TOOL_CALL>" not in narrowed.catalogue()
    assert any("unknown dialect 'nope'" in w for w in narrowed.warnings)
    other_route = build_toolset(load_agent_config(narrowed_path), route=parse_route("openai/gpt-4o-mini"))
    assert other_route.formats == plain.formats  # the profile's glob does not match

    only_path = tmp_path / "only.yaml"
    only_path.write_text(text + "dialect_profiles:\n  dev:\n    preferred_dialects: [unified_diff]\n")
    only = build_toolset(load_agent_config(only_path), route=parse_route("mock/dev"))
    assert only.formats == {"unified_diff_fenced", "unified_diff_git"}
