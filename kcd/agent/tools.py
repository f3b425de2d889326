"""Tool catalogue and the synchronous executor for one turn's tool calls.

`execute_calls` is a pure function of its inputs so it can run in a Ray worker
or a thread: no daemon objects, no module-level mutable state. Result texts
keep the original KyleCode tags (reference 4.5) because models were prompted
with them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from kcd.agent.calls import ToolInvocation, ToolOutcome, ToolSettings
from kcd.agent.workspace import WorkspaceEscape, relative_to_workspace, resolve_in_workspace
from kcd.providers.types import ToolSchema

__all__ = [
    "LIST_DIR_MAX_ENTRIES",
    "TOOL_SPECS",
    "ParamSpec",
    "ToolSpec",
    "execute_calls",
    "shell_environment",
    "tool_schemas",
]

LIST_DIR_MAX_ENTRIES = 1000
_SHELL_DRAIN_GRACE_S = 1.0  # after the shell exits, how long background writers may keep its pipes
_READ_CHUNK = 64 * 1024


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str  # JSON Schema type: "string" | "integer" | "number"
    description: str
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.default is not None:
            schema["default"] = self.default
        return schema


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    params: tuple[ParamSpec, ...] = ()  # declared order: positional text-call args map onto it
    blocking: bool = False

    @property
    def parameters(self) -> dict[str, Any]:
        """A fresh JSON Schema object for the arguments (callers may mutate it)."""
        return {
            "type": "object",
            "properties": {p.name: p.json_schema() for p in self.params},
            "required": [p.name for p in self.params if p.required],
            "additionalProperties": False,
        }


TOOL_SPECS: Mapping[str, ToolSpec] = MappingProxyType(
    {
        "list_dir": ToolSpec(
            "list_dir",
            "List a workspace directory. depth=1 prints one entry per line (directories end "
            "with '/'); depth 2-5 prints a tree.",
            (
                ParamSpec("path", "string", "Directory relative to the workspace root ('.' for the root).", True),
                ParamSpec("depth", "integer", "How many levels to show, 1-5.", default=1, minimum=1, maximum=5),
            ),
        ),
        "read_file": ToolSpec(
            "read_file",
            "Read a UTF-8 text file from the workspace (invalid bytes are replaced). "
            "offset and limit select lines; long files are cut with a note saying how to continue.",
            (
                ParamSpec("path", "string", "File relative to the workspace root.", True),
                ParamSpec("offset", "integer", "0-based index of the first line to return.", default=0, minimum=0),
                ParamSpec("limit", "integer", "Maximum number of lines to return (capped by the daemon).", minimum=1),
            ),
        ),
        "create_file": ToolSpec(
            "create_file",
            "Create a new file (and any missing parent directories), optionally with content. "
            "Fails if a non-empty file already exists: it never overwrites.",
            (
                ParamSpec("path", "string", "File relative to the workspace root.", True),
                ParamSpec("content", "string", "Initial content (default: empty).", default=""),
            ),
        ),
        "run_shell": ToolSpec(
            "run_shell",
            "Run a bash command in the workspace root; returns stdout, stderr and the exit code. "
            "At most one run_shell call per reply. Processes it starts do not outlive it.",
            (
                ParamSpec("command", "string", "The bash command line.", True),
                ParamSpec("timeout", "number", "Seconds before the command is killed (capped by the daemon).", minimum=0),
            ),
            blocking=True,
        ),
        "mark_task_complete": ToolSpec(
            "mark_task_complete",
            "Declare the task finished and end the session. Must be the only tool call in its reply.",
            (),
            blocking=True,
        ),
    }
)

_FILE_CHANGING = frozenset({"create_file"})  # reference 4.3: file changes run first


def tool_schemas(names: Iterable[str]) -> list[ToolSchema]:
    """Native tool schemas for `names`; an unknown name is a configuration error."""
    out = []
    for name in names:
        spec = TOOL_SPECS.get(name)
        if spec is None:
            raise ValueError(f"unknown tool {name!r}; known tools: {', '.join(TOOL_SPECS)}")
        out.append(ToolSchema(name=spec.name, description=spec.description, parameters=spec.parameters))
    return out


# --------------------------------------------------------------------------- executor


class _ToolError(Exception):
    """A failure reported to the model as <TOOL_ERROR tool="...">message</TOOL_ERROR>."""


class _Result(NamedTuple):
    output: str
    data: dict[str, Any]
    ok: bool = True
    completes: bool = False


def execute_calls(
    workspace: str,
    calls: list[ToolInvocation],
    settings: ToolSettings,
    cancel: threading.Event | None = None,
) -> list[ToolOutcome]:
    """Run one reply's tool calls in `workspace`; one outcome per call, in the calls' order.

    Policy (reference 4.3): more than one run_shell → <VALIDATION_ERROR>; a
    mark_task_complete next to any other call → <CONSTRAINT_ERROR>; in both
    cases nothing runs. Otherwise file-changing calls run first, then the rest
    in order, one at a time; the first failure (tool error, or a shell command
    that exits non-zero or times out) cancels the calls after it. Setting
    `cancel` kills a running shell command and skips the remaining calls.
    """
    if not calls:
        return []
    policy = _policy_error(calls)
    if policy is not None:
        tag, text = policy
        return [
            ToolOutcome(call_id=c.call_id, name=c.name, ok=False, output=text, data={"policy_error": tag})
            for c in calls
        ]
    root = Path(workspace)
    if not root.is_dir():
        text = "<EXECUTION_ERROR>The workspace directory is missing; nothing ran.</EXECUTION_ERROR>"
        return [
            ToolOutcome(call_id=c.call_id, name=c.name, ok=False, output=text, data={"error": "workspace missing"})
            for c in calls
        ]

    order = sorted(range(len(calls)), key=lambda i: (calls[i].name not in _FILE_CHANGING, i))
    outcomes: dict[int, ToolOutcome] = {}
    stop_reason: str | None = None
    for position, index in enumerate(order):
        call = calls[index]
        if stop_reason is None and cancel is not None and cancel.is_set():
            stop_reason = "the turn was cancelled."
        if stop_reason is not None:
            outcomes[index] = _cancelled(call, stop_reason)
            continue
        outcome = _run_one(root, call, settings, cancel)
        outcomes[index] = outcome
        if cancel is not None and cancel.is_set():
            stop_reason = "the turn was cancelled."
        elif not outcome.ok:
            remaining = len(order) - position - 1
            stop_reason = (
                f"the earlier call {call.name} (call_id {call.call_id}) failed, so the "
                f"remaining {remaining} tool call(s) were cancelled."
            )
    return [outcomes[i] for i in range(len(calls))]


def _policy_error(calls: list[ToolInvocation]) -> tuple[str, str] | None:
    shells = sum(1 for c in calls if c.name == "run_shell")
    if shells > 1:
        return "VALIDATION_ERROR", (
            f"<VALIDATION_ERROR>At most one run_shell call is allowed per reply; this reply had "
            f"{shells}, so nothing ran. Combine the commands into one (for example with &&) or "
            "send them in separate replies.</VALIDATION_ERROR>"
        )
    if any(c.name == "mark_task_complete" for c in calls) and len(calls) > 1:
        return "CONSTRAINT_ERROR", (
            f"<CONSTRAINT_ERROR>mark_task_complete must be the only tool call in its reply; this "
            f"reply had {len(calls) - 1} other call(s), so nothing ran. Finish the remaining work "
            "first, then call mark_task_complete() alone.</CONSTRAINT_ERROR>"
        )
    return None


def _cancelled(call: ToolInvocation, reason: str) -> ToolOutcome:
    return ToolOutcome(
        call_id=call.call_id,
        name=call.name,
        ok=False,
        output=_tool_error(call.name, f"Not executed: {reason}"),
        data={"cancelled": True},
    )


def _run_one(
    root: Path, call: ToolInvocation, settings: ToolSettings, cancel: threading.Event | None
) -> ToolOutcome:
    started = time.monotonic()
    try:
        spec = TOOL_SPECS.get(call.name)
        if spec is None:
            raise _ToolError(f"unknown tool {call.name!r}; available tools: {', '.join(TOOL_SPECS)}")
        args = _check_args(spec, call.args)
        result = _HANDLERS[call.name](root, args, settings, cancel)
    except (_ToolError, WorkspaceEscape) as exc:
        result = _Result(_tool_error(call.name, str(exc)), {"error": str(exc)}, ok=False)
    except OSError as exc:
        message = f"{exc.strerror or type(exc).__name__}: {_shown_path(root, exc.filename)}"
        result = _Result(_tool_error(call.name, message), {"error": message}, ok=False)
    except Exception as exc:  # a tool bug must not take the whole batch (or the worker) down
        message = f"internal error: {type(exc).__name__}: {exc}"
        result = _Result(_tool_error(call.name, message), {"error": message}, ok=False)
    return ToolOutcome(
        call_id=call.call_id,
        name=call.name,
        ok=result.ok,
        output=result.output,
        completes=result.completes,
        data=result.data,
        elapsed_s=round(time.monotonic() - started, 6),
    )


def _check_args(spec: ToolSpec, args: Any) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise _ToolError(f"arguments must be an object of named parameters, got {type(args).__name__}")
    known = {p.name for p in spec.params}
    unexpected = sorted(set(args) - known)
    if unexpected:
        expected = ", ".join(sorted(known)) or "none"
        raise _ToolError(f"unexpected parameter {unexpected[0]!r} (parameters: {expected})")
    checked: dict[str, Any] = {}
    for p in spec.params:
        value = args.get(p.name)
        if value is None:  # JSON null for an optional parameter means "use the default"
            if p.required:
                raise _ToolError(f"missing required parameter {p.name!r}")
            checked[p.name] = p.default
            continue
        checked[p.name] = _coerce(p, value)
    return checked


def _coerce(p: ParamSpec, value: Any) -> Any:
    if p.type == "string":
        if not isinstance(value, str):
            raise _ToolError(f"parameter {p.name!r} must be a string, got {type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        article = "an" if p.type == "integer" else "a"
        raise _ToolError(f"parameter {p.name!r} must be {article} {p.type}, got {type(value).__name__}")
    if p.type == "integer":
        if isinstance(value, float) and not value.is_integer():
            raise _ToolError(f"parameter {p.name!r} must be an integer, got {value!r}")
        value = int(value)
    if (p.minimum is not None and value < p.minimum) or (p.maximum is not None and value > p.maximum):
        bounds = f"between {p.minimum:g} and {p.maximum:g}" if p.maximum is not None else f">= {p.minimum:g}"
        raise _ToolError(f"parameter {p.name!r} must be {bounds}, got {value!r}")
    return value


def _tool_error(name: str, message: str) -> str:
    return f'<TOOL_ERROR tool="{_attr(name)}">{message}</TOOL_ERROR>'


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _shown_path(root: Path, filename: Any) -> str:
    if not isinstance(filename, str):
        return "(unknown path)"
    try:
        return relative_to_workspace(root, Path(filename))
    except ValueError:
        return filename


# --------------------------------------------------------------------------- list_dir


def _list_dir(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Any) -> _Result:
    target = resolve_in_workspace(root, args["path"])
    shown = relative_to_workspace(root, target)
    if not target.exists():
        raise _ToolError(f"no such directory: {shown!r}")
    if not target.is_dir():
        raise _ToolError(f"not a directory: {shown!r} (use read_file for files)")
    depth: int = args["depth"]
    budget = [LIST_DIR_MAX_ENTRIES]
    items = _scan(target, depth, 1, budget)
    truncated = budget[0] < 0
    if depth == 1:
        lines = [it["name"] + ("/" if it["is_dir"] else "") for it in items]
    else:
        lines = _tree_lines(items, "")
    if truncated:
        lines.append(
            f"[listing truncated at {LIST_DIR_MAX_ENTRIES} entries; list a subdirectory or use a smaller depth]"
        )
    body = "\n".join(lines) if lines else "(empty directory)"
    output = f'<TOOL_OUTPUT tool="list_dir" path="{_attr(shown)}">\n{body}\n</TOOL_OUTPUT>'
    data = {"path": shown, "items": items, "depth": depth, "tree_format": depth > 1, "truncated": truncated}
    return _Result(output, data)


def _scan(directory: Path, depth: int, level: int, budget: list[int]) -> list[dict[str, Any]]:
    """Entries of `directory` (directories first, then by name), descending `depth` levels.

    Symlinked directories are shown but never entered, so listings cannot leave
    the workspace or loop. `budget` counts down the entries left to show.
    """
    try:
        with os.scandir(directory) as it:
            entries = [(e.name, _is_dir(e), e.is_symlink()) for e in it]
    except OSError:
        return []  # unreadable subdirectory: show it, without children
    entries.sort(key=lambda e: (not e[1], e[0]))
    items: list[dict[str, Any]] = []
    for name, is_dir, is_link in entries:
        if budget[0] <= 0:
            budget[0] = -1
            break
        budget[0] -= 1
        item: dict[str, Any] = {"name": name, "is_dir": is_dir, "level": level}
        if is_dir and level < depth and not is_link:
            item["children"] = _scan(directory / name, depth, level + 1, budget)
        items.append(item)
    return items


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _tree_lines(items: list[dict[str, Any]], prefix: str) -> list[str]:
    lines: list[str] = []
    for i, item in enumerate(items):
        last = i == len(items) - 1
        lines.append(f"{prefix}{'└── ' if last else '├── '}{item['name']}{'/' if item['is_dir'] else ''}")
        if item.get("children"):
            lines += _tree_lines(item["children"], prefix + ("    " if last else "│   "))
    return lines


# --------------------------------------------------------------------------- read_file


def _read_file(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Any) -> _Result:
    target = resolve_in_workspace(root, args["path"])
    shown = relative_to_workspace(root, target)
    if target.is_dir():
        raise _ToolError(f"{shown!r} is a directory (use list_dir)")
    if not target.exists():
        raise _ToolError(f"no such file: {shown!r}")
    if not target.is_file():  # a FIFO would block the worker forever
        raise _ToolError(f"{shown!r} is not a regular file")
    offset: int = args["offset"]
    limit = min(args["limit"] or settings.read_limit_lines, settings.read_limit_lines)
    cap = settings.output_limit_bytes
    with open(target, "rb") as fh:
        skipped = _skip_lines(fh, offset)
        raw, lines, cut, more = _take_lines(fh, limit, cap)
    content = raw.decode("utf-8", errors="replace")
    note = ""
    if skipped < offset:
        note = f"[offset {offset} is past the end of the file, which has {skipped} line(s)]"
    elif cut:
        note = f"[output cut at {cap} bytes; continue with offset={offset + lines}]"
    elif more:
        note = (
            f"[showing lines {offset + 1}-{offset + lines}; more lines follow: "
            f"read again with offset={offset + lines}]"
        )
    text = content if not note else content + ("" if content.endswith("\n") or not content else "\n") + note
    output = f'<TOOL_OUTPUT tool="read_file" file="{_attr(shown)}">{text}</TOOL_OUTPUT>'
    data = {
        "path": shown,
        "content": content,
        "offset": offset,
        "lines": lines,
        "truncated": cut or more,
    }
    return _Result(output, data)


def _skip_lines(fh: Any, count: int) -> int:
    skipped = 0
    while skipped < count:
        chunk = fh.readline(_READ_CHUNK)  # bounded: a huge single line never sits in memory
        if not chunk:
            break
        if chunk.endswith(b"\n"):
            skipped += 1
        elif len(chunk) < _READ_CHUNK:  # final line without a newline
            skipped += 1
    return skipped


def _take_lines(fh: Any, limit: int, cap: int) -> tuple[bytes, int, bool, bool]:
    """Read up to `limit` lines and `cap` bytes: (bytes, complete lines, cut by cap, more lines exist)."""
    out = bytearray()
    lines = 0
    while lines < limit:
        line = fh.readline(cap - len(out) + 1)
        if not line:
            return bytes(out), lines, False, False
        if len(out) + len(line) > cap:
            out += line[: cap - len(out)]
            return bytes(out), lines, True, True
        out += line
        lines += 1
        if not line.endswith(b"\n"):
            return bytes(out), lines, False, False
    return bytes(out), lines, False, bool(fh.read(1))


# --------------------------------------------------------------------------- create_file


def _create_file(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Any) -> _Result:
    target = resolve_in_workspace(root, args["path"])
    shown = relative_to_workspace(root, target)
    if target == Path(os.path.realpath(root)):
        raise _ToolError("path names the workspace root, not a file")
    data = (args["content"] or "").encode("utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: a symlink planted at the final component after the check is refused, not followed.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(target, flags | os.O_EXCL, 0o644)
    except FileExistsError:
        if target.is_dir():
            raise _ToolError(f"{shown!r} is an existing directory") from None
        if not target.is_file():
            raise _ToolError(f"{shown!r} exists and is not a regular file") from None
        fd = os.open(target, flags)
        size = os.fstat(fd).st_size
        if size > 0:
            os.close(fd)
            raise _ToolError(
                f"refusing to overwrite {shown!r}: it already exists and is not empty ({size} bytes)"
            ) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    output = f'<PATCH_RESULT file="{_attr(shown)}">File successfully created with 0 linter errors.</PATCH_RESULT>'
    return _Result(output, {"path": shown, "bytes": len(data)})


# --------------------------------------------------------------------------- mark_task_complete


def _mark_task_complete(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Any) -> _Result:
    output = '<TOOL_OUTPUT tool="mark_task_complete">Task marked as complete. Ending session.</TOOL_OUTPUT>'
    return _Result(output, {"action": "complete"}, completes=True)


# --------------------------------------------------------------------------- run_shell

# Only these variables reach commands: the daemon's environment holds provider keys (defect 39).
_ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "TMPDIR", "USER", "LOGNAME")


def shell_environment(workspace: str) -> dict[str, str]:
    """The complete environment of a run_shell command, built from an allow-list."""
    env = {k: os.environ[k] for k in _ENV_ALLOW if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env.setdefault("TERM", "dumb")
    env["HOME"] = workspace
    env["PWD"] = workspace
    env["SHELL"] = "/bin/bash"
    return env


@dataclass
class _Capture:
    """Drains one pipe in a thread, keeping at most `cap` bytes and counting the rest."""

    fd: int
    cap: int
    kept: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def run(self) -> None:
        try:
            while chunk := os.read(self.fd, _READ_CHUNK):
                room = self.cap - len(self.kept)
                if room > 0:
                    self.kept += chunk[:room]
                self.dropped += max(0, len(chunk) - max(room, 0))
        except OSError:
            pass


class _ShellRun(NamedTuple):
    exit_code: int | None
    stdout: _Capture
    stderr: _Capture
    timed_out: bool
    cancelled: bool


def _run_shell(
    root: Path, args: dict[str, Any], settings: ToolSettings, cancel: threading.Event | None
) -> _Result:
    timeout = settings.shell_timeout_s
    if args["timeout"] is not None:
        if args["timeout"] <= 0:
            raise _ToolError("parameter 'timeout' must be > 0 seconds")
        timeout = min(float(args["timeout"]), settings.shell_timeout_s)
    workspace = os.path.realpath(root)
    started = time.monotonic()
    run = _spawn_and_wait(args["command"], workspace, timeout, settings.output_limit_bytes, cancel)
    elapsed = time.monotonic() - started
    stdout = run.stdout.kept.decode("utf-8", errors="replace")
    stderr = run.stderr.kept.decode("utf-8", errors="replace")

    parts: list[str] = []
    if stdout:
        parts.append(stdout if stdout.endswith("\n") else stdout + "\n")
    if run.stdout.dropped:
        parts.append(f"[stdout truncated: {run.stdout.dropped} more bytes not shown (limit {run.stdout.cap} bytes)]\n")
    if stderr:
        parts.append(f"stderr: {stderr}" + ("" if stderr.endswith("\n") else "\n"))
    if run.stderr.dropped:
        parts.append(f"[stderr truncated: {run.stderr.dropped} more bytes not shown (limit {run.stderr.cap} bytes)]\n")
    if not parts:
        parts.append("(no output)\n")
    if run.cancelled:
        parts.append("Command cancelled; it and every process it started were killed.\n")
    elif run.timed_out:
        parts.append(f"Command timed out after {timeout:g} s; it and every process it started were killed.\n")
    elif run.exit_code != 0:
        parts.append(f"Command failed with exit code {run.exit_code}\n")
    data = {
        "command": args["command"],
        "stdout": stdout,
        "stderr": stderr,
        "exit": run.exit_code,
        "timed_out": run.timed_out,
        "cancelled": run.cancelled,
        "truncated": {"stdout": run.stdout.dropped, "stderr": run.stderr.dropped},
        "timeout_s": timeout,
        "elapsed_s": round(elapsed, 3),
        "worker_pid": os.getpid(),  # which process ran it (a Ray worker, or the daemon's thread)
    }
    ok = run.exit_code == 0 and not (run.timed_out or run.cancelled)
    return _Result("<BASH_RESULT>\n" + "".join(parts) + "</BASH_RESULT>", data, ok=ok)


def _spawn_and_wait(
    command: str, cwd: str, timeout: float, cap: int, cancel: threading.Event | None
) -> _ShellRun:
    """Run `command` in its own session; the timeout counts from the start (defect 38).

    The process group is always SIGKILLed at the end, so background children die
    with the command. The shell is only observed (WNOWAIT), not reaped, until
    then, so its pid, which is the group id, cannot be recycled before the kill.
    """
    proc = subprocess.Popen(
        ["/bin/bash", "-c", command],
        cwd=cwd,
        env=shell_environment(cwd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    captures = (_Capture(proc.stdout.fileno(), cap), _Capture(proc.stderr.fileno(), cap))
    readers = [threading.Thread(target=c.run, daemon=True, name="kcd-shell-pipe") for c in captures]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    timed_out = cancelled = False
    try:
        timed_out, cancelled = _wait_until(lambda: _has_exited(proc.pid), deadline, cancel)
        if not (timed_out or cancelled):
            # Background children may still hold the pipes open: give them a moment, then kill.
            drain_deadline = min(deadline, time.monotonic() + _SHELL_DRAIN_GRACE_S)
            _wait_until(lambda: not any(t.is_alive() for t in readers), drain_deadline, cancel)
    finally:  # also on KeyboardInterrupt (Ray's cooperative cancel)
        _kill_group(proc.pid)
        proc.wait()
        for t in readers:
            t.join(timeout=2.0)  # a process that escaped the group (setsid) could hold a pipe
        proc.stdout.close()
        proc.stderr.close()
    exit_code = None if (timed_out or cancelled) else proc.returncode
    return _ShellRun(exit_code, captures[0], captures[1], timed_out, cancelled)


def _wait_until(
    done: Callable[[], bool], deadline: float, cancel: threading.Event | None
) -> tuple[bool, bool]:
    """Poll `done` with a growing delay: (timed out, cancelled)."""
    delay = 0.001
    while not done():
        if cancel is not None and cancel.is_set():
            return False, True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True, False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)
    return False, False


def _has_exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped elsewhere (e.g. SIGCHLD ignored)
        return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_HANDLERS: Mapping[str, Callable[[Path, dict[str, Any], ToolSettings, Any], _Result]] = MappingProxyType(
    {
        "list_dir": _list_dir,
        "read_file": _read_file,
        "create_file": _create_file,
        "run_shell": _run_shell,
        "mark_task_complete": _mark_task_complete,
    }
)
