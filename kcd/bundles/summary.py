"""SUMMARY.md: the run at a glance for the provider's support team, from the scrubbed entries."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from kcd import __version__
from kcd.bundles.check import MANIFEST
from kcd.bundles.selection import TELEMETRY

SUMMARY = "SUMMARY.md"
_ATTEMPT_FILE = re.compile(r"turn_(\d+)(?:_attempt_(\d+))?\.json$")


def _parsed(entries: Mapping[str, bytes], name: str) -> Any:
    try:
        return json.loads(entries[name])
    except (KeyError, ValueError, RecursionError):
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return " ".join(str(value).split()).replace("|", "\\|")[:160]


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines if len(lines) > 2 else ["(none)"]


def _telemetry(entries: Mapping[str, bytes]) -> list[dict[str, Any]]:
    events = []
    for line in entries.get(TELEMETRY, b"").splitlines():
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _attempts(entries: Mapping[str, bytes], telemetry: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per provider attempt: structured requests, enriched by the raw response records;
    telemetry when the run has no structured requests (the original's runs)."""
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for prefix in ("meta/requests/", "raw/responses/"):
        for name in entries:
            m = _ATTEMPT_FILE.fullmatch(name[len(prefix):]) if name.startswith(prefix) else None
            record = _parsed(entries, name) if m else None
            if not isinstance(record, dict) or (prefix == "raw/responses/" and m and m.group(2) is None):
                continue  # turn_<N>.response.json is the successful body, not an attempt record
            key = (int(m.group(1)), _int(m.group(2) or record.get("attempt"), 1))  # type: ignore[union-attr]
            row = rows.setdefault(key, {"turn": key[0], "attempt": key[1]})
            for src, dst in (("route", "route"), ("kind", "kind"), ("status_code", "status"),
                             ("request_id", "request_id"), ("timestamp_utc", "time"), ("latency", "latency"),
                             ("latency_s", "latency"), ("classification", "outcome"),
                             ("html_detected", "html")):
                if record.get(src) is not None and row.get(dst) is None:
                    row[dst] = record[src]
            if row.get("outcome") is None and prefix == "raw/responses/" and record.get("ok") is True:
                row["outcome"] = "ok"
    if not rows:
        for ev in telemetry:
            if ev.get("event") == "llm.attempt":
                key = (_int(ev.get("turn"), 0), _int(ev.get("attempt"), len(rows) + 1))
                rows[key] = {"turn": key[0], "attempt": key[1], "route": ev.get("route"), "kind": ev.get("kind"),
                             "status": ev.get("status_code"), "request_id": ev.get("request_id"),
                             "time": ev.get("ts"), "latency": ev.get("latency_s"), "outcome": ev.get("outcome")}
    return [rows[k] for k in sorted(rows)]


def _window(run: dict[str, Any], attempts: list[dict[str, Any]], telemetry: list[dict[str, Any]]) -> list[str]:
    timings = _dict(run.get("timings"))
    lines = []
    if timings.get("started_at") or timings.get("created_at"):
        duration = f" ({timings['duration_s']} s)" if timings.get("duration_s") is not None else ""
        lines.append(f"- Run: {timings.get('started_at') or timings.get('created_at')} → "
                     f"{timings.get('ended_at') or 'not ended'}{duration}")
    times = sorted(str(a["time"]) for a in attempts if a.get("time"))
    if times:
        lines.append(f"- Provider calls: {times[0]} → {times[-1]}")
    stamps = sorted(str(e["ts"]) for e in telemetry if isinstance(e.get("ts"), str))
    if stamps:
        lines.append(f"- Telemetry: {stamps[0]} → {stamps[-1]}")
    return lines or ["- (no timestamps in the bundle)"]


