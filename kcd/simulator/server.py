"""Serving the simulator (or any ASGI app) over loopback HTTP with uvicorn.

`serve_simulator` is an anyio task: started with `task_group.start(...)`, it
reports a `SimulatorHandle` once the socket is listening and stops, gracefully
but promptly, when its task is cancelled. The socket is bound here, before
uvicorn starts, so port 0 works and the real port is known up front. Signal
handling stays with the host process: the embedded server installs none.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Callable, Generator, Mapping
from typing import Any

import anyio
import msgspec
import uvicorn
from anyio.abc import TaskStatus

from kcd.server.http import bind_tcp_socket
from kcd.simulator.app import SimulatorState, create_app
from kcd.simulator.behaviours import Behaviour
from kcd.simulator.delivery import Delivery

__all__ = ["SimulatorHandle", "run_standalone", "serve_asgi", "serve_simulator"]

SHUTDOWN_GRACE_S = 1.0  # open responses get this long before their tasks are cancelled


class SimulatorHandle(msgspec.Struct, frozen=True):
    base_url: str  # http://127.0.0.1:<port>/v1
    state: SimulatorState | None  # None when serving an app that is not the simulator
    server: uvicorn.Server


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without signal capture, reporting when it is listening."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started
        self.shut_down = False

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon (or run_standalone) owns SIGINT/SIGTERM

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.shut_down = True
        await super().shutdown(sockets=sockets)


async def serve_asgi(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    state: SimulatorState | None = None,
    task_status: TaskStatus[SimulatorHandle] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until cancelled; reports a handle with `http://host:port/v1`."""
    sock = bind_tcp_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        host=host,
        port=bound,
        lifespan="off",
        log_level="warning",
        log_config=None,  # leave the host's logging configuration alone
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    handle: list[SimulatorHandle] = []

    def started() -> None:
        task_status.started(handle[0])

    server = _EmbeddedServer(config, started)
    handle.append(SimulatorHandle(base_url=f"http://{shown}:{bound}/v1", state=state, server=server))
    try:
        await server.serve(sockets=[sock])
    finally:
        # Cancellation interrupts uvicorn's main loop before its own shutdown:
        # run it here, shielded, so connections close and the socket is released.
        if server.started and not server.shut_down:
            server.should_exit = True
            with anyio.CancelScope(shield=True):
                await server.shutdown(sockets=[sock])
        sock.close()


async def serve_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    scripts: Mapping[str, Behaviour] | None = None,
    delivery: Delivery | None = None,
    task_status: TaskStatus[SimulatorHandle] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the provider simulator until cancelled (see module docstring)."""
    app = create_app(scripts, delivery=delivery)
    await serve_asgi(app, host, port, state=app.state, task_status=task_status)


def run_standalone(port: int, host: str = "127.0.0.1") -> None:
    """`kcd simulate --port N`: serve in the foreground until SIGINT/SIGTERM.

    Port 0 picks a free port; the first stdout line names the URL. Faults are
    programmed over HTTP on the same port (``/_sim/faults``, see `control`).
    """

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            handle = await tg.start(serve_simulator, host, port)
            root = handle.base_url.removesuffix("/v1")
            print(f"kcd simulator listening on {handle.base_url} (fault control: {root}/_sim/faults)",
                  flush=True)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    print(f"kcd simulator: {signal.Signals(signum).name}, stopping", file=sys.stderr,
                          flush=True)
                    tg.cancel_scope.cancel()
                    break

    anyio.run(main, backend="asyncio")
