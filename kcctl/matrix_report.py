"""Rendering matrix results for people and CI: progress, table, diagnostics, JUnit XML.

Pure functions over the JSON the daemon sends (`MatrixInfo`, `ScenarioResult`
as plain dicts), so `kcctl` needs nothing but this module and the standard
library to show them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

__all__ = ["details", "junit_xml", "progress", "result_line", "summary_line", "table"]

Result = Mapping[str, Any]


def _counts(results: list[Result]) -> str:
    verdicts = [r.get("verdict") for r in results]
    text = f"pass {verdicts.count('pass')} fail {verdicts.count('fail')}"
    return text + (f" skip {verdicts.count('skip')}" if "skip" in verdicts else "")


def progress(done: list[Result], total: int, running: int) -> str:
    """`[12/40] running 4… pass 11 fail 1` (one line, rewritten in place on a terminal)."""
    state = f"running {running}…" if running else "done"
    return f"[{len(done)}/{total}] {state} {_counts(done)}"


def result_line(index: int, total: int, r: Result) -> str:
    """One line per finished scenario, for logs that are not terminals."""
    grade = f" ({r['grade']})" if r.get("grade") else ""
    return f"[{index}/{total}] {r['verdict']:<4} {r['name']}{grade} {r.get('seconds', 0):.1f}s"


def table(info: Result) -> str:
    order = {name: i for i, name in enumerate(info.get("scenarios") or [])}
    rows = sorted(info.get("results") or [], key=lambda r: order.get(r["name"], len(order)))
    width = max([len("SCENARIO"), *(len(r["name"]) for r in rows)])
    route_width = max([len("ROUTE USED"), *(len(r.get("route_used") or "-") for r in rows)])
    lines = [f"{'SCENARIO':<{width}}  {'OUTCOME':<7} {'GRADE':<7} {'ROUTE USED':<{route_width}} "
             f"{'FALLBACKS':>9} {'TIME':>7}"]
    for r in rows:
        outcome = r["verdict"].upper() if r["verdict"] == "fail" else r["verdict"]
        lines.append(f"{r['name']:<{width}}  {outcome:<7} {r.get('grade') or '-':<7} "
                     f"{r.get('route_used') or '-':<{route_width}} {r.get('fallbacks', 0):>9} "
                     f"{r.get('seconds', 0):>6.1f}s")
    return "\n".join(lines)


def details(r: Result) -> str:
    """Why a scenario failed (or was skipped), with its stream and fallback diagnostics."""
    lines = [f"✗ {r['name']}" if r["verdict"] == "fail" else f"- {r['name']} skipped"]
    if r.get("description"):
        lines.append(f"  {r['description']}")
    for reason in r.get("reasons") or []:
        lines.append(f"  • {reason}")
    many = len(r.get("steps") or []) > 1
    for i, step in enumerate(r.get("steps") or [], 1):
        if step.get("verdict") != "fail":
            continue
        prefix = f"  step {i}: " if many else "  "
        d = step.get("diagnostics") or {}
        lines.append(f"{prefix}exit {step.get('exit_reason')}  completed={step.get('completed')}  "
                     f"served by {step.get('served_route') or '-'}  {step.get('seconds', 0):.1f}s")
        if d.get("error"):
            lines.append(f"    error:            {_one_line(d['error'])}")
        lines.append(f"    markers:          {_list(d.get('markers'), 6)}")
        lines.append(f"    stream overrides: {_list([_override(o) for o in d.get('stream_overrides') or []])}")
        lines.append(f"    tool overrides:   {_list([_override(o) for o in d.get('tool_overrides') or []])}")
        lines.append(f"    fallbacks:        {_list([_fallback(f) for f in d.get('fallbacks') or []])}")
        if d.get("circuit_skips"):
            lines.append(f"    circuit skips:    {_list(d['circuit_skips'])}")
        lines.append(f"    failed attempts:  {_list(d.get('attempt_errors'), 8)}")
        if d.get("upstream") is not None:
            lines.append(f"    upstream calls:   {_mapping(d['upstream'])}")
        if d.get("breaker"):
            lines.append(f"    breakers:         {_mapping(d['breaker'])}")
        lines.append(f"    run dir:          {step.get('run_dir')}")
    return "\n".join(lines)


def summary_line(info: Result) -> str:
    s = info.get("summary") or {}
    g = s.get("grades") or {}
    return (f"{s.get('total', 0)} scenarios: {s.get('passed', 0)} passed, {s.get('failed', 0)} failed, "
            f"{s.get('skipped', 0)} skipped in {s.get('seconds', 0):.1f}s  "
            f"[scorecard pass {g.get('pass', 0)} / partial {g.get('partial', 0)} / safe {g.get('safe', 0)} / "
            f"fail {g.get('fail', 0)}]  matrix {info.get('id')} {info.get('status')}")


def junit_xml(info: Result) -> str:
    results = info.get("results") or []
    s = info.get("summary") or {}
    suite = ET.Element("testsuite", {
        "name": "kcd-regression-matrix", "tests": str(len(results)),
        "failures": str(sum(r["verdict"] == "fail" for r in results)), "errors": "0",
        "skipped": str(sum(r["verdict"] == "skip" for r in results)), "time": f"{s.get('seconds', 0):.3f}",
        "timestamp": str(info.get("created_at") or ""), "id": str(info.get("id") or "")})
    order = {name: i for i, name in enumerate(info.get("scenarios") or [])}
    for r in sorted(results, key=lambda r: order.get(r["name"], len(order))):
        case = ET.SubElement(suite, "testcase", {"classname": "kcd.matrix", "name": r["name"],
                                                 "time": f"{r.get('seconds', 0):.3f}"})
        if r["verdict"] == "fail":
            reasons = r.get("reasons") or ["failed"]
            failure = ET.SubElement(case, "failure", {"message": "; ".join(reasons)[:1000],
                                                      "type": f"grade:{r.get('grade') or 'none'}"})
            failure.text = details(r)
        elif r["verdict"] == "skip":
            ET.SubElement(case, "skipped", {"message": "; ".join(r.get("reasons") or [])})
        props = ET.SubElement(case, "properties")
        for key in ("grade", "route_used", "fallbacks"):
            ET.SubElement(props, "property", {"name": key, "value": str(r.get(key))})
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(f"run dir: {d}" for d in r.get("run_dirs") or [])
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _list(items: list[str] | None, limit: int = 5) -> str:
    items = items or []
    if not items:
        return "none"
    shown = [_one_line(i, 160) for i in items[:limit]]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "\n                      ".join(shown) + more


def _mapping(m: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in m.items()) or "none"


def _override(o: Mapping[str, Any]) -> str:
    return f"{o.get('route')} ({o.get('reason')})"


def _fallback(f: Mapping[str, Any]) -> str:
    return f"{f.get('from')} -> {f.get('to')} ({f.get('reason')})"
