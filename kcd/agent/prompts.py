"""System and per-turn prompt text for a run."""

from __future__ import annotations

DEFAULT_SYSTEM = (
    "You are a careful software engineering agent working inside a sandboxed workspace.\n"
    "Use the tools to inspect and change files; paths are relative to the workspace root.\n"
    "Work in small steps. When the task is done, call mark_task_complete on its own."
)

TEXT_NUDGE = (
    "No tool call was found in your reply. Use a tool to make progress, "
    "or call mark_task_complete() alone if the task is done."
)

PER_TURN_MODES = frozenset({"per_turn_append", "system_and_per_turn",
                            "system_compiled_and_persistent_per_turn"})
SYSTEM_MODES = frozenset({"system_once", "system_and_per_turn",
                          "system_compiled_and_persistent_per_turn"})


def system_prompt(pack_texts: list[str], catalogue: str | None, tool_prompt_mode: str) -> str:
    """The system text exactly as sent: packs (or the default), plus the text-mode catalogue."""
    parts: list[str] = []
    for text in pack_texts:
        if text and text not in parts:  # identical pack texts are sent once
            parts.append(text.strip())
    if not parts:
        parts.append(DEFAULT_SYSTEM)
    if catalogue and tool_prompt_mode in SYSTEM_MODES:
        parts.append(catalogue)
    return "\n\n".join(parts)


def per_turn_catalogue(catalogue: str | None, tool_prompt_mode: str) -> str | None:
    """Text appended to the outgoing copy of the last user message, if any."""
    if catalogue and tool_prompt_mode in PER_TURN_MODES:
        return catalogue
    return None
