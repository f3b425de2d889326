from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import msgspec
import pytest

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.tools import (
    LIST_DIR_MAX_ENTRIES,
    TOOL_SPECS,
    execute_calls,
    shell_environment,
    tool_schemas,
)
from kcd.providers.types import ToolSchema

SETTINGS = ToolSettings()


def call(name: str, call_id: str = "c1", **args: object) -> ToolInvocation:
    return ToolInvocation(call_id=call_id, name=name, args=dict(args))


def run1(ws: Path, name: str, settings: ToolSettings = SETTINGS, **args: object) -> ToolOutcome:
    [outcome] = execute_calls(str(ws), [call(name, **args)], settings)
    return outcome


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "src" / "util.h").write_text("#pragma once\n")
    (root / "README.md").write_text("# demo\n")
    (tmp_path / "outside.txt").write_text("secret\n")
    return root


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie awaiting its reaper is dead


# --------------------------------------------------------------------------- catalogue


def test_catalogue_is_immutable_and_complete() -> None:
    assert set(TOOL_SPECS) == {
        # internal names (the original KyleCode's)
        "list_dir", "read_file", "create_file", "create_file_from_block", "apply_search_replace",
        "apply_unified_patch", "run_shell", "mark_task_complete",
        # OpenCode names
        "bash", "read", "write", "edit", "glob", "grep", "list", "patch",
    }  # fmt: skip
    with pytest.raises(TypeError):
        TOOL_SPECS["evil"] = TOOL_SPECS["list_dir"]  # type: ignore[index]
    assert TOOL_SPECS["run_shell"].blocking and TOOL_SPECS["mark_task_complete"].blocking
    assert not TOOL_SPECS["read_file"].blocking


def test_tool_schemas() -> None:
    schemas = tool_schemas(["list_dir", "mark_task_complete"])
    assert all(isinstance(s, ToolSchema) for s in schemas)
    list_dir = schemas[0]
    assert list_dir.name == "list_dir"
    assert list_dir.parameters["type"] == "object"
    assert list_dir.parameters["required"] == ["path"]
    assert list_dir.parameters["properties"]["depth"] == {
        "type": "integer",
        "description": "How many levels to show, 1-5.",
        "minimum": 1,
        "maximum": 5,
        "default": 1,
    }
    assert schemas[1].parameters == {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
    schemas[0].parameters["required"].append("x")  # callers get fresh copies
    assert TOOL_SPECS["list_dir"].parameters["required"] == ["path"]
    with pytest.raises(ValueError, match="unknown tool 'nope'"):
        tool_schemas(["nope"])


# --------------------------------------------------------------------------- list_dir


def test_list_dir_depth_1(ws: Path) -> None:
    out = run1(ws, "list_dir", path=".")
    assert out.ok and not out.completes
    assert out.output == '<TOOL_OUTPUT tool="list_dir" path=".">\nsrc/\nREADME.md\n</TOOL_OUTPUT>'
    assert out.data == {
        "path": ".",
        "items": [
            {"name": "src", "is_dir": True, "level": 1},
            {"name": "README.md", "is_dir": False, "level": 1},
        ],
        "depth": 1,
        "tree_format": False,
        "truncated": False,
    }


def test_list_dir_tree(ws: Path) -> None:
    (ws / "src" / "lib").mkdir()
    (ws / "src" / "lib" / "deep.c").write_text("")
    out = run1(ws, "list_dir", path=".", depth=2)
    assert out.output == (
        '<TOOL_OUTPUT tool="list_dir" path=".">\n'
        "├── src/\n"
        "│   ├── lib/\n"
        "│   ├── main.c\n"
        "│   └── util.h\n"
        "└── README.md\n"
        "</TOOL_OUTPUT>"
    )
    assert out.data is not None and out.data["tree_format"] is True
    out3 = run1(ws, "list_dir", path="src", depth=3)
    assert "│   └── deep.c" in out3.output and 'path="src"' in out3.output


def test_list_dir_caps_entries(ws: Path) -> None:
    many = ws / "many"
    many.mkdir()
    for i in range(LIST_DIR_MAX_ENTRIES + 50):
        (many / f"f{i:05d}").write_text("")
    out = run1(ws, "list_dir", path="many")
    lines = out.output.splitlines()
    assert len(lines) == LIST_DIR_MAX_ENTRIES + 3  # open tag, entries, note, close tag
    assert f"[listing truncated at {LIST_DIR_MAX_ENTRIES} entries" in out.output
    assert out.data is not None and out.data["truncated"] is True


def test_list_dir_does_not_follow_symlinked_dirs(ws: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path, ws / "escape")
    out = run1(ws, "list_dir", path=".", depth=3)
    assert "escape/" in out.output
    assert "outside.txt" not in out.output
    denied = run1(ws, "list_dir", path="escape")
    assert not denied.ok and denied.output.startswith('<TOOL_ERROR tool="list_dir">')
    assert "outside the workspace" in denied.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"path": "README.md"}, "not a directory"),
        ({"path": "nope"}, "no such directory"),
        ({"path": "/etc"}, "absolute"),
        ({"path": "."} | {"depth": 9}, "'depth' must be between 1 and 5"),
        ({"path": "."} | {"depth": "2"}, "'depth' must be an integer"),
        ({}, "missing required parameter 'path'"),
        ({"path": ".", "recursive": True}, "unexpected parameter 'recursive'"),
        ({"path": 3}, "'path' must be a string"),
    ],
)
def test_list_dir_errors(ws: Path, args: dict[str, object], message: str) -> None:
    out = run1(ws, "list_dir", **args)
    assert not out.ok
    assert out.output.startswith('<TOOL_ERROR tool="list_dir">') and out.output.endswith("</TOOL_ERROR>")
    assert message in out.output


