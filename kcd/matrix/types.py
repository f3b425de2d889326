"""Wire types of the matrix API (`/v1/matrix`): msgspec Structs, nothing heavy imported.

    POST /v1/matrix                   MatrixRequest -> 201 MatrixInfo
    GET  /v1/matrix/{id}              MatrixInfo (results so far)
    GET  /v1/matrix/{id}/events       NDJSON: matrix.start, scenario.start, scenario.end
                                      {result: ScenarioResult}, matrix.end {info: MatrixInfo}
    POST /v1/matrix/{id}/cancel       202 MatrixInfo
    POST /v1/scenarios/from-run       ScenarioFromRunRequest -> 200 ScenarioFromRun
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "Diagnostics",
    "MatrixInfo",
    "MatrixRequest",
    "MatrixSummary",
    "SCENARIO_NAME",
    "ScenarioFile",
    "ScenarioFromRun",
    "ScenarioFromRunRequest",
    "ScenarioResult",
    "StepResult",
]

Verdict = Literal["pass", "fail", "skip"]
Grade = Literal["pass", "partial", "safe", "fail"]
MatrixStatus = Literal["planned", "running", "passed", "failed", "cancelled"]  # planned: a dry run
MAX_PARALLEL = 32
SCENARIO_NAME = r"^[a-z0-9][a-z0-9_]{0,79}$"  # a scenario's `name`, and its file's stem


class ScenarioFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    text: str  # a scenario (YAML) or a plan file (JSON, the original's regression_matrix_plan.json)
    path: str | None = None  # absolute: anchors relative paths and names the file in errors


class MatrixRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /v1/matrix`: scenario files, selection and options."""

    files: Annotated[list[ScenarioFile], Meta(min_length=1)]
    scenarios: list[str] = []  # names or fnmatch patterns; empty: every scenario
    parallel: Annotated[int, Meta(ge=1, le=MAX_PARALLEL)] = 4
    live: bool = False  # run the live scenarios on real providers (and only those)
    dry_run: bool = False  # load and check, list what would run, run nothing
    # Only the offline scenarios whose route chain includes one of these (kcctl incident);
    # scenarios that do not load are left out rather than refusing the request.
    routes: list[str] = []


class Diagnostics(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Stream and fallback evidence of a run, shown for failures."""

    markers: list[str] = []  # policy marker lines of conversation.md
    stream_overrides: list[dict[str, Any]] = []
    tool_overrides: list[dict[str, Any]] = []
    fallbacks: list[dict[str, Any]] = []
    circuit_skips: list[str] = []
    attempt_errors: list[str] = []  # "turn 1 attempt 2 <route>: <type> (HTTP 503)"
    upstream: dict[str, int] | None = None  # chat requests per model the simulator saw
    breaker: dict[str, str] | None = None
    error: str | None = None


class StepResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    verdict: Verdict
    grade: Grade | None = None
    reasons: list[str] = []
    run_id: str | None = None
    run_dir: str | None = None
    exit_reason: str | None = None
    completed: bool | None = None
    served_route: str | None = None
    fallbacks: int = 0
    seconds: float = 0.0
    diagnostics: Diagnostics | None = None


class ScenarioResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    verdict: Verdict
    grade: Grade | None = None  # of the last run (failoverbench scale)
    description: str = ""
    source: str = ""
    live: bool = False
    reasons: list[str] = []  # "step 2: ..." for multi-run scenarios
    route_used: str | None = None
    fallbacks: int = 0
    seconds: float = 0.0
    run_dirs: list[str] = []
    steps: list[StepResult] = []


class MatrixSummary(msgspec.Struct, kw_only=True):
    total: int
    passed: int
    failed: int
    skipped: int
    grades: dict[str, int]  # pass / partial / safe / fail
    seconds: float


class MatrixInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    status: MatrixStatus
    created_at: str
    parallel: int
    live: bool
    scenarios: list[str]  # what runs, in order
    descriptions: dict[str, str] = {}
    results: list[ScenarioResult] = []  # in completion order
    summary: MatrixSummary | None = None
    ended_at: str | None = None
    simulator: str | None = None  # base URL of the simulator the offline scenarios used
    peer_uid: int | None = None


class ScenarioFromRunRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /v1/scenarios/from-run` (`kcctl incident RUN --scenario NAME`)."""

    run: str  # run id, run directory name, or absolute run directory under the runs root
    name: Annotated[str, Meta(pattern=SCENARIO_NAME)]
    expect_outcome: Literal["fixed", "recorded"] | None = None  # None: recorded if it completed, else fixed


class ScenarioFromRun(msgspec.Struct, kw_only=True):
    """A scenario file made from a run; the client writes it (the daemon writes no client path)."""

    name: str
    run_id: str | None
    expect_outcome: Literal["fixed", "recorded"]
    text: str  # the YAML, scrubbed
    summary: list[str]  # what it reproduces, one line each

