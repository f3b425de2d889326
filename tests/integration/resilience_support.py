"""Shared pieces for provider-fault tests: a standalone simulator process that
stands in for OpenRouter and OpenAI, and agent configs written per test."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

GROK = "openrouter/x-ai/grok-4-fast"
OR_MINI = "openrouter/openai/gpt-4o-mini"
OPENAI_MINI = "openai/gpt-4o-mini"

# Fast, bounded settings so that every fault resolves in seconds.
FAST_TIMEOUTS = {"connect": 2, "ttft": 2, "idle": 2, "progress": 2, "total": 6}
FAST_RETRY = {"backoff_base_s": 0.05, "backoff_cap_s": 0.2, "turn_deadline_s": 30,
              "retry_after_inline_max_s": 3, "all_open_max_wait_s": 2}


def model_of(route: str) -> str:
    """The model name the upstream sees for a route id."""
    return route.split("/", 1)[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Simulator:
    """`kcd simulate` in its own process, programmed over HTTP."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "kcd", "simulate", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.http = httpx.Client(base_url=self.base, timeout=10)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.http.get("/_sim/stats")
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("simulator did not start")
                time.sleep(0.05)

    @property
    def api_base(self) -> str:
        return f"{self.base}/v1"

    def fault(self, route: str, fault: str, count: int | None = None, **params: Any) -> None:
        r = self.http.post("/_sim/faults", json={"model": model_of(route), "fault": fault, "count": count,
                                                 "params": params})
        assert r.status_code in (200, 201, 204), r.text

    def reset(self) -> None:
        assert self.http.delete("/_sim/faults").status_code in (200, 204)

    def requests(self, route: str | None = None) -> list[dict]:
        log = self.http.get("/_sim/requests").json()
        entries = log["requests"] if isinstance(log, dict) else log
        return [e for e in entries if route is None or e["model"] == model_of(route)]

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def write_config(path: Path, primary: str, fallbacks: list[str] | None = None, *, stream: bool = False,
                 use_native: bool | None = None, max_iterations: int = 6,
                 base_urls: dict[str, str] | None = None, timeouts: dict | None = None,
                 retry: dict | None = None) -> Path:
    """An agent config for the simulator's `dev` agent on real provider routes."""
    routes = [primary, *(fallbacks or [])]
    models = []
    for route in dict.fromkeys(routes):
        entry: dict[str, Any] = {"id": route, "adapter": route.split("/", 1)[0],
                                 "timeouts": timeouts or FAST_TIMEOUTS, "retry": retry or FAST_RETRY}
        if route == primary:
            entry["stream"] = stream
            entry["routing"] = {"fallback_models": list(fallbacks or [])}
        if base_urls and route in base_urls:
            entry["base_url"] = base_urls[route]
        models.append(entry)
    doc: dict[str, Any] = {
        "version": 2, "workspace": {},
        "providers": {"default_model": primary, "models": models},
        "tools": {"registry": {"include": ["list_dir", "read_file", "mark_task_complete"]}},
        "modes": [{"name": "build"}], "loop": {"sequence": [{"mode": "build"}]},
        "max_iterations": max_iterations,
    }
    if use_native is not None:
        doc["provider_tools"] = {"use_native": use_native}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_json(kcd, config: Path, task: str = "list the workspace", timeout: float = 120) -> tuple[dict, Path]:
    """Run to the end with --json; returns (run.end event, run dir)."""
    proc = kcd.kcctl("run", str(config), "--task", task, "--json", timeout=timeout)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    assert lines and lines[-1]["type"] == "run.end", proc.stdout + proc.stderr + kcd.log()[-3000:]
    return lines[-1], Path(lines[-1]["data"]["run_dir"])


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