# --------------------------------------------------------------------------- read_file


def test_read_file(ws: Path) -> None:
    out = run1(ws, "read_file", path="src/main.c")
    assert out.ok
    assert out.output == '<TOOL_OUTPUT tool="read_file" file="src/main.c">int main(void) { return 0; }\n</TOOL_OUTPUT>'
    assert out.data is not None and out.data["content"] == "int main(void) { return 0; }\n"


def test_read_file_window_and_notes(ws: Path) -> None:
    (ws / "big.txt").write_text("".join(f"{i}\n" for i in range(10)))
    out = run1(ws, "read_file", path="big.txt", offset=2, limit=3)
    assert out.output == (
        '<TOOL_OUTPUT tool="read_file" file="big.txt">2\n3\n4\n'
        "[showing lines 3-5; more lines follow: read again with offset=5]</TOOL_OUTPUT>"
    )
    tail = run1(ws, "read_file", path="big.txt", offset=8)
    assert tail.output == '<TOOL_OUTPUT tool="read_file" file="big.txt">8\n9\n</TOOL_OUTPUT>'
    past = run1(ws, "read_file", path="big.txt", offset=50)
    assert past.ok and "past the end of the file, which has 10 line(s)" in past.output
    capped = run1(ws, "read_file", ToolSettings(read_limit_lines=4), path="big.txt", limit=100)
    assert capped.data is not None and capped.data["lines"] == 4


def test_read_file_byte_cap_and_invalid_utf8(ws: Path) -> None:
    (ws / "one_line.txt").write_bytes(b"x" * 100_000)
    out = run1(ws, "read_file", ToolSettings(output_limit_bytes=1000), path="one_line.txt")
    assert out.data is not None and len(out.data["content"]) == 1000
    assert "[output cut at 1000 bytes" in out.output
    (ws / "latin1.txt").write_bytes(b"caf\xe9\n")
    assert run1(ws, "read_file", path="latin1.txt").data["content"] == "caf\ufffd\n"  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("src", "is a directory"),
        ("missing.txt", "no such file"),
        ("../outside.txt", "outside the workspace"),
        ("/etc/passwd", "absolute"),
    ],
)
def test_read_file_errors(ws: Path, path: str, message: str) -> None:
    out = run1(ws, "read_file", path=path)
    assert not out.ok and message in out.output
    assert "secret" not in out.output and "root:" not in out.output


