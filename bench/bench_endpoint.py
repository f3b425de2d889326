"""The OpenAI endpoint's added latency: a client call through `kcd` vs straight to the provider.

One simulator process (`kcd simulate`) stands in for the provider; one `kcd`
daemon (in-process executor, telemetry on) serves the endpoint on loopback TCP
with `openai/echo` routed to that simulator. The benchmark client (one event
loop, one `httpx.AsyncClient` per target with the same pool limits) sends the
same pre-encoded chat call either

- **direct**: to the simulator's `/v1/chat/completions` (model `echo`), or
- **endpoint**: to kcd's `/v1/chat/completions` (model `bench` or
  `bench-passthrough`, bearer token), which makes the same call upstream,
- **floor** (with `--floor`): to a bare proxy on the same stack as kcd (uvicorn
  with kcd's `make_server`, one pooled `AiohttpClient` with the dispatcher's pool
  limits) that forwards a fixed body and returns the upstream's bytes: what any
  gateway built on this server and client costs, before any logic; `--floors`
  adds the same proxy on other stacks side by side (`FLOORS`: kcd's earlier
  httpx client on aiohttp, granian embedded on the proxy's own loop; granian is
  not a kcd dependency: `pip install granian` to measure it),

interleaved in rounds (direct, endpoint, direct, ...) at concurrency 1, 10 and
64, non-streamed and streamed (buffer and passthrough modes). Last, the
endpoint's own code alone: its ASGI app called in-process with a stub dispatcher
that answers at once (what the handler adds on top of the dispatcher and server). Every answer is
checked (status, content, `[DONE]` at the end of a stream) and the simulator's
request count must grow by exactly one per call on both paths (no hidden
retries). Prints p50/p99 of each path, the added latency, the spread of the
per-round added p50, and CPU per call: the client's and the daemon's (from
/proc). Not a test: it asserts nothing about time.

    .venv/bin/python bench/bench_endpoint.py [--calls 400] [--rounds 4] [--floor | --floors F ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import msgspec
from _common import REPO, free_port, measure, pct, proc_cpu, wait_http

LIMITS = httpx.Limits(max_connections=128, max_keepalive_connections=64, keepalive_expiry=30)
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello in five words."}]


FLOORS = {  # label -> (server, upstream client)
    "floor": ("uvicorn", "aiohttp"),  # kcd's own stack
    "floor, httpx client": ("uvicorn", "httpx-on-aiohttp"),  # kcd's earlier stack (its floor)
    "floor, granian": ("granian", "aiohttp"),  # a Rust-backed ASGI server on the same loop
}


def serve_floor(port: int, sim_base: str, server: str, client_kind: str) -> None:
    """A bare proxy (`--serve-floor`): a server and an HTTP client, no gateway logic."""
    sys.path.insert(0, str(REPO))
    from kcd.gateway.listener import bind_tcp_socket
    from kcd.providers.aiohttp_client import AiohttpClient
    from kcd.providers.aiohttp_transport import AiohttpTransport
    from kcd.providers.dispatcher import POOL_LIMITS
    from kcd.server.listener import loop_options, make_server

    bodies = {stream: msgspec.json.encode({"model": "echo", "messages": MESSAGES,
                                           **({"stream": True, "stream_options": {"include_usage": True}}
                                              if stream else {})})
              for stream in (False, True)}
    # kcd's default upstream client (`AiohttpClient`), or its earlier one (httpx on aiohttp).
    client = (AiohttpClient(POOL_LIMITS) if client_kind == "aiohttp" else
              httpx.AsyncClient(limits=POOL_LIMITS, trust_env=False, timeout=60,
                                transport=AiohttpTransport(POOL_LIMITS)))
    url = f"{sim_base}/v1/chat/completions"
    timeout = httpx.Timeout(60)

    async def app(scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        stream = b'"stream":true' in body
        async with client.stream("POST", url, content=bodies[stream],
                                 headers={"content-type": "application/json"}, timeout=timeout) as resp:
            data = b"".join([chunk async for chunk in resp.aiter_bytes()])
        await send({"type": "http.response.start", "status": resp.status_code,
                    "headers": [(b"content-type", resp.headers.get("content-type").encode()),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    if server == "granian":  # embedded: served from this process's own event loop
        from granian.constants import Interfaces
        from granian.server.embed import Server

        async def run() -> None:
            await Server(app, address="127.0.0.1", port=port, interface=Interfaces.ASGI,
                         log_enabled=False).serve()

        anyio.run(run, backend_options=loop_options())
        return
    sock = bind_tcp_socket("127.0.0.1", port)
    anyio.run(make_server(app).serve, [sock], backend_options=loop_options())


class Env:
    """The simulator and the daemon (and the floor proxy), started in their own processes."""

    def __init__(self, floors: list[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kcbench-", dir="/tmp"))
        sim_port, self.port = free_port(), free_port()
        self.sim_base = f"http://127.0.0.1:{sim_port}"
        self.sim = subprocess.Popen([sys.executable, "-m", "kcd", "simulate", "--port", str(sim_port)],
                                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"{self.sim_base}/_sim/stats", self.sim, "simulator")
        self.token = secrets.token_urlsafe(24)
        config = self.root / "kcd.yaml"
        config.write_text(msgspec.yaml.encode({
            "executor": "in-process",
            "gateway": {"tcp": {"port": self.port}, "tokens": {"bench": self.token},
                        "models": {"bench": {"route": "openai/echo"},
                                   "bench-passthrough": {"route": "openai/echo",
                                                         "stream_mode": "passthrough"}}}}).decode())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KYLECODE_", "RAY_"))}
        env.update(OPENAI_BASE_URL=f"{self.sim_base}/v1", OPENAI_API_KEY="sk-bench-not-a-real-key-000000",
                   RAYCODE_TELEMETRY_PATH=str(self.root / "telemetry.jsonl"))
        self.log = open(self.root / "kcd.log", "wb")
        self.kcd = subprocess.Popen(
            [sys.executable, "-m", "kcd", "serve", "--config", str(config), "--socket", str(self.root / "s"),
             "--state-dir", str(self.root / "state"), "--runs-root", str(self.root / "runs")],
            cwd=REPO, env=env, stdout=self.log, stderr=self.log)
        wait_http(f"http://127.0.0.1:{self.port}/v1/models", self.kcd, "kcd")
        self.floors: dict[str, tuple[subprocess.Popen, int]] = {}
        for label in floors:
            floor_port = free_port()
            proc = subprocess.Popen([sys.executable, __file__, "--serve-floor", str(floor_port), self.sim_base,
                                     *FLOORS[label]], cwd=REPO)
            wait_http(f"http://127.0.0.1:{floor_port}/", proc, label)
            self.floors[label] = (proc, floor_port)

    def sim_total(self) -> int:
        return httpx.get(f"{self.sim_base}/_sim/stats").json()["total"]

    def close(self) -> None:
        for proc in (self.kcd, self.sim, *(proc for proc, _ in self.floors.values())):
            proc.terminate()
            proc.wait(timeout=30)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def checked_call(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str],
                 stream: bool) -> Callable[[], Awaitable[None]]:
    """One call, its answer checked for completeness."""

    async def call() -> None:
        if stream:
            async with client.stream("POST", url, content=body, headers=headers) as resp:
                data = b"".join([chunk async for chunk in resp.aiter_raw()])
            assert resp.status_code == 200, (resp.status_code, data[:300])
            assert data.endswith(b"data: [DONE]\n\n") and b'"content":"' in data, data[-300:]
        else:
            resp = await client.post(url, content=body, headers=headers)
            assert resp.status_code == 200, (resp.status_code, resp.content[:300])
            answer = msgspec.json.decode(resp.content)
            assert answer["choices"][0]["message"]["content"], answer

    return call


def row(label: str, conc: int, a_lat: list[float], b_lat: list[float], round_added: list[float],
        a_cpu: float, b_cpu: float, server_cpu: float) -> str:
    a50, a99, b50, b99 = pct(a_lat, 50), pct(a_lat, 99), pct(b_lat, 50), pct(b_lat, 99)
    return (f"| {label} | {conc} | {a50 * 1e3:.2f} / {a99 * 1e3:.2f} | {b50 * 1e3:.2f} / {b99 * 1e3:.2f} "
            f"| {(b50 - a50) * 1e3:+.2f} / {(b99 - a99) * 1e3:+.2f} "
            f"| {min(round_added) * 1e3:+.2f} … {max(round_added) * 1e3:+.2f} "
            f"| {a_cpu / len(a_lat) * 1e3:.2f} / {b_cpu / len(b_lat) * 1e3:.2f} "
            f"| {server_cpu / len(b_lat) * 1e3:.2f} | {len(a_lat)} + {len(b_lat)} |")


async def bench(env: Env, calls: int, rounds: int, levels: tuple[int, ...] = (1, 10, 64)) -> list[str]:
    lines = []
    direct_url = f"{env.sim_base}/v1/chat/completions"
    cells = [("non-stream", False, "bench"), ("stream (buffer)", True, "bench"),
             ("stream (passthrough)", True, "bench-passthrough")]
    for label, stream, model in cells:
        extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        plain = {"content-type": "application/json", "authorization": "Bearer mock"}
        for conc in levels:
            # Fresh client pools per cell, and idle keep-alives left to expire (the simulator
            # drops them after 5 s): httpcore's per-request cost grows with the connections a
            # pool holds (httpx #3215), so a c=64 cell would otherwise tax the next c=1 cell.
            await anyio.sleep(6)
            clients = [httpx.AsyncClient(limits=LIMITS, trust_env=False, timeout=60) for _ in range(2)]
            direct = checked_call(clients[0], direct_url, msgspec.json.encode(
                {"model": "echo", "messages": MESSAGES, **extra}), plain, stream)
            paths = [("endpoint", env.kcd.pid, checked_call(
                clients[1], f"http://127.0.0.1:{env.port}/v1/chat/completions",
                msgspec.json.encode({"model": model, "messages": MESSAGES, **extra}),
                {"content-type": "application/json", "authorization": f"Bearer {env.token}"}, stream))]
            for floor, (proc, floor_port) in (env.floors.items() if model == "bench" else ()):
                clients.append(httpx.AsyncClient(limits=LIMITS, trust_env=False, timeout=60))
                paths.append((floor, proc.pid, checked_call(
                    clients[-1], f"http://127.0.0.1:{floor_port}/v1/chat/completions",
                    msgspec.json.encode({"model": "echo", "messages": MESSAGES, **extra}), plain, stream)))
            n = max(calls if conc == 1 else calls * 2, rounds * conc)
            warm = max(50, conc * 2)
            await measure(conc, warm, direct)
            for _, _, fn in paths:
                await measure(conc, warm, fn)
            a_lat: list[float] = []
            a_cpu = 0.0
            results = {name: ([], [], 0.0, 0.0) for name, _, _ in paths}  # latencies, per-round added, cpu
            for _ in range(rounds):  # interleaved: direct, endpoint[, floor], direct, ...
                before = env.sim_total()
                lat, cpu = await measure(conc, n // rounds, direct)
                assert env.sim_total() - before == n // rounds, "direct: upstream count mismatch"
                a_lat += lat
                a_cpu += cpu
                for name, pid, fn in paths:
                    b_lat, added, b_cpu, server_cpu = results[name]
                    before, cpu0 = env.sim_total(), proc_cpu(pid)
                    lat2, cpu = await measure(conc, n // rounds, fn)
                    server_cpu += proc_cpu(pid) - cpu0
                    assert env.sim_total() - before == n // rounds, f"{name}: upstream saw extra requests"
                    b_lat += lat2
                    added.append(statistics.median(lat2) - statistics.median(lat))
                    results[name] = (b_lat, added, b_cpu + cpu, server_cpu)
            for name, _, _ in paths:
                b_lat, added, b_cpu, server_cpu = results[name]
                tag = label if name == "endpoint" else f"{label}, bare proxy ({name})"
                line = row(tag, conc, a_lat, b_lat, added, a_cpu, b_cpu, server_cpu)
                print(line, flush=True)
                lines.append(line)
            for client in clients:
                await client.aclose()
    return lines


async def handler_cost(calls: int = 20000) -> str:
    """µs per request of the endpoint's own code: ASGI app in-process, a stub dispatcher."""
    sys.path.insert(0, str(REPO))
    from kcd.config.daemon import GatewayModel, GatewaySettings
    from kcd.gateway.access import TokenTable
    from kcd.gateway.handlers import OpenAIEndpoint
    from kcd.gateway.listener import TCPGatewayApp
    from kcd.gateway.models import ModelMap
    from kcd.observe.prometheus import DaemonMetrics
    from kcd.observe.telemetry import TelemetrySink
    from kcd.providers.attempt import Attempt
    from kcd.providers.dispatcher import AttemptRecord, Served
    from kcd.providers.types import ChatResponse, Usage

    class StubDispatcher:
        async def complete(self, chain, messages, tools, *, observer, **_):  # noqa: ANN001, ANN003
            entry = chain[0]
            attempt = Attempt(route=entry.route.id, url="stub", stream_requested=False, latency_s=0.0,
                              response=ChatResponse(content="Hello there, friend!", finish_reason="stop",
                                                    usage=Usage(12, 5, 17), model="echo"))
            await observer.attempt(AttemptRecord(1, "primary", entry, attempt, breaker_state="closed"))
            return Served(attempt.response, entry, 1, 0.0)

    token = "stub-token-0123456789"
    body = msgspec.json.encode({"model": "bench", "messages": MESSAGES})
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json")]}

    request = {"type": "http.request", "body": body, "more_body": False}

    def receiver() -> Callable[[], Awaitable[dict]]:
        """A request's body once, then (as a server does) nothing until the client leaves."""
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if sent:
                await anyio.sleep_forever()
            sent = True
            return request

        return receive

    async def send(message: dict) -> None:
        pass

    out = []
    root = Path(tempfile.mkdtemp(prefix="kcbench-h-", dir="/tmp"))
    try:
        for telemetry in (False, True):
            sink = TelemetrySink(root / "t.jsonl")
            async with anyio.create_task_group() as tg:
                await tg.start(sink.run)
                endpoint = OpenAIEndpoint(
                    StubDispatcher(), ModelMap(GatewaySettings(models={"bench": GatewayModel(route="openai/echo")})),
                    telemetry=sink if telemetry else None, metrics=DaemonMetrics(), probes=None,
                    tokens=TokenTable({"bench": token}), env={}, max_body=1 << 20)
                app = TCPGatewayApp(endpoint)
                for _ in range(2000):
                    await app(scope, receiver(), send)
                t0 = time.perf_counter()
                for _ in range(calls):
                    await app(scope, receiver(), send)
                out.append((time.perf_counter() - t0) / calls * 1e6)
                await sink.aclose()
                tg.cancel_scope.cancel()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return (f"endpoint code alone (in-process, stub dispatcher, {calls} calls): {out[0]:.1f} µs per request; "
            f"with the telemetry event encoded and queued: {out[1]:.1f} µs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=400, help="calls per path at c=1 (twice that at c=10, 64)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--floor", action="store_true", help="also measure a bare proxy on kcd's stack")
    ap.add_argument("--floors", nargs="+", choices=list(FLOORS), metavar="FLOOR",
                    help=f"bare proxies to measure (implies --floor): {', '.join(FLOORS)}")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 64], metavar="N")
    ap.add_argument("--serve-floor", nargs=4, metavar=("PORT", "SIM_BASE", "SERVER", "CLIENT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_floor:
        serve_floor(int(args.serve_floor[0]), *args.serve_floor[1:])
        return
    env = Env(args.floors or (["floor"] if args.floor else []))
    try:
        print(f"# OpenAI endpoint overhead, {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
              f"{os.cpu_count()} cores, httpx {httpx.__version__}")
        print("| mode | concurrency | direct p50 / p99 ms | endpoint p50 / p99 ms | added p50 / p99 ms "
              "| added p50 per round (min … max) | client CPU per call direct / endpoint ms "
              "| server CPU per call ms (kcd or floor) | calls |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        anyio.run(bench, env, args.calls, args.rounds, tuple(args.concurrency))
    finally:
        env.close()
    print()
    print(anyio.run(handler_cost))


if __name__ == "__main__":
    main()
