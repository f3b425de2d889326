"""Tool definition files (the original's YAML format) → ToolRegistry, and native schemas from it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kcd.agent.calls import ToolInvocation, ToolLimit, ToolSettings
from kcd.agent.tools import TOOL_SPECS, execute_calls, load_tool_defs, tool_schemas

REPO = Path(__file__).resolve().parents[3]
DEFS = REPO / "configs" / "tools" / "defs"
DEFS_OC = REPO / "configs" / "tools" / "defs_oc"


def write_def(directory: Path, filename: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(textwrap.dedent(body))
    return path


READ_FILE_DEF = """\
    id: read_file
    name: read_file
    description: {description}
    type_id: python
    parameters:
      - name: path
        type: string
        description: Which file
        required: true
    execution:
      blocking: false
      max_per_turn: {limit}
    provider_routing:
      openai:
        native_primary: true
    use_cases: [ignored, unknown keys are fine]
"""


# --------------------------------------------------------------------------- shipped definitions


def test_shipped_definitions_load_cleanly() -> None:
    registry = load_tool_defs([DEFS_OC, DEFS])
    assert registry.warnings == []
    assert set(registry.specs) == set(TOOL_SPECS)
    assert list(registry.specs)[:8] == ["bash", "edit", "glob", "grep", "list", "patch", "read", "write"]
    assert registry.sources["bash"] == DEFS_OC / "opencode_bash.yaml"
    assert registry.limits() == (
        ToolLimit("bash", 1), ToolLimit("mark_task_complete", 1), ToolLimit("run_shell", 1),
    )  # fmt: skip


def test_shipped_definitions_match_the_implementations() -> None:
    """Faithful names and parameter names; the same parameters as kcd executes."""
    registry = load_tool_defs([DEFS, DEFS_OC])
    for name, spec in registry.specs.items():
        impl = TOOL_SPECS[name]
        assert [p.name for p in spec.params] == [p.name for p in impl.params], name
        assert [p.required for p in spec.params] == [p.required for p in impl.params], name
        assert spec.blocking == impl.blocking, name
    assert [p.name for p in registry.specs["edit"].params] == ["filePath", "oldString", "newString", "replaceAll"]
    assert [p.name for p in registry.specs["patch"].params] == ["patchText"]
    assert registry.specs["patch"].type_id == "diff"
    assert "openai" in registry.specs["bash"].native_primary
    assert "openai" not in registry.specs["apply_unified_patch"].native_primary
    assert "read_file" in registry.native_tools("openai") and "patch" not in registry.native_tools("openai")


def test_schemas_from_the_registry() -> None:
    registry = load_tool_defs([DEFS_OC, DEFS])
    [list_schema, list_dir] = tool_schemas(["list", "list_dir"], registry)
    assert list_schema.parameters["properties"]["ignore"]["items"] == {"type": "string"}
    assert list_schema.parameters["required"] == []
    depth = list_dir.parameters["properties"]["depth"]
    assert (depth["minimum"], depth["maximum"], depth["default"]) == (1, 5, 1)  # bounds from the implementation


# --------------------------------------------------------------------------- overrides and problems


def test_definition_overrides_prompt_text_but_not_execution(tmp_path: Path) -> None:
    write_def(tmp_path / "d", "read_file.yaml", READ_FILE_DEF.format(description="Custom words.", limit=1))
    registry = load_tool_defs([tmp_path / "d"])
    [schema] = tool_schemas(["read_file"], registry)
    assert schema.description == "Custom words."
    assert schema.parameters["properties"] == {"path": {"type": "string", "description": "Which file"}}
    [builtin] = tool_schemas(["run_shell"], registry)  # not defined here: the built-in spec
    assert builtin.description == TOOL_SPECS["run_shell"].description
    # Execution still accepts the implementation's parameters...
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f.txt").write_text("1\n2\n3\n")
    settings = registry.settings(ToolSettings())
    [out] = execute_calls(str(ws), [ToolInvocation("c", "read_file", {"path": "f.txt", "offset": 1})], settings)
    assert out.ok and out.data is not None and out.data["content"] == "2\n3\n"
    # ...and enforces the definition's max_per_turn.
    two = [ToolInvocation(f"c{i}", "read_file", {"path": "f.txt"}) for i in range(2)]
    outcomes = execute_calls(str(ws), two, settings)
    assert all(o.output.startswith("<VALIDATION_ERROR>read_file may be called at most 1 time(s)") for o in outcomes)


def test_every_path_is_loaded_and_the_earlier_wins(tmp_path: Path) -> None:
    first = write_def(tmp_path / "one", "z.yaml", READ_FILE_DEF.format(description="From one.", limit=2))
    write_def(tmp_path / "two", "a.yaml", READ_FILE_DEF.format(description="From two.", limit=2))
    write_def(
        tmp_path / "two",
        "b.yml",
        READ_FILE_DEF.format(description="Also two.", limit=2).replace("read_file", "list_dir"),
    )
    registry = load_tool_defs([tmp_path / "one", tmp_path / "two"])
    assert registry.specs["read_file"].description == "From one."
    assert registry.specs["list_dir"].description == "Also two."  # the second path is loaded too (.yml)
    assert registry.sources["read_file"] == first
    assert any("tool 'read_file' is already defined by" in w and str(first) in w for w in registry.warnings)


def test_files_of_a_directory_load_in_name_order(tmp_path: Path) -> None:
    write_def(tmp_path, "b.yaml", READ_FILE_DEF.format(description="B.", limit=2))
    write_def(tmp_path, "a.yaml", READ_FILE_DEF.format(description="A.", limit=2))
    (tmp_path / "notes.txt").write_text("not a definition")
    registry = load_tool_defs([tmp_path])
    assert registry.specs["read_file"].description == "A."
    assert len(registry.warnings) == 1


@pytest.mark.parametrize(
    ("body", "warning"),
    [
        ("id: t\nname: task\ndescription: d\nparameters: []\n", "tool 'task' is not supported by kcd"),
        ("id: t\nname: frobnicate\ndescription: d\nparameters: []\n", "tool 'frobnicate' is not implemented by kcd"),
        ("name: read_file\ndescription: d\nparameters: []\n", "missing required field `id`"),
        (
            "id: x\nname: read_file\ndescription: d\nparameters:\n  - name: path\n    type: blob\n",
            "invalid tool definition",
        ),
        ("- just\n- a list\n", "must be a mapping"),
        ("id: [unclosed\n", "cannot read the tool definition"),
        (
            "id: x\nname: read_file\ndescription: d\nparameters: []\nexecution: {max_per_turn: 0}\n",
            "invalid tool definition",
        ),
    ],
)
def test_bad_definitions_are_warnings(tmp_path: Path, body: str, warning: str) -> None:
    write_def(tmp_path, "bad.yaml", body)
    registry = load_tool_defs([tmp_path])
    assert not registry.specs
    assert len(registry.warnings) == 1 and warning in registry.warnings[0]
    assert "bad.yaml" in registry.warnings[0]


def test_parameters_are_reconciled_with_the_implementation(tmp_path: Path) -> None:
    write_def(
        tmp_path,
        "read.yaml",
        """\
        id: read
        name: read
        description: Read.
        parameters:
          - {name: encoding, type: string, description: not supported}
          - {name: offset, type: string, description: wrong type}
          - {name: limit, type: number, description: compatible numeric type}
    """,
    )
    registry = load_tool_defs([tmp_path])
    spec = registry.specs["read"]
    assert [(p.name, p.type, p.required) for p in spec.params] == [
        ("offset", "integer", False), ("limit", "number", False), ("filePath", "string", True),
    ]  # fmt: skip
    text = "\n".join(registry.warnings)
    assert "parameter 'encoding' of 'read' is not accepted" in text
    assert "parameter 'offset' of 'read' is declared string, but kcd takes integer" in text
    assert "'read' does not declare the required parameter 'filePath'; added" in text


def test_missing_directory_is_a_warning(tmp_path: Path) -> None:
    registry = load_tool_defs([tmp_path / "nope", DEFS])
    assert "does not exist" in registry.warnings[0]
    assert "run_shell" in registry.specs


def test_unknown_tool_schema_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown tool 'task'"):
        tool_schemas(["task"], load_tool_defs([DEFS_OC]))
