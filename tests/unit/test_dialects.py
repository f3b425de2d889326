from __future__ import annotations

import pytest

from kcd.agent.calls import ToolInvocation
from kcd.agent.dialects import parse_text_calls, render_text_catalogue
from kcd.agent.tools import TOOL_SPECS

ALL = frozenset(TOOL_SPECS)


def parse(text: str, tools: frozenset[str] = ALL, turn: int = 3):
    return parse_text_calls(text, tools, turn=turn)


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
    assert all(c.source == "text" for c in parsed.calls)


def test_fenced_call_inside_tag() -> None:
    parsed = parse('<TOOL_CALL>\n```python\nlist_dir(path=".")\n```\n</TOOL_CALL>')
    assert parsed.errors == [] and parsed.calls[0].name == "list_dir"


def test_duplicates_are_removed() -> None:
    parsed = parse('<TOOL_CALL>list_dir(path=".")</TOOL_CALL><TOOL_CALL>list_dir(".")</TOOL_CALL>')
    assert len(parsed.calls) == 1


@pytest.mark.parametrize(
    "text",
    [
        'I will call list_dir(path=".") next.',
        "Then mark_task_complete() when done.",
        '```python\nrun_shell(command="rm -rf /")\n```',
        "Use <TOOL_CALL> blocks like the manual says",  # opening tag only: reported, never run
        "`run_shell` with `<BASH>` would work",
    ],
)
def test_prose_mentions_are_not_calls(text: str) -> None:
    assert parse(text).calls == []


def test_unterminated_block_is_reported() -> None:
    parsed = parse('<TOOL_CALL> list_dir(path=".")')
    assert parsed.calls == []
    assert parsed.errors == ["<TOOL_ERROR>unterminated <TOOL_CALL> block: close it with </TOOL_CALL></TOOL_ERROR>"]


def test_unknown_or_unavailable_tool_is_an_error_not_a_call() -> None:
    parsed = parse('<TOOL_CALL>delete_repo(name="x")</TOOL_CALL>')
    assert parsed.calls == []
    assert parsed.errors[0].startswith('<TOOL_ERROR tool="delete_repo">unknown tool \'delete_repo\'')
    limited = parse('<TOOL_CALL>run_shell(command="ls")</TOOL_CALL>', tools=frozenset({"read_file"}))
    assert limited.calls == [] and "unknown tool 'run_shell'" in limited.errors[0]


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


def test_nothing_is_evaluated(tmp_path) -> None:
    marker = tmp_path / "pwned"
    parse(f"<TOOL_CALL>list_dir(path=open({str(marker)!r}, 'w'))</TOOL_CALL>")
    assert not marker.exists()


def test_one_bad_call_does_not_hide_the_good_ones() -> None:
    parsed = parse("<TOOL_CALL>\nlist_dir(path='.')\nnope()\n</TOOL_CALL>")
    assert [c.name for c in parsed.calls] == ["list_dir"]
    assert len(parsed.errors) == 1


def test_bash_block() -> None:
    parsed = parse("<BASH>\nmake test\n</BASH>", tools=frozenset({"run_shell"}))
    assert parsed.calls == [
        ToolInvocation(call_id="text_3_0", name="run_shell", args={"command": "make test"}, source="text")
    ]
    # Without run_shell in the mode's tools, a <BASH> block is refused, not run.
    refused = parse("<BASH>make</BASH>", tools=frozenset({"read_file"}))
    assert refused.calls == [] and "need the run_shell tool" in refused.errors[0]
    assert "empty <BASH> block" in parse("<BASH>  </BASH>").errors[0]
    # A tag inside a shell command belongs to the command.
    inner = parse("<BASH>echo '<TOOL_CALL>'</BASH>")
    assert inner.calls[0].args == {"command": "echo '<TOOL_CALL>'"} and inner.errors == []


def test_text_catalogue() -> None:
    text = render_text_catalogue(["list_dir", "run_shell", "mark_task_complete"])
    assert text.startswith("SYSTEM MESSAGE - AVAILABLE TOOLS\n<FUNCTIONS>\n")
    assert text.endswith("END SYSTEM MESSAGE")
    assert "list_dir(path: str, depth: int = 1)" in text
    assert "run_shell(command: str, timeout: float | None = None)" in text
    assert "<TOOL_CALL> tool_name(arg=value, ...) </TOOL_CALL>" in text
    assert "<BASH> command </BASH>" in text
    assert "call mark_task_complete() alone" in text
    assert "read_file" not in text
    plain = render_text_catalogue(["read_file"])
    assert "<BASH>" not in plain and "mark_task_complete" not in plain
    with pytest.raises(ValueError, match="nope"):
        render_text_catalogue(["nope"])
