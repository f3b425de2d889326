"""The bundled provider simulator on a loopback port for one fixture's lifetime."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from kcd.simulator.server import SimulatorHandle, serve_simulator


@asynccontextmanager
async def running_simulator(**kw: Any) -> AsyncIterator[SimulatorHandle]:
    """`serve_simulator(**kw)` in a task group of its own, cancelled on exit."""
    async with anyio.create_task_group() as tg:
        yield await tg.start(functools.partial(serve_simulator, **kw))
        tg.cancel_scope.cancel()
