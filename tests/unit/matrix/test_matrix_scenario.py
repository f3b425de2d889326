"""Matrix scenarios as data: the loader (errors with key paths), the plan file, the catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kcd.config.keypath import ConfigError
from kcd.matrix.catalogue import SelectionError, load_catalogue, select
from kcd.matrix.configgen import prepare, render_config
from kcd.matrix.plan import load_plan_text
from kcd.matrix.scenario import load_scenario_text
from kcd.matrix.types import ScenarioFile
from kcd.config.agent import load_agent_config_text
from kcd.simulator.faults import FAULTS

REPO = Path(__file__).resolve().parents[3]
MATRIX = REPO / "configs" / "matrix"

MINIMAL = """
name: demo
routes: {primary: openrouter/x-ai/grok-4-fast, fallbacks: [openai/gpt-4o-mini]}
fault: {route: primary, name: unavailable_persistent}
expect: {fallback_target: fallback, metrics: {summary.errors: ">0"}}
"""


def load(text: str, path: str = "/m/s.yaml"):
    return load_scenario_text(text, path)


def error_of(text: str, path: str = "/m/s.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, path)
    return info.value


def test_minimal_scenario_is_one_step_with_its_fault_list():
    sc = load(MINIMAL)
    assert sc.name == "demo" and len(sc.steps) == 1
    step = sc.steps[0]
    assert [f.name for f in sc.faults(step)] == ["unavailable_persistent"]
    assert step.task and step.expect.fallback_target == "fallback"
    assert sc.breaker.threshold == 3  # the daemon's default breaker settings


@pytest.mark.parametrize("patch,key_path,words", [
    ({"expect": {"fallbacks_min": "two"}}, "$.expect.fallbacks_min", "Expected `int"),
    ({"expect": {"nope": 1}}, "$.expect.nope", "unknown key"),
    ({"fault": {"route": "primary", "name": "no_such_fault"}}, "$.fault.name", "unknown fault"),
    ({"fault": {"route": "primary", "name": "slow_ttft", "params": {"speed": 2}}}, "$.fault.params",
     "unknown parameter"),
    ({"fault": [{"name": "tcp_reset"}, {"name": "tcp_reset", "route": "anthropic/x"}]}, "$.fault[1].route",
     "unknown provider prefix"),
    ({"expect": {"metrics": {"summary..errors": 0}}}, '$.expect.metrics["summary..errors"]', "empty segment"),
    ({"expect": {"metrics": {"summary.errors": ">zero"}}}, '$.expect.metrics["summary.errors"]', "needs a number"),
    ({"expect": {"exit_reason": "done"}}, "$.expect.exit_reason", "not an exit reason"),
    ({"expect": {"breaker_transitions": {"primary": ["closed->open"]}}},
     "$.expect.breaker_transitions.primary[0]", "from>to"),
    ({"expect": {"served_route": "fallbackx"}}, "$.expect.served_route", "route id"),
    ({"name": "Bad Name"}, "$.name", "matching regex"),
    ({"routes": {"primary": "openrouter/a/b/c"}}, "$.routes.primary", "too many segments"),
    ({"steps": [{"expect": {}}]}, "$.fault", "not both"),
])
def test_errors_name_the_file_and_key_path(patch, key_path, words):
    doc = yaml.safe_load(MINIMAL)
    doc.update(patch)
    err = error_of(yaml.safe_dump(doc))
    assert err.file == "/m/s.yaml"
    assert err.key_path == key_path, str(err)
    assert words in err.message, str(err)


def test_step_errors_carry_the_step_index():
    text = """
name: multi
routes: {primary: openai/gpt-4o-mini}
steps:
  - expect: {completed: true}
  - fault: {name: tcp_reset}
    expect: {upstream: {primary: "<<1"}}
