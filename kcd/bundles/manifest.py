"""MANIFEST.json: every other entry with its size and sha256 (of the bytes in the zip), the run,
the KyleCode version, the creation time, what was skipped, the caps, and a redaction report
per file and in total."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from kcd import __version__
from kcd.bundles.caps import Caps
from kcd.bundles.check import MANIFEST
from kcd.bundles.scrub import PLACEHOLDERS, Counts, Scrubber

FORMAT = "kylecode-vendor-bundle/1"


def entry_row(name: str, kept: bytes, *, scrubbed_size: int, source_size: int, counts: Counts,
              dropped: int = 0) -> dict[str, Any]:
    """One file's row: `kept` is what the zip holds, `scrubbed_size` its length before the cap."""
    row: dict[str, Any] = {"path": name, "size": len(kept), "sha256": hashlib.sha256(kept).hexdigest(),
                           "source_size": source_size, "truncated": len(kept) < scrubbed_size,
                           "redaction": counts.as_dict()}
    if len(kept) < scrubbed_size:
        row["truncated_note"] = f"kept the first {len(kept)} of {scrubbed_size} scrubbed bytes (per-file cap)"
    if dropped:
        row["other_runs_lines_dropped"] = dropped
    return row


def build_manifest(*, run_id: str | None, run_name: str, run_status: str | None, created: datetime,
                   files: list[dict[str, Any]], skipped: list[dict[str, Any]], totals: Counts,
                   scrubber: Scrubber, caps: Caps) -> dict[str, Any]:
    return {
        "format": FORMAT, "run_id": run_id, "run": run_name, "run_status": run_status,
        "kylecode_version": __version__, "created_utc": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "note": f"{MANIFEST} lists every other entry; sha256 and size are of the bytes in this zip",
        "files": files, "skipped": skipped,
        "redaction": {"totals": totals.as_dict(), "placeholders": PLACEHOLDERS,
                      "known_secret_values_checked": len(scrubber.redactor.known_values),
                      "user_names_replaced_for": len(scrubber.users),
                      "verdict": "clean: no known secret value, verbatim or base64-encoded, remains"},
        "caps": {"file_bytes": caps.file_bytes, "total_bytes": caps.total_bytes, "read_bytes": caps.read_bytes,
                 "entries": caps.entries},
    }
