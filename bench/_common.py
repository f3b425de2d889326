"""What the bench scripts share: ports, child processes, a closed-loop load driver, percentiles.

Imported as `_common` (the scripts run as `python bench/<name>.py`, so bench/ is on sys.path).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str, **kw) -> None:
    """Poll `url` until it answers; give up if `proc` exits or after 30 s."""
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1, **kw)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


def start_simulator() -> tuple[subprocess.Popen, str]:
    """`kcd simulate` in its own process: (process, base URL without /v1)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kcd", "simulate", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/_sim/stats", proc, "simulator")
    return proc, base


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def measure(concurrency: int, calls: int, fn: Callable[[], Awaitable[None]]) -> tuple[list[float], float]:
    """`calls` calls of `fn` with `concurrency` in flight: latencies and the client's CPU seconds."""
    latencies: list[float] = []
    remaining = calls
    cpu0 = time.process_time()

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await fn()
            latencies.append(time.perf_counter() - t0)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return latencies, time.process_time() - cpu0
