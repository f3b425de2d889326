"""msgspec Structs for every request, response and event on the control socket."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

RunStatus = Literal["queued", "running", "completed", "failed", "cancelled", "interrupted"]
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "interrupted"})

# Exit reasons a run can end with (result.json, run.end, kcctl's exit code).
EXIT_REASONS = (
    "mark_task_complete",
    "completion_detected",
    "max_steps_exhausted",
    "empty_response",
    "provider_error",
    "cancelled",
    "run_loop_exception",
    "finalise_error",  # the run ended but its artifacts could not be written
    "interrupted",  # kcd died during the run; finished from its files at the next start
    "executor_unavailable",  # the tool executor (a Ray cluster) could not run the turn's calls
    "replay_exhausted",  # a replay (kcctl replay) asked for more model turns than were recorded
)


class ErrorDetail(msgspec.Struct):
    """An error's machine code and human message."""

    code: str
    message: str


class ErrorBody(msgspec.Struct):
    """Every 4xx/5xx body of the control API: `{"error": {...}}`."""

    error: ErrorDetail


class VersionInfo(msgspec.Struct):
    """`GET /version`: the daemon's version and the API versions it speaks."""

    api: str
    min_api: str
    daemon: str


class PeerInfo(msgspec.Struct):
    """A Unix-socket peer as SO_PEERCRED reports it (plus supplementary groups)."""

    pid: int
    uid: int
    gid: int


class ExecutorInfo(msgspec.Struct, omit_defaults=True):
    """The executor's mode, state and detail, and per Ray node its resources and runs."""

    mode: str  # "ray" | "in-process"
    state: str  # "starting" | "ready" | "degraded" | "stopped"
    detail: dict[str, Any] = {}
    # Ray: the cluster's nodes as last checked (node_id, address, alive, cpus_total, cpus_free,
    # resources, turns running there, local = kcd's host)
    nodes: list[dict[str, Any]] = []


class Health(msgspec.Struct):
    """`GET /v1/health`: daemon, executor, sandbox and the asking peer."""

    state: str  # "ok" | "degraded" (the executor is) | "stopping"
    version: str
    api: str
    pid: int
    uid: int
    uptime_s: float
    executor: ExecutorInfo
    runs_active: int
    socket: str
    runs_root: str
    peer: PeerInfo | None = None
    upstream_client: str | None = None  # "aiohttp" | "httpx": what sends provider calls
    event_loop: str | None = None  # "uvloop" | "asyncio"
    sandbox: dict[str, Any] | None = None  # how tool commands are contained (kcd.sandbox.modes)


class RunRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/runs`: the config text, the task, and the workspace to seed."""

    config_text: str
    config_path: str | None = None  # where the text came from, for `extends` and pack files
    task: str
    workspace: str | None = None  # directory on the daemon host to seed the run's workspace
    workspace_upload: str | None = None  # an upload id from POST /v1/workspaces (kcctl's way)
    max_steps: int | None = None
    stream: bool | None = None  # override the route's streaming setting


class ConfigCheckRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/config/check`: a config as `kcctl config check` sends it."""

    config_text: str
    config_path: str | None = None


class ConfigCheckResult(msgspec.Struct):
    """Whether the config loads, its route and digest, and its warnings."""

    ok: bool
    route: str | None = None
    digest: str | None = None
    warnings: list[str] = []
    error: ErrorDetail | None = None


class RunInfo(msgspec.Struct, omit_defaults=True):
    """One run as the API and the state store know it."""

    id: str
    status: RunStatus
    run_dir: str
    created_at: str
    config_path: str | None = None
    route: str | None = None
    task: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    exit_reason: str | None = None
    completed: bool | None = None
    steps: int | None = None
    peer_uid: int | None = None
    peer_pid: int | None = None
    error: str | None = None
    warnings: list[str] = []
    # Set when `logging.retention.max_runs` deleted the run directory (kcd/retention.py);
    # the row stays so `kcctl runs show` can say so.
    pruned_at: str | None = None
    replay_of: str | None = None  # the recorded run this run replays (`kcctl replay`)


class RunList(msgspec.Struct):
    """`GET /v1/runs`: runs, newest first."""

    runs: list[RunInfo]


class Event(msgspec.Struct):
    """One line of a run's event stream and of `meta/events.jsonl`."""

    seq: int
    ts: str
    run_id: str
    type: str
    data: dict[str, Any] = {}


class RouteRef(msgspec.Struct, forbid_unknown_fields=True):
    """A route named in a request body (breaker reset, probe refresh)."""

    route: str


class ViewerSessionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/viewer/sessions` (`kcctl view [RUN]`): a login link, to RUN's page if given."""

    run: str | None = None


class ViewerSession(msgspec.Struct):
    """A one-time login link to the run viewer on its loopback TCP listener."""

    url: str
    expires_in_s: float
    run: str | None = None


class UploadInfo(msgspec.Struct):
    """`POST /v1/workspaces`: the upload's id and size."""

    upload_id: str
    size: int
    members: int


class FileChange(msgspec.Struct, omit_defaults=True):
    """One file a run added, modified or deleted, with its new content."""

    path: str
    action: Literal["added", "modified", "deleted"]
    sha256_before: str | None = None
    sha256_after: str | None = None
    content_b64: str | None = None  # the new content (added/modified)
    mode: int | None = None


class RunChanges(msgspec.Struct):
    """`GET /v1/runs/{id}/changes`: what `kcctl run --apply` writes back."""

    run_id: str
    changes: list[FileChange]
    diff: str


class ReplayRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/runs/{id}/replay`: replay against the recorded seed, or another tree."""

    workspace: str | None = None  # a directory on the daemon host instead of the recorded seed
    workspace_upload: str | None = None  # an upload id from POST /v1/workspaces (kcctl's way)


class ReplayDivergence(msgspec.Struct):
    """One place where the replay's tool results differ from the recorded ones.

    kind: "result" (a field of a call's result differs), "call" (the call itself: present on
    one side only, another tool or arguments, rejected on one side), "turns" (one run took
    more turns than the other)."""

    turn: int
    kind: str
    field: str  # a path into the result row: "out", "data.content", "ok", "data.items[2].name"
    recorded: str  # excerpts around the first difference; "(absent)" when missing
    replayed: str
    call_index: int | None = None  # 0-based within the turn
    tool: str | None = None


class ReplayReport(msgspec.Struct):
    """`replay.json` in the replay's run directory, and `GET /v1/runs/{id}/replay`."""

    recorded_run: str
    replay_run: str
    identical: bool
    turns_compared: int
    calls_compared: int
    recorded_turns: int
    replayed_turns: int
    recorded_exit_reason: str | None
    replayed_exit_reason: str | None
    workspace: str  # "recorded seed" or the tree given instead
    responses_recorded: int
    responses_served: int
    normalised: list[str]  # what was treated as volatile before comparing
    divergences: list[ReplayDivergence] = []
    divergences_total: int = 0  # before the list was capped