def render_summary(entries: Mapping[str, bytes], *, run_id: str | None, run_status: str | None,
                   run_name: str, created: datetime) -> str:
    """SUMMARY.md for the provider's support team, from the already scrubbed entries."""
    metrics = _dict(_parsed(entries, "meta/provider_metrics.json"))
    result = _dict(_parsed(entries, "result.json"))
    run = _dict(_parsed(entries, "meta/run.json"))
    probes = _list(_parsed(entries, "meta/capability_probes.json"))
    telemetry = _telemetry(entries)
    attempts = _attempts(entries, telemetry)
    totals = _dict(metrics.get("summary"))
    routes = _dict(metrics.get("routes"))
    fallbacks = [f for f in _list(metrics.get("fallbacks")) if isinstance(f, dict)]
    convo = entries.get("conversation/conversation.md", b"").decode("utf-8", "replace")
    request_ids = sorted({str(a["request_id"]) for a in attempts if a.get("request_id")})
    status = f"{result.get('exit_reason') or '-'}" + (" (completed)" if result.get("completed") else
                                                     " (not completed)" if result else "")
    out = [
        f"# KyleCode vendor bundle: run {run_id or run_name}", "",
        "Prepared for the provider's support team. Times are UTC. Secret values, local paths and user",
        "names are replaced by placeholders (`***REDACTED***`, `<RUN_DIR>`, `<HOME>`, `<USER>`; see",
        f"{MANIFEST}). Bundle created {created.isoformat(timespec='seconds').replace('+00:00', 'Z')} by KyleCode "
        f"{__version__}.", "",
        "## At a glance", "",
        f"- Run: `{run_id or '-'}` (`{run_name}`){f', status {run_status}' if run_status else ''}",
        f"- Primary route: `{run.get('route') or '-'}`; served by `{result.get('served_route') or '-'}`",
        f"- Exit: {status}, {result.get('steps', '-')} steps",
        f"- Calls: {totals.get('calls', '-')} ({totals.get('success', '-')} ok, {totals.get('errors', '-')} errors); "
        f"HTML errors: {totals.get('html_errors', '-')}; retries: {totals.get('retries', '-')}; fallbacks: "
        f"{len(fallbacks)}; circuit skips: {totals.get('circuit_skips', '-')}",
        f"- Upstream request ids: {len(request_ids)} (table below)",
    ]
    if result.get("error"):
        out.append(f"- Error: {_cell(result.get('error_type'))}: {_cell(result['error'])}")
    if result.get("hint"):
        out.append(f"- Hint: {_cell(result['hint'])}")
    out += ["", "## Time window", "", *_window(run, attempts, telemetry)]
    out += ["", "## Routes", "", *_table(
        ("Route", "Calls", "OK", "Errors", "HTML errors", "Retries", "Stream calls", "Status codes",
         "Latency avg / max (s)"),
        ((f"`{name}`", r.get("calls"), r.get("success"), r.get("errors"), r.get("html_errors"), r.get("retries"),
          r.get("stream_calls"),
          ", ".join(f"{code}×{n}" for code, n in sorted(_dict(r.get("status_codes")).items())),
          f"{r.get('latency_avg', '-')} / {r.get('latency_max', '-')}")
         for name, r in sorted(routes.items()) if isinstance(r, dict)))]
    out += ["", "## Fallbacks", "", *_table(("From", "To", "Reason"),
                                             ((f.get("from"), f.get("to"), f.get("reason")) for f in fallbacks))]
    markers = {m: convo.count(m) for m in ("[fallback_route]", "[stream-policy]", "[tool-policy]", "[circuit-open]",
                                           "[provider-retry]", "[provider-error]", "[streaming-disabled]")}
    overrides = [(kind, o.get("route"), o.get("reason")) for kind, key in (("stream", "stream_overrides"),
                                                                           ("tool", "tool_overrides"))
                 for o in _list(metrics.get(key)) if isinstance(o, dict)]
    overrides += [("circuit skip", r, "breaker open") for r in _list(metrics.get("circuit_skips"))
                  if isinstance(r, str)]
    out += ["", "## Policy decisions", "", *_table(("Kind", "Route", "Reason"), overrides), "",
            "Transcript markers (conversation/conversation.md): "
            + ", ".join(f"`{m}` ×{n}" for m, n in markers.items() if n) if any(markers.values())
            else "Transcript markers: none."]
    out += ["", "## Attempts and upstream request ids", "", *_table(
        ("Turn", "Attempt", "Route", "Kind", "HTTP status", "Outcome", "Upstream request id", "Time", "Latency (s)"),
        ((a.get("turn"), a.get("attempt"), a.get("route"), a.get("kind"), a.get("status"),
          (a.get("outcome") or "-") + (" (HTML)" if a.get("html") else ""), a.get("request_id"), a.get("time"),
          a.get("latency")) for a in attempts))]
    out += ["", "## Capability probes", "", *_table(
        ("Route", "Attempted", "Stream", "Tool stream", "JSON mode", "Note"),
        ((p.get("model_id") or p.get("route"), p.get("attempted"), p.get("stream_success"),
          p.get("tool_stream_success"), p.get("json_mode_success"), p.get("skipped_reason") or p.get("error"))
         for p in probes if isinstance(p, dict)))]
    html = sorted(n for n in entries if n.endswith(".html_excerpt.txt"))
    errors = sorted(n for n in entries if n.startswith("errors/"))
    out += ["", "## Where to look", "",
            f"- Error payloads: {', '.join(f'`{n}`' for n in errors) or 'none'}",
            f"- HTML excerpts: {', '.join(f'`{n}`' for n in html) or 'none'}",
            "- Structured requests (sanitised headers, body excerpts): `meta/requests/`",
            "- Raw response diagnostics (headers, excerpts, base64 bodies): `raw/responses/`",
            f"- Every file with its size and sha256: `{MANIFEST}`", ""]
    return "\n".join(out)
