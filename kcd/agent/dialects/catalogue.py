"""The text-mode tool directive (`prompts.tool_prompt_mode`): the tool signatures, then
the call formats that the given tools make usable, and nothing else."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

from kcd.agent.dialects import bash_block, begin_patch, search_replace, unified_diff
from kcd.agent.tools import TOOL_SPECS

_PY_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool",
             "array": "list", "object": "dict"}


class _Param(Protocol):  # what is read of a kcd.agent.tools ParamSpec (read-only, so frozen types fit)
    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def required(self) -> bool: ...
    @property
    def default(self) -> Any: ...


class _Spec(Protocol):  # ... and of a ToolSpec
    @property
    def description(self) -> str: ...
    @property
    def params(self) -> Sequence[_Param]: ...


def render_text_catalogue(names: Iterable[str], *, specs: Mapping[str, _Spec] | None = None,
                          formats: Collection[str] | None = None) -> str:
    """The ``SYSTEM MESSAGE - AVAILABLE TOOLS`` directive for `names`.

    Inside ``<FUNCTIONS>`` each tool starts with its signature at column 0
    (``name(param: type, ...)``) and its description lines are indented: the
    simulator's scripted agents read the tool names from those lines.
    An unknown name is a configuration error (ValueError), never dropped.
    `specs` defaults to the daemon's TOOL_SPECS.
    """
    catalogue = TOOL_SPECS if specs is None else specs
    names = list(names)
    blocks = []
    for name in names:
        spec = catalogue.get(name)
        if spec is None:
            raise ValueError(f"no text catalogue entry for tool {name!r}")
        blocks.append(_signature(name, spec))
    lines = [
        "SYSTEM MESSAGE - AVAILABLE TOOLS",
        "<FUNCTIONS>",
        "\n\n".join(blocks),
        "</FUNCTIONS>",
        "Respond only with tool calls, written in the FORMATS below.",
        *_formats(set(names), None if formats is None else set(formats)),
    ]
    if "mark_task_complete" in names:
        lines.append("When the task is complete, call mark_task_complete() alone, in a reply with no other "
                     "tool calls.")
    lines.append("END SYSTEM MESSAGE")
    return "\n".join(lines)


def _signature(name: str, spec: _Spec) -> str:
    params = []
    for p in spec.params:
        annotation = _PY_TYPES.get(p.type, "str")
        if p.required:
            params.append(f"{p.name}: {annotation}")
        elif p.default is None:
            params.append(f"{p.name}: {annotation} | None = None")
        else:
            params.append(f"{p.name}: {annotation} = {p.default!r}")
    docs = "".join(f"\n    {p.name}: {p.description}" for p in spec.params)
    return f"{name}({', '.join(params)})\n    {spec.description}{docs}"


def _formats(names: set[str], allowed: set[str] | None) -> list[str]:
    """One entry per format whose tool is offered (and that `allowed` keeps), in the parser's terms."""

    def on(*formats: str) -> bool:
        return allowed is None or any(f in allowed for f in formats)

    out = [
        "FORMATS",
        "Only these forms are executed; a tool named in prose or in an ordinary code block is not called.",
    ]
    if on("pythonic02"):
        out += [
            "- Any tool above, one call per line inside the tags; argument values are Python literals "
            "(quote strings, use triple quotes for multi-line text):",
            "<TOOL_CALL> tool_name(arg=value, ...) </TOOL_CALL>",
        ]
    shell = next((t for t in bash_block.SHELL_TOOLS if t in names), None)
    if shell is not None and on("bash_block"):
        out += [f"- A shell command (runs {shell}):", "<BASH> command </BASH>"]
    editor = next((t for t in search_replace.TOOLS if t in names), None)
    if editor is not None and on("aider_diff"):
        out += [
            f"- An exact replacement in one file (runs {editor}): the file path alone on a line, then the "
            "exact current lines and their replacement. An empty SEARCH part creates a new file.",
            "path/to/file",
            "<<<<<<< SEARCH",
            "exact current lines",
            "=======",
            "replacement lines",
            ">>>>>>> REPLACE",
        ]
    if unified_diff.TOOL in names and on("unified_diff_fenced", "unified_diff_git"):
        out += [
            f"- A unified diff (runs {unified_diff.TOOL}, git apply) in a ```diff fence; "
            "several files may share one diff:",
            "```diff",
            "--- a/path/to/file",
            "+++ b/path/to/file",
            "@@ -1,2 +1,2 @@",
            " unchanged line",
            "-old line",
            "+new line",
            "```",
        ]
    if begin_patch.TOOL in names and on("opencode_patch"):
        out += [
            f"- A patch (runs {begin_patch.TOOL}): sections *** Add File: <path> (every line prefixed +), "
            "*** Delete File: <path>, or *** Update File: <path> with @@ hunks of ' ' context, '-' removed "
            "and '+' added lines:",
            "*** Begin Patch",
            "*** Update File: path/to/file",
            "@@ unchanged line",
            "-old line",
            "+new line",
            "*** End Patch",
        ]
    return out