def test_read_file_through_symlink_out_is_refused(ws: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside.txt", ws / "innocent.txt")
    out = run1(ws, "read_file", path="innocent.txt")
    assert not out.ok and "secret" not in out.output


def test_symlink_loop_is_a_tool_error(ws: Path) -> None:
    os.symlink("loop_b", ws / "loop_a")
    os.symlink("loop_a", ws / "loop_b")
    for name, args in (("read_file", {"path": "loop_a"}), ("create_file", {"path": "loop_a/x"})):
        out = run1(ws, name, **args)
        assert not out.ok and out.output.startswith(f'<TOOL_ERROR tool="{name}">')


def test_read_file_refuses_fifo(ws: Path) -> None:
    os.mkfifo(ws / "pipe")
    out = run1(ws, "read_file", path="pipe")
    assert not out.ok and "not a regular file" in out.output


# --------------------------------------------------------------------------- create_file


def test_create_file(ws: Path) -> None:
    out = run1(ws, "create_file", path="pkg/sub/new.py", content="x = 1\n")
    assert out.ok
    assert out.output == '<PATCH_RESULT file="pkg/sub/new.py">File successfully created with 0 linter errors.</PATCH_RESULT>'
    assert (ws / "pkg" / "sub" / "new.py").read_text() == "x = 1\n"
    empty = run1(ws, "create_file", path="empty.txt")
    assert empty.ok and (ws / "empty.txt").read_text() == ""
    # An existing empty file may receive content: nothing is lost.
    again = run1(ws, "create_file", path="empty.txt", content="now\n")
    assert again.ok and (ws / "empty.txt").read_text() == "now\n"


def test_create_file_never_truncates(ws: Path) -> None:
    for content in ("", "replacement\n"):
        out = run1(ws, "create_file", path="README.md", content=content)
        assert not out.ok
        assert "PATCH_RESULT" not in out.output
        assert "refusing to overwrite 'README.md'" in out.output
        assert (ws / "README.md").read_text() == "# demo\n"
    out = run1(ws, "create_file", path="src", content="x")
    assert not out.ok and "existing directory" in out.output


def test_create_file_escapes_touch_nothing(ws: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "planted.txt", ws / "dangling")  # dangling link pointing out
    os.symlink(tmp_path, ws / "outdir")
    for path in ("dangling", "outdir/planted.txt", "../planted.txt", str(tmp_path / "planted.txt"), "~/planted.txt"):
        out = run1(ws, "create_file", path=path, content="pwned")
        assert not out.ok, path
        assert out.output.startswith('<TOOL_ERROR tool="create_file">')
    assert not (tmp_path / "planted.txt").exists()
    assert (tmp_path / "outside.txt").read_text() == "secret\n"


# --------------------------------------------------------------------------- run_shell


def test_run_shell_ok(ws: Path) -> None:
    out = run1(ws, "run_shell", command="echo hello; pwd")
    assert out.ok
    assert out.output == f"<BASH_RESULT>\nhello\n{os.path.realpath(ws)}\n</BASH_RESULT>"
    assert out.data is not None
    assert out.data["exit"] == 0 and out.data["stderr"] == "" and out.data["timed_out"] is False
    assert out.data["worker_pid"] == os.getpid()


def test_run_shell_failure_and_separate_stderr(ws: Path) -> None:
    out = run1(ws, "run_shell", command="echo out; echo err >&2; exit 3")
    assert not out.ok
    assert out.output == "<BASH_RESULT>\nout\nstderr: err\nCommand failed with exit code 3\n</BASH_RESULT>"
    assert out.data is not None and (out.data["stdout"], out.data["stderr"], out.data["exit"]) == ("out\n", "err\n", 3)


def test_run_shell_no_output(ws: Path) -> None:
    assert run1(ws, "run_shell", command="true").output == "<BASH_RESULT>\n(no output)\n</BASH_RESULT>"


def test_run_shell_output_unmodified(ws: Path) -> None:
    text = ">>>>>>> REPLACE\n  indented\n\ttab\n>>>>> END RESPONSE\n"
    (ws / "t.txt").write_text(text)
    out = run1(ws, "run_shell", command="cat t.txt")
    assert out.data is not None and out.data["stdout"] == text
    assert out.output == f"<BASH_RESULT>\n{text}</BASH_RESULT>"


def test_run_shell_timeout_kills_the_whole_group(ws: Path) -> None:
    started = time.monotonic()
    out = run1(ws, "run_shell", command="sleep 60 & echo $! > bg.pid; sleep 60", timeout=1)
    elapsed = time.monotonic() - started
    assert elapsed < 3, elapsed
    assert not out.ok
    assert "Command timed out after 1 s" in out.output
    assert out.data is not None and out.data["timed_out"] is True and out.data["exit"] is None
    background = int((ws / "bg.pid").read_text())
    deadline = time.monotonic() + 2
    while _alive(background) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(background)


def test_run_shell_background_children_do_not_outlive_the_command(ws: Path) -> None:
    started = time.monotonic()
    out = run1(ws, "run_shell", command="sleep 60 & echo $!")
    assert time.monotonic() - started < 3
    assert out.ok
    pid = int(out.data["stdout"])  # type: ignore[index]
    time.sleep(0.2)
    assert not _alive(pid)


def test_run_shell_timeout_is_clamped_to_settings(ws: Path) -> None:
    started = time.monotonic()
    out = run1(ws, "run_shell", ToolSettings(shell_timeout_s=1), command="sleep 30", timeout=1000)
    assert time.monotonic() - started < 3
    assert out.data is not None and out.data["timed_out"] and out.data["timeout_s"] == 1


def test_run_shell_environment_is_scrubbed(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws")
    out = run1(ws, "run_shell", command="env")
    assert out.ok
    env_text = out.data["stdout"]  # type: ignore[index]
    for leaked in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "AWS_SECRET_ACCESS_KEY", "sk-test", "sk-or"):
        assert leaked not in env_text
    env = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
    assert env["HOME"] == os.path.realpath(ws)
    assert "PATH" in env
    assert "OPENAI_API_KEY" not in shell_environment(str(ws))


def test_run_shell_output_flood_is_capped(ws: Path) -> None:
    settings = ToolSettings(output_limit_bytes=64 * 1024)
    started = time.monotonic()
    out = run1(ws, "run_shell", settings, command="yes | head -c 10000000; head -c 300000 /dev/zero | tr '\\0' e >&2")
    assert time.monotonic() - started < 10
    assert out.ok
    assert out.data is not None
    assert len(out.data["stdout"]) == 64 * 1024
    assert out.data["truncated"] == {"stdout": 10_000_000 - 65536, "stderr": 300_000 - 65536}
    assert f"[stdout truncated: {10_000_000 - 65536} more bytes not shown (limit 65536 bytes)]" in out.output
    assert f"[stderr truncated: {300_000 - 65536} more bytes not shown" in out.output
    assert len(out.output) < 3 * 65536


def test_run_shell_cancel_event_kills_the_command(ws: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    outcomes = execute_calls(
        str(ws),
        [call("run_shell", "a", command="sleep 30"), call("list_dir", "b", path=".")],
        SETTINGS,
        cancel,
    )
    assert time.monotonic() - started < 3
    assert "Command cancelled" in outcomes[0].output and not outcomes[0].ok
    assert outcomes[1].data == {"cancelled": True}
    assert "the turn was cancelled" in outcomes[1].output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "missing required parameter 'command'"),
        ({"command": ["ls"]}, "'command' must be a string"),
        ({"command": "ls", "timeout": 0}, "'timeout' must be > 0"),
        ({"command": "ls", "timeout": "5"}, "'timeout' must be a number"),
    ],
)
def test_run_shell_bad_args(ws: Path, args: dict[str, object], message: str) -> None:
    out = run1(ws, "run_shell", **args)
    assert not out.ok and message in out.output


