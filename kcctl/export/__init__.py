"""Telemetry exporter: summarise, convert or deliver a telemetry JSONL file.

Used by `kcctl metrics export`, the incident bundle and `scripts/export_provider_metrics.py`.
Imports only the standard library and msgspec (httpx only when delivering), so kcctl
start-up stays fast, and never touches the daemon. One module per job:

- `schema`: the typed partial event Structs and timestamps;
- `read`: a byte range's lines, decoded, filtered, aggregated (`Filters`, `scan_range`);
- `aggregate`: the per-route figures from both event sources, mergeable across ranges;
- `stats`: order-independent float sums and percentile series (exact, then ±0.1%);
- `parallel`: the whole-file pass, single or over byte ranges on all cores (`scan`);
- `formats`: the summary JSON, OTLP JSON and Prometheus text documents;
- `deliver`: HTTP POST with retries, and batching of event lines;
- `command`: `run_export`, from options to an exit code.
"""

from kcctl.export.aggregate import DURATION_BOUNDS, Aggregate
from kcctl.export.command import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    FORMATS,
    PREFIX,
    Format,
    Options,
    run_export,
    telemetry_path,
)
from kcctl.export.deliver import Batcher, DeliveryFailed, Poster, RetryPolicy
from kcctl.export.formats import document, otlp_json, prom_text, summary_json
from kcctl.export.parallel import PARALLEL_MIN, scan
from kcctl.export.read import Filters, ReadError, scan_range
from kcctl.export.schema import parse_ts
from kcctl.export.stats import REL_ERROR, SAMPLE_CAP, nearest_rank

__all__ = [
    "DURATION_BOUNDS", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "FORMATS", "PARALLEL_MIN", "PREFIX", "REL_ERROR", "SAMPLE_CAP",
    "Aggregate", "Batcher", "DeliveryFailed", "Filters", "Format", "Options", "Poster", "ReadError", "RetryPolicy",
    "document", "nearest_rank", "otlp_json", "parse_ts", "prom_text", "run_export", "scan", "scan_range",
    "summary_json", "telemetry_path",
]
