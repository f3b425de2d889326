"""SSE parser: WHATWG event-stream rules, fed in arbitrary pieces."""

from __future__ import annotations

import pytest

from kcd.providers.sse import SSEEvent, SSEParser

# One stream that exercises every rule at once.
STREAM = (
    "\ufeff"  # BOM at stream start
    ": OPENROUTER PROCESSING\n"
    "\n"  # a blank line with no data dispatches nothing
    "data: {\"a\": 1}\n\n"
    "event: update\r\nid: 7\r\nretry: 1500\r\ndata:  two spaces kept\r\ndata:second line\r\n\r\n"
    "data: é€😀 tail  \r"  # CR-only line ending, trailing spaces kept
    "\r"
    ": keep-alive\n"
    "data\n"  # a field name alone: an empty data line
    "data: x\n\n"
    "id: bad\x00id\nretry: 12a\nunknown: ignored\ndata: last\n\n"
).encode()

EXPECTED = [
    SSEEvent(data='{"a": 1}'),
    SSEEvent(event="update", data=" two spaces kept\nsecond line", id="7", retry=1500),
    SSEEvent(data="é€😀 tail  ", id="7"),
    SSEEvent(data="\nx", id="7"),
    SSEEvent(data="last", id="7"),  # NUL id ignored, non-digit retry ignored
]


def parse(pieces: list[bytes]) -> tuple[list[SSEEvent], SSEParser]:
    p = SSEParser()
    out: list[SSEEvent] = []
    for piece in pieces:
        out += p.feed(piece)
    out += p.close()
    return out, p


def test_whole_stream():
    events, p = parse([STREAM])
    assert events == EXPECTED
    assert p.comments == 2
    assert p.events == len(EXPECTED)
    assert p.retry == 1500
    assert p.discarded_tail == 0


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_split_at_every_byte(cut: int):
    events, p = parse([STREAM[:cut], STREAM[cut:]])
    assert events == EXPECTED
    assert p.comments == 2


def test_byte_by_byte():
    events, p = parse([bytes([b]) for b in STREAM])
    assert events == EXPECTED
    assert p.comments == 2


def test_three_way_splits_around_crlf():
    # Every split into three pieces near the CRLF-heavy second event.
    start = STREAM.index(b"event:")
    end = STREAM.index(b"data: \xc3")
    for i in range(start, end):
        for j in range(i + 1, end + 1):
            events, _ = parse([STREAM[:i], STREAM[i:j], STREAM[j:]])
            assert events == EXPECTED, (i, j)


def test_events_dispatch_as_soon_as_blank_line_arrives():
    p = SSEParser()
    assert p.feed(b"data: a\n") == []
    assert p.feed(b"\n") == [SSEEvent(data="a")]
    assert p.feed(b"data: b\r") == []
    # The CR already ended the line; the blank line is the next terminator.
    assert p.feed(b"\n\r\n") == [SSEEvent(data="b")]


def test_crlf_split_between_chunks_is_one_line_ending():
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n") == []  # the LF of the CRLF pair, not a blank line
    assert p.feed(b"\r\n") == [SSEEvent(data="a")]


def test_cr_cr_then_lf_in_next_chunk():
    p = SSEParser()
    out = p.feed(b"data: a\r")
    out += p.feed(b"\r")  # blank line (CR CR)
    out += p.feed(b"\ndata: b\n\n")  # LF after CR: part of the CRLF pair "\r\n"
    assert out == [SSEEvent(data="a"), SSEEvent(data="b")]


def test_whitespace_and_content_are_byte_exact():
    payload = '{"content":"  lead\\ttab  \\n trail  "}'
    p = SSEParser()
    (ev,) = p.feed(f"data: {payload}\n\n".encode())
    assert ev.data == payload
    (ev,) = p.feed(b"data:   three\n\n")  # only ONE leading space is removed
    assert ev.data == "  three"
    (ev,) = p.feed(b"data:\tx\n\n")  # a tab is not the space the spec strips
    assert ev.data == "\tx"


def test_multibyte_character_split_across_chunks():
    raw = "data: héllo 😀\n\n".encode()
    cut = raw.index("😀".encode()) + 2  # inside the 4-byte sequence
    events, _ = parse([raw[:cut], raw[cut:]])
    assert events == [SSEEvent(data="héllo 😀")]


def test_bom_only_at_start_and_split():
    events, _ = parse([b"\xef", b"\xbb", b"\xbfdata: a\n\n"])
    assert events == [SSEEvent(data="a")]
    # A BOM later in the stream is content, not stripped.
    events, _ = parse([b"data: a\n\n\xef\xbb\xbfdata: b\n\n"])
    assert events[0] == SSEEvent(data="a") and len(events) == 1  # field name "\ufeffdata" is unknown


def test_comments_counted_not_dispatched():
    events, p = parse([b": OPENROUTER PROCESSING\n\n: x\n:\n\n"])
    assert events == []
    assert p.comments == 3


def test_event_type_resets_after_dispatch_and_id_persists():
    events, _ = parse([b"event: a\nid: 1\ndata: x\n\ndata: y\n\nid\ndata: z\n\n"])
    assert events == [
        SSEEvent(event="a", data="x", id="1"),
        SSEEvent(data="y", id="1"),
        SSEEvent(data="z", id=""),  # "id" with no value resets to the empty string
    ]


def test_event_without_data_is_not_dispatched():
    events, _ = parse([b"event: ping\nid: 3\n\ndata: a\n\n"])
    assert events == [SSEEvent(data="a", id="3")]


def test_close_flushes_a_complete_event_missing_its_blank_line():
    events, p = parse([b"data: {\"x\":1}\n\ndata: [DONE]\n"])
    assert events == [SSEEvent(data='{"x":1}'), SSEEvent(data="[DONE]")]
    assert p.discarded_tail == 0


def test_close_discards_a_line_cut_mid_way():
    events, p = parse([b"data: {\"x\":1}\n\ndata: {\"cho"])
    assert events == [SSEEvent(data='{"x":1}')]
    assert p.discarded_tail == len(b"data: {\"cho")


def test_bytes_fed_and_empty_chunks():
    p = SSEParser()
    assert p.feed(b"") == []
    p.feed(b"data: a\n\n")
    assert p.bytes_fed == 9