# --------------------------------------------------------------------------- policy and batches


def test_mark_task_complete_alone(ws: Path) -> None:
    out = run1(ws, "mark_task_complete")
    assert out.ok and out.completes
    assert out.output == '<TOOL_OUTPUT tool="mark_task_complete">Task marked as complete. Ending session.</TOOL_OUTPUT>'
    assert out.data == {"action": "complete"}


def test_mark_task_complete_with_other_calls_runs_nothing(ws: Path) -> None:
    outcomes = execute_calls(
        str(ws),
        [call("create_file", "a", path="x.txt", content="x"), call("mark_task_complete", "b")],
        SETTINGS,
    )
    assert [o.call_id for o in outcomes] == ["a", "b"]
    assert all(not o.ok and not o.completes for o in outcomes)
    assert all(o.output.startswith("<CONSTRAINT_ERROR>") for o in outcomes)
    assert "mark_task_complete must be the only tool call" in outcomes[0].output
    assert not (ws / "x.txt").exists()


def test_two_run_shells_is_a_validation_error(ws: Path) -> None:
    outcomes = execute_calls(
        str(ws),
        [call("run_shell", "a", command="touch one"), call("run_shell", "b", command="touch two")],
        SETTINGS,
    )
    assert all(o.output.startswith("<VALIDATION_ERROR>") and not o.ok for o in outcomes)
    assert outcomes[0].data == {"policy_error": "VALIDATION_ERROR"}
    assert not (ws / "one").exists() and not (ws / "two").exists()


