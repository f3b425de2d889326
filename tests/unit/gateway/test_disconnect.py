"""`until_disconnect`: the turn's result, its own exception unwrapped, or DISCONNECTED
with the turn cancelled at once when the ASGI channel reports the client gone."""

from __future__ import annotations

import anyio
import pytest

from kcd.gateway.disconnect import DISCONNECTED, until_disconnect

pytestmark = pytest.mark.anyio


def channel(disconnect_after: float | None):
    """An ASGI receive for a request whose body was read: silent until the client leaves."""
    async def receive() -> dict:
        if disconnect_after is None:
            await anyio.sleep_forever()
        await anyio.sleep(disconnect_after)
        return {"type": "http.disconnect"}
    return receive


async def test_the_result_when_the_client_stays():
    async def work() -> str:
        await anyio.sleep(0.01)
        return "answer"
    assert await until_disconnect(channel(None), work) == "answer"


async def test_the_turns_own_exception_is_not_wrapped():
    async def work() -> str:
        raise ValueError("upstream said no")
    with pytest.raises(ValueError, match="upstream said no"):
        await until_disconnect(channel(None), work)


async def test_leaving_cancels_the_turn_at_once():
    reached: list[str] = []

    async def work() -> str:
        try:
            await anyio.sleep(30)  # a retry wait, or an upstream call that stalls
        finally:
            reached.append("cancelled")
        reached.append("after")  # never
        return "late"

    with anyio.fail_after(1):
        assert await until_disconnect(channel(0.05), work) is DISCONNECTED
    assert reached == ["cancelled"]
