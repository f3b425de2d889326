"""`conversation/conversation.md`: the human transcript, with the original's
section titles and policy marker lines, so existing greps keep working."""

from __future__ import annotations

from kcd.observe.rundir import RunDir

SYSTEM = "System"
USER = "User"
ASSISTANT = "Assistant"
TOOLS_PROMPT = "Tools Available Prompt (Temporarily Appended to User Message)"
TOOLS_NATIVE = "Tools Provided via Provider API Tool Schema"
NATIVE_CALLS = "Model Called Provider Schema-Native Tools"
NATIVE_RESULTS = "Provider Schema-Native Tool Call Results"
TEXT_RESULTS = "Tool Results (Text-Based Execution)"

RELPATH = "conversation/conversation.md"


class Conversation:
    """Writer of a run's `conversation/conversation.md` transcript."""

    def __init__(self, rundir: RunDir):
        self.rundir = rundir

    async def start(self) -> None:
        await self.rundir.write_text(RELPATH, "# Conversation Transcript\n")

    async def section(self, title: str, body: str) -> None:
        await self.rundir.append_text(RELPATH, f"\n**{title}**\n\n{body.rstrip()}\n")

    async def marker(self, prefix: str, text: str) -> None:
        """A policy marker such as `[fallback_route] ...`, written as a System section."""
        await self.section(SYSTEM, f"[{prefix}] {text}")
