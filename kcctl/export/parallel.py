"""The whole-file pass: one process below PARALLEL_MIN bytes, else byte ranges on all cores.

Decoding is CPU-bound, so a large file is cut into ranges of about RANGE_SIZE bytes, each
moved forward to the next line start; a pool of `os.cpu_count()` forked workers aggregates
them (several ranges per worker, so a core slowed by other work does not hold everything
up), and the parent merges the partial aggregates in file order. Every figure merges
exactly (`aggregate`, `stats`), so the result is the one a single pass gives. A pass that
hands each event to `on_event` (delivery, `jsonl` output) must see the events in file
order, so it is always a single pass.

Memory: each worker holds one chunk (CHUNK_SIZE) of lines plus its partial aggregate; the
parent holds the merged aggregate. Workers report their peak RSS with their result
(`Aggregate.worker_peaks`, by pid) so a benchmark can add the parent's and theirs.
"""

from __future__ import annotations

import os
import resource
from collections import deque
from collections.abc import Callable
from pathlib import Path

from kcctl.export.aggregate import Aggregate
from kcctl.export.read import CHUNK_SIZE, Filters, ReadError, open_file, scan_range
from kcctl.export.stats import SAMPLE_CAP

PARALLEL_MIN = 64 << 20
RANGE_SIZE = 32 << 20


def scan(path: Path | str, filters: Filters = Filters(), on_event: Callable[[bytes], None] | None = None, *,
         chunk_size: int = CHUNK_SIZE, sample_cap: int = SAMPLE_CAP, workers: int | None = None,
         parallel_min: int | None = None, range_size: int | None = None) -> Aggregate:
    """The finished aggregate of the whole file; ReadError if it cannot be read.

    `workers` defaults to os.cpu_count(), `parallel_min` to PARALLEL_MIN and `range_size`
    to RANGE_SIZE.
    """
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    workers = workers or os.cpu_count() or 1
    if on_event is not None or workers < 2 or size < (PARALLEL_MIN if parallel_min is None else parallel_min):
        agg = scan_range(path, 0, None, filters, on_event, chunk_size=chunk_size, sample_cap=sample_cap)
    else:
        bounds = line_starts(path, size, range_size or RANGE_SIZE)
        agg = _parallel(path, bounds, filters, workers, chunk_size, sample_cap)
    agg.finish()
    return agg


def line_starts(path: Path | str, size: int, range_size: int) -> list[int]:
    """Offsets 0 = b0 < b1 < … < bn = size where each b is 0, size or just after a newline."""
    bounds = [0]
    with open_file(path) as f:
        for nominal in range(range_size, size, range_size):
            if nominal <= bounds[-1]:
                continue  # an earlier boundary was pushed past it by a long line
            bound = _next_line_start(f, nominal, size)
            if bound < size:
                bounds.append(bound)
    bounds.append(size)
    return bounds


def _next_line_start(f, offset: int, size: int) -> int:
    """The first line start at or after `offset` (size if none)."""
    try:
        f.seek(offset - 1)  # the byte before: a newline there means `offset` starts a line
        pos = offset - 1
        while block := f.read(1 << 16):
            i = block.find(b"\n")
            if i >= 0:
                return pos + i + 1
            pos += len(block)
    except OSError as exc:
        raise ReadError(f"cannot read {getattr(f, 'name', 'the telemetry file')}: {exc.strerror or exc}") from exc
    return size


def _parallel(path: Path | str, bounds: list[int], filters: Filters, workers: int, chunk_size: int,
              sample_cap: int) -> Aggregate:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: the workers start in a millisecond with everything imported; they only read
    # the file and return an aggregate.
    ctx = multiprocessing.get_context("fork")
    ranges = list(zip(bounds, bounds[1:]))
    with ProcessPoolExecutor(max_workers=min(workers, len(ranges)), mp_context=ctx) as pool:
        pending = deque(pool.submit(_worker, str(path), start, end, filters, chunk_size, sample_cap)
                        for start, end in ranges)
        agg: Aggregate | None = None
        peaks: dict[int, int] = {}
        try:
            while pending:  # in file order, each merged as soon as it is its turn
                # popped, so the merged partial is not kept alive by its future
                part, pid, peak_kb = pending.popleft().result()
                peaks[pid] = max(peaks.get(pid, 0), peak_kb)
                if agg is None:
                    agg = part
                else:
                    agg.merge(part)
                del part
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    assert agg is not None
    agg.worker_peaks = peaks
    return agg


def _worker(path: str, start: int, end: int, filters: Filters, chunk_size: int,
            sample_cap: int) -> tuple[Aggregate, int, int]:
    agg = scan_range(path, start, end, filters, chunk_size=chunk_size, sample_cap=sample_cap)
    return agg, os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
