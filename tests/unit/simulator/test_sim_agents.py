"""The simulator's scripted agents (`dev`, `editor`) driven turn by turn: their
replies are parsed like the loop does (native calls, or `parse_text_calls` on
the text), executed for real with `execute_calls` in a temporary workspace,
and the results are fed back in the loop's relay shapes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from kcd.agent.calls import ToolInvocation, ToolSettings
from kcd.agent.dialects import parse_text_calls, render_text_catalogue
from kcd.agent.tools import TOOL_SPECS, execute_calls
from kcd.simulator import agents_edits as edits
from kcd.simulator.agents_editor import EditTask, read_content
from kcd.simulator.agents_tools import INTERNAL_TOOLS, Toolbox, catalogue_tools
from kcd.simulator.behaviours import Behaviour, DevAgent, EditorAgent, Reply, default_behaviours, parse_listing

INTERNAL = ("list_dir", "read_file", "mark_task_complete")
OPENCODE = ("list", "read", "mark_task_complete")
README = "# demo\n\nOld text.\nMore.\n"


class StubParam(NamedTuple):
    name: str
    type: str = "string"
    description: str = "d"
    required: bool = True
    default: Any = None


class StubSpec(NamedTuple):
    description: str
    params: tuple[StubParam, ...]


def stub_catalogue(names: tuple[str, ...]) -> str:
    """A text catalogue for any names, whether or not the tools package defines them yet."""
    return render_text_catalogue(names, specs={n: StubSpec(f"The {n} tool.", (StubParam("x"),)) for n in names})


def needs(*names: str) -> pytest.MarkDecorator:
    missing = [n for n in names if n not in TOOL_SPECS]
    return pytest.mark.skipif(bool(missing), reason=f"not implemented yet: {', '.join(missing)}")


class Run(NamedTuple):
    calls: list[list[tuple[str, dict[str, Any]]]]  # per turn, as executed
    completed: bool
    last: Reply
    outputs: list[list[str]]  # per turn: tool outputs, then parse errors


def drive(agent: Behaviour, workspace: Path, names: tuple[str, ...], *, native: bool, task: str = "Go.",
          catalogue: str | None = "system", max_turns: int = 5) -> Run:
    """A minimal agent loop: request → reply → calls → real execution → relayed results."""
    system, user = "You are a coding agent.", task
    if not native and catalogue == "system":
        system += "\n\n" + render_text_catalogue(names)
    elif not native and catalogue == "user":  # per_turn_append puts it on the user message
        user += "\n\n" + render_text_catalogue(names)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    tools = [{"type": "function", "function": {"name": n, "description": n, "parameters": {"type": "object"}}}
             for n in names]
    run = Run([], False, Reply(), [])
    for turn in range(1, max_turns + 1):
        request: dict[str, Any] = {"model": "sim", "messages": list(messages)}
        if native:
            request["tools"] = tools
        reply = agent.reply(request)
        if native:
            calls = [ToolInvocation(call_id=f"call_{turn}_{i}", name=c.name, args=dict(c.arguments))
                     for i, c in enumerate(reply.tool_calls)]
            errors: list[str] = []
        else:
            assert not reply.tool_calls
            parsed = parse_text_calls(reply.content or "", names, turn=turn)
            calls, errors = parsed.calls, parsed.errors
        run.calls.append([(c.name, c.args) for c in calls])
        if not calls and not errors:
            return run._replace(last=reply)
        outcomes = execute_calls(str(workspace), calls, ToolSettings()) if calls else []
        run.outputs.append([o.output for o in outcomes] + errors)
        if native:
            messages.append({"role": "assistant", "content": reply.content, "tool_calls": [
                {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.args)}}
                for c in calls]})
            messages += [{"role": "tool", "tool_call_id": o.call_id, "name": o.name, "content": o.output}
                         for o in outcomes]
        else:
            messages.append({"role": "assistant", "content": reply.content})
            messages.append({"role": "user", "content": "Tool execution results:\n\n" + "\n\n".join(run.outputs[-1])})
        if any(o.completes for o in outcomes):
            return run._replace(completed=True, last=reply)
    return run._replace(last=reply)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text(README)
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    return root


def names_of(run: Run) -> list[list[str]]:
    return [[name for name, _ in turn] for turn in run.calls]


# ------------------------------------------------------------------ tool names


def test_toolbox_reads_native_names_the_catalogue_or_falls_back() -> None:
    native = {"tools": [{"type": "function", "function": {"name": "list"}}, {"name": "read"}], "messages": []}
    assert Toolbox.of(native) == Toolbox(("list", "read"), True)
    system = {"role": "system", "content": "Intro.\n\n" + render_text_catalogue(["read_file", "run_shell"])}
    assert Toolbox.of({"messages": [system]}) == Toolbox(("read_file", "run_shell"), False)
    assert Toolbox.of({"messages": [{"role": "user", "content": "hi"}]}) == Toolbox(INTERNAL_TOOLS, False)
    # The latest catalogue wins; an assistant quoting one does not count.
    later = {"role": "user", "content": "Task\n\n" + render_text_catalogue(["list_dir"])}
    quoted = {"role": "assistant", "content": "<FUNCTIONS>\nrun_shell()\n</FUNCTIONS>"}
    assert catalogue_tools({"messages": [system, later, quoted]}) == ("list_dir",)


def test_toolbox_reads_opencode_names_from_any_catalogue() -> None:
    text = stub_catalogue(("list", "read", "lsp-diagnostics"))
    box = Toolbox.of({"messages": [{"role": "system", "content": text}]})
    assert box.names == ("list", "read", "lsp-diagnostics")
    assert box.list_call().name == "list" and box.list_call().arguments == {"path": "."}
    assert box.read_call("a.md").arguments == {"filePath": "a.md"}
    internal = Toolbox(("list_dir", "read_file", "list", "read"), True)  # both offered: the internal names
    assert internal.list_call().arguments == {"path": ".", "depth": 2} and internal.read_call("a").name == "read_file"


def test_registry_has_the_editor() -> None:
    registry = default_behaviours()
    assert set(registry) == {"dev", "editor", "shell", "echo", "script"} and isinstance(registry["editor"], EditorAgent)


# ------------------------------------------------------------------ dev


@pytest.mark.parametrize("native", [True, False], ids=["native", "text"])
def test_dev_with_internal_names(ws: Path, native: bool) -> None:
    run = drive(DevAgent(), ws, INTERNAL, native=native)
    assert run.completed
    assert run.calls == [[("list_dir", {"path": ".", "depth": 2})], [("read_file", {"path": "README.md"})],
                         [("mark_task_complete", {})]]
    assert "`src/`" in (run.last.content or "") and "`src/main.c`" in (run.last.content or "")


@pytest.mark.parametrize("catalogue", ["user", None], ids=["per-turn-catalogue", "no-catalogue"])
def test_dev_text_mode_finds_names_in_the_user_prompt_or_falls_back(ws: Path, catalogue: str | None) -> None:
    run = drive(DevAgent(), ws, INTERNAL, native=False, catalogue=catalogue)
    assert run.completed and names_of(run) == [["list_dir"], ["read_file"], ["mark_task_complete"]]


@needs(*OPENCODE)
@pytest.mark.parametrize("native", [True, False], ids=["native", "text"])
def test_dev_with_opencode_names(ws: Path, native: bool) -> None:
    run = drive(DevAgent(), ws, OPENCODE, native=native)
    assert run.completed, run.outputs
    assert run.calls == [[("list", {"path": "."})], [("read", {"filePath": "README.md"})],
                         [("mark_task_complete", {})]]
    assert "`src/main.c`" in (run.last.content or "")


def test_dev_on_an_empty_workspace(tmp_path: Path) -> None:
    run = drive(DevAgent(), tmp_path, INTERNAL, native=False)
    assert run.completed and names_of(run) == [["list_dir"], ["mark_task_complete"]]
    assert "empty" in (run.last.content or "")


def test_listing_parser_reads_list_trees() -> None:
    opencode = ('<TOOL_OUTPUT tool="list" path=".">/tmp/ws/\n  src/\n    lib/\n      util.c\n    main.c\n'
                "  Makefile\n</TOOL_OUTPUT>")
    assert [(e.path, e.is_dir, e.level) for e in parse_listing(opencode)] == [
        ("src", True, 0), ("src/lib", True, 1), ("src/lib/util.c", False, 2), ("src/main.c", False, 1),
        ("Makefile", False, 0)]
    assert [e.path for e in parse_listing("./\n  a.txt\n  b/\n")] == ["a.txt", "b"]
    assert parse_listing('<TOOL_ERROR tool="list">no such directory</TOOL_ERROR>') == []


# ------------------------------------------------------------------ editor: the task


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("Please do this.", EditTask("README.md", None, "Edited by kcd.", None)),
        ('edit README.md: replace "Old text." with "New text."', EditTask("README.md", "Old text.", "New text.", None)),
        ('Edit src/a.py : Replace "x = \\"1\\"" with "x = 2\\ny = 3" format=unified_diff',
         EditTask("src/a.py", 'x = "1"', "x = 2\ny = 3", "unified_diff")),
        ('format=begin_patch\nedit notes.txt: append "a line"', EditTask("notes.txt", None, "a line", "begin_patch")),
    ],
)
def test_edit_task_grammar(task: str, expected: EditTask) -> None:
    assert EditTask.parse(task) == expected


def test_edit_task_apply() -> None:
    append = EditTask("R", None, "Edited by kcd.", None)
    assert append.apply(None) == "Edited by kcd.\n"
    assert append.apply("a") == "a\nEdited by kcd.\n" and append.apply("a\n") == "a\nEdited by kcd.\n"
    replace = EditTask("R", "o", "0", None)
    assert replace.apply("foo boo") == "f0o boo" and replace.apply("xyz") is None and replace.apply(None) is None


def test_read_content() -> None:
    assert read_content('<TOOL_OUTPUT tool="read" file="a">x\n</TOOL_OUTPUT>') == "x\n"
    assert read_content('<TOOL_OUTPUT tool="read_file" file="a">a\n[showing lines 1-1; more lines follow: read '
                        "again with offset=1]</TOOL_OUTPUT>") == "a\n"
    assert read_content('<TOOL_ERROR tool="read_file">no such file: \'a\'</TOOL_ERROR>') is None


# ------------------------------------------------------------------ editor: edit forms (pure, checked with git)

CASES = [
    ("middle line", "a\nb\nc\nd\ne\nf\ng\nh\n", "a\nb\nc\nd\nE\nf\ng\nh\n"),
    ("append without final newline", "one\ntwo", "one\ntwo\nEdited by kcd.\n"),
    ("repeated lines need context", "x\nx\ny\nx\n", "x\nx\ny\nX\n"),
    ("first line", "a\nb\n", "A\nb\n"),
    ("insert only", "a\nb\n", "a\nnew\nb\n"),
]


@pytest.mark.parametrize(("before", "after"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_search_replace_pair_is_unique_and_exact(before: str, after: str) -> None:
    search, replace = edits.search_replace(before, after)
    assert search and before.count(search) == 1
    assert before.replace(search, replace, 1) == after


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize(("before", "after"), [c[1:] for c in CASES] + [(None, "new\nfile")],
                         ids=[c[0] for c in CASES] + ["new file"])
def test_unified_diff_applies_with_git(tmp_path: Path, before: str | None, after: str) -> None:
    if before is not None:
        (tmp_path / "f.txt").write_text(before)
    (tmp_path / "p.diff").write_text(edits.unified_diff("f.txt", before, after))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    done = subprocess.run(["git", "apply", "p.diff"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + (tmp_path / "p.diff").read_text()
    assert (tmp_path / "f.txt").read_text() == after


def test_text_forms_parse_back_to_the_same_edit() -> None:
    before, after = README, README.replace("Old text.", "New text.")
    tools = frozenset({"apply_search_replace", "apply_unified_patch", "patch"})
    search, replace = edits.search_replace(before, after)
    block = parse_text_calls(edits.search_replace_block("README.md", search, replace), tools, turn=1)
    assert block.calls[0].args == {"file_name": "README.md", "search": "Old text.\n", "replace": "New text.\n"}
    diff = edits.unified_diff("README.md", before, after)
    fenced = parse_text_calls(f"```diff\n{diff}```\n", tools, turn=1)
    assert fenced.calls[0].args == {"patch": diff}
    patch = edits.begin_patch("README.md", before, after)
    assert patch == ("*** Begin Patch\n*** Update File: README.md\n@@\n # demo\n \n-Old text.\n+New text.\n More.\n"
                     "*** End Patch\n")
    assert parse_text_calls(patch, tools, turn=1).calls[0].args == {"patchText": patch.rstrip("\n")}
    assert edits.begin_patch("n.txt", None, "a\nb\n") == "*** Begin Patch\n*** Add File: n.txt\n+a\n+b\n*** End Patch\n"


# ------------------------------------------------------------------ editor: driven runs

TASK = 'edit README.md: replace "Old text." with "New text."'
NEW_README = README.replace("Old text.", "New text.")

NATIVE_FORMS = [
    ("read_file", "apply_search_replace", ""),
    ("read", "edit", ""),
    ("read", "patch", ""),
    ("read_file", "apply_unified_patch", ""),
    ("read_file", "create_file_from_block", ""),
    ("read", "write", ""),
    ("read_file", "apply_unified_patch", " format=unified_diff"),  # the hint wins over search/replace
]


@pytest.mark.parametrize(("reader", "editor", "hint"), NATIVE_FORMS,
                         ids=[f"{e}{h.replace(' format=', '-hint-')}" for _, e, h in NATIVE_FORMS])
def test_editor_native(ws: Path, reader: str, editor: str, hint: str) -> None:
    if any(n not in TOOL_SPECS for n in (reader, editor)):
        pytest.skip(f"not implemented yet: {reader}/{editor}")
    offered = (reader, editor, "mark_task_complete") + (("apply_search_replace",) if hint else ())
    run = drive(EditorAgent(), ws, offered, native=True, task=TASK + hint)
    assert run.completed, run.outputs
    assert names_of(run) == [[reader], [editor], ["mark_task_complete"]]
    assert (ws / "README.md").read_text() == NEW_README


TEXT_FORMS = [
    (("read_file", "apply_search_replace"), "", "<<<<<<< SEARCH", "apply_search_replace"),
    (("read", "edit"), "", "<<<<<<< SEARCH", "edit"),
    (("read", "patch"), "", "*** Begin Patch", "patch"),
    (("read_file", "apply_unified_patch"), "", "```diff", "apply_unified_patch"),
    (("read_file", "create_file_from_block"), "", "<TOOL_CALL> create_file_from_block(", "create_file_from_block"),
    (("read_file", "apply_search_replace", "apply_unified_patch"), " format=unified_diff", "```diff",
     "apply_unified_patch"),
    (("read", "edit", "patch"), " format=begin_patch", "*** Begin Patch", "patch"),
    (("read_file", "apply_search_replace"), " format=begin_patch", "<<<<<<< SEARCH", "apply_search_replace"),
]


@pytest.mark.parametrize(("offered", "hint", "marker", "tool"), TEXT_FORMS,
                         ids=[f"{t}{h.replace(' format=', '-hint-')}" for _, h, _, t in TEXT_FORMS])
def test_editor_text(ws: Path, offered: tuple[str, ...], hint: str, marker: str, tool: str) -> None:
    if any(n not in TOOL_SPECS for n in offered):
        pytest.skip(f"not implemented yet: {', '.join(offered)}")
    run = drive(EditorAgent(), ws, (*offered, "mark_task_complete"), native=False, task=TASK + hint)
    assert run.completed, run.outputs
    assert names_of(run) == [[offered[0]], [tool], ["mark_task_complete"]]
    assert (ws / "README.md").read_text() == NEW_README


def test_editor_text_reply_uses_the_format_the_catalogue_allows() -> None:
    """Without executing: step 1's text for each tool set (independent of the tools package)."""
    read = {"role": "user", "content": 'Tool execution results:\n\n<TOOL_OUTPUT tool="read_file" '
                                       f'file="README.md">{README}</TOOL_OUTPUT>'}
    for offered, hint, marker, _ in TEXT_FORMS:
        catalogue = stub_catalogue(offered)
        request = {"messages": [{"role": "system", "content": catalogue}, {"role": "user", "content": TASK + hint},
                                {"role": "assistant", "content": "<TOOL_CALL> read_file(path=\"README.md\") "
                                                                 "</TOOL_CALL>"}, read]}
        content = EditorAgent().reply(request).content or ""
        assert marker in content, (offered, hint, content)


