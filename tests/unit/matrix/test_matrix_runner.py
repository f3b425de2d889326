"""The matrix runner's pure parts: the sandbox environment and how step results combine."""

from __future__ import annotations

from kcd.matrix.configgen import prepare
from kcd.matrix.runner import DUMMY_KEY, _combine, sandbox_env
from kcd.matrix.scenario import load_scenario_text
from kcd.matrix.types import StepResult

DAEMON_ENV = {"OPENAI_API_KEY": "sk-real", "OPENROUTER_API_KEY": "sk-or-real", "ANTHROPIC_API_KEY": "x",
              "OPENAI_BASE_URL": "https://api.openai.com/v1", "KC_DISABLE_PROVIDER_PROBES": "1",
              "OPENROUTER_APP_TITLE": "KyleCode", "PATH": "/usr/bin"}
NS = "http://127.0.0.1:9/ns/mx-1-a/v1"


def test_the_sandbox_keeps_no_real_key_and_no_real_endpoint():
    env = sandbox_env(DAEMON_ENV, NS, [])
    assert env["OPENAI_API_KEY"] == env["OPENROUTER_API_KEY"] == DUMMY_KEY
    assert "ANTHROPIC_API_KEY" not in env and "sk-real" not in env.values()
    assert env["OPENAI_BASE_URL"] == env["OPENROUTER_BASE_URL"] == NS
    assert "KC_DISABLE_PROVIDER_PROBES" not in env  # the scenario's config decides
    assert env["OPENROUTER_APP_TITLE"] == "KyleCode" and env["PATH"] == "/usr/bin"
    assert "OPENROUTER_API_KEY" not in sandbox_env(DAEMON_ENV, NS, ["OPENROUTER_API_KEY"])


def test_steps_combine_into_one_scenario_result():
    sc = load_scenario_text("name: two\nroutes: {primary: openai/gpt-4o-mini}\n"
                            "steps: [{expect: {completed: true}}, {expect: {completed: true}}]\n", "/m/two.yaml")
    p = prepare(sc)
    ok = StepResult(verdict="pass", grade="safe", run_dir="/r/1", served_route="openai/gpt-4o-mini", fallbacks=1)
    bad = StepResult(verdict="fail", grade="pass", reasons=["completed is False, expected True"], run_dir="/r/2",
                     served_route="openai/gpt-4o", fallbacks=2)
    result = _combine(p, [ok, bad])
    assert result.verdict == "fail" and result.grade == "pass"  # the grade of the last run
    assert result.reasons == ["step 2: completed is False, expected True"]
    assert result.route_used == "openai/gpt-4o" and result.fallbacks == 3 and result.run_dirs == ["/r/1", "/r/2"]
    assert _combine(p, [ok]).verdict == "pass"
    assert _combine(p, []).verdict == "fail"
