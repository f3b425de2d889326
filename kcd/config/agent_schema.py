"""Schema V2 agent config (the original KyleCode's YAML format) as typed msgspec Structs.

Only keys kcd honours are fields. Keys the original had but kcd ignores are
listed per Struct in `ignored_keys` (the loader warns once per key path);
typed fields whose behaviour is not implemented yet are listed in
`pending_keys` (also warned), so a config never has a silent no-op.

Configs are treated as read-only once loaded: per-run state (e.g. the plan ->
build switch) is passed to the query methods instead of mutating the config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta, field

from kcd.api.typeinfo import prepare_types
from kcd.config.agent_resilience import RouteRetry, RouteTimeouts, layered
from kcd.providers.routes import Route, parse_route

Positive = Annotated[int, Meta(gt=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]

ToolPromptMode = Literal[
    "system_once",
    "per_turn_append",
    "system_and_per_turn",
    "system_compiled_and_persistent_per_turn",
    "none",
]

# One definition, shared with the executor settings (kcd.agent.calls imports only msgspec).
from kcd.agent.calls import DEFAULT_NONBLOCKING_TOOLS  # noqa: E402


class _Cfg(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base: options are repeated on every subclass because kw_only is not inherited."""


# -- providers ---------------------------------------------------------------


class RoutingPrefs(_Cfg, kw_only=True, forbid_unknown_fields=True):
    disable_stream_on_probe_failure: bool = True
    disable_native_tools_on_probe_failure: bool = True
    fallback_models: list[str] = []  # route ids, tried in order


class ModelParams(_Cfg, kw_only=True, forbid_unknown_fields=True):
    """Sampling parameters that are really sent with every call on the route."""

    ignored_keys: ClassVar[frozenset[str]] = frozenset({"parallel_tools", "structured_outputs", "tool_use"})

    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_tokens: Positive | None = None

    def to_request(self) -> dict[str, float | int]:
        values = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        return {k: v for k, v in values.items() if v is not None}


def _unify_routing(owner: ModelEntry | Providers) -> None:
    """`routing_preferences` is an alias of `routing`; afterwards `routing` is always set."""
    if owner.routing is not None and owner.routing_preferences is not None:
        raise ValueError("both `routing` and `routing_preferences` are set; use one")
    owner.routing = owner.routing or owner.routing_preferences or RoutingPrefs()


class ModelEntry(_Cfg, kw_only=True, forbid_unknown_fields=True):
    id: str  # route id as written; compare with `parse_route(id).id`
    adapter: str
    params: ModelParams = field(default_factory=ModelParams)
    routing: RoutingPrefs | None = None  # always set after init (see _unify_routing)
    routing_preferences: RoutingPrefs | None = None  # alias, as written
    base_url: str | None = None  # kcd: endpoint override for this route
    stream: bool = False  # kcd: stream this route's calls
    timeouts: RouteTimeouts | None = None  # kcd: over providers.timeouts, key by key
    retry: RouteRetry | None = None  # kcd: over providers.retry, key by key
    native_tools: bool | None = None  # kcd: the route supports native tool calls; None: provider default
    # kcd: the model's context window in tokens; a context-length error falls back only to a
    # route whose known window is larger.
    context_window: Annotated[int, Meta(ge=1)] | None = None

    def __post_init__(self) -> None:
        _unify_routing(self)


class Providers(_Cfg, kw_only=True, forbid_unknown_fields=True):
    default_model: str
    models: Annotated[list[ModelEntry], Meta(min_length=1)]
    # Provider-wide preferences: used only for routes with no models[] entry.
    routing: RoutingPrefs | None = None
    routing_preferences: RoutingPrefs | None = None
    # Provider-wide defaults for every route; a models[] entry's keys layer on top.
    timeouts: RouteTimeouts | None = None
    retry: RouteRetry | None = None

    def __post_init__(self) -> None:
        _unify_routing(self)


class OpenAIToolOptions(_Cfg, kw_only=True, forbid_unknown_fields=True):
    include: list[str] = []
    include_reasoning: bool = True
    store: bool | None = None


