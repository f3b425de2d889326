"""Unit tests for the Schema V2 agent config loader (kcd.config.agent)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kcd.config.agent import (
    AgentConfig,
    ConfigError,
    LoadedConfig,
    load_agent_config,
    load_agent_config_text,
)

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
from kcd.agent.tools import TOOL_SPECS  # noqa: E402

KCD_TOOLS = list(TOOL_SPECS)

MINIMAL: dict[str, Any] = {
    "version": 2,
    "workspace": {},
    "providers": {
        "default_model": "openai/gpt-4o-mini",
        "models": [{"id": "openai/gpt-4o-mini", "adapter": "openai"}],
    },
    "modes": [{"name": "build"}],
    "loop": {"sequence": [{"mode": "build"}]},
}


def minimal(**overrides: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    doc.update(overrides)
    return doc


def write(directory: Path, name: str, doc: dict[str, Any] | str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def load_doc(tmp_path: Path, doc: dict[str, Any] | str, name: str = "cfg.yaml") -> LoadedConfig:
    return load_agent_config(write(tmp_path, name, doc))


def error_for(tmp_path: Path, doc: dict[str, Any] | str, name: str = "cfg.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_doc(tmp_path, doc, name)
    return info.value


# -- shipped configs -----------------------------------------------------------

# Listed explicitly: configs/ may also hold non-agent files (daemon config, matrix scenarios).
SHIPPED = [
    "base_v2.yaml",
    "demo.yaml",
    "demo_text.yaml",
    "opencode_grok4fast_c_fs_v2.yaml",
    "opencode_mock_c_fs.yaml",
    "opencode_openai_gpt4o_mini_c_fs_perturn_append.yaml",
    "opencode_openai_gpt5nano_c_fs_direct.yaml",
    "opencode_openrouter_deepseek_v32exp_c_fs_perturn_append.yaml",
    "opencode_openrouter_glm46_c_fs_perturn_append.yaml",
]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_loads_cleanly(name: str) -> None:
    loaded = load_agent_config(CONFIGS / name)
    assert loaded.warnings == []
    assert loaded.config.version == 2
    assert loaded.source_path == str((CONFIGS / name).resolve())
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", loaded.digest)
    # Every pack a shipped config declares has real content.
    assert loaded.pack_texts and all(text.strip() for text in loaded.pack_texts.values())
    assert set(loaded.config.select_tools(KCD_TOOLS)) <= set(KCD_TOOLS)
    assert loaded.config.unknown_tools(KCD_TOOLS) == []


def test_demo_configs() -> None:
    demo = load_agent_config(CONFIGS / "demo.yaml").config
    assert demo.default_route().id == "mock/dev"
    assert [(m.id, m.adapter) for m in demo.providers.models] == [("mock/dev", "mock")]
    assert demo.provider_tools.use_native is True
    assert demo.max_iterations == 8
    assert demo.active_mode().name == "build"
    demo_tools = ["list_dir", "read_file", "create_file", "run_shell", "mark_task_complete"]
    assert demo.select_tools([*KCD_TOOLS, "extra_tool"]) == demo_tools
    text = load_agent_config(CONFIGS / "demo_text.yaml").config
    assert text.provider_tools.use_native is False
    assert text.select_tools(KCD_TOOLS) == demo_tools


def test_c_fs_configs_effective_values() -> None:
    def load(name: str) -> AgentConfig:
        return load_agent_config(CONFIGS / name).config

    grok = load("opencode_grok4fast_c_fs_v2.yaml")
    assert grok.default_route().id == "openrouter/x-ai/grok-4-fast"
    assert grok.request_params("openrouter/x-ai/grok-4-fast") == {"temperature": 0.1, "top_p": 0.9}
    assert grok.routing_for("openrouter/x-ai/grok-4-fast").fallback_models == [
        "openrouter/openai/gpt-4o-mini",
        "gpt-4o-mini",
    ]

    mini = load("opencode_openai_gpt4o_mini_c_fs_perturn_append.yaml")
    assert mini.default_route().id == "openai/gpt-4o-mini"
    assert mini.prompts.tool_prompt_mode == "per_turn_append"
    assert mini.provider_tools.use_native is False

    nano = load("opencode_openai_gpt5nano_c_fs_direct.yaml")
    assert nano.default_route().id == "openai/gpt-5-nano"
    assert nano.request_params("gpt-5-nano") == {}

    glm = load("opencode_openrouter_glm46_c_fs_perturn_append.yaml")
    assert glm.default_route().id == "openrouter/z-ai/glm-4.6"
    assert glm.routing_for("openrouter/z-ai/glm-4.6").fallback_models == ["openai/gpt-4o-mini"]
    assert glm.provider_tools.use_native is True
    assert glm.completion.text_sentinels == ["TASK COMPLETE"]

    deepseek = load("opencode_openrouter_deepseek_v32exp_c_fs_perturn_append.yaml")
    assert deepseek.default_route().id == "openrouter/deepseek/deepseek-v3.2-exp"
    assert deepseek.routing_for(deepseek.providers.default_model).fallback_models == ["openai/gpt-4o-mini"]

    mock = load("opencode_mock_c_fs.yaml")
    assert mock.default_route().id == "mock/dev"
    assert mock.provider_tools.use_native is False


def test_shipped_task_and_sample_workspace() -> None:
    task = (CONFIGS / "tasks" / "enumerate_workspace.md").read_text()
    assert "mark_task_complete()" in task and "two levels" in task
    project = CONFIGS / "workspaces" / "c_project"
    for rel in ["include/protofs.h", "src/protofs.c", "tests/test_protofs.c", "Makefile", "README.md"]:
        assert (project / rel).is_file(), rel


# -- extends and merge ---------------------------------------------------------


def test_extends_resolves_relative_to_declaring_file(tmp_path: Path) -> None:
    write(tmp_path, "base/prompts/sys.md", "base system prompt\n")
    write(
        tmp_path,
        "base/base.yaml",
        minimal(
            prompts={
                "packs": {"core": {"system": "prompts/sys.md"}},
                "injection": {"system_order": ["@pack(core).system"]},
            }
        ),
    )
    write(tmp_path, "mid/mid.yaml", {"extends": "../base/base.yaml", "max_iterations": 5})
    top = write(tmp_path, "top/deep/top.yaml", {"extends": ["../../mid/mid.yaml"], "tool_timeout": 7})

    loaded = load_agent_config(top)

    assert loaded.config.max_iterations == 5
    assert loaded.config.tool_timeout == 7
    # The pack path is relative to base.yaml's directory, not to top.yaml's.
    assert loaded.pack_paths["@pack(core).system"] == str(tmp_path / "base/prompts/sys.md")
    assert loaded.pack_text("[CACHE] @pack(core).system") == "base system prompt\n"
    assert [Path(f).name for f in loaded.files] == ["top.yaml", "mid.yaml", "base.yaml"]
    assert "extends" not in loaded.merged


def test_merge_rules(tmp_path: Path) -> None:
    base = minimal(
        providers={
            "default_model": "openai/gpt-4o-mini",
            "models": [
                {"id": "openai/gpt-4o-mini", "adapter": "openai", "params": {"temperature": 0.5}},
                {"id": "mock/dev", "adapter": "mock"},
            ],
        },
        tools={"registry": {"include": ["a", "b"]}, "aliases": {"x": "a"}, "enabled": {"a": True}},
        completion={"text_sentinels": ["ONE", "TWO"]},
    )
    write(tmp_path, "base.yaml", base)
    child = {
        "extends": "base.yaml",
        "providers": {"models": [{"id": "mock/dev", "adapter": "mock"}]},
        "tools": {"registry": {"include": ["c"]}, "aliases": {}},
        "completion": {"text_sentinels": ["THREE"]},
    }
    loaded = load_doc(tmp_path, child, "child.yaml")
    cfg = loaded.config

    assert [m.id for m in cfg.providers.models] == ["mock/dev"]  # lists replace
    assert cfg.providers.default_model == "openai/gpt-4o-mini"  # maps merge
    assert cfg.tools.registry.include == ["c"]
    assert cfg.tools.aliases == {"x": "a"}  # an empty child map keeps the base map
    assert cfg.tools.enabled == {"a": True}
    assert cfg.completion.text_sentinels == ["THREE"]
    assert loaded.merged["tools"] == {"registry": {"include": ["c"]}, "aliases": {"x": "a"}, "enabled": {"a": True}}


def test_multiple_bases_merge_left_to_right_then_child(tmp_path: Path) -> None:
    write(tmp_path, "one.yaml", minimal(max_iterations=1, tool_timeout=1))
    write(tmp_path, "two.yaml", {"max_iterations": 2, "features": {"plan": True}})
    loaded = load_doc(tmp_path, {"extends": ["one.yaml", "two.yaml"], "tool_timeout": 3})
    assert (loaded.config.max_iterations, loaded.config.tool_timeout) == (2, 3.0)
    assert loaded.config.features == {"plan": True}


def test_extends_cycle_lists_the_chain(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", {"extends": "b.yaml", **minimal()})
    write(tmp_path, "b.yaml", {"extends": "a.yaml"})
    err = error_for(tmp_path, (tmp_path / "a.yaml").read_text(), "a.yaml")
    a, b = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    assert err.message == f"extends cycle: {a} -> {b} -> {a}"
    assert (err.file, err.key_path) == (b, "$.extends")


def test_self_extends_is_a_cycle(tmp_path: Path) -> None:
    err = error_for(tmp_path, {"extends": ["cfg.yaml"], **minimal()})
    assert err.key_path == "$.extends[0]"
    assert err.message.startswith("extends cycle:")


def test_diamond_extends_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, "root.yaml", minimal(max_iterations=3))
    write(tmp_path, "left.yaml", {"extends": "root.yaml", "tool_timeout": 4})
    write(tmp_path, "right.yaml", {"extends": "root.yaml", "features": {"x": True}})
    loaded = load_doc(tmp_path, {"extends": ["left.yaml", "right.yaml"]}, "top.yaml")
    assert (loaded.config.max_iterations, loaded.config.tool_timeout) == (3, 4.0)
    assert [Path(f).name for f in loaded.files] == ["top.yaml", "left.yaml", "root.yaml", "right.yaml"]


def test_missing_base_names_declaring_file(tmp_path: Path) -> None:
    write(tmp_path, "sub/mid.yaml", {"extends": ["../base.yaml", "nope.yaml"]})
    write(tmp_path, "base.yaml", minimal())
    err = error_for(tmp_path, {"extends": "sub/mid.yaml"}, "top.yaml")
    assert err.file == str(tmp_path / "sub/mid.yaml")
    assert err.key_path == "$.extends[1]"
    assert "'nope.yaml' not found" in err.message and str(tmp_path / "sub/nope.yaml") in err.message


def test_extends_without_a_path_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_agent_config_text(yaml.safe_dump({"extends": "base.yaml", **minimal()}), None)
    assert (info.value.file, info.value.key_path) == ("<config>", "$.extends")


def test_text_is_used_and_path_anchors_extends(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", minimal(max_iterations=4))
    on_disk = write(tmp_path, "cfg.yaml", "not: [valid")  # the sent text wins over the file
    loaded = load_agent_config_text("extends: base.yaml\ntool_timeout: 9\n", on_disk)
    assert (loaded.config.max_iterations, loaded.config.tool_timeout) == (4, 9.0)
    assert loaded.source_path == str(on_disk)


def test_text_without_path_loads() -> None:
    loaded = load_agent_config_text(yaml.safe_dump(minimal()), None)
    assert loaded.source_path is None
    assert loaded.config.default_route().id == "openai/gpt-4o-mini"


def test_error_in_base_names_the_base_file(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", minimal(max_iterations="many"))
    err = error_for(tmp_path, {"extends": "base.yaml", "tool_timeout": 5}, "child.yaml")
    assert (err.file, err.key_path) == (str(tmp_path / "base.yaml"), "$.max_iterations")
    # ...but once the child overrides the key, the child is blamed.
    err = error_for(tmp_path, {"extends": "base.yaml", "max_iterations": -1}, "child.yaml")
    assert (err.file, err.key_path) == (str(tmp_path / "child.yaml"), "$.max_iterations")


# -- required keys and types ---------------------------------------------------


def _without(path: tuple[Any, ...]) -> dict[str, Any]:
    doc = minimal()
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("version",), "$.version"),
        (("workspace",), "$.workspace"),
        (("providers",), "$.providers"),
        (("providers", "default_model"), "$.providers.default_model"),
        (("providers", "models"), "$.providers.models"),
        (("providers", "models", 0, "id"), "$.providers.models[0].id"),
        (("providers", "models", 0, "adapter"), "$.providers.models[0].adapter"),
        (("modes",), "$.modes"),
        (("modes", 0, "name"), "$.modes[0].name"),
        (("loop",), "$.loop"),
        (("loop", "sequence"), "$.loop.sequence"),
    ],
)
def test_missing_required_key(tmp_path: Path, path: tuple[Any, ...], expected: str) -> None:
    err = error_for(tmp_path, _without(path))
    assert err.key_path == expected
    assert "missing required key" in err.message
    assert err.file == str(tmp_path / "cfg.yaml")


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (minimal(providers={"default_model": "gpt-4o-mini", "models": []}), "$.providers.models"),
        (minimal(loop={"sequence": []}), "$.loop.sequence"),
        (minimal(modes=[]), "$.modes"),
        (minimal(workspace=None), "$.workspace"),
    ],
)
def test_empty_required_collections(tmp_path: Path, doc: dict[str, Any], expected: str) -> None:
    assert error_for(tmp_path, doc).key_path == expected


@pytest.mark.parametrize(
    ("overrides", "expected_path", "expected_text"),
    [
        ({"version": 1}, "$.version", "must be 2"),
        ({"version": "2"}, "$.version", "must be 2"),
        ({"max_iterations": "ten"}, "$.max_iterations", "Expected `int`, got `str`"),
        ({"max_iterations": 0}, "$.max_iterations", ">= 1"),
        ({"tool_timeout": -1}, "$.tool_timeout", "> 0"),
        ({"workspace": ["x"]}, "$.workspace", "Expected `object`, got `array`"),
        ({"features": {"plan": "yes"}}, "$.features.plan", "Expected `bool`, got `str`"),
        ({"tools": {"aliases": {"edit": 3}}}, "$.tools.aliases.edit", "Expected `str`"),
        ({"tools": {"registry": {"include": "list_dir"}}}, "$.tools.registry.include", "Expected `array`"),
        ({"prompts": {"tool_prompt_mode": "sometimes"}}, "$.prompts.tool_prompt_mode", "Invalid enum value"),
        ({"prompts": {"packs": {"base": {"system": 5}}}}, "$.prompts.packs.base.system", "Expected `str`"),
        ({"logging": {"retention": {"max_runs": -2}}}, "$.logging.retention.max_runs", ">= 0"),
        (
            {"concurrency": {"groups": [{"name": "g", "max_parallel": 0}]}},
            "$.concurrency.groups[0].max_parallel",
            ">= 1",
        ),
        ({"loop": {"sequence": [{"if": "plan", "then": {"mode": "build"}}]}}, "$.loop.sequence[0].if", "regex"),
        ({"dialect_profiles": {"gpt-*": {"mode": 1}}}, '$.dialect_profiles["gpt-*"].mode', "Expected `str`"),
    ],
)
def test_wrong_types_give_key_path(
    tmp_path: Path, overrides: dict[str, Any], expected_path: str, expected_text: str
) -> None:
    err = error_for(tmp_path, minimal(**overrides))
    assert err.key_path == expected_path
    assert expected_text in err.message
    assert "null" not in err.message


@pytest.mark.parametrize(
    ("params", "field"),
    [({"temperature": 2.5}, "temperature"), ({"top_p": -0.1}, "top_p"), ({"max_tokens": 0}, "max_tokens")],
)
def test_param_ranges(tmp_path: Path, params: dict[str, Any], field: str) -> None:
    doc = minimal()
    doc["providers"]["models"][0]["params"] = params
    assert error_for(tmp_path, doc).key_path == f"$.providers.models[0].params.{field}"


@pytest.mark.parametrize(
    ("where", "raw", "expected_path"),
    [
        ("default", "x-ai/grok-4-fast", "$.providers.default_model"),
        ("id", "openrouter/a/b/c", "$.providers.models[0].id"),
        ("fallback", "foo", "$.providers.models[0].routing.fallback_models[1]"),
        ("alias", "foo", "$.providers.models[0].routing_preferences.fallback_models[1]"),
        ("provider", "x-ai/grok-4-fast", "$.providers.routing.fallback_models[0]"),
    ],
)
def test_bad_route_ids(tmp_path: Path, where: str, raw: str, expected_path: str) -> None:
    doc = minimal()
    providers = doc["providers"]
    entry = providers["models"][0]
    if where == "default":
        providers["default_model"] = raw
    elif where == "id":
        entry["id"] = raw
    elif where == "fallback":
        entry["routing"] = {"fallback_models": ["gpt-4o-mini", raw]}
    elif where == "alias":
        entry["routing_preferences"] = {"fallback_models": ["gpt-4o-mini", raw]}
    else:
        providers["routing"] = {"fallback_models": [raw]}
    err = error_for(tmp_path, doc)
    assert err.key_path == expected_path
    assert repr(raw) in err.message


def test_route_error_messages(tmp_path: Path) -> None:
    doc = minimal()
    doc["providers"]["default_model"] = "x-ai/grok-4-fast"
    assert "unknown provider prefix 'x-ai'" in error_for(tmp_path, doc).message
    doc["providers"]["default_model"] = "openrouter/a/b/c"
    assert "too many segments" in error_for(tmp_path, doc).message


def test_duplicate_model_entries_for_one_route(tmp_path: Path) -> None:
    doc = minimal()
    doc["providers"]["models"].append({"id": "gpt-4o-mini", "adapter": "openai"})
    err = error_for(tmp_path, doc)
    assert err.key_path == "$.providers.models[1].id"
    assert "models[0]" in err.message


def test_routing_and_alias_together_is_an_error(tmp_path: Path) -> None:
    doc = minimal()
    doc["providers"]["models"][0].update(routing={}, routing_preferences={})
    err = error_for(tmp_path, doc)
    assert err.key_path == "$.providers.models[0]"
    assert "routing_preferences" in err.message


def test_default_model_needs_no_models_entry(tmp_path: Path) -> None:
    doc = minimal()
    doc["providers"]["default_model"] = "openrouter/x-ai/grok-4-fast"
    cfg = load_doc(tmp_path, doc).config
    assert cfg.default_route().provider == "openrouter"
    assert cfg.model_entry(cfg.providers.default_model) is None


def test_sequence_mode_must_be_defined(tmp_path: Path) -> None:
    err = error_for(
        tmp_path, minimal(loop={"sequence": [{"if": "features.plan", "then": {"mode": "plan"}}, {"mode": "build"}]})
    )
    assert err.key_path == "$.loop.sequence[0].then.mode"
    assert "'plan' is not defined" in err.message
    err = error_for(tmp_path, minimal(loop={"sequence": [{"mode": "ship"}]}))
    assert err.key_path == "$.loop.sequence[0].mode"


def test_duplicate_mode_names(tmp_path: Path) -> None:
    err = error_for(tmp_path, minimal(modes=[{"name": "build"}, {"name": "build"}]))
    assert err.key_path == "$.modes[1].name"


# -- warnings: ignored, unknown and duplicate keys --------------------------------


def test_ignored_and_unknown_keys_warn_once_each(tmp_path: Path) -> None:
    doc = minimal(
        profile={"name": "x", "seed": 42},
        hpo={"enabled": False, "search": {"algorithm": "bayes"}},
        workspace={"root": "ws", "sandbox": {"image": "gcc"}, "lsp": {"enabled": True}},
        completion={"primary": "hybrid", "natural_finish": {"idle_turn_limit": 1}, "text_sentinels": ["END"]},
        frobnicate=1,
    )
    doc["modes"][0].update(triggers={"a": 1}, colour="red")
    doc["providers"]["models"][0]["params"] = {
        "temperature": 0.3,
        "parallel_tools": True,
        "structured_outputs": {"enabled": True},
    }
    doc["loop"]["sequence"].append({"while": "needs_compact", "do": {"mode": "build"}})
    loaded = load_doc(tmp_path, doc)
    file = str(tmp_path / "cfg.yaml")
    assert sorted(loaded.warnings) == sorted(
        f"{file}: {path}: {message}"
        for path, message in [
            ("$.profile", "accepted but not used by kcd"),
            ("$.hpo", "accepted but not used by kcd"),
            ("$.workspace.sandbox", "accepted but not used by kcd"),
            ("$.workspace.lsp", "accepted but not used by kcd"),
            ("$.completion.primary", "accepted but not used by kcd"),
            ("$.completion.natural_finish", "accepted but not used by kcd"),
            ("$.frobnicate", "unknown key, ignored"),
            ("$.modes[0].triggers", "accepted but not used by kcd"),
            ("$.modes[0].colour", "unknown key, ignored"),
            ("$.providers.models[0].params.parallel_tools", "accepted but not used by kcd"),
            ("$.providers.models[0].params.structured_outputs", "accepted but not used by kcd"),
            ("$.loop.sequence[1].while", "accepted but not used by kcd"),
            ("$.loop.sequence[1].do", "accepted but not used by kcd"),
        ]
    )
    cfg = loaded.config
    assert cfg.workspace.root == "ws"
    assert cfg.completion.text_sentinels == ["END"]
    assert cfg.request_params("openai/gpt-4o-mini") == {"temperature": 0.3}
    assert cfg.active_mode().name == "build"
    assert "hpo" in loaded.merged  # the merged document keeps what was written


def test_pending_keys_warn_but_are_typed(tmp_path: Path) -> None:
    loaded = load_doc(
        tmp_path, minimal(enhanced_tools={"enabled": True, "validation": {"rules": ["one_bash_per_turn"]}})
    )
    assert loaded.warnings == [f"{tmp_path / 'cfg.yaml'}: $.enhanced_tools: accepted but not acted on by kcd yet"]
    assert loaded.config.enhanced_tools.validation.rules == ["one_bash_per_turn"]
    err = error_for(tmp_path, minimal(enhanced_tools={"validation": {"rules": ["be_nice"]}}))
    assert err.key_path == "$.enhanced_tools.validation.rules[0]"


def test_warning_names_the_declaring_file(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", minimal(hpo={}))
    loaded = load_doc(tmp_path, {"extends": "base.yaml", "telemetry": {}}, "child.yaml")
    assert loaded.warnings == [
        f"{tmp_path / 'base.yaml'}: $.hpo: accepted but not used by kcd",
        f"{tmp_path / 'child.yaml'}: $.telemetry: accepted but not used by kcd",
    ]


def test_duplicate_yaml_key_warns_and_keeps_the_last(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal()) + "max_iterations: 3\nmax_iterations: 4\n"
    loaded = load_doc(tmp_path, text)
    assert loaded.config.max_iterations == 4
    assert len(loaded.warnings) == 1
    assert loaded.warnings[0].startswith(
        f"{tmp_path / 'cfg.yaml'}: duplicate key 'max_iterations' at $, keeping the last"
    )


def test_nested_duplicate_key_names_its_path(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal()) + "tools:\n  aliases:\n    a: b\n    a: c\n"
    loaded = load_doc(tmp_path, text)
    assert "duplicate key 'a' at $.tools.aliases" in loaded.warnings[0]
    assert loaded.config.tools.aliases == {"a": "c"}


def test_adapter_contradicting_route_warns(tmp_path: Path) -> None:
    doc = minimal()
    doc["providers"]["models"] = [
        {"id": "openai/gpt-4o-mini", "adapter": "anthropic"},
        {"id": "openrouter/x-ai/grok-4-fast", "adapter": "openai"},  # OpenAI-compatible: fine
        {"id": "mock/dev", "adapter": "bogus"},
    ]
    warnings = load_doc(tmp_path, doc).warnings
    assert len(warnings) == 2
    assert "$.providers.models[0].adapter: adapter 'anthropic' contradicts route openai/gpt-4o-mini" in warnings[0]
    assert "$.providers.models[2].adapter: unknown adapter 'bogus'" in warnings[1]


def test_missing_tool_dirs_warn_and_defs_dir_defaults(tmp_path: Path) -> None:
    (tmp_path / "defs_b").mkdir()
    loaded = load_doc(tmp_path, minimal(tools={"registry": {"paths": ["defs_a", "defs_b"]}}))
    assert loaded.config.tools.defs_dir == "defs_a"
    assert loaded.tool_dirs == [str(tmp_path / "defs_a"), str(tmp_path / "defs_b")]
    assert len(loaded.warnings) == 1 and "$.tools.registry.paths[0]: tool directory" in loaded.warnings[0]

    loaded = load_doc(tmp_path, minimal(tools={"defs_dir": "defs_b", "registry": {"paths": ["defs_a"]}}))
    assert loaded.tool_dirs == [str(tmp_path / "defs_b")]
    assert loaded.warnings == []


# -- YAML-level errors ---------------------------------------------------------


def test_invalid_yaml_gives_file_and_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, "version: 2\nworkspace: {}\nproviders: [oops\nmodes: []\n")
    assert (err.file, err.key_path) == (str(tmp_path / "cfg.yaml"), "$")
    assert "invalid YAML" in err.message
    assert re.search(r"line [34]\b", err.message)


def test_invalid_yaml_in_base_names_the_base(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "a: b: c\n")
    err = error_for(tmp_path, {"extends": "base.yaml"}, "child.yaml")
    assert err.file == str(tmp_path / "base.yaml")
    assert "line 1" in err.message


@pytest.mark.parametrize(("text", "kind"), [("- 1\n- 2\n", "list"), ("", "empty document"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    err = error_for(tmp_path, text)
    assert err.key_path == "$"
    assert "must be a mapping" in err.message and kind in err.message


def test_non_string_keys_are_errors(tmp_path: Path) -> None:
    err = error_for(tmp_path, yaml.safe_dump(minimal()) + "features:\n  yes: true\n")
    assert err.key_path == "$.features"
    assert "not a string" in err.message


def test_recursive_alias_is_an_error(tmp_path: Path) -> None:
    err = error_for(tmp_path, yaml.safe_dump(minimal()) + "hpo: &a\n  self: *a\n")
    assert "recursive YAML alias" in err.message


def test_yaml_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal()) + (
        "defaults: &d {disable_stream_on_probe_failure: false}\n"
        "x-extra: 1\n"
        "concurrency: {<<: {at_most_one_of: [run_shell]}, nonblocking_tools: [read_file]}\n"
    )
    loaded = load_doc(tmp_path, text)
    assert loaded.config.concurrency.at_most_one_of == ["run_shell"]
    assert len(loaded.warnings) == 2  # `defaults` and `x-extra` are unknown


def test_null_values_mean_default(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal()) + "features:\nlogging:\n  retention:\n"
    cfg = load_doc(tmp_path, text).config
    assert cfg.features == {}
    assert cfg.logging.retention.max_runs == 0


# -- prompt packs --------------------------------------------------------------


def test_missing_pack_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "prompts/ok.md", "ok")
    doc = minimal(prompts={"packs": {"base": {"plan": "prompts/ok.md", "system": "prompts/missing.md"}}})
    err = error_for(tmp_path, doc)
    assert err.key_path == "$.prompts.packs.base.system"
    assert str(tmp_path / "prompts/missing.md") in err.message


def test_pack_refs_must_be_declared(tmp_path: Path) -> None:
    write(tmp_path, "p.md", "text")
    packs = {"base": {"system": "p.md"}}
    err = error_for(tmp_path, minimal(prompts={"packs": packs, "injection": {"system_order": ["@pack(other).system"]}}))
    assert err.key_path == "$.prompts.injection.system_order[0]"
    assert "'other' is not defined" in err.message
    err = error_for(
        tmp_path,
        minimal(prompts={"packs": packs, "injection": {"per_turn_order": ["mode_specific", "@pack(base).nope"]}}),
    )
    assert err.key_path == "$.prompts.injection.per_turn_order[1]"
    err = error_for(
        tmp_path, minimal(prompts={"packs": packs}, modes=[{"name": "build", "prompt": "@pack(base).builder"}])
    )
    assert err.key_path == "$.modes[0].prompt"
    err = error_for(tmp_path, minimal(prompts={"packs": packs, "injection": {"system_order": ["system.md"]}}))
    assert "not a pack ref" in err.message


def test_pack_texts_are_loaded(tmp_path: Path) -> None:
    write(tmp_path, "p/system.md", "SYSTEM")
    doc = minimal(
        prompts={
            "packs": {"base": {"system": "p/system.md", "catalog": "p/system.md"}},
            "injection": {
                "system_order": ["@pack(base).system", "[CACHE] @pack(base).catalog"],
                "per_turn_order": ["mode_specific"],
            },
        },
        modes=[{"name": "build", "prompt": "Just build it."}],
    )
    loaded = load_doc(tmp_path, doc)
    assert loaded.pack_texts == {"@pack(base).system": "SYSTEM", "@pack(base).catalog": "SYSTEM"}
    assert loaded.pack_text("[CACHE] @pack(base).catalog") == "SYSTEM"
    with pytest.raises(KeyError):
        loaded.pack_text("@pack(base).missing")


def test_relative_pack_without_path_is_an_error() -> None:
    doc = minimal(prompts={"packs": {"base": {"system": "p.md"}}})
    with pytest.raises(ConfigError) as info:
        load_agent_config_text(yaml.safe_dump(doc), None)
    assert info.value.key_path == "$.prompts.packs.base.system"


# -- tools ---------------------------------------------------------------------

AVAILABLE = ["list_dir", "read_file", "create_file", "run_shell", "mark_task_complete"]


def _cfg(tmp_path: Path, **overrides: Any) -> AgentConfig:
    return load_doc(tmp_path, minimal(**overrides)).config


def test_select_tools_include_list_keeps_available_order(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tools={"registry": {"include": ["run_shell", "list_dir", "bash", "grep"]}})
    assert cfg.select_tools(AVAILABLE) == ["list_dir", "run_shell"]
    assert cfg.unknown_tools(AVAILABLE) == ["bash", "grep"]


def test_select_tools_star_means_all(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tools={"registry": {"include": ["*"]}})
    assert cfg.select_tools(AVAILABLE) == AVAILABLE
    assert cfg.unknown_tools(AVAILABLE) == []


def test_select_tools_legacy_enabled_and_default(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tools={"enabled": {"read_file": True, "run_shell": False, "nope": True}})
    assert cfg.select_tools(AVAILABLE) == ["read_file"]
    assert cfg.unknown_tools(AVAILABLE) == ["nope"]
    assert _cfg(tmp_path).select_tools(AVAILABLE) == AVAILABLE


def test_select_tools_follows_aliases(tmp_path: Path) -> None:
    tools = {
        "registry": {"include": ["ls", "shell"]},
        "aliases": {"ls": "dir", "dir": "list_dir", "shell": "run_shell", "a": "b", "b": "a"},
    }
    loaded = load_doc(tmp_path, minimal(tools=tools))
    cfg = loaded.config
    assert cfg.canonical_tool_name("ls") == "list_dir"
    assert cfg.canonical_tool_name("read_file") == "read_file"
    assert cfg.canonical_tool_name("a") == "b"  # cycle-safe
    assert cfg.select_tools(AVAILABLE) == ["list_dir", "run_shell"]
    assert cfg.unknown_tools(AVAILABLE) == []
    assert len(loaded.warnings) == 1 and "alias cycle a -> b -> a" in loaded.warnings[0]


def test_select_tools_applies_mode_filters(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        features={"plan": True},
        tools={"registry": {"include": ["*"]}, "aliases": {"cat": "read_file"}},
        modes=[
            {"name": "plan", "tools_enabled": ["list_dir", "cat", "create_file"], "tools_disabled": ["create_file"]},
            {"name": "build", "tools_enabled": ["*"], "tools_disabled": ["run_shell"]},
            {"name": "compact", "tools_enabled": []},
        ],
        loop={"sequence": [{"if": "features.plan", "then": {"mode": "plan"}}, {"mode": "build"}]},
    )
    assert cfg.active_mode().name == "plan"
    assert cfg.select_tools(AVAILABLE) == ["list_dir", "read_file"]
    build = cfg.active_mode({"plan": False})
    assert build.name == "build"
    assert cfg.select_tools(AVAILABLE, build) == ["list_dir", "read_file", "create_file", "mark_task_complete"]
    assert cfg.select_tools(AVAILABLE, cfg.mode("compact")) == []
    assert cfg.features == {"plan": True}  # overrides never mutate the config


def test_active_mode_falls_back_to_first_mode(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        modes=[{"name": "first"}, {"name": "plan"}],
        loop={"sequence": [{"if": "features.plan", "then": {"mode": "plan"}}]},
    )
    assert cfg.active_mode().name == "first"
    assert cfg.active_mode({"plan": True}).name == "plan"


# -- routes, routing and params ------------------------------------------------


def test_routing_for_precedence(tmp_path: Path) -> None:
    doc = minimal()
    doc["providers"] = {
        "default_model": "openrouter/x-ai/grok-4-fast",
        "routing_preferences": {"fallback_models": ["openai/gpt-4o-mini"], "disable_stream_on_probe_failure": False},
        "models": [
            {
                "id": "openrouter/x-ai/grok-4-fast",
                "adapter": "openrouter",
                "routing": {"fallback_models": ["gpt-4o-mini"]},
            },
            {"id": "gpt-4o-mini", "adapter": "openai"},
        ],
    }
    cfg = load_doc(tmp_path, doc).config
    entry = cfg.routing_for("openrouter/x-ai/grok-4-fast")
    assert entry.fallback_models == ["gpt-4o-mini"]
    assert entry.disable_stream_on_probe_failure is True  # entry over defaults, no layering
    # An entry without a routing block uses the defaults, not the provider-wide block.
    assert cfg.routing_for("openai/gpt-4o-mini").fallback_models == []
    # No entry: the provider-wide block (given under its alias).
    other = cfg.routing_for("openrouter/openai/gpt-4o-mini")
    assert other.fallback_models == ["openai/gpt-4o-mini"]
    assert other.disable_stream_on_probe_failure is False


def test_routing_for_defaults_without_any_block(tmp_path: Path) -> None:
    prefs = _cfg(tmp_path).routing_for("mock/dev")
    assert (
        prefs.disable_stream_on_probe_failure,
        prefs.disable_native_tools_on_probe_failure,
        prefs.fallback_models,
    ) == (
        True,
        True,
        [],
    )


def test_model_entry_matches_canonical_ids(tmp_path: Path) -> None:
    doc = minimal()
    doc["providers"]["models"] = [
        {
            "id": "gpt-4o-mini",
            "adapter": "openai",
            "params": {"max_tokens": 256},
            "base_url": "http://127.0.0.1:9",
            "stream": True,
        }
    ]
    cfg = load_doc(tmp_path, doc).config
    entry = cfg.model_entry("openai/gpt-4o-mini")
    assert entry is not None and entry.id == "gpt-4o-mini"
    assert (entry.base_url, entry.stream) == ("http://127.0.0.1:9", True)
    assert cfg.model_entry("openrouter/openai/gpt-4o-mini") is None
    assert cfg.request_params("openai/gpt-4o-mini") == {"max_tokens": 256}


def test_request_params_only_set_values(tmp_path: Path) -> None:
    doc = minimal()
    doc["providers"]["models"] = [
        {"id": "openai/gpt-4o-mini", "adapter": "openai", "params": {"temperature": 0, "top_p": 1}},
        {"id": "mock/dev", "adapter": "mock"},
    ]
    cfg = load_doc(tmp_path, doc).config
    params = cfg.request_params("gpt-4o-mini")
    assert params == {"temperature": 0.0, "top_p": 1.0}
    assert isinstance(params["temperature"], float)
    assert cfg.request_params("mock/dev") == {}
    assert cfg.request_params("openrouter/z-ai/glm-4.6") == {}


# -- normalisation, digest and errors ------------------------------------------


def test_defaults_and_normalisation(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, loop={"sequence": [{"mode": "build"}]})
    assert (cfg.max_iterations, cfg.tool_timeout) == (12, 30.0)
    assert cfg.completion.text_sentinels == []
    assert cfg.prompts.tool_prompt_mode == "system_once"
    assert cfg.provider_tools.use_native is None
    assert cfg.tools.mark_task_complete is True and cfg.tools.defs_dir is None
    assert cfg.concurrency.groups == [] and "read_file" in cfg.concurrency.nonblocking_tools
    assert cfg.logging.retention.max_runs == 0


def test_digest_is_stable_and_tracks_content(tmp_path: Path) -> None:
    first = load_doc(tmp_path, minimal(max_iterations=5), "a.yaml")
    again = load_doc(tmp_path, minimal(max_iterations=5), "a.yaml")
    reordered = load_doc(tmp_path, dict(reversed(list(minimal(max_iterations=5).items()))), "b.yaml")
    changed = load_doc(tmp_path, minimal(max_iterations=6), "c.yaml")
    assert first.digest == again.digest == reordered.digest
    assert changed.digest != first.digest
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.digest)


def test_digest_covers_the_merged_document(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", minimal(max_iterations=5))
    child = load_doc(tmp_path, {"extends": "base.yaml"}, "child.yaml")
    flat = load_doc(tmp_path, minimal(max_iterations=5), "flat.yaml")
    assert child.merged == flat.merged
    assert child.digest == flat.digest
    write(tmp_path, "base.yaml", minimal(max_iterations=7))
    assert load_agent_config(tmp_path / "child.yaml").digest != child.digest


def test_config_error_format() -> None:
    err = ConfigError("cfg.yaml", "$.providers.models[0].id", "missing required key")
    assert str(err) == "cfg.yaml: $.providers.models[0].id: missing required key"
    assert (err.file, err.key_path, err.message) == ("cfg.yaml", "$.providers.models[0].id", "missing required key")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent_config(tmp_path / "absent.yaml")
    assert info.value.file == str(tmp_path / "absent.yaml")
    assert info.value.key_path == "$"


# -- per-route timeouts, retry settings and capability hints ---------------------


def _resilience_doc() -> dict[str, Any]:
    doc = minimal()
    doc["providers"] = {
        "default_model": "openrouter/x-ai/grok-4-fast",
        "timeouts": {"connect": 5, "ttft": 30, "total": 300},
        "retry": {"retries_per_route": 1, "backoff_cap_s": 4, "turn_deadline_s": 600},
        "models": [
            {
                "id": "openrouter/x-ai/grok-4-fast",
                "adapter": "openrouter",
                "stream": True,
                "timeouts": {"ttft": 90.5, "idle": 20},
                "retry": {"retries_per_route": 0, "max_attempts_per_turn": 3, "retry_after_inline_max_s": 0},
                "native_tools": False,
            },
            {"id": "gpt-4o-mini", "adapter": "openai", "native_tools": True},
        ],
    }
    return doc


def test_timeouts_for_layers_the_entry_over_the_provider_defaults(tmp_path: Path) -> None:
    loaded = load_doc(tmp_path, _resilience_doc())
    assert loaded.warnings == []
    cfg = loaded.config
    grok = cfg.timeouts_for("openrouter/x-ai/grok-4-fast")
    assert grok == {"connect": 5.0, "ttft": 90.5, "idle": 20.0, "total": 300.0}
    assert all(isinstance(v, float) for v in grok.values())
    # An entry without a timeouts block, and a route without an entry: the provider-wide map.
    assert cfg.timeouts_for("openai/gpt-4o-mini") == {"connect": 5.0, "ttft": 30.0, "total": 300.0}
    assert cfg.timeouts_for("mock/dev") == {"connect": 5.0, "ttft": 30.0, "total": 300.0}
    assert _cfg(tmp_path).timeouts_for("openai/gpt-4o-mini") == {}


def test_retry_for_layers_and_keeps_integer_counts(tmp_path: Path) -> None:
    cfg = load_doc(tmp_path, _resilience_doc()).config
    grok = cfg.retry_for("openrouter/x-ai/grok-4-fast")
    assert grok == {
        "retries_per_route": 0,
        "max_attempts_per_turn": 3,
        "backoff_cap_s": 4.0,
        "retry_after_inline_max_s": 0.0,
        "turn_deadline_s": 600.0,
    }
    assert isinstance(grok["retries_per_route"], int) and isinstance(grok["max_attempts_per_turn"], int)
    assert isinstance(grok["backoff_cap_s"], float)
    assert cfg.retry_for("gpt-4o-mini") == {"retries_per_route": 1, "backoff_cap_s": 4.0, "turn_deadline_s": 600.0}
    assert _cfg(tmp_path).retry_for("mock/dev") == {}


def test_native_tools_for_is_per_entry(tmp_path: Path) -> None:
    cfg = load_doc(tmp_path, _resilience_doc()).config
    assert cfg.native_tools_for("openrouter/x-ai/grok-4-fast") is False
    assert cfg.native_tools_for("openai/gpt-4o-mini") is True
    assert cfg.native_tools_for("mock/dev") is None  # no entry: the provider default
    entry = cfg.model_entry("openrouter/x-ai/grok-4-fast")
    assert entry is not None and (entry.stream, entry.base_url) == (True, None)  # unchanged keys
    assert _cfg(tmp_path).native_tools_for("openai/gpt-4o-mini") is None


def test_resilience_keys_take_null_as_unset_and_warn_on_unknown_keys(tmp_path: Path) -> None:
    doc = minimal()
    doc["providers"]["timeouts"] = {"ttft": None, "total": 120, "ttft_s": 5}
    doc["providers"]["models"][0].update(timeouts=None, retry={"backoff_s": 1, "turn_deadline_s": None},
                                         native_tools=None)
    loaded = load_doc(tmp_path, doc)
    file = tmp_path / "cfg.yaml"
    assert sorted(loaded.warnings) == [
        f"{file}: $.providers.models[0].retry.backoff_s: unknown key, ignored",
        f"{file}: $.providers.timeouts.ttft_s: unknown key, ignored",
    ]
    cfg = loaded.config
    assert cfg.timeouts_for("openai/gpt-4o-mini") == {"total": 120.0}
    assert cfg.retry_for("openai/gpt-4o-mini") == {}
    assert cfg.native_tools_for("openai/gpt-4o-mini") is None


@pytest.mark.parametrize(
    ("where", "block", "value", "expected_path", "expected_text"),
    [
        ("entry", "timeouts", {"ttft": 0}, "$.providers.models[0].timeouts.ttft", "> 0"),
        ("entry", "timeouts", {"total": -5}, "$.providers.models[0].timeouts.total", "> 0"),
        ("provider", "timeouts", {"idle": "soon"}, "$.providers.timeouts.idle", "Expected `float`, got `str`"),
        ("provider", "timeouts", {"connect": True}, "$.providers.timeouts.connect", "got `bool`"),
        ("provider", "timeouts", [30], "$.providers.timeouts", "Expected `object`, got `array`"),
        ("entry", "retry", {"retries_per_route": -1}, "$.providers.models[0].retry.retries_per_route", ">= 0"),
        ("entry", "retry", {"retries_per_route": 1.5}, "$.providers.models[0].retry.retries_per_route",
         "Expected `int`"),
        ("provider", "retry", {"max_attempts_per_turn": 0}, "$.providers.retry.max_attempts_per_turn", ">= 1"),
        ("entry", "retry", {"backoff_base_s": 0}, "$.providers.models[0].retry.backoff_base_s", "> 0"),
        ("entry", "retry", {"retry_after_inline_max_s": -1},
         "$.providers.models[0].retry.retry_after_inline_max_s", ">= 0"),
        ("provider", "retry", {"turn_deadline_s": 0}, "$.providers.retry.turn_deadline_s", "> 0"),
        ("provider", "retry", {"all_open_max_wait_s": -2}, "$.providers.retry.all_open_max_wait_s", "> 0"),
        ("entry", "native_tools", "yes", "$.providers.models[0].native_tools", "Expected `bool`, got `str`"),
    ],
)
def test_resilience_values_are_validated_with_key_paths(
    tmp_path: Path, where: str, block: str, value: Any, expected_path: str, expected_text: str
) -> None:
    doc = minimal()
    owner = doc["providers"]["models"][0] if where == "entry" else doc["providers"]
    owner[block] = value
    err = error_for(tmp_path, doc)
    assert err.key_path == expected_path
    assert expected_text in err.message
    assert "null" not in err.message


def test_backoff_base_above_cap_is_an_error_after_layering(tmp_path: Path) -> None:
    doc = minimal()
    doc["providers"]["retry"] = {"backoff_base_s": 2, "backoff_cap_s": 1}
    err = error_for(tmp_path, doc)
    assert err.key_path == "$.providers.retry.backoff_base_s"
    assert "larger than backoff_cap_s" in err.message
    doc = minimal()
    doc["providers"]["retry"] = {"backoff_cap_s": 4}
    doc["providers"]["models"][0]["retry"] = {"backoff_base_s": 5}
    err = error_for(tmp_path, doc)
    assert err.key_path == "$.providers.models[0].retry.backoff_base_s"
    assert "(5)" in err.message and "(4)" in err.message
    # The entry's own cap lifts the provider-wide one; equal values are fine.
    doc["providers"]["models"][0]["retry"] = {"backoff_base_s": 5, "backoff_cap_s": 5}
    assert load_doc(tmp_path, doc).config.retry_for("gpt-4o-mini")["backoff_cap_s"] == 5.0


def test_resilience_error_in_a_base_names_the_base_file(tmp_path: Path) -> None:
    base = minimal()
    base["providers"]["models"][0]["timeouts"] = {"idle": 0}
    write(tmp_path, "base.yaml", base)
    err = error_for(tmp_path, {"extends": "base.yaml"}, "child.yaml")
    assert err.file == str(tmp_path / "base.yaml")
    assert err.key_path == "$.providers.models[0].timeouts.idle"


@pytest.mark.parametrize("name", [
    "opencode_openrouter_glm46_c_fs_perturn_append.yaml",  # use_native: true
    "opencode_openrouter_deepseek_v32exp_c_fs_perturn_append.yaml",  # use_native: true
    "opencode_grok4fast_c_fs_v2.yaml",  # the provider default
])
def test_an_explicit_use_native_covers_the_primary_in_the_route_chain(name):
    # A run in native mode must not have its own primary skipped as `no_native_tools`
    # (GLM-4.6 on OpenRouter used to be skipped every turn and the fallback served).
    from kcd.agent.routing import build_chain, tool_mode

    cfg = load_agent_config(CONFIGS / name).config
    primary = cfg.default_route()
    run_native, _ = tool_mode(cfg, primary)
    chain = build_chain(cfg, primary, primary_stream=False)
    assert chain[0].route == primary and chain[0].native_tools is run_native
    if cfg.provider_tools.use_native is True:
        assert run_native is True and all(e.native_tools for e in chain)
    else:  # the provider default: OpenRouter models outside openai/ are text-mode
        assert run_native is primary.model.startswith("openai/")


def test_a_temperature_an_openai_reasoning_model_refuses_is_a_warning_with_its_key_path():
    cfg = minimal()
    cfg["providers"]["models"] = [{"id": "openai/o4-mini", "adapter": "openai", "params": {"temperature": 0.2}},
                                  {"id": "openai/gpt-4o-mini", "adapter": "openai", "params": {"temperature": 0.2}}]
    cfg["providers"]["default_model"] = "openai/o4-mini"
    loaded = load_agent_config_text(yaml.safe_dump(cfg), None)
    hits = [w for w in loaded.warnings if "accepts only temperature 1" in w]
    assert len(hits) == 1 and "providers.models[0].params.temperature" in hits[0], loaded.warnings