@needs("read_file", "apply_search_replace")
def test_editor_default_task_appends_and_creates(ws: Path, tmp_path: Path) -> None:
    run = drive(EditorAgent(), ws, ("read_file", "apply_search_replace", "mark_task_complete"), native=False)
    assert run.completed and (ws / "README.md").read_text() == README + "Edited by kcd.\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    created = drive(EditorAgent(), empty, ("read_file", "apply_search_replace", "mark_task_complete"), native=True)
    assert created.completed and (empty / "README.md").read_text() == "Edited by kcd.\n"
    assert created.calls[1] == [("apply_search_replace", {"file_name": "README.md", "search": "",
                                                         "replace": "Edited by kcd.\n"})]


def test_editor_does_not_claim_completion_when_the_edit_cannot_be_made(ws: Path) -> None:
    run = drive(EditorAgent(), ws, ("read_file", "create_file", "mark_task_complete"), native=True,
                task='edit README.md: replace "absent" with "x"')
    assert not run.completed and names_of(run) == [["read_file"], []]
    assert (run.last.content or "").startswith("EDIT FAILED: cannot replace \"absent\"")
    assert (ws / "README.md").read_text() == README


def test_editor_reports_a_refused_edit_instead_of_completing() -> None:
    messages = [{"role": "user", "content": TASK},
                {"role": "tool", "tool_call_id": "1", "content": f'<TOOL_OUTPUT tool="read_file" file="README.md">'
                                                                 f"{README}</TOOL_OUTPUT>"},
                {"role": "assistant", "content": None},
                {"role": "tool", "tool_call_id": "2",
                 "content": '<TOOL_ERROR tool="apply_search_replace">no match</TOOL_ERROR>'}]
    reply = EditorAgent().reply({"messages": messages, "tools": [{"name": "apply_search_replace"}]})
    assert reply.tool_calls == [] and "was refused" in (reply.content or "") and "no match" in (reply.content or "")


def test_editor_without_any_edit_tool() -> None:
    messages = [{"role": "user", "content": TASK},
                {"role": "tool", "tool_call_id": "1",
                 "content": f'<TOOL_OUTPUT tool="read_file" file="README.md">{README}</TOOL_OUTPUT>'}]
    reply = EditorAgent().reply({"messages": messages, "tools": [{"name": "read_file"}]})
    assert reply.tool_calls == [] and "no edit tool is available (tools: read_file)" in (reply.content or "")
