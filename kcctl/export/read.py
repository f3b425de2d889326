"""Reading: the lines of a byte range of a telemetry file, decoded, filtered and aggregated.

The range is read in CHUNK_SIZE binary chunks and split on newlines; each line is decoded
by the typed decoder of `schema` (a tagged union on `event`). Memory is flat: the pass keeps
aggregates, per-route latency series (bounded, see `stats`) and one entry per run id
(about 100 bytes), never the events. A line longer than MAX_LINE (a corrupt file, e.g. a
zero-filled tail after a crash) is dropped without being buffered whole. Blank lines,
invalid JSON, non-objects and objects without a string `event` are skipped and counted
(`skipped_lines`); so is a line of a type the summary reads (`llm.attempt`, `fallback`,
`provider_metrics`) whose fields have unexpected types (also reported in
`schema_mismatches`). Lines of other event types are kept as events (runs, time window,
`jsonl` output, delivery) but not aggregated.

Filters: `run_id` (events without one never match) and a half-open time window
`since <= ts < until`; events without `ts` (the original's) pass only when no time filter
is given.

A range starts at a line's first byte and ends after a newline (or at the end of the
file), so every line is read whole by exactly one range, and is treated as in a pass over
the whole file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from pathlib import Path
from typing import IO, Any

import msgspec

from kcctl.export.aggregate import Aggregate
from kcctl.export.schema import AGGREGATED, ENVELOPE_DECODER, EVENT_DECODER, Envelope, aware
from kcctl.export.stats import SAMPLE_CAP

CHUNK_SIZE = 1 << 20  # small: a worker holds one chunk and its lines, on every core
MAX_LINE = 64 << 20
_BATCH = 64  # lines decoded and added together (few, so they stay in cache)
_decode = EVENT_DECODER.decode
_ts = attrgetter("ts")
_run = attrgetter("run_id")


@dataclass(frozen=True)
class Filters:
    run_id: str | None = None
    since: datetime | None = None  # aware, inclusive
    until: datetime | None = None  # aware, exclusive

    @property
    def active(self) -> bool:
        return self.run_id is not None or self.since is not None or self.until is not None

    def match(self, run_id: str | None, ts: datetime | None) -> bool:
        if self.run_id is not None and run_id != self.run_id:
            return False
        if self.since is None and self.until is None:
            return True
        if ts is None:
            return False
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)


class ReadError(Exception):
    """The telemetry file could not be read to its end, so there is no summary."""


def open_file(path: Path | str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ReadError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _chunks(f: IO[bytes], start: int, end: int | None, chunk_size: int) -> Iterator[bytes]:
    """The bytes of [start, end) (to the end of the file if end is None), chunk by chunk."""
    try:
        if start:
            f.seek(start)
        left = None if end is None else end - start
        while left is None or left > 0:
            chunk = f.read(chunk_size if left is None else min(chunk_size, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk
    except OSError as exc:
        raise ReadError(f"cannot read {getattr(f, 'name', 'the telemetry file')}: {exc.strerror or exc}") from exc


def _lines(chunks: Iterator[bytes], agg: Aggregate, max_line: int) -> Iterator[list[bytes]]:
    """Complete lines, a chunk's worth at a time; an over-long line is dropped unbuffered.

    Each list is emptied once the caller asks for the next, so at most one chunk's lines
    are alive at a time (the peak is about two chunks, during the split).
    """
    tail = b""
    dropping = False
    for chunk in chunks:
        parts = chunk.split(b"\n")
        del chunk
        last = parts.pop()
        if dropping:
            if not parts:  # still inside the over-long line
                continue
            parts.pop(0)
            dropping = False
        elif tail:
            if parts:
                parts[0] = tail + parts[0]
            else:
                last = tail + last
        tail = last
        if len(tail) > max_line:
            agg.skipped_lines += 1
            tail, dropping = b"", True
        if parts:
            yield parts
            parts.clear()
    if tail and not dropping:
        yield [tail]


def scan_range(path: Path | str, start: int = 0, end: int | None = None, filters: Filters = Filters(),
               on_event: Callable[[bytes], None] | None = None, *, chunk_size: int = CHUNK_SIZE,
               sample_cap: int = SAMPLE_CAP, max_line: int | None = None) -> Aggregate:
    """Aggregate the lines of [start, end) of `path` (not finished: see Aggregate.merge).

    `on_event` gets each kept event's line (stripped) as it is read. Raises ReadError if the
    file cannot be read, and whatever `on_event` raises (a failed delivery aborts the pass).
    """
    agg = Aggregate(sample_cap)
    with open_file(path) as f:
        blocks = _lines(_chunks(f, start, end, chunk_size), agg, MAX_LINE if max_line is None else max_line)
        if on_event is None and not filters.active:
            for lines in blocks:
                for i in range(0, len(lines), _BATCH):
                    _add_batch(agg, lines[i:i + _BATCH])
        else:
            for lines in blocks:
                _add_lines(agg, lines, filters, on_event)
    return agg


def _add_batch(agg: Aggregate, lines: list[bytes]) -> None:
    """Unfiltered lines: decoded in one go, and added in bulk when nothing is timed or per run."""
    try:
        events = list(map(_decode, lines))
    except msgspec.DecodeError:  # a blank, invalid or unknown line among them: one by one
        _add_lines(agg, lines, Filters(), None)
        return
    n = len(events)
    if list(map(_ts, events)).count(None) == n and list(map(_run, events)).count(None) == n:
        agg.add_untimed(events)  # the original's lines
    else:
        _add_events(agg, zip(events, lines), Filters(), None)


def _add_lines(agg: Aggregate, lines: list[bytes], filters: Filters,
               on_event: Callable[[bytes], None] | None) -> None:
    _add_events(agg, _decoded(agg, lines), filters, on_event)


def _decoded(agg: Aggregate, lines: list[bytes]) -> Iterator[tuple[Any, bytes]]:
    """(event, line) for each line that decodes; the others are counted as skipped."""
    decode = _decode
    for line in lines:
        try:
            yield decode(line), line
        except msgspec.ValidationError as exc:
            ev = _envelope(line, exc, agg)
            if ev is not None:
                yield ev, line
        except msgspec.DecodeError:  # blank lines too
            agg.skipped_lines += 1


def _add_events(agg: Aggregate, pairs: Iterable[tuple[Any, bytes]], filters: Filters,
                on_event: Callable[[bytes], None] | None) -> None:
    active = filters.active
    add = agg.add
    for ev, line in pairs:
        ts = ev.ts
        if ts is not None and (type(ts) is not datetime or ts.tzinfo is None):
            ts = aware(ts)  # naive (UTC) or Unix seconds: rare
            if ts is None:
                agg.skipped_lines += 1
                continue
        if active and not filters.match(ev.run_id, ts):
            continue
        add(ev, ts)
        if on_event is not None:
            on_event(line.strip())


def _envelope(line: bytes, exc: msgspec.ValidationError, agg: Aggregate) -> Envelope | None:
    """A line the typed decoder refused: an event type it does not aggregate, or junk."""
    try:
        env = ENVELOPE_DECODER.decode(line)
    except msgspec.DecodeError:
        agg.skipped_lines += 1
        return None
    if env.event in AGGREGATED:  # a type we sum, with a field of the wrong type: not guessed at
        agg.schema_mismatch(f"{env.event}: {exc}")
        return None
    return env
