"""The daemon's own configuration: where it listens, where runs go, how it executes.

Precedence: command-line flags, then environment, then the optional YAML file
(`--config`), then defaults for the mode (user or system).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from kcd.api.paths import SYSTEM_SOCKET, resolve_socket, user_socket, user_state_dir

TRUTHY = ("1", "true", "yes", "on")


class DaemonConfigError(ValueError):
    pass


class DaemonConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    mode: Literal["user", "system"] = "user"
    socket: Path | None = None
    socket_mode: int = 0o660
    state_dir: Path | None = None
    runs_root: Path | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    executor: Literal["ray", "in-process"] = "ray"
    ray_address: str | None = None  # None: start a local Ray instance
    ray_num_cpus: int | None = None
    ray_temp_dir: str | None = None
    ray_init_timeout_s: float = 120.0
    heartbeat_s: float = 15.0
    shutdown_grace_s: float = 30.0
    simulator_host: str = "127.0.0.1"
    simulator_port: int = 0
    log_level: str = "info"
    idle_exit_s: float = 0.0  # auto-started daemons exit after this long idle; 0 = never

    def resolved(self) -> DaemonConfig:
        """Fill in mode-dependent defaults."""
        if self.mode == "system":
            state = self.state_dir or Path("/var/lib/kylecode")
            sock = self.socket or SYSTEM_SOCKET
        else:
            state = self.state_dir or user_state_dir()
            sock = self.socket or user_socket()
        return msgspec.structs.replace(
            self, state_dir=state, socket=sock, runs_root=self.runs_root or state / "runs")


def load_daemon_config(path: Path | None, env: Mapping[str, str], overrides: dict[str, Any]) -> DaemonConfig:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = msgspec.yaml.decode(path.read_bytes()) or {}
        except (OSError, msgspec.DecodeError) as exc:
            raise DaemonConfigError(f"{path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise DaemonConfigError(f"{path}: $: expected a mapping")
        data.update(loaded)
    if env.get("RAY_SCE_LOCAL_MODE", "").lower() in TRUTHY:
        data["executor"] = "in-process"
    if env.get("RAY_ADDRESS") and "ray_address" not in data:
        data["ray_address"] = env["RAY_ADDRESS"]
    if env.get("KYLECODE_HOST") and "socket" not in overrides:
        data["socket"] = str(resolve_socket(None, env)[0])
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(data, DaemonConfig, strict=False).resolved()
    except msgspec.ValidationError as exc:
        where = f"{path}: " if path else ""
        raise DaemonConfigError(f"{where}{exc}") from None


def default_env() -> Mapping[str, str]:
    return os.environ
