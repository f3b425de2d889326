"""Run events as Server-Sent Events, and a stream that stops when the browser leaves."""

from __future__ import annotations

import anyio

from kcd.viewer.sse import FollowingResponse, sse_messages


async def _lines(*lines: bytes):
    for line in lines:
        yield line


def test_events_become_messages_heartbeats_comments_and_the_end_an_event() -> None:
    lines = [b'{"seq":1,"ts":"t","run_id":"r","type":"run.start","data":{"k":"SECRET"}}\n',
             b"{torn\n",
             b'{"seq":1,"ts":"t","run_id":"r","type":"heartbeat"}\n',
             b'{"seq":2,"ts":"t","run_id":"r","type":"run.end","data":{}}\n']

    async def main() -> list[bytes]:
        return [m async for m in sse_messages(_lines(*lines), lambda b: b.replace(b"SECRET", b"***"))]

    out = anyio.run(main)
    assert out == [b'id: 1\ndata: {"seq":1,"ts":"t","run_id":"r","type":"run.start","data":{"k":"***"}}\n\n',
                   b": heartbeat\n\n",
                   b'id: 2\ndata: {"seq":2,"ts":"t","run_id":"r","type":"run.end","data":{}}\n\n',
                   b"event: end\ndata: {}\n\n"]


def test_a_disconnect_stops_an_endless_stream_and_closes_its_follower() -> None:
    closed = anyio.Event()

    async def endless():
        try:
            while True:
                yield b'{"seq":1,"ts":"t","run_id":"r","type":"heartbeat"}\n'
                await anyio.sleep(0.01)
        finally:
            closed.set()

    async def main() -> int:
        messages = [{"type": "http.request", "body": b"", "more_body": False}]
        leave = anyio.Event()

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await leave.wait()
            return {"type": "http.disconnect"}

        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)
            if len(sent) == 5:
                leave.set()

        response = FollowingResponse(sse_messages(endless(), lambda b: b), receive,
                                     content_type="text/event-stream")
        with anyio.fail_after(5):
            await response.send(send)
        return len(sent)

    assert anyio.run(main) >= 5
    assert closed.is_set()