class AnthropicOptions(_Cfg, kw_only=True, forbid_unknown_fields=True):
    max_output_tokens: Positive = 1024
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None


class ProviderTools(_Cfg, kw_only=True, forbid_unknown_fields=True):
    # suppress_prompts: nothing ever read it (tests/unit/config/test_config_keys_read.py).
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"suppress_prompts"})
    pending_keys: ClassVar[frozenset[str]] = frozenset({"api_variant", "openai", "anthropic"})

    use_native: bool | None = None  # None: the provider's default
    api_variant: Literal["chat", "responses"] | None = None
    openai: OpenAIToolOptions | None = None
    anthropic: AnthropicOptions | None = None


class ProviderProbes(_Cfg, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False


# -- prompts -----------------------------------------------------------------


class PromptInjection(_Cfg, kw_only=True, forbid_unknown_fields=True):
    system_order: list[str] = []  # "@pack(<p>).<key>", optionally "[CACHE] "-prefixed
    per_turn_order: list[str] = []  # as above, plus "mode_specific"


class TpslSelection(_Cfg, kw_only=True, forbid_unknown_fields=True):
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"by_model"})

    by_mode: dict[str, str] = {}


class TpslDetail(_Cfg, kw_only=True, forbid_unknown_fields=True):
    system: Literal["full", "medium", "short"] = "full"
    per_turn: Literal["short", "medium", "long"] = "short"


class ToolPromptSynthesis(_Cfg, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    root: str = "implementations/tool_prompt_synthesis"
    dialects: dict[str, dict[str, str]] = {}
    selection: TpslSelection = field(default_factory=TpslSelection)
    detail: TpslDetail = field(default_factory=TpslDetail)


class Prompts(_Cfg, kw_only=True, forbid_unknown_fields=True):
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"cache", "evolution", "task_prompt"})
    pending_keys: ClassVar[frozenset[str]] = frozenset({"tool_prompt_synthesis"})

    tool_prompt_mode: ToolPromptMode = "system_once"
    packs: dict[str, dict[str, str]] = {}  # file paths, relative to the declaring file
    injection: PromptInjection = field(default_factory=PromptInjection)
    tool_prompt_synthesis: ToolPromptSynthesis = field(default_factory=ToolPromptSynthesis)


# -- tools -------------------------------------------------------------------


class ToolRegistry(_Cfg, kw_only=True, forbid_unknown_fields=True):
    paths: list[str] = []
    include: list[str] = []  # "*" = every available tool


class DialectModelPreference(_Cfg, kw_only=True, forbid_unknown_fields=True):
    order: list[str] = []
    native: bool | None = None


class DialectPreference(_Cfg, kw_only=True, forbid_unknown_fields=True):
    default: list[str] = []
    by_model: dict[str, list[str] | DialectModelPreference] = {}
    by_tool_kind: dict[str, list[str]] = {}


class DialectSelection(_Cfg, kw_only=True, forbid_unknown_fields=True):
    by_model: dict[str, list[str]] = {}
    by_tool_kind: dict[str, list[str]] = {}


class UnifiedDiffPolicy(_Cfg, kw_only=True, forbid_unknown_fields=True):
    header_style: str = "git"
    use_dev_null: bool = True


class SearchReplacePolicy(_Cfg, kw_only=True, forbid_unknown_fields=True):
    prefer_write_file_tool: bool = False


class CreateFilePolicy(_Cfg, kw_only=True, forbid_unknown_fields=True):
    unified_diff: UnifiedDiffPolicy | None = None
    aider_search_replace: SearchReplacePolicy | None = None


class ToolDialects(_Cfg, kw_only=True, forbid_unknown_fields=True):
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"order"})

    preference: DialectPreference = field(default_factory=DialectPreference)
    selection: DialectSelection = field(default_factory=DialectSelection)
    create_file_policy: CreateFilePolicy = field(default_factory=CreateFilePolicy)


