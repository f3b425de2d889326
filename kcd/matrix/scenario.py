"""Matrix scenarios: the YAML schema (`configs/matrix/*.yaml`) and its loader.

One file is one scenario::

    name: f04_unavailable_persistent          # [a-z0-9_], unique in the matrix
    description: 503 on every call; bounded retries, then the fallback serves
    config: ../opencode_grok4fast_c_fs_v2.yaml  # optional base agent config (relative to this file)
    routes:                                     # optional route setup (over the base config's)
      primary: openrouter/x-ai/grok-4-fast
      fallbacks: [openai/gpt-4o-mini]
      stream: false                             # the primary's streaming
      native_tools: null                        # provider_tools.use_native (the "tool turn")
      probes: false                             # provider_probes.enabled
      max_steps: 6
      timeouts: {ttft: 2}                       # over the fast defaults (configgen)
      retry: {retries_per_route: 1}
      unreachable: [primary]                    # simulator fault F07: base_url on a closed port
      missing_keys: [OPENROUTER_API_KEY]        # run as if the daemon had no such key
    breaker: {threshold: 1, cooldown_s: 1}      # this scenario's own breaker settings
    fault: {route: primary, name: unavailable_persistent, count: null, params: {}}  # or a list
    expect: {...}                               # see `Expect`
    live: false                                 # true: runs only with --live, on real providers

`steps:` (a list of `{fault, wait_s, task, expect}`) replaces `fault` and
`expect` for scenarios that need several runs in a row (a breaker that opens
in one run, is skipped in the next, and closes after its cooldown). Every run
of a scenario shares the scenario's breaker board and simulator namespace.

Routes may be written as route ids or as aliases: `primary`, `fallback`
(the first fallback), `fallback2`, `fallback3`, ...; `*` in a fault means
every model. Text expectations may use `{primary}`, `{fallback}`, ... .

Every problem is a `ConfigError` naming the file and the key path, like agent
configs. Loading is pure (no file is read but the text given); the base
config is read when the scenario is prepared (`configgen.prepare`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, field

from kcd.api.typeinfo import prepare_types
from kcd.api.types import EXIT_REASONS
from kcd.config.agent_resilience import RouteRetry, RouteTimeouts
from kcd.config.daemon import BreakerSettings
from kcd.config.keypath import ConfigError, Path_, parse, render
from kcd.config.yamlfile import load_yaml
from kcd.matrix.compare import GrammarError, parse_comparison, parse_path
from kcd.matrix.types import SCENARIO_NAME
from kcd.providers.routes import RouteError, parse_route

__all__ = [
    "ANY_MODEL",
    "DEFAULT_TASK",
    "Expect",
    "FaultRef",
    "RouteSetup",
    "Scenario",
    "ScenarioDoc",
    "Step",
    "decode_document",
    "is_alias",
    "load_scenario_text",
    "normalise",
]

DEFAULT_TASK = "List the workspace, summarise what it holds, then call mark_task_complete."
ANY_MODEL = "*"
NAME_PATTERN = SCENARIO_NAME
_ALIAS = re.compile(r"(primary|fallback)(\d*)\Z")
_TEMPLATE = re.compile(r"\{(primary|fallback\d*)\}")

Name = Annotated[str, Meta(pattern=NAME_PATTERN)]
Value = int | float | bool | str
Policy = Literal["unchanged", "disabled", "disabled_by_probe"]
BreakerState = Literal["closed", "open", "half_open", "forced_open", "disabled"]
BREAKER_STATES: tuple[str, ...] = get_args(BreakerState)
KeyEnv = Literal["OPENAI_API_KEY", "OPENROUTER_API_KEY"]
Positive = Annotated[float, Meta(gt=0)]


class _S(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base: options are repeated on every subclass because kw_only is not inherited."""


class FaultRef(_S, kw_only=True, forbid_unknown_fields=True):
    name: str  # a fault of the simulator's catalogue (F01-F42)
    route: str = "primary"  # route id, alias, or "*" (any model of the scenario)
    count: Annotated[int, Meta(ge=1)] | None = None  # requests that get it; null: until the step ends
    params: dict[str, int | float | str | None] = {}  # str: text parameters (scripted's body)


