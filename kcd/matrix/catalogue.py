"""A matrix's scenarios: the files a client sent, loaded, checked and selected.

Files ending in `.json` (or text starting with `{`) are plan files (`plan`);
anything else is one scenario in YAML (`scenario`). Names must be unique
across all files. Selection: `--scenario` patterns (fnmatch) pick by name,
and each must match something; offline runs take the scenarios that are not
live, `--live` runs take only the live ones.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from kcd.config.keypath import ConfigError
from kcd.errors import BadRequest
from kcd.matrix.plan import load_plan_text
from kcd.matrix.scenario import Scenario, load_scenario_text
from kcd.matrix.types import ScenarioFile

__all__ = ["SelectionError", "load_catalogue", "select"]


class SelectionError(BadRequest, ValueError):
    """A name pattern that matches no scenario, or nothing to run."""

    def __init__(self, message: str):
        super().__init__("no_scenario", message)


def _is_plan(f: ScenarioFile) -> bool:
    return (f.path or "").endswith(".json") or f.text.lstrip().startswith("{")


def load_catalogue(files: Sequence[ScenarioFile]) -> list[Scenario]:
    """Every scenario of `files`, in order. ConfigError (file and key path) on the first problem."""
    out: list[Scenario] = []
    where: dict[str, str] = {}
    for f in files:
        loaded = load_plan_text(f.text, f.path) if _is_plan(f) else [load_scenario_text(f.text, f.path)]
        for sc in loaded:
            if sc.name in where:
                raise ConfigError(sc.source, "$.name", f"scenario {sc.name!r} is also defined in {where[sc.name]}")
            where[sc.name] = sc.source
            out.append(sc)
    return out


def select(scenarios: Sequence[Scenario], patterns: Sequence[str], *, live: bool) -> list[Scenario]:
    """The scenarios to run: matching `patterns` (all when empty), live or offline ones."""
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(sc.name, pattern) for sc in scenarios):
            raise SelectionError(f"no scenario matches {pattern!r}")
    chosen = [sc for sc in scenarios if not patterns or any(fnmatch.fnmatchcase(sc.name, p) for p in patterns)]
    picked = [sc for sc in chosen if sc.live == live]
    if not picked:
        kind = "live" if live else "offline"
        raise SelectionError(f"no {kind} scenario to run among {len(chosen)} selected"
                             + ("" if live else " (live scenarios run only with --live)"))
    return picked
