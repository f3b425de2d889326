"""Building a vendor bundle: collect, scrub, cap, summarise, manifest, refuse, zip.

The zip's entries are MANIFEST.json, SUMMARY.md, then the allow-listed files in the
allow-list's order and any attachments under `matrix/`. The finished zip is checked for
known secrets once more (what was written, not what was meant to be).
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kcd.bundles.caps import Caps, check_total, truncate
from kcd.bundles.check import MANIFEST, unzip_entries
from kcd.bundles.manifest import build_manifest, entry_row
from kcd.bundles.scrub import Counts, Scrubber, refuse_leaks, scrub_entry
from kcd.bundles.selection import check_entry_name, collect, read_regular
from kcd.bundles.summary import SUMMARY, render_summary
from kcd.bundles.types import Bundle, BundleAttachment, BundleError
from kcd.observe.rundir import pretty_json

BUNDLE_SUFFIX = "_vendor_bundle.zip"
ATTACHMENT_DIR = "matrix"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def build_bundle(run_dir: Path, scrubber: Scrubber, *, run_id: str | None, run_status: str | None = None,
                 attachments: Sequence[BundleAttachment] = (), caps: Caps = Caps(),
                 now: datetime | None = None) -> Bundle:
    """The bundle of `run_dir` (a real path already checked by `resolve_run_dir`)."""
    created = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    collected = collect(run_dir, caps)
    entries: dict[str, bytes] = {}
    files: list[dict[str, Any]] = []
    totals = Counts()
    sources = [(name, lambda p=path: read_regular(p), size) for name, path, size in collected.files]
    for att in attachments:
        if not _SAFE_NAME.fullmatch(att.name) or att.name in (".", ".."):
            raise BundleError(400, "unsafe_entry_name", f"refusing the attachment name {att.name!r}: "
                              "give a plain file name")
        blob = att.content.encode("utf-8", "surrogateescape")
        sources.append((check_entry_name(f"{ATTACHMENT_DIR}/{att.name}"), lambda b=blob: b, len(blob)))
    for name, read, size in sources:
        if name in entries:
            raise BundleError(400, "duplicate_entry", f"two bundle entries named {name!r}")
        clean, counts, dropped = scrub_entry(name, read(), scrubber, run_id)
        kept = truncate(name, clean, caps.file_bytes)
        entries[name] = kept
        files.append(entry_row(name, kept, scrubbed_size=len(clean), source_size=size, counts=counts,
                               dropped=dropped))
        totals.add(counts)
        check_total(sum(len(b) for b in entries.values()), caps)
    summary, counts = scrubber.scrub(render_summary(entries, run_id=run_id, run_status=run_status,
                                                    run_name=run_dir.name, created=created).encode())
    totals.add(counts)
    files.insert(0, entry_row(SUMMARY, summary, scrubbed_size=len(summary), source_size=len(summary),
                              counts=counts))
    manifest = build_manifest(run_id=run_id, run_name=run_dir.name, run_status=run_status, created=created,
                              files=files, skipped=collected.skipped, totals=totals, scrubber=scrubber, caps=caps)
    manifest_bytes, _ = scrubber.scrub(pretty_json(manifest))
    ordered = {MANIFEST: manifest_bytes, SUMMARY: summary, **entries}
    refuse_leaks(ordered, scrubber)
    check_total(sum(len(b) for b in ordered.values()), caps)
    data = _zip(ordered, created)
    refuse_leaks(dict(unzip_entries(data)), scrubber)  # what was written, not what was meant to be
    # The name travels in an HTTP header and becomes a client's file name: plain characters only.
    stem = run_dir.name if _SAFE_NAME.fullmatch(run_dir.name) else f"run_{hashlib.sha256(data).hexdigest()[:12]}"
    return Bundle(name=f"{stem}{BUNDLE_SUFFIX}", data=data, manifest=manifest)


def _zip(entries: Mapping[str, bytes], created: datetime) -> bytes:
    buf = io.BytesIO()
    stamp = created.timetuple()[:6]
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(check_entry_name(name), date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()
