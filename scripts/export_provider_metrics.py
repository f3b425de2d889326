#!/usr/bin/env python3
"""Summarise or forward a KyleCode telemetry JSONL (the runbook's exporter).

    python scripts/export_provider_metrics.py logging/<run>/meta/telemetry.jsonl --print-summary
    python scripts/export_provider_metrics.py /var/log/kylecode/provider_metrics.jsonl \\
        --http-endpoint https://monitoring.example.com/ingest

The original's arguments, with its defects fixed (both flags honoured together, retries,
non-zero exit on delivery failure). A thin wrapper over `kcctl metrics export`'s exporter,
which it shares (the extra options are the same); it never needs the daemon.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from kcctl import export  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="export_provider_metrics.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("telemetry_path", type=Path, help="telemetry JSONL file, or a run directory")
    ap.add_argument("--http-endpoint", metavar="URL", help="POST the events (JSON arrays) to URL")
    ap.add_argument("--print-summary", action="store_true", help="print the summary JSON")
    ap.add_argument("--format", dest="fmt", choices=export.FORMATS, default="summary")
    ap.add_argument("--run-id")
    ap.add_argument("--since", metavar="TS", type=export.parse_ts, help="ISO-8601, inclusive")
    ap.add_argument("--until", metavar="TS", type=export.parse_ts, help="ISO-8601, exclusive")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--retries", type=int, default=5)
    ap.add_argument("--backoff", type=float, default=0.5)
    ap.add_argument("--backoff-max", type=float, default=30.0)
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args(argv)
    if a.batch_size < 1 or a.retries < 0 or a.backoff < 0 or a.backoff_max < 0 or a.timeout <= 0:
        ap.error("--batch-size must be >= 1; --retries, --backoff and --backoff-max >= 0; --timeout > 0")
    opts = export.Options(
        fmt=a.fmt, print_summary=a.print_summary, endpoint=a.http_endpoint,
        filters=export.Filters(run_id=a.run_id, since=a.since, until=a.until), batch_size=a.batch_size,
        policy=export.RetryPolicy(retries=a.retries, backoff=a.backoff, backoff_max=a.backoff_max,
                                  timeout=a.timeout))
    return export.run_export(a.telemetry_path, opts)


if __name__ == "__main__":
    sys.exit(main())