class ToolsConfig(_Cfg, kw_only=True, forbid_unknown_fields=True):
    pending_keys: ClassVar[frozenset[str]] = frozenset({"overlays", "dialects"})

    registry: ToolRegistry = field(default_factory=ToolRegistry)
    defs_dir: str | None = None  # defaults to registry.paths[0], as in the original
    enabled: dict[str, bool] = {}  # legacy selection, used when registry.include is empty
    aliases: dict[str, str] = {}  # call name -> canonical name; chains are followed
    mark_task_complete: bool = True
    network: bool = False  # shell commands get the host network (if the daemon's sandbox.allow_network)
    overlays: list[dict[str, Any]] = []
    dialects: ToolDialects = field(default_factory=ToolDialects)

    def __post_init__(self) -> None:
        if self.defs_dir is None and self.registry.paths:
            self.defs_dir = self.registry.paths[0]


# -- modes and loop ----------------------------------------------------------


class Mode(_Cfg, kw_only=True, forbid_unknown_fields=True):
    """One `modes[]` entry: its prompt and the tools it enables or disables."""

    ignored_keys: ClassVar[frozenset[str]] = frozenset({"triggers", "outputs", "exit", "subagents"})

    name: str
    prompt: str | None = None  # "@pack(<p>).<key>" or literal text
    tools_enabled: list[str] | None = None  # None: no filter; "*" allowed
    tools_disabled: list[str] | None = None


class ModeRef(_Cfg, kw_only=True, forbid_unknown_fields=True):
    mode: str


FeatureTest = Annotated[str, Meta(pattern=r"^features\.[A-Za-z0-9_\-]+$")]


class SequenceStep(_Cfg, kw_only=True, forbid_unknown_fields=True):
    """`{if: features.<flag>, then: {mode: m}}` or `{mode: m}`."""

    ignored_keys: ClassVar[frozenset[str]] = frozenset({"while", "do"})

    if_: FeatureTest | None = field(default=None, name="if")
    then: ModeRef | None = None
    mode: str | None = None

    def target(self, features: Mapping[str, bool]) -> str | None:
        """The mode this step selects under `features`, or None if it does not apply."""
        if self.if_ is None:
            return self.mode
        flag = self.if_.split(".", 1)[1]
        return self.then.mode if self.then is not None and features.get(flag) else None


class TurnStrategy(_Cfg, kw_only=True, forbid_unknown_fields=True):
    """Accepted for the original's configs; kcd acts on none of its keys. Tool results are
    always relayed as `tool` messages (native) or a user message (text tools), whatever
    `relay` says, and `flow` never had a second value; both were typed but unread."""

    ignored_keys: ClassVar[frozenset[str]] = frozenset(
        {"tool_result_injection", "allow_multiple_per_turn", "relay", "flow"})


class Loop(_Cfg, kw_only=True, forbid_unknown_fields=True):
    sequence: Annotated[list[SequenceStep], Meta(min_length=1)]
    turn_strategy: TurnStrategy | None = None
    plan_turn_limit: Positive | None = None


# -- execution, completion, logging -----------------------------------------


class ConcurrencyGroup(_Cfg, kw_only=True, forbid_unknown_fields=True):
    name: str
    match_tools: list[str] = []
    max_parallel: Positive = 1
    barrier_after: str | None = None


class Concurrency(_Cfg, kw_only=True, forbid_unknown_fields=True):
    nonblocking_tools: list[str] = field(default_factory=lambda: list(DEFAULT_NONBLOCKING_TOOLS))
    at_most_one_of: list[str] = []
    groups: list[ConcurrencyGroup] = []


class Completion(_Cfg, kw_only=True, forbid_unknown_fields=True):
    # confidence_threshold: the detector has no confidence score; the key was never read.
    ignored_keys: ClassVar[frozenset[str]] = frozenset(
        {"primary", "tool_finish", "provider_signals", "natural_finish", "confidence_threshold"})

    text_sentinels: list[str] = []  # unioned with the built-in sentinels by the detector


ValidationRule = Literal[
    "no_redundant_creation",
    "read_before_edit",
    "no_mixed_dialect",
    "file_exists",
    "one_bash_per_turn",
    "reads_before_bash",
    "lsp_validation",
]


