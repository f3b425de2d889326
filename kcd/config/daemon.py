"""The daemon's own configuration: where it listens, where runs go, how it executes.

Precedence: command-line flags, then environment, then the optional YAML file
(`--config`), then defaults for the mode (user or system).

Circuit breakers (`kcd.providers.breaker`) are daemon settings because their
state is shared by every run: `breaker` applies to every route, and
`breaker_overrides` (keyed by route id) replaces it for one route. In a YAML
file each override is layered over `breaker`, so it only needs the keys that
differ; keys are normalised to canonical route ids.

`gateway` configures the OpenAI-compatible endpoint (`kcd.gateway`):
model names and their route chains, the optional loopback TCP listener and its
bearer tokens (plus `KYLECODE_GATEWAY_TOKEN`, named "env").
"""

from __future__ import annotations

import ipaddress
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
    """The daemon config cannot be read or is invalid."""


Seconds = Annotated[float, Meta(gt=0)]


class BreakerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One route's circuit breaker; names match `kcd.providers.breaker.BreakerConfig`."""

    threshold: Annotated[int, Meta(ge=1)] = 3  # at least this many failed logical requests in window_s,
    min_calls: Annotated[int, Meta(ge=1)] | None = None  # among at least this many (None: threshold),
    failure_rate: Annotated[float, Meta(gt=0, le=1)] = 0.5  # failing at this rate, open the route
    window_s: Seconds = 60.0
    window_size: Annotated[int, Meta(ge=1)] = 10  # only the latest this many logical requests count
    cooldown_s: Seconds = 5.0  # first lockout; doubles per consecutive reopening up to cap_s
    cap_s: Seconds = 300.0  # longest lockout; also the CLOSED time after which the doubling resets
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2  # lockout x (1 + U(0, jitter))
    half_open_permits: Annotated[int, Meta(ge=1, le=3)] = 1  # trial calls at once (each is paid)
    half_open_max_wait_s: Seconds = 600.0  # a trial not finished by then has failed
    retry_after_clamp_s: Seconds = 3600.0  # longest Retry-After honoured
    enabled: bool = True  # False: the breaker admits every call (state and metrics only)

    def __post_init__(self) -> None:
        if self.cap_s < self.cooldown_s:
            raise ValueError(f"cap_s ({self.cap_s:g}) is shorter than cooldown_s ({self.cooldown_s:g})")


# ---- gateway: the OpenAI-compatible endpoint --------------------------------------

GATEWAY_TOKEN_ENV = "KYLECODE_GATEWAY_TOKEN"
ENV_TOKEN_NAME = "env"
MIN_TOKEN_CHARS = 16  # shorter bearer tokens are refused: they would be guessable


