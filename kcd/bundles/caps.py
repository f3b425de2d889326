"""The bundle's size caps: per file (truncated, noted), in total and per read (refused or left out)."""

from __future__ import annotations

from dataclasses import dataclass

from kcd.bundles.types import BundleError

_TEXT_SUFFIXES = (".md", ".txt", ".jsonl")


@dataclass(frozen=True)
class Caps:
    file_bytes: int = 4 << 20  # per entry after scrubbing; longer ones are truncated (noted)
    total_bytes: int = 64 << 20  # all entries together; beyond it the bundle is refused
    read_bytes: int = 64 << 20  # larger files are left out: a partial read could cut a secret
    entries: int = 2000


def check_total(total: int, caps: Caps) -> None:
    if total > caps.total_bytes:
        raise BundleError(413, "bundle_too_large", f"the scrubbed bundle would hold more than {caps.total_bytes} "
                          f"bytes (the total cap; {total} so far)")


def truncate(name: str, data: bytes, limit: int) -> bytes:
    """A file scrubbed whole, then cut to the per-file cap (at a line end for text)."""
    if len(data) <= limit:
        return data
    cut = data[:limit]
    if name.endswith(_TEXT_SUFFIXES):  # keep whole lines (whole telemetry events)
        newline = cut.rfind(b"\n")
        if newline > 0:
            cut = cut[:newline + 1]
    return cut