class RouteSetup(_S, kw_only=True, forbid_unknown_fields=True):
    primary: str | None = None  # None: the base config's default_model
    fallbacks: list[str] | None = None  # None: the base config's chain for the primary
    stream: bool | None = None  # the primary's streaming; None: the config's
    native_tools: bool | None = None  # provider_tools.use_native; None: the config's
    probes: bool | None = None  # provider_probes.enabled; None: the config's (off inline)
    max_steps: Annotated[int, Meta(ge=1)] | None = None
    timeouts: RouteTimeouts | None = None  # provider-wide, over the fast defaults
    retry: RouteRetry | None = None  # provider-wide, over the fast defaults
    unreachable: list[str] = []  # routes whose base_url is a closed port (simulator fault F07)
    missing_keys: list[KeyEnv] = []  # keys the sandbox leaves unset (offline only)
    context_windows: dict[str, Annotated[int, Meta(ge=1)]] = {}  # route or alias -> tokens


class Expect(_S, kw_only=True, forbid_unknown_fields=True):
    """What one run must show. Every key is optional; absent keys are not checked."""

    exit_reason: str | None = None
    completed: bool | None = None
    steps: Value | None = None  # a comparison on the number of steps taken
    served_route: str | None = None  # the route that served the last turn
    fallback_target: str | None = None  # a fallback happened, to this route, and it served
    fallbacks_min: Annotated[int, Meta(ge=0)] | None = None
    fallbacks_max: Annotated[int, Meta(ge=0)] | None = None
    stream_policy: Policy | None = None  # stream overrides: none / some / from a failed probe
    tool_policy: Policy | None = None  # tool overrides: none / some / from a failed probe
    native_tools: bool | None = None  # the run offered native tool schemas (run.start)
    markers_present: list[str] = []  # substrings of conversation/conversation.md
    markers_absent: list[str] = []
    metrics: dict[str, Value] = {}  # path in meta/provider_metrics.json -> comparison
    artifacts: list[str] = []  # globs (relative to the run dir) that must match a file
    artifacts_absent: list[str] = []
    attempt_errors: list[str] = []  # classifications that some failed attempt must show
    error_type: str | None = None  # result.json error_type
    error_contains: list[str] = []  # substrings of result.json error
    upstream: dict[str, Value] = {}  # route or "*" -> chat requests the simulator saw in this run (probes too)
    breaker: dict[str, BreakerState] = {}  # route -> breaker state after the run
    breaker_transitions: dict[str, list[str]] = {}  # route -> "from>to" changes, in order
    max_seconds: Positive = 60.0  # the run must end within this
    partial_after_s: Positive | None = None  # grade: a success slower than this is "partial"


class Step(_S, kw_only=True, forbid_unknown_fields=True):
    fault: FaultRef | list[FaultRef] | None = None  # replaces the previous step's faults
    wait_s: Annotated[float, Meta(ge=0)] = 0.0  # pause before the run (breaker cooldowns)
    task: str | None = None  # None: the scenario's task
    # Runs started at once (concurrent clients of one breaker board); each is judged against
    # `expect`, and `upstream` counts are the step's total.
    concurrent: Annotated[int, Meta(ge=1, le=32)] = 1
    expect: Expect = field(default_factory=Expect)


class ScenarioDoc(_S, kw_only=True, forbid_unknown_fields=True):
    """A scenario file as written."""

    name: Name
    description: str = ""
    config: str | None = None
    routes: RouteSetup = field(default_factory=RouteSetup)
    breaker: BreakerSettings | None = None
    task: str = DEFAULT_TASK
    workspace: str | None = None  # a seed directory, relative to this file
    live: bool = False
    fault: FaultRef | list[FaultRef] | None = None
    concurrent: Annotated[int, Meta(ge=1, le=32)] = 1
    expect: Expect | None = None
    steps: list[Step] | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A loaded scenario: paths resolved, steps normalised (each with its fault list)."""

    name: str
    description: str
    source: str  # the file it came from, as shown in errors
    base_config: Path | None
    workspace: Path | None
    routes: RouteSetup
    breaker: BreakerSettings
    live: bool
    steps: tuple[Step, ...]  # fault is always a list; task always set
    key_prefix: Path_ = ()  # where the scenario sits inside its file (plan entries)
    written_as_steps: bool = False  # `steps:` (not top-level fault/expect): for key paths

    def step_path(self, index: int) -> Path_:
        """The key path of a step's mapping in the file."""
        return (*self.key_prefix, "steps", index) if self.written_as_steps else self.key_prefix

    def faults(self, step: Step) -> list[FaultRef]:
        assert isinstance(step.fault, list)
        return step.fault


