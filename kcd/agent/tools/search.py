"""glob and grep: find files by name and by content, inside the workspace only."""

from __future__ import annotations

import time
from pathlib import Path
from threading import Event
from typing import Any

import regex as re  # `re`'s syntax, plus a timeout: a model's regex can backtrack for hours

from kcd.agent.calls import ToolSettings
from kcd.agent.tools.paths import compile_glob, resolve, walk_files
from kcd.agent.tools.results import Result, ToolError, tool_output

__all__ = ["glob", "grep"]

_BINARY_SNIFF_BYTES = 8000  # the window git inspects for NUL bytes
_GREP_MAX_FILE_BYTES = 8 * 1024 * 1024  # larger files are skipped (and counted)
_GREP_MAX_LINE_CHARS = 500  # longer matching lines are shown cut


def glob(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    base, shown_base = _search_base(root, args["path"])
    regex, by_path = compile_glob(args["pattern"])
    base_rel = "" if shown_base == "." else shown_base + "/"
    cap = settings.search_max_results
    found: list[str] = []
    total = 0
    for _real, rel in walk_files(base, root, cancel):
        below = rel[len(base_rel) :] if rel.startswith(base_rel) else rel
        if regex.match(below if by_path else below.rsplit("/", 1)[-1]):
            total += 1
            if len(found) < cap:
                found.append(rel)
    lines = list(found) or ["No files found"]
    if total > cap:
        lines.append(f"[{total - cap} more file(s) not shown; use a more specific pattern or path]")
    output = tool_output(
        "glob", "\n" + _capped("\n".join(lines), settings) + "\n", pattern=args["pattern"], path=shown_base
    )
    return Result(
        output,
        {"pattern": args["pattern"], "path": shown_base, "files": found, "total": total, "truncated": total > cap},
    )


def grep(root: Path, args: dict[str, Any], settings: ToolSettings, cancel: Event | None) -> Result:
    try:
        regex = re.compile(args["pattern"])
    except (re.error, ValueError) as exc:
        raise ToolError(f"invalid regular expression {args['pattern']!r}: {exc}") from None
    except RecursionError:
        raise ToolError(f"regular expression {args['pattern']!r} is too deeply nested") from None
    base, shown_base = _search_base(root, args["path"])
    include = compile_glob(args["include"]) if args["include"] else None
    base_rel = "" if shown_base == "." else shown_base + "/"
    cap = settings.search_max_results
    matches: list[dict[str, Any]] = []
    total = 0
    skipped = {"binary": 0, "too_large": 0, "unreadable": 0}
    deadline = time.monotonic() + settings.grep_timeout_s
    for real, rel in walk_files(base, root, cancel):
        if include is not None:
            inc_regex, by_path = include
            below = rel[len(base_rel) :] if rel.startswith(base_rel) else rel
            if not inc_regex.match(below if by_path else below.rsplit("/", 1)[-1]):
                continue
        lines = _text_lines(real, skipped)
        if lines is None:
            continue
        for number, line in enumerate(lines, 1):
            # `concurrent` lets other threads (the daemon's event loop among them) run meanwhile.
            try:
                found = regex.search(line, timeout=max(deadline - time.monotonic(), 0.001), concurrent=True)
            except TimeoutError:
                raise ToolError(f"grep stopped after {settings.grep_timeout_s:g}s: the pattern "
                                f"{args['pattern']!r} is too slow on this workspace (nested repetition such "
                                "as (a+)+ backtracks without end); simplify the pattern or narrow "
                                "path/include") from None
            if found:
                total += 1
                if len(matches) < cap:
                    matches.append({"path": rel, "line": number, "text": line})
    out = [f"{m['path']}:{m['line']}: {_cut(m['text'])}" for m in matches] or ["No matches found"]
    if total > cap:
        out.append(f"[{total - cap} more match(es) not shown; narrow the pattern, path or include]")
    if any(skipped.values()):
        parts = [f"{n} {kind.replace('_', ' ')}" for kind, n in skipped.items() if n]
        out.append(f"[files skipped: {', '.join(parts)}]")
    output = tool_output(
        "grep", "\n" + _capped("\n".join(out), settings) + "\n", pattern=args["pattern"], path=shown_base
    )
    data = {
        "pattern": args["pattern"],
        "path": shown_base,
        "matches": matches,
        "total": total,
        "truncated": total > cap,
        "skipped": skipped,
    }
    return Result(output, data)


def _search_base(root: Path, path: str | None) -> tuple[Path, str]:
    base, shown = resolve(root, path or ".")
    if not base.exists():
        raise ToolError(f"no such file or directory: {shown!r}")
    return base, shown


def _text_lines(real: str, skipped: dict[str, int]) -> list[str] | None:
    try:
        with open(real, "rb") as fh:
            data = fh.read(_GREP_MAX_FILE_BYTES + 1)
    except OSError:
        skipped["unreadable"] += 1
        return None
    if len(data) > _GREP_MAX_FILE_BYTES:
        skipped["too_large"] += 1
        return None
    if b"\x00" in data[:_BINARY_SNIFF_BYTES]:
        skipped["binary"] += 1
        return None
    lines = data.decode("utf-8", errors="replace").split("\n")
    if lines[-1] == "":
        lines.pop()  # the empty piece after a final newline is not a line
    return lines


def _cut(line: str) -> str:
    line = line.rstrip("\r")
    return line if len(line) <= _GREP_MAX_LINE_CHARS else line[:_GREP_MAX_LINE_CHARS] + " [...]"


def _capped(text: str, settings: ToolSettings) -> str:
    limit = settings.output_limit_bytes
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    kept = raw[:limit].decode("utf-8", errors="ignore")
    kept = kept[: kept.rfind("\n")] if "\n" in kept else kept
    return kept + f"\n[output cut at {limit} bytes]"
