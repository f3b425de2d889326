"""The built-in tool catalogue: every tool kcd implements, with both name sets.

Internal names (the original KyleCode's: `read_file`, `run_shell`, ...) and
OpenCode names (`read`, `bash`, ...). A tool
definition file (see `registry`) may re-describe any of these for prompts and
native schemas; execution always checks arguments against these specs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from kcd.agent.tools.spec import ParamSpec, ToolSpec
from kcd.providers.types import ToolSchema

if TYPE_CHECKING:
    from kcd.agent.tools.registry import ToolRegistry

__all__ = ["REFUSED_TOOLS", "SHELL_TOOLS", "TOOL_SPECS", "tool_schemas"]

_PATH = "relative to the workspace root; an absolute path must lie inside the workspace"


def _p(name: str, type_: str, description: str, required: bool = False, **kw: object) -> ParamSpec:
    return ParamSpec(name, type_, description, required, **kw)  # type: ignore[arg-type]


_INTERNAL = (
    ToolSpec(
        "list_dir",
        "List a workspace directory. depth=1 prints one entry per line (directories end "
        "with '/'); depth 2-5 prints a tree.",
        (
            _p("path", "string", "Directory relative to the workspace root ('.' for the root).", True),
            _p("depth", "integer", "How many levels to show, 1-5.", default=1, minimum=1, maximum=5),
        ),
        read_only=True,
    ),
    ToolSpec(
        "read_file",
        "Read a UTF-8 text file from the workspace (invalid bytes are replaced). "
        "offset and limit select lines; long files are cut with a note saying how to continue.",
        (
            _p("path", "string", "File relative to the workspace root.", True),
            _p("offset", "integer", "0-based index of the first line to return.", default=0, minimum=0),
            _p("limit", "integer", "Maximum number of lines to return (capped by the daemon).", minimum=1),
        ),
        read_only=True,
    ),
    ToolSpec(
        "create_file",
        "Create a new file (and any missing parent directories), optionally with content. "
        "Fails if a non-empty file already exists: it never overwrites.",
        (
            _p("path", "string", "File relative to the workspace root.", True),
            _p("content", "string", "Initial content (default: empty).", default=""),
        ),
        blocking=True,
        file_changing=True,
    ),
    ToolSpec(
        "create_file_from_block",
        "Write a file with the given content, creating it (and any missing parent directories) "
        "or replacing the whole content of an existing file.",
        (
            _p("file_name", "string", f"File {_PATH}.", True),
            _p("content", "string", "The complete new content of the file.", True),
        ),
        blocking=True,
        file_changing=True,
    ),
    ToolSpec(
        "apply_search_replace",
        "Edit a file by replacing the first exact occurrence of `search` with `replace` "
        "(Aider SEARCH/REPLACE). `search` must match the file exactly, whitespace included. "
        "An empty `search` creates a missing (or empty) file with `replace` as its content; "
        "it never overwrites a non-empty file.",
        (
            _p("file_name", "string", f"File {_PATH}.", True),
            _p("search", "string", "The exact text to find (copy it from the file).", True),
            _p("replace", "string", "The text to put in its place.", True),
        ),
        blocking=True,
        file_changing=True,
    ),
    ToolSpec(
        "apply_unified_patch",
        "Apply a unified diff ('--- a/<file>', '+++ b/<file>', '@@ -l,n +l,n @@' hunks) to one or "
        "more files; '/dev/null' adds or deletes a file. Context lines must match the files exactly. "
        "Either every file changes or none does.",
        (_p("patch", "string", "The unified diff text.", True),),
        blocking=True,
        file_changing=True,
        type_id="diff",
    ),
    ToolSpec(
        "run_shell",
        "Run a bash command in the workspace root; returns stdout, stderr and the exit code. "
        "At most one run_shell call per reply. Processes it starts do not outlive it.",
        (
            _p("command", "string", "The bash command line.", True),
            _p("timeout", "number", "Seconds before the command is killed (capped by the daemon).", minimum=0),
        ),
        blocking=True,
        max_per_turn=1,
    ),
    ToolSpec(
        "mark_task_complete",
        "Declare the task finished and end the session. Must be the only tool call in its reply.",
        (),
        blocking=True,
        max_per_turn=1,
    ),
)

_OPENCODE = (
    ToolSpec(
        "bash",
        "Run a bash command in the workspace root; returns stdout, stderr and the exit code. "
        "At most one shell call per reply. Processes it starts do not outlive it.",
        (
            _p("command", "string", "The command to execute.", True),
            _p("timeout", "integer", "Milliseconds before the command is killed (capped by the daemon).", minimum=0),
            _p("description", "string", "A short description of what the command does (5-10 words)."),
        ),
        blocking=True,
        max_per_turn=1,
    ),
    ToolSpec(
        "read",
        "Read a UTF-8 text file from the workspace. offset is the 0-based first line, limit the "
        "number of lines (default 2000); long files are cut with a note saying how to continue.",
        (
            _p("filePath", "string", f"The file to read, {_PATH}.", True),
            _p("offset", "integer", "The 0-based line number to start reading from.", default=0, minimum=0),
            _p("limit", "integer", "The number of lines to read.", default=2000, minimum=1),
        ),
        read_only=True,
    ),
    ToolSpec(
        "write",
        "Write a file with the given content, creating it (and any missing parent directories) "
        "or replacing the whole content of an existing file.",
        (
            _p("filePath", "string", f"The file to write, {_PATH}.", True),
            _p("content", "string", "The content to write to the file.", True),
        ),
        blocking=True,
        file_changing=True,
    ),
    ToolSpec(
        "edit",
        "Replace exact text in a file. oldString must match the file exactly, whitespace included; "
        "if it occurs more than once, include more surrounding lines to make it unique, or set "
        "replaceAll to replace every occurrence. An empty oldString creates a missing or empty file.",
        (
            _p("filePath", "string", f"The file to modify, {_PATH}.", True),
            _p("oldString", "string", "The exact text to replace.", True),
            _p("newString", "string", "The text to replace it with (must differ from oldString).", True),
            _p("replaceAll", "boolean", "Replace every occurrence of oldString (default false).", default=False),
        ),
        blocking=True,
        file_changing=True,
    ),
    ToolSpec(
        "glob",
        "Find files by glob pattern (*, **, ?, [abc], {a,b}); a pattern without '/' matches file "
        "names at any depth. Returns workspace-relative paths, sorted, capped.",
        (
            _p("pattern", "string", "The glob pattern to match files against, e.g. '**/*.c' or '*.h'.", True),
            _p("path", "string", f"The directory to search in (default: the workspace root), {_PATH}."),
        ),
        read_only=True,
    ),
    ToolSpec(
        "grep",
        "Search file contents with a regular expression (Python syntax); returns 'path:line: text' "
        "for each matching line, capped. Binary files are skipped.",
        (
            _p("pattern", "string", "The regular expression to search for.", True),
            _p("path", "string", f"The directory or file to search (default: the workspace root), {_PATH}."),
            _p("include", "string", "Only search files matching this glob, e.g. '*.c' or '*.{h,c}'."),
        ),
        read_only=True,
    ),
    ToolSpec(
        "list",
        "List the files and directories under a path as an indented tree, skipping VCS, cache and "
        "dependency directories (.git, node_modules, __pycache__, ...).",
        (
            _p("path", "string", f"The directory to list (default: the workspace root), {_PATH}."),
            _p("ignore", "array", "Glob patterns of names or paths to leave out."),
        ),
        read_only=True,
    ),
    ToolSpec(
        "patch",
        "Apply a '*** Begin Patch' ... '*** End Patch' block: '*** Add File: <path>' followed by "
        "'+' lines; '*** Delete File: <path>'; '*** Update File: <path>' (optionally followed by "
        "'*** Move to: <path>') with hunks that start with '@@' (optionally '@@ <a line just before "
        "the change>') and contain ' ' (unchanged), '-' (removed) and '+' (added) lines. Either "
        "every file changes or none does.",
        (_p("patchText", "string", "The full patch text, from '*** Begin Patch' to '*** End Patch'.", True),),
        blocking=True,
        file_changing=True,
        type_id="diff",
    ),
)

TOOL_SPECS: Mapping[str, ToolSpec] = MappingProxyType({s.name: s for s in _INTERNAL + _OPENCODE})

# OpenCode tools the original defined but never executed; kcd refuses them explicitly.
REFUSED_TOOLS = frozenset({"task", "webfetch", "lsp-diagnostics"})

SHELL_TOOLS = ("run_shell", "bash")  # at most one of these per reply, together


def tool_schemas(names: Iterable[str], registry: ToolRegistry | None = None) -> list[ToolSchema]:
    """Native tool schemas for `names`: the registry's definition when it has one, else
    the built-in spec. An unknown name is a configuration error (ValueError)."""
    out = []
    for name in names:
        spec = registry.specs.get(name) if registry is not None else None
        spec = spec or TOOL_SPECS.get(name)
        if spec is None:
            raise ValueError(f"unknown tool {name!r}; known tools: {', '.join(TOOL_SPECS)}")
        out.append(ToolSchema(name=spec.name, description=spec.description, parameters=spec.parameters))
    return out