class GatewayTimeouts(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-attempt deadlines (`kcd.providers.attempt.Timeouts`); unset keys keep its defaults."""

    connect: Seconds | None = None
    write: Seconds | None = None
    ttft: Seconds | None = None
    idle: Seconds | None = None
    progress: Seconds | None = None
    total: Seconds | None = None


class GatewayRetry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The turn's `kcd.providers.retry.RetryPolicy`; unset keys keep its defaults."""

    retries_per_route: Annotated[int, Meta(ge=0)] | None = None
    max_attempts_per_turn: Annotated[int, Meta(ge=1)] | None = None
    backoff_base_s: Annotated[float, Meta(ge=0)] | None = None
    backoff_cap_s: Annotated[float, Meta(ge=0)] | None = None
    retry_after_inline_max_s: Annotated[float, Meta(ge=0)] | None = None
    turn_deadline_s: Seconds | None = None
    all_open_max_wait_s: Annotated[float, Meta(ge=0)] | None = None


class GatewayFallback(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A fallback written as a mapping, for a route that needs its own settings."""

    route: str
    base_url: str | None = None
    timeouts: GatewayTimeouts | None = None  # None: the model's
    native_tools: bool | None = None
    context_window: Annotated[int, Meta(ge=1)] | None = None  # tokens; see GatewayModel


class GatewayModel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One model name clients may ask for: a route and its ordered fallback chain."""

    route: str
    fallbacks: list[str | GatewayFallback] = []
    # buffer: only a complete, validated answer reaches the client (any failure falls back
    # transparently); passthrough: text is forwarded as it arrives (docs/runbook.md §11).
    stream_mode: Literal["buffer", "passthrough"] = "buffer"
    stream_upstream: bool | None = None  # None: stream upstream iff the client streams
    timeouts: GatewayTimeouts = msgspec.field(default_factory=GatewayTimeouts)
    retry: GatewayRetry = msgspec.field(default_factory=GatewayRetry)
    base_url: str | None = None  # the primary's; None: from the daemon's environment
    native_tools: bool | None = None  # False: never offer this route tool schemas
    params: dict[str, Any] = {}  # request defaults (temperature, provider routing...); the client's win
    probes: bool = False  # True: probe uncached routes before the first request, as runs do
    # The primary's context window in tokens: a context-length error then falls back to the
    # first fallback whose known window is larger (else it is returned at once).
    context_window: Annotated[int, Meta(ge=1)] | None = None


class GatewayTCP(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] | None = None  # None: no TCP listener
    allow_remote: bool = False  # required to bind anything but a loopback address


class GatewaySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The daemon config's `gateway:` section (the OpenAI-compatible endpoint)."""

    tcp: GatewayTCP = msgspec.field(default_factory=GatewayTCP)
    tokens: dict[str, str] = {}  # name -> bearer token (TCP only; never logged or echoed)
    models: dict[str, GatewayModel] = {}
    allow_route_ids: bool = True  # a full route id (`openrouter/z-ai/glm-4.6`) works as a model name
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 16 * 1024 * 1024


class SandboxSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How tool commands are contained (kcd.sandbox; docs/runbook.md, "The sandbox")."""

    # auto: bwrap, else kcd's own namespaces, else process containment, whichever works here.
    isolation: Literal["auto", "bwrap", "namespaces", "process"] = "auto"
    accept_weaker: bool = False  # system mode starts with process containment only if this is true
    allow_network: bool = True  # whether a run may turn the host network on (`tools.network: true`)
    max_processes: Annotated[int, Meta(ge=8)] = 256  # per call (processes and threads)
    max_processes_per_run: Annotated[int, Meta(ge=8)] = 512
    memory_max_mb: Annotated[int, Meta(ge=0)] = 4096  # per call; 0 = no cap
    run_memory_max_mb: Annotated[int, Meta(ge=0)] = 8192


class ViewerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The run viewer (`kcd.viewer`, `kcctl view`): `/ui/` on the control socket, and on a TCP
    listener: the gateway's when it has one, else its own loopback port."""

    enabled: bool = True  # False: no TCP listener of its own and `kcctl view` refuses
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 0  # 0: an ephemeral port (kcctl view prints the URL)
    allow_remote: bool = False  # required to bind anything but a loopback address
    session_ttl_s: Seconds = 8 * 3600.0  # a browser session's cookie lifetime
    login_ttl_s: Seconds = 120.0  # a `kcctl view` link must be opened within this
    sample_interval_s: Seconds = 15.0  # the daemon page's metric charts: one sample per interval,
    history_points: Annotated[int, Meta(ge=2, le=100_000)] = 240  # this many kept (an hour)

    def __post_init__(self) -> None:
        if self.enabled and not self.allow_remote and not _is_loopback(self.host):
            raise ValueError(f"viewer.host {self.host!r} is not a loopback address; set "
                             "viewer.allow_remote: true to serve the viewer beyond this machine")


_LEGACY_ISOLATION = {"none": "process", "unshare": "namespaces"}


class DaemonConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """kcd's own settings, after flags, environment, YAML file and mode defaults."""

    mode: Literal["user", "system"] = "user"
    socket: Path | None = None
    socket_mode: int = 0o660
    operators_group: str | None = "kylecode-admin"  # system mode: members may act on every run
    state_dir: Path | None = None
    runs_root: Path | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_upload_bytes: int = 256 * 1024 * 1024  # compressed workspace uploads
    max_workspace_bytes: int = 1024 * 1024 * 1024  # unpacked size of an upload
    executor: Literal["ray", "in-process"] = "ray"
    # Older name of sandbox.isolation ("none" = process, "unshare" = namespaces).
    tool_isolation: Literal["auto", "bwrap", "namespaces", "process", "none", "unshare"] | None = None
    sandbox: SandboxSettings = msgspec.field(default_factory=SandboxSettings)
    ray_address: str | None = None  # None: start a local Ray instance
    ray_num_cpus: int | None = None
    ray_temp_dir: str | None = None
    ray_init_timeout_s: float = 120.0
    # How long a tool call waits for a starting or degraded executor (a Ray cluster that is
    # coming back) before it fails with executor_unavailable.
    executor_wait_s: float = 30.0
    # What one turn needs of a Ray node: a turn runs on any node with this much free (a head
    # started with --num-cpus=0 takes none), e.g. {"gpu_box": 1} to pin turns to such nodes.
    ray_turn_cpus: Annotated[float, Meta(ge=0)] = 1.0
    ray_turn_resources: dict[str, Annotated[float, Meta(gt=0)]] = {}
    heartbeat_s: float = 15.0
    idle_timeout_s: Annotated[float, Meta(gt=0)] = 30.0  # a connection with no request in flight is closed
    max_connections: Annotated[int, Meta(ge=16)] = 4096  # per listener; past it new requests get 503
    shutdown_grace_s: float = 30.0
    simulator_host: str = "127.0.0.1"
    simulator_port: int = 0
    log_level: str = "info"
    idle_exit_s: float = 0.0  # auto-started daemons exit after this long idle; 0 = never
    # Who sends provider calls: aiohttp (C parser, ~0.5 ms less CPU per call) behind httpx's API,
    # or httpx's own transport. See kcd/providers/aiohttp_transport.py.
    upstream_client: Literal["aiohttp", "httpx"] = "aiohttp"
    breaker: BreakerSettings = msgspec.field(default_factory=BreakerSettings)
    breaker_overrides: dict[str, BreakerSettings] = {}  # canonical route id -> settings
    gateway: GatewaySettings = msgspec.field(default_factory=GatewaySettings)
    viewer: ViewerSettings = msgspec.field(default_factory=ViewerSettings)

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
        sandbox = self.sandbox
        if self.tool_isolation is not None:
            legacy = _LEGACY_ISOLATION.get(self.tool_isolation, self.tool_isolation)
            sandbox = msgspec.structs.replace(sandbox, isolation=legacy)
        return msgspec.structs.replace(
            self, state_dir=state, socket=sock, runs_root=self.runs_root or state / "runs", sandbox=sandbox,
            tool_isolation=None)


def load_daemon_config(path: Path | None, env: Mapping[str, str], overrides: dict[str, Any]) -> DaemonConfig:
    """Build the DaemonConfig from the YAML file (if any), environment and flag overrides."""
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
    _prepare_gateway(data, env, where)
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


def _check(raw: Any, type_: Any, at: Path_, where: str) -> Any:
    """`msgspec.convert` with errors that name the full key path (msgspec writes `[...]`
    for mapping keys; a user needs `$.gateway.models["fast"].route`)."""
    try:
        return msgspec.convert(raw, type_, strict=False)
    except msgspec.ValidationError as exc:
        message, sep, inner = str(exc).rpartition(" - at `")
        if not sep:
            message, inner = str(exc), "$`"
        raise DaemonConfigError(f"{where}{message} - at `{render((*at, *parse(inner.rstrip('`'))))}`") \
            from None


def _fail(where: str, message: str, at: Path_) -> DaemonConfigError:
    return DaemonConfigError(f"{where}{message} - at `{render(at)}`")


def _prepare_gateway(data: dict[str, Any], env: Mapping[str, str], where: str) -> None:
    """Check the `gateway` section key by key, and add the environment's token."""
    raw = data.get("gateway")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(where, f"Expected `object`, got `{_kind(raw)}`", ("gateway",))
    raw = dict(raw)
    models = raw.pop("models", None) or {}
    tokens = raw.pop("tokens", None) or {}
    if not isinstance(models, dict):
        raise _fail(where, f"Expected `object`, got `{_kind(models)}`", ("gateway", "models"))
    if not isinstance(tokens, dict):
        raise _fail(where, f"Expected `object`, got `{_kind(tokens)}`", ("gateway", "tokens"))
    settings: GatewaySettings = _check(raw, GatewaySettings, ("gateway",), where)
    checked_models = {}
    for name, model in models.items():
        here: Path_ = ("gateway", "models", str(name))
        if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
            raise _fail(where, "a model name must be a non-empty string without whitespace", here)
        checked = _check(model, GatewayModel, here, where)
        _route(checked.route, (*here, "route"), where)
        _base_url(checked.base_url, (*here, "base_url"), where)
        for i, fallback in enumerate(checked.fallbacks):
            if isinstance(fallback, str):
                _route(fallback, (*here, "fallbacks", i), where)
            else:
                _route(fallback.route, (*here, "fallbacks", i, "route"), where)
                _base_url(fallback.base_url, (*here, "fallbacks", i, "base_url"), where)
        checked_models[name] = checked
    checked_tokens: dict[str, str] = {}
    for name, token in tokens.items():
        here = ("gateway", "tokens", str(name))
        if not isinstance(token, str):
            raise _fail(where, f"Expected `str`, got `{_kind(token)}`", here)
        if len(token.strip()) < MIN_TOKEN_CHARS:  # the message never quotes the token
            raise _fail(where, f"token is shorter than {MIN_TOKEN_CHARS} characters", here)
        checked_tokens[str(name)] = token.strip()
    env_token = (env.get(GATEWAY_TOKEN_ENV) or "").strip()
    if env_token:
        if len(env_token) < MIN_TOKEN_CHARS:
            raise DaemonConfigError(f"{GATEWAY_TOKEN_ENV} is shorter than {MIN_TOKEN_CHARS} characters")
        checked_tokens[ENV_TOKEN_NAME] = env_token  # the environment wins over a file token "env"
    tcp = settings.tcp
    if tcp.port is not None:
        if not tcp.allow_remote and not _is_loopback(tcp.host):
            raise _fail(where, f"{tcp.host!r} is not a loopback address; set allow_remote: true to "
                               "serve the gateway beyond this machine", ("gateway", "tcp", "host"))
        if not checked_tokens:
            raise _fail(where, f"the TCP listener needs a bearer token: set gateway.tokens or "
                               f"{GATEWAY_TOKEN_ENV}", ("gateway", "tcp", "port"))
    data["gateway"] = msgspec.structs.replace(settings, models=checked_models, tokens=checked_tokens)


def _route(raw: Any, at: Path_, where: str) -> None:
    try:
        parse_route(raw)
    except RouteError as exc:
        raise _fail(where, str(exc), at) from None


def _base_url(url: str | None, at: Path_, where: str) -> None:
    if url is not None and not url.strip().startswith(("http://", "https://")):
        raise _fail(where, f"base URL {url!r} must start with http:// or https://", at)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def default_env() -> Mapping[str, str]:
    return os.environ
