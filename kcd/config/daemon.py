"""The daemon's own configuration: where it listens, where runs go, how it executes.

Precedence: command-line flags, then environment, then the optional YAML file
(`--config`), then defaults for the mode (user or system).

Circuit breakers (resilience reference §2) are daemon settings because their
state is shared by every run: `breaker` applies to every route, and
`breaker_overrides` (keyed by route id) replaces it for one route. In a YAML
file each override is layered over `breaker`, so it only needs the keys that
differ; keys are normalised to canonical route ids.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from kcd.api.paths import SYSTEM_SOCKET, resolve_socket, user_socket, user_state_dir
from kcd.config.keypath import Path_, parse, render
from kcd.providers.routes import RouteError, parse_route

TRUTHY = ("1", "true", "yes", "on")


class DaemonConfigError(ValueError):
    pass


Seconds = Annotated[float, Meta(gt=0)]


class BreakerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One route's circuit breaker; names match `kcd.providers.breaker.BreakerConfig`."""

    threshold: Annotated[int, Meta(ge=1)] = 3  # counted failures (at most one per turn) in window_s
    window_s: Seconds = 600.0
    cooldown_s: Seconds = 900.0  # first lockout; doubles per reopening up to cap_s
    cap_s: Seconds = 3600.0  # longest lockout; also the CLOSED time after which the doubling resets
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2  # lockout x (1 + U(0, jitter))
    half_open_permits: Annotated[int, Meta(ge=1, le=3)] = 1  # trial calls at once (each is paid)
    half_open_max_wait_s: Seconds = 600.0  # a trial not finished by then has failed
    retry_after_clamp_s: Seconds = 3600.0  # longest Retry-After honoured
    enabled: bool = True  # False: the breaker admits every call (state and metrics only)

    def __post_init__(self) -> None:
        if self.cap_s < self.cooldown_s:
            raise ValueError(f"cap_s ({self.cap_s:g}) is shorter than cooldown_s ({self.cooldown_s:g})")


class DaemonConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    mode: Literal["user", "system"] = "user"
    socket: Path | None = None
    socket_mode: int = 0o660
    state_dir: Path | None = None
    runs_root: Path | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_upload_bytes: int = 256 * 1024 * 1024  # compressed workspace uploads
    max_workspace_bytes: int = 1024 * 1024 * 1024  # unpacked size of an upload
    executor: Literal["ray", "in-process"] = "ray"
    tool_isolation: Literal["none", "bwrap", "unshare"] = "none"  # stronger sandbox for shell tools
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
    breaker: BreakerSettings = msgspec.field(default_factory=BreakerSettings)
    breaker_overrides: dict[str, BreakerSettings] = {}  # canonical route id -> settings

    def breaker_for(self, route_id: str) -> BreakerSettings:
        """The route's override, else `breaker` (RouteError if `route_id` is not a route id)."""
        return self.breaker_overrides.get(parse_route(route_id).id, self.breaker)

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
    where = f"{path}: " if path else ""
    _prepare_breakers(data, where)
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
        raise DaemonConfigError(f"{where}{exc}") from None


def _prepare_breakers(data: dict[str, Any], where: str) -> None:
    """Check `breaker`, then layer each override over it under its canonical route id.

    Errors name the override as written: `$.breaker_overrides["openai/gpt-4o"].jitter`.
    """
    for key in ("breaker", "breaker_overrides"):
        if key in data and data[key] is None:  # `breaker:` with every key commented out
            del data[key]
    base = data.get("breaker", {})
    if not isinstance(base, dict):
        return  # convert reports the type error at $.breaker
    base = data["breaker"] = {k: v for k, v in base.items() if v is not None}  # `key:` means default
    _settings(base, ("breaker",), where)
    raw = data.get("breaker_overrides")
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise DaemonConfigError(f"{where}Expected `object`, got `{_kind(raw)}` - at `$.breaker_overrides`")
    out: dict[str, dict[str, Any]] = {}
    written: dict[str, str] = {}
    for name, override in raw.items():
        here: Path_ = ("breaker_overrides", str(name))
        try:
            route = parse_route(name).id
        except RouteError as exc:
            raise DaemonConfigError(f"{where}{exc} - at `{render(here)}`") from None
        if route in written:
            raise DaemonConfigError(
                f"{where}route {route} already has an override ({written[route]!r}) - at `{render(here)}`")
        if override is None:
            override = {}
        if not isinstance(override, dict):
            raise DaemonConfigError(
                f"{where}Expected `object`, got `{_kind(override)}` - at `{render(here)}`")
        merged = {**base, **{k: v for k, v in override.items() if v is not None}}
        _settings(merged, here, where)
        written[route] = name
        out[route] = merged
    data["breaker_overrides"] = out


def _kind(value: Any) -> str:
    """msgspec's name for a YAML value's type."""
    return "array" if isinstance(value, list) else type(value).__name__


def _settings(raw: dict[str, Any], at: Path_, where: str) -> None:
    try:
        msgspec.convert(raw, BreakerSettings, strict=False)
    except msgspec.ValidationError as exc:
        message, sep, inner = str(exc).rpartition(" - at `")
        if not sep:
            message, inner = str(exc), "$`"
        path = render((*at, *parse(inner.rstrip("`"))))
        raise DaemonConfigError(f"{where}{message} - at `{path}`") from None


def default_env() -> Mapping[str, str]:
    return os.environ