class ToolValidation(_Cfg, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    rules: list[ValidationRule] = []
    rule_config: dict[str, dict[str, Any]] = {}


class ShellPermissions(_Cfg, kw_only=True, forbid_unknown_fields=True):
    default: str = "allow"
    allowlist: list[str] = []
    denylist: list[str] = []


class FileWritePermissions(_Cfg, kw_only=True, forbid_unknown_fields=True):
    default: str = "allow"


class ToolPermissions(_Cfg, kw_only=True, forbid_unknown_fields=True):
    shell: ShellPermissions = field(default_factory=ShellPermissions)
    file_write: FileWritePermissions = field(default_factory=FileWritePermissions)


class EnhancedTools(_Cfg, kw_only=True, forbid_unknown_fields=True):
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"lsp_integration"})

    enabled: bool = False
    validation: ToolValidation = field(default_factory=ToolValidation)
    permissions: ToolPermissions = field(default_factory=ToolPermissions)


class DialectProfile(_Cfg, kw_only=True, forbid_unknown_fields=True):
    preferred_dialects: list[str] = []
    exclusions: list[str] = []
    mode: str | None = None


class Workspace(_Cfg, kw_only=True, forbid_unknown_fields=True):
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"sandbox", "lsp", "mirror"})

    root: str | None = None  # an explicit CLI/API workspace wins


class Retention(_Cfg, kw_only=True, forbid_unknown_fields=True):
    # Above 0: after each run of this config ends, only the newest max_runs finished run
    # directories of the same user and config file are kept (kcd/retention.py).
    max_runs: Annotated[int, Meta(ge=0)] = 0  # 0: keep every run


class LoggingConfig(_Cfg, kw_only=True, forbid_unknown_fields=True):
    """Only `retention` acts. Every run has a run directory under the daemon's runs root,
    with its raw records, events and structured requests, always redacted; the original's
    switches for these were typed here once but nothing read them, so they are accepted
    with a warning instead."""

    ignored_keys: ClassVar[frozenset[str]] = frozenset(
        {"enabled", "root_dir", "redact", "include_raw", "include_events", "include_structured_requests"})

    retention: Retention = field(default_factory=Retention)


# -- the whole document -------------------------------------------------------


