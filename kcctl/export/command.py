"""`kcctl metrics export` / `scripts/export_provider_metrics.py`: one export, start to exit code.

Ordering: deliver first, print after; the summary is printed only once every batch has been
accepted, so a summary on stdout means the delivery succeeded, and a failed delivery exits
1 with nothing on stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from kcctl.export.deliver import Batcher, DeliveryFailed, Poster, RetryPolicy
from kcctl.export.formats import document, summary_json
from kcctl.export.parallel import scan
from kcctl.export.read import Filters, ReadError

PREFIX = "[export-provider-metrics]"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
Format = Literal["summary", "jsonl", "otlp-json", "prom"]
FORMATS: tuple[str, ...] = ("summary", "jsonl", "otlp-json", "prom")


@dataclass(frozen=True)
class Options:
    fmt: Format = "summary"
    print_summary: bool = False
    endpoint: str | None = None
    filters: Filters = Filters()
    batch_size: int = 500
    policy: RetryPolicy = RetryPolicy()


def telemetry_path(target: Path) -> Path:
    """A run directory means its `meta/telemetry.jsonl`; anything else is the file itself."""
    return target / "meta" / "telemetry.jsonl" if target.is_dir() else target


def run_export(path: Path, opts: Options, *, out: IO[bytes] | None = None,
               err: Callable[[str], None] | None = None) -> int:
    """Export `path` as `opts` say; returns the exit code. Messages go to `err`."""
    stdout = out if out is not None else sys.stdout.buffer
    say = err if err is not None else (lambda m: print(m, file=sys.stderr))
    path = telemetry_path(path)
    if not path.is_file():
        say(f"{PREFIX} telemetry file not found: {path}")
        return EXIT_USAGE
    if opts.endpoint is not None and not opts.endpoint.startswith(("http://", "https://")):
        say(f"{PREFIX} --http-endpoint must be an http:// or https:// URL, not {opts.endpoint!r}")
        return EXIT_USAGE
    if opts.print_summary and opts.endpoint is None and opts.fmt != "summary":
        say(f"{PREFIX} --print-summary with --format {opts.fmt} would write two documents to stdout; "
            "drop one, or deliver with --http-endpoint")
        return EXIT_USAGE

    poster = Poster(opts.endpoint, opts.policy) if opts.endpoint else None
    batcher = Batcher(poster, opts.batch_size) if poster and opts.fmt in ("summary", "jsonl") else None
    try:
        _export(path, opts, poster, batcher, stdout, say)
    except ReadError as exc:
        say(f"{PREFIX} {exc}")
        return EXIT_FAILED
    except DeliveryFailed as exc:
        say(f"{PREFIX} {exc}")
        if batcher is not None and batcher.batches:
            say(f"{PREFIX} {batcher.events} events in {batcher.batches} batches were delivered before "
                "the failure; the rest were not")
        return EXIT_FAILED
    except BrokenPipeError:  # stdout's reader left (`| head`): stop quietly, as cat does
        _silence_stdout()
        return EXIT_FAILED
    finally:
        if poster is not None:
            poster.close()
    return EXIT_OK


def _export(path: Path, opts: Options, poster: Poster | None, batcher: Batcher | None, stdout: IO[bytes],
            say: Callable[[str], None]) -> None:
    sink: Callable[[bytes], None] | None = None
    if batcher is not None:
        sink = batcher.add
    elif poster is None and opts.fmt == "jsonl":
        sink = lambda line: stdout.write(line + b"\n")  # noqa: E731
    agg = scan(path, opts.filters, sink)
    if agg.schema_mismatches:
        say(f"{PREFIX} warning: {agg.schema_mismatches} lines of a known event type had unexpected field "
            f"types and were skipped (first: {agg.first_schema_error})")
    if batcher is not None:
        batcher.flush()
        say(f"{PREFIX} delivered {batcher.events} events in {batcher.batches} batches to {opts.endpoint}")
    elif poster is not None:
        if agg.events:  # OTLP receivers want no empty envelopes
            poster.post(*document(agg, opts.fmt))
            say(f"{PREFIX} delivered the {opts.fmt} document to {opts.endpoint}")
        else:
            say(f"{PREFIX} no events in the export: nothing delivered")
    # Only now, with the delivery done, does anything but jsonl reach stdout.
    if poster is None and opts.fmt != "jsonl":
        stdout.write(document(agg, opts.fmt)[0])
    elif opts.print_summary:
        stdout.write(summary_json(agg))
    stdout.flush()


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush cannot raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
