"""The comparison of recorded and replayed tool results: only the listed volatile fields are
normalised, every other difference is reported at its turn, call and field path."""

from __future__ import annotations

from pathlib import Path

from kcd.replay.compare import NORMALISED, compare_turns, excerpts, normalise
from kcd.replay.results import ResultRow

REC_WS = Path("/runs/20260101-000000_a_11111111/workspace")
REP_WS = Path("/runs/20260102-000000_a_22222222/workspace")


def row(out: str = "ok", ws: Path = REC_WS, **data) -> ResultRow:
    return ResultRow(fn="run_shell", provider_fn="run_shell", call_id="call_1", args={"command": "pwd"}, ok=True,
                     out=out, data={"stdout": out, **data})


def compare(rec: dict, rep: dict, rec_turns: int = 1, rep_turns: int = 1):
    return compare_turns(rec, rep, recorded_turns=rec_turns, replayed_turns=rep_turns,
                         recorded_workspace=REC_WS, replayed_workspace=REP_WS)


def test_node_worker_pid_and_the_workspace_path_are_the_only_things_normalised() -> None:
    a = row(f"{REC_WS}/src\n", node_id="node-a", worker_pid=101)
    b = row(f"{REP_WS}/src\n", node_id="node-b", worker_pid=202)
    divergences, turns, calls = compare({1: [a]}, {1: [b]})
    assert (divergences, turns, calls) == ([], 1, 1)
    assert normalise(a, REC_WS)["out"] == "<workspace>/src\n"
    assert "node_id" not in normalise(a, REC_WS)["data"]
    assert any("node_id" in n for n in NORMALISED) and any("workspace" in n for n in NORMALISED)


def test_a_path_outside_the_workspace_and_other_data_fields_are_compared() -> None:
    # The run directory's name is not the workspace: a tool printing it diverges.
    a, b = row(f"{REC_WS.parent}\n"), row(f"{REP_WS.parent}\n")
    divergences, _, _ = compare({1: [a]}, {1: [b]})
    assert {d.field for d in divergences} == {"out", "data.stdout"}
    a, b = row(exit=0), row(exit=1)
    [d] = compare({1: [a]}, {1: [b]})[0]
    assert (d.turn, d.call_index, d.tool, d.kind, d.field, d.recorded, d.replayed) == (
        1, 0, "run_shell", "result", "data.exit", "0", "1")


def test_divergences_name_the_turn_call_and_nested_field() -> None:
    same = row("x")
    rec = {1: [same], 2: [same, ResultRow(fn="list_dir", out="a", data={"items": [{"name": "a"}, {"name": "b"}]})]}
    rep = {1: [same], 2: [same, ResultRow(fn="list_dir", out="a", data={"items": [{"name": "a"}, {"name": "c"}]})]}
    [d] = compare(rec, rep, 2, 2)[0]
    assert (d.turn, d.call_index, d.tool, d.field) == (2, 1, "list_dir", "data.items[1].name")


def test_a_call_rejected_on_one_side_and_a_missing_call_are_call_divergences() -> None:
    ran = ResultRow(fn="read_file", call_id="c1", args={"path": "a"}, ok=True, out="text")
    rejected = ResultRow(fn="read_file", call_id="c1", args='{"path": ', ok=False, out="<TOOL_ERROR>")
    divergences, _, calls = compare({1: [ran, ran]}, {1: [rejected]})
    kinds = [(d.kind, d.field, d.call_index) for d in divergences]
    assert ("call", "args", 0) in kinds and ("result", "ok", 0) in kinds and ("result", "out", 0) in kinds
    assert ("call", "call", 1) in kinds and calls == 1
    missing = next(d for d in divergences if d.call_index == 1)
    assert missing.recorded == "read_file call" and missing.replayed == "(absent)"


def test_a_different_number_of_turns_is_reported_after_the_common_ones() -> None:
    divergences, turns, _ = compare({1: [row()], 2: [row()]}, {1: [row()]}, rec_turns=2, rep_turns=1)
    assert turns == 1
    [d] = divergences
    assert (d.turn, d.kind, d.recorded, d.replayed) == (2, "turns", "2 turn(s)", "1 turn(s)")


def test_excerpts_show_the_neighbourhood_of_the_first_difference() -> None:
    a = "x" * 1000 + "recorded tail"
    b = "x" * 1000 + "replayed tail"
    ra, rb = excerpts(a, b)
    assert "recorded tail" in ra and "replayed tail" in rb and ra.startswith("…") and len(ra) < 200