"""
    err = error_of(text)
    assert err.key_path == "$.steps[1].expect.upstream.primary"


def test_a_scenario_needs_a_primary_or_a_base_config():
    assert error_of("name: x\nexpect: {completed: true}\n").key_path == "$.routes.primary"


def test_relative_paths_resolve_against_the_file_and_need_one(tmp_path):
    sc = load("name: x\nconfig: ../base.yaml\nworkspace: ws\n", str(tmp_path / "m" / "x.yaml"))
    assert sc.base_config == tmp_path / "base.yaml" and sc.workspace == tmp_path / "m" / "ws"
    assert "needs the scenario's file path" in str(error_of("name: x\nconfig: base.yaml\n", None))


def test_live_scenarios_cannot_inject_faults():
    text = MINIMAL + "live: true\n"
    assert error_of(text).key_path == "$.fault"


def test_prepare_checks_aliases_against_the_chain():
    text = MINIMAL.replace("fallback_target: fallback", "fallback_target: fallback2")
    with pytest.raises(ConfigError) as info:
        prepare(load(text))
    assert info.value.key_path == "$.expect.fallback_target" and "1 fallback" in info.value.message


def test_prepare_takes_the_chain_from_a_base_config():
    sc = load("name: grok\nconfig: ../opencode_grok4fast_c_fs_v2.yaml\n", str(MATRIX / "grok.yaml"))
    p = prepare(sc)
    assert p.primary == "openrouter/x-ai/grok-4-fast"
    assert p.fallbacks == ("openrouter/openai/gpt-4o-mini", "openai/gpt-4o-mini")
    assert p.route("fallback2") == "openai/gpt-4o-mini" and p.fill("to={fallback}") == \
        "to=openrouter/openai/gpt-4o-mini"


def test_a_base_config_that_does_not_load_is_an_error_at_config():
    sc = load("name: x\nconfig: missing.yaml\n", str(MATRIX / "x.yaml"))
    with pytest.raises(ConfigError) as info:
        prepare(sc)
    assert info.value.key_path == "$.config" and "does not load" in info.value.message


def test_rendered_configs_point_every_route_at_the_namespace():
    sc = load(MINIMAL + "routes: {primary: openrouter/x-ai/grok-4-fast, fallbacks: [gpt-4o-mini], "
                        "unreachable: [primary], stream: true, timeouts: {ttft: 1}}\n")
    cfg = render_config(prepare(sc), sim_base="http://127.0.0.1:9/ns/a/v1", closed_url="http://127.0.0.1:1/v1")
    doc = yaml.safe_load(cfg.text)
    urls = {m["id"]: m["base_url"] for m in doc["providers"]["models"]}
    assert urls == {"openrouter/x-ai/grok-4-fast": "http://127.0.0.1:1/v1",
                    "openai/gpt-4o-mini": "http://127.0.0.1:9/ns/a/v1"}
    assert doc["providers"]["timeouts"]["ttft"] == 1 and doc["providers"]["timeouts"]["total"] == 6
    assert cfg.stream is True
    loaded = load_agent_config_text(cfg.text, cfg.path)  # the daemon accepts it as is
    assert loaded.config.routing_for("openrouter/x-ai/grok-4-fast").fallback_models == ["openai/gpt-4o-mini"]


def test_rendered_configs_extend_a_base_and_keep_its_params():
    sc = load("name: grok\nconfig: ../opencode_grok4fast_c_fs_v2.yaml\nroutes: {probes: true}\n",
              str(MATRIX / "grok.yaml"))
    cfg = render_config(prepare(sc), sim_base="http://127.0.0.1:9/ns/g/v1")
    loaded = load_agent_config_text(cfg.text, cfg.path)
    entry = loaded.config.model_entry("openrouter/x-ai/grok-4-fast")
    assert entry.params.temperature == 0.1 and entry.base_url == "http://127.0.0.1:9/ns/g/v1"
    assert all(m.base_url for m in loaded.config.providers.models)  # nothing can reach a real provider
    assert loaded.config.provider_probes.enabled


def test_live_configs_keep_real_endpoints():
    sc = load("name: l\nlive: true\nroutes: {primary: openai/gpt-4o-mini}\n")
    doc = yaml.safe_load(render_config(prepare(sc), sim_base=None).text)
    assert all("base_url" not in m for m in doc["providers"]["models"])
    assert "timeouts" not in doc["providers"]


# ---- the plan file --------------------------------------------------------------------------

PLAN = {
    "axes": {"streams": [True, False], "tool_turn": [True, False]},
    "scenarios": [
        {"name": "p", "model_override": "openai/gpt-4o-mini", "max_steps": 2, "expected": {"fallback_allowed": False}},
        {"name": "q", "model_override": "openai/gpt-4o-mini", "stream": False, "tool_turn": True,
         "expected": {"fallback_target": "gpt-4o-mini", "json_mode": "stay non-stream"}},
    ],
}


def test_plan_scenarios_expand_over_the_axes_they_leave_open():
    cells = load_plan_text(json.dumps(PLAN), "/m/plan.json")
    assert [c.name for c in cells] == ["p_stream_tools", "p_stream_text", "p_nostream_tools", "p_nostream_text", "q"]
    cell = cells[1]
    assert cell.routes.stream is True and cell.routes.native_tools is False and cell.routes.max_steps == 2
    expect = cell.steps[0].expect
    assert expect.fallbacks_max == 0 and expect.native_tools is False
    assert expect.metrics["routes[{primary}].stream_calls"] == ">0"
    q = cells[4]
    assert q.steps[0].expect.fallback_target == "gpt-4o-mini"
    assert "json_mode: stay non-stream" in q.description


def test_plan_axes_may_be_written_at_the_top_level():
    doc = {"streams": [False], "tool_turn": [True], "scenarios": [PLAN["scenarios"][0]]}
    assert [c.name for c in load_plan_text(json.dumps(doc), None)] == ["p_nostream_tools"]


def test_plan_errors_have_key_paths():
    doc = json.loads(json.dumps(PLAN))
    doc["scenarios"][1]["expected"]["fallback_allowed"] = "maybe"
    with pytest.raises(ConfigError) as info:
        load_plan_text(json.dumps(doc), "/m/plan.json")
    assert info.value.key_path == "$.scenarios[1].expected.fallback_allowed"
    doc["scenarios"][1]["expected"] = {}
    doc["scenarios"][1]["model_override"] = None
    with pytest.raises(ConfigError) as info:
        load_plan_text(json.dumps(doc), "/m/plan.json")
    assert info.value.key_path == "$.scenarios[1].routes.primary"


# ---- the catalogue -------------------------------------------------------------------------


def _shipped() -> list[ScenarioFile]:
    return [ScenarioFile(text=p.read_text(), path=str(p)) for p in sorted(MATRIX.iterdir())]


def test_the_shipped_catalogue_loads_and_covers_the_fault_catalogue():
    scenarios = load_catalogue(_shipped())
    for sc in scenarios:
        prepare(sc)  # base configs load, aliases name routes of the chain
    names = {sc.name for sc in scenarios}
    assert {"openrouter_streaming_fallback", "openrouter_text_only", "fallback_to_openai"} <= names
    injected = {f.name for sc in scenarios for step in sc.steps for f in sc.faults(step)}
    assert set(FAULTS) <= injected  # every fault of the simulator's catalogue
    ids = {name.split("_", 1)[0] for name in names if name[:1] == "f" and name[1:3].isdigit()}
    assert {f"f{i:02d}" for i in range(1, 34)} <= ids  # F01-F33, F07 by a closed port
    assert {f.id.lower() for f in FAULTS.values()} <= ids  # and every later fault has its scenario
    assert len([sc for sc in scenarios if not sc.live]) >= 23
    assert any(sc.live for sc in scenarios)


def test_names_are_unique_across_files():
    f = ScenarioFile(text=MINIMAL, path="/m/a.yaml")
    with pytest.raises(ConfigError) as info:
        load_catalogue([f, ScenarioFile(text=MINIMAL, path="/m/b.yaml")])
    assert "also defined in /m/a.yaml" in str(info.value)


def test_selection_by_pattern_and_by_liveness():
    scenarios = load_catalogue(_shipped())
    picked = select(scenarios, ["f1*"], live=False)
    assert picked and all(sc.name.startswith("f1") for sc in picked)
    assert all(sc.live for sc in select(scenarios, [], live=True))
    with pytest.raises(SelectionError, match="no scenario matches"):
        select(scenarios, ["nothing_like_this"], live=False)
    with pytest.raises(SelectionError, match="only with --live"):
        select(scenarios, ["live_*"], live=False)