class AgentConfig(_Cfg, kw_only=True, forbid_unknown_fields=True):
    """A whole Schema V2 agent config document."""

    ignored_keys: ClassVar[frozenset[str]] = frozenset(
        {"profile", "hpo", "rl_and_evolution", "telemetry", "model", "prompt", "limits", "output"}
    )
    pending_keys: ClassVar[frozenset[str]] = frozenset({"enhanced_tools"})

    version: int
    workspace: Workspace
    providers: Providers
    modes: Annotated[list[Mode], Meta(min_length=1)]
    loop: Loop
    provider_tools: ProviderTools = field(default_factory=ProviderTools)
    provider_probes: ProviderProbes = field(default_factory=ProviderProbes)
    features: dict[str, bool] = {}
    prompts: Prompts = field(default_factory=Prompts)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    turn_strategy: TurnStrategy | None = None  # defaults to loop.turn_strategy, then TurnStrategy()
    concurrency: Concurrency = field(default_factory=Concurrency)
    completion: Completion = field(default_factory=Completion)
    enhanced_tools: EnhancedTools = field(default_factory=EnhancedTools)
    dialect_profiles: dict[str, DialectProfile] = {}
    max_iterations: Positive = 12  # used when the caller passes no step limit
    tool_timeout: PositiveFloat = 30.0  # seconds per tool call
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if self.turn_strategy is None:
            self.turn_strategy = self.loop.turn_strategy or TurnStrategy()

    # -- routes ---------------------------------------------------------------

    def default_route(self) -> Route:
        return parse_route(self.providers.default_model)

    def model_entry(self, route_id: str) -> ModelEntry | None:
        """The models[] entry for a route; `gpt-4o-mini` matches `openai/gpt-4o-mini`.

        Raises RouteError if `route_id` itself is not a valid route id.
        """
        wanted = parse_route(route_id).id
        return next((m for m in self.providers.models if parse_route(m.id).id == wanted), None)

    def request_params(self, route_id: str) -> dict[str, float | int]:
        """temperature/top_p/max_tokens to send on this route: only the configured ones."""
        entry = self.model_entry(route_id)
        return entry.params.to_request() if entry else {}

    def routing_for(self, route_id: str) -> RoutingPrefs:
        """The route's models[] routing; with no entry the provider-wide block; else defaults."""
        entry = self.model_entry(route_id)
        prefs = entry.routing if entry is not None else self.providers.routing
        return prefs or RoutingPrefs()

    def timeouts_for(self, route_id: str) -> dict[str, float]:
        """Attempt timeouts set for this route (connect, write, ttft, idle, progress,
        total; seconds): providers.timeouts, then the models[] entry's, key by key.
        Only keys written in the config appear."""
        entry = self.model_entry(route_id)
        top = entry.timeouts if entry is not None else None
        return layered(self.providers.timeouts, top)  # type: ignore[return-value]

    def retry_for(self, route_id: str) -> dict[str, float | int]:
        """Retry settings set for this route (RetryPolicy field names):
        providers.retry, then the models[] entry's, key by key. Only keys written appear."""
        entry = self.model_entry(route_id)
        return layered(self.providers.retry, entry.retry if entry is not None else None)

    def native_tools_for(self, route_id: str) -> bool | None:
        """The models[] entry's `native_tools`; None (the provider default) without one."""
        entry = self.model_entry(route_id)
        return entry.native_tools if entry is not None else None

    # -- modes ----------------------------------------------------------------

    def mode(self, name: str) -> Mode | None:
        return next((m for m in self.modes if m.name == name), None)

    def active_mode(self, features: Mapping[str, bool] | None = None) -> Mode:
        """First loop.sequence step that applies, else modes[0].

        `features` overrides the configured flags (per-run state such as the
        plan -> build switch), so the config itself is never mutated.
        """
        flags = self.features if features is None else features
        for step in self.loop.sequence:
            name = step.target(flags)
            if name is not None:
                found = self.mode(name)
                if found is not None:
                    return found
        return self.modes[0]

    # -- tools ----------------------------------------------------------------

    def canonical_tool_name(self, name: str) -> str:
        """Follow tools.aliases to the end of the chain; a cycle stops at its last new name."""
        seen = {name}
        while name in self.tools.aliases:
            nxt = self.tools.aliases[name]
            if nxt in seen:
                break
            seen.add(nxt)
            name = nxt
        return name

    def select_tools(self, available: Sequence[str], mode: Mode | None = None) -> list[str]:
        """The tools offered in `mode` (default: the active mode), in `available` order.

        Selection: registry.include ("*" = all), else the legacy `enabled` map,
        else everything; then the mode's tools_enabled ("*" allowed) and
        tools_disabled filters.
        """
        chosen = self._selection_names()
        tools = [t for t in available if chosen is None or t in chosen]
        mode = mode or self.active_mode()
        if mode.tools_enabled is not None and "*" not in mode.tools_enabled:
            allowed = {self.canonical_tool_name(n) for n in mode.tools_enabled}
            tools = [t for t in tools if t in allowed]
        if mode.tools_disabled:
            denied = {self.canonical_tool_name(n) for n in mode.tools_disabled}
            tools = [t for t in tools if t not in denied]
        return tools

    def unknown_tools(self, available: Sequence[str]) -> list[str]:
        """Names the selection asks for that are not available (as written, in order)."""
        have = set(available)
        names = self._selection_list()
        unknown = [n for n in names if n != "*" and self.canonical_tool_name(n) not in have]
        return list(dict.fromkeys(unknown))

    def _selection_list(self) -> list[str]:
        if self.tools.registry.include:
            return self.tools.registry.include
        return [name for name, on in self.tools.enabled.items() if on]

    def _selection_names(self) -> set[str] | None:
        """Canonical names selected by the config; None means every tool."""
        if self.tools.registry.include:
            if "*" in self.tools.registry.include:
                return None
            return {self.canonical_tool_name(n) for n in self.tools.registry.include}
        if self.tools.enabled:
            return {self.canonical_tool_name(n) for n, on in self.tools.enabled.items() if on}
        return None


prepare_types(AgentConfig)  # converted in worker threads: see kcd/api/typeinfo.py