def is_alias(ref: str) -> bool:
    return _ALIAS.match(ref) is not None


def alias_index(ref: str) -> int | None:
    """0 for `primary`, n for the n-th fallback (`fallback` is 1), None for a route id."""
    m = _ALIAS.match(ref)
    if m is None:
        return None
    if m.group(1) == "primary":
        return 0 if not m.group(2) else None
    return int(m.group(2) or 1)


def templates(text: str) -> list[str]:
    """The `{alias}` names used in `text`."""
    return _TEMPLATE.findall(text)


# ---- loading ---------------------------------------------------------------------------


def decode_document(data: Any, type_: type, file: str, prefix: Path_ = ()) -> Any:
    """msgspec.convert with errors as `ConfigError(file, key path, message)`."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        message, path = _split_error(str(exc))
        raise ConfigError(file, render((*prefix, *path)), message) from None


def _split_error(text: str) -> tuple[str, Path_]:
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        message, where = text, "$`"
    path = parse(where.rstrip("`"))
    for lead, what in (("Object missing required field `", "missing required key"),
                       ("Object contains unknown field `", "unknown key")):
        if message.startswith(lead):
            return what, (*path, message[len(lead):].rstrip("`"))
    return message, path


def load_scenario_text(text: str, path: str | None) -> Scenario:
    """Parse one scenario file (`path` anchors its relative paths and names it in errors)."""
    file = path or "<scenario>"
    data, _warnings = load_yaml(text, file)
    if not isinstance(data, dict):
        raise ConfigError(file, "$", "a scenario file is a mapping (name, routes, fault, expect, ...)")
    doc = decode_document(data, ScenarioDoc, file)
    return normalise(doc, file, Path(path).resolve().parent if path else None)


def normalise(doc: ScenarioDoc, file: str, directory: Path | None, prefix: Path_ = ()) -> Scenario:
    """Check what the types cannot say and resolve relative paths."""

    def err(where: Path_, message: str) -> ConfigError:
        return ConfigError(file, render((*prefix, *where)), message)

    def local(value: str | None, key: str) -> Path | None:
        if value is None:
            return None
        if directory is None and not Path(value).is_absolute():
            raise err((key,), "a relative path needs the scenario's file path")
        return ((directory or Path("/")) / value).resolve()

    if doc.steps is not None:
        for key in ("fault", "expect"):
            if getattr(doc, key) is not None:
                raise err((key,), "give `steps`, or `fault` and `expect`, not both")
        if doc.concurrent != 1:
            raise err(("concurrent",), "with `steps`, give `concurrent` in each step")
        if not doc.steps:
            raise err(("steps",), "needs at least one step")
        raw_steps = [(("steps", i), s) for i, s in enumerate(doc.steps)]
    else:
        raw_steps = [((), Step(fault=doc.fault, concurrent=doc.concurrent, expect=doc.expect or Expect()))]
    if doc.routes.primary is None and doc.config is None:
        raise err(("routes", "primary"), "missing: give routes.primary or a base `config`")
    _check_routes(doc.routes, err)
    steps = []
    for where, step in raw_steps:
        faults = step.fault if isinstance(step.fault, list) else ([step.fault] if step.fault else [])
        for i, fault in enumerate(faults):
            at = (*where, "fault", i) if isinstance(step.fault, list) else (*where, "fault")
            _check_fault(fault, at, err)
        if doc.live and faults:
            raise err((*where, "fault"), "a live scenario runs on real providers: it cannot inject faults")
        _check_expect(step.expect, (*where, "expect"), err, live=doc.live)
        steps.append(msgspec.structs.replace(step, fault=faults, task=step.task or doc.task))
    if doc.live and (doc.routes.unreachable or doc.routes.missing_keys):
        raise err(("routes",), "a live scenario cannot use unreachable or missing_keys")
    return Scenario(
        name=doc.name, description=" ".join(doc.description.split()), source=file,
        base_config=local(doc.config, "config"), workspace=local(doc.workspace, "workspace"),
        routes=doc.routes, breaker=doc.breaker or BreakerSettings(), live=doc.live,
        steps=tuple(steps), key_prefix=prefix, written_as_steps=doc.steps is not None)


def _check_route_ref(ref: str, where: Path_, err, *, allow_any: bool = False) -> None:
    if ref == ANY_MODEL and allow_any:
        return
    if is_alias(ref):
        if alias_index(ref) is None:
            raise err(where, f"{ref!r}: write `primary`, `fallback`, `fallback2`, ... or a route id")
        return
    try:
        parse_route(ref)
    except RouteError as exc:
        raise err(where, f"{exc}; or use an alias: primary, fallback, fallback2, ...") from None


def _check_routes(routes: RouteSetup, err) -> None:
    """Route ids only in the chain itself; aliases also in `unreachable`."""
    written: list[tuple[Path_, str]] = [(("routes", "fallbacks", i), r) for i, r in enumerate(routes.fallbacks or ())]
    if routes.primary is not None:
        written.insert(0, (("routes", "primary"), routes.primary))
    for where, value in written:
        try:
            parse_route(value)
        except RouteError as exc:
            raise err(where, str(exc)) from None
    for i, ref in enumerate(routes.unreachable):
        _check_route_ref(ref, ("routes", "unreachable", i), err)


def _check_fault(fault: FaultRef, where: Path_, err) -> None:
    from kcd.simulator.faults import FaultError, resolve  # the catalogue; not needed at daemon start-up

    _check_route_ref(fault.route, (*where, "route"), err, allow_any=True)
    try:
        resolve(fault.name, fault.params)
    except FaultError as exc:
        key = "name" if "unknown fault" in str(exc) else "params"
        raise err((*where, key), str(exc)) from None


def _check_expect(expect: Expect, where: Path_, err, *, live: bool) -> None:
    if expect.exit_reason is not None and expect.exit_reason not in EXIT_REASONS:
        raise err((*where, "exit_reason"), f"{expect.exit_reason!r} is not an exit reason "
                                           f"({', '.join(EXIT_REASONS)})")
    for key in ("served_route", "fallback_target"):
        value = getattr(expect, key)
        if value is not None:
            _check_route_ref(value, (*where, key), err)
    if expect.steps is not None:
        _grammar(lambda: parse_comparison(expect.steps), (*where, "steps"), err)
    for path, spec in expect.metrics.items():
        _grammar(lambda: parse_path(_TEMPLATE.sub("x", path)), (*where, "metrics", path), err)
        _grammar(lambda: parse_comparison(spec), (*where, "metrics", path), err)
    for ref, spec in expect.upstream.items():
        _check_route_ref(ref, (*where, "upstream", ref), err, allow_any=True)
        _grammar(lambda: parse_comparison(spec), (*where, "upstream", ref), err)
    for ref in expect.breaker:
        _check_route_ref(ref, (*where, "breaker", ref), err)
    for ref, changes in expect.breaker_transitions.items():
        _check_route_ref(ref, (*where, "breaker_transitions", ref), err)
        for i, change in enumerate(changes):
            states = change.split(">")
            if len(states) != 2 or not all(s in BREAKER_STATES for s in states):
                raise err((*where, "breaker_transitions", ref, i),
                          f"{change!r}: write from>to with states {', '.join(BREAKER_STATES)}")
    if live and (expect.upstream or expect.breaker or expect.breaker_transitions):
        raise err(where, "upstream and breaker expectations need the simulator; a live scenario has none")


def _grammar(fn, where: Path_, err) -> None:
    try:
        fn()
    except GrammarError as exc:
        raise err(where, str(exc)) from None


prepare_types(ScenarioDoc)  # converted in worker threads: see kcd/api/typeinfo.py