def test_unknown_tool_and_cancelled_remaining(ws: Path) -> None:
    outcomes = execute_calls(
        str(ws),
        [
            call("list_dir", "a", path="."),
            call("delete_everything", "b"),
            call("read_file", "c", path="README.md"),
            call("run_shell", "d", command="touch ran"),
        ],
        SETTINGS,
    )
    assert [o.call_id for o in outcomes] == ["a", "b", "c", "d"]
    assert [o.name for o in outcomes] == ["list_dir", "delete_everything", "read_file", "run_shell"]
    assert outcomes[0].ok
    assert outcomes[1].output.startswith('<TOOL_ERROR tool="delete_everything">unknown tool')
    for o in outcomes[2:]:
        assert not o.ok and o.data == {"cancelled": True}
        assert o.output.startswith(f'<TOOL_ERROR tool="{o.name}">Not executed')
        assert "remaining 2 tool call(s) were cancelled" in o.output
    assert not (ws / "ran").exists()


def test_failing_shell_stops_the_batch(ws: Path) -> None:
    outcomes = execute_calls(
        str(ws), [call("run_shell", "a", command="false"), call("list_dir", "b", path=".")], SETTINGS
    )
    assert not outcomes[0].ok and "Command failed with exit code 1" in outcomes[0].output
    assert outcomes[1].data == {"cancelled": True}


def test_file_changes_run_first_results_keep_call_order(ws: Path) -> None:
    outcomes = execute_calls(
        str(ws),
        [call("read_file", "r", path="new.txt"), call("create_file", "w", path="new.txt", content="fresh\n")],
        SETTINGS,
    )
    assert [o.call_id for o in outcomes] == ["r", "w"]
    assert all(o.ok for o in outcomes)
    assert outcomes[0].data is not None and outcomes[0].data["content"] == "fresh\n"


def test_missing_workspace_and_empty_batch(tmp_path: Path) -> None:
    assert execute_calls(str(tmp_path), [], SETTINGS) == []
    [out] = execute_calls(str(tmp_path / "nope"), [call("list_dir", path=".")], SETTINGS)
    assert not out.ok and out.output.startswith("<EXECUTION_ERROR>")


def test_outcomes_serialise(ws: Path) -> None:
    outcomes = execute_calls(str(ws), [call("list_dir", path=".", depth=3), call("run_shell", "s", command="ls")], SETTINGS)
    decoded = msgspec.json.decode(msgspec.json.encode(outcomes), type=list[ToolOutcome])
    assert decoded == outcomes
    assert all(o.elapsed_s >= 0 for o in outcomes)
