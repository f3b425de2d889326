"""A run directory to a scrubbed scenario file: the work behind `POST /v1/scenarios/from-run`.

Reads the run's provider records, generates the scenario (`from_run`) with every error
body passed through the bundle scrubber (secret values, paths, user names), and refuses
the result (422) if a known secret would still be in it. Blocking: run it in a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kcd.bundles.scrub import Scrubber
from kcd.config.daemon import BreakerSettings
from kcd.errors import Unprocessable
from kcd.matrix.from_run import GenerateError, generate
from kcd.matrix.run_records import read_run_records
from kcd.matrix.types import ScenarioFromRun, ScenarioFromRunRequest

__all__ = ["scenario_from_run"]


def scenario_from_run(run_dir: Path, req: ScenarioFromRunRequest, scrubber: Scrubber,
                      breaker_for: Callable[[str], BreakerSettings]) -> ScenarioFromRun:
    """Unprocessable (422) `cannot_generate` (nothing to replay) or `scenario_refused` (a secret would remain)."""
    records = read_run_records(run_dir)
    # The breaker that shaped the run: a route found open, else the primary's.
    route = next((s.route for s in records.skips), records.primary or "")

    def scrub(text: str) -> str:
        return scrubber.scrub(text.encode("utf-8"))[0].decode("utf-8", "replace")

    try:
        made = generate(records, name=req.name, expect_outcome=req.expect_outcome, breaker=breaker_for(route),
                        scrub=scrub, generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    except GenerateError as exc:
        raise Unprocessable("cannot_generate", f"run {records.run_id or run_dir.name}: {exc}") from None
    text = scrub(made.text)  # the whole file too: route ids and descriptions come from the run
    if scrubber.leaks(text.encode("utf-8")):
        raise Unprocessable("scenario_refused", "a known secret value would remain in the scenario; nothing was "
                            "written")
    return ScenarioFromRun(name=req.name, run_id=records.run_id, expect_outcome=made.expect_outcome, text=text,
                           summary=made.summary)
