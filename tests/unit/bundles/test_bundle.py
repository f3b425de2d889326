"""Vendor bundles on synthetic run directories: allow-list, scrubbing, manifest, summary,
refusal, caps, and every way a name could escape (run references, zip entries)."""

from __future__ import annotations

import base64
import io
import json
import os
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kcd.bundles.build import build_bundle
from kcd.bundles.caps import Caps
from kcd.bundles.check import MANIFEST, verify_bundle
from kcd.bundles.runref import resolve_run_dir, run_facts
from kcd.bundles.scrub import Scrubber, make_scrubber
from kcd.bundles.selection import check_entry_name
from kcd.bundles.summary import SUMMARY
from kcd.bundles.types import BundleAttachment, BundleError
from kcd.observe.redact import MASK, Redactor

CANARY = "kc-canary-secret-7f3a9b2c1d"  # not sk-shaped: only the known-value path can catch it
USER = "kmccleary"
RUN_ID = "abc123def456"
NAME = "20251015-021419_agent_ws_opencode_abc123de"
NOW = datetime(2025, 10, 15, 2, 20, tzinfo=timezone.utc)
EXPECTED = {
    "conversation/conversation.md", "meta/capability_probes.json", "meta/provider_metrics.json",
    "meta/requests/turn_1_attempt_1.json", "meta/requests/turn_1_attempt_2.json", "errors/turn_1.json",
    "raw/responses/turn_1_attempt_1.json", "raw/responses/turn_1_attempt_1.body.b64",
    "raw/responses/turn_1_attempt_1.html_excerpt.txt", "raw/responses/turn_1.response.json",
    "meta/telemetry.jsonl", "meta/run.json", "result.json",
}


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def make_run(root: Path, home: Path) -> Path:
    """A run that hit an HTML 502 on its primary and fell back, with secrets, paths and the
    user's name planted where real runs have leaked them."""
    run = root / NAME
    (run / "conversation").mkdir(parents=True)
    (run / "conversation/conversation.md").write_text(
        "# Conversation Transcript\n\n**System**\n\n[fallback_route] Selected fallback route 'openai/gpt-4o-mini' "
        f"for 'openrouter/x-ai/grok-4-fast' after 'upstream_html'.\n\n**Tool Results**\n\n"
        f"$ ls -l {home}/project\n-rw-r--r-- 1 {USER} {USER} 12 main.c\nkey was {CANARY}\n"
        f"See: {run}/artifacts/tool_results/turn_1/1_ls.txt\n")
    _json(run / "meta/capability_probes.json", [{"model_id": "openrouter/x-ai/grok-4-fast", "attempted": True,
                                                 "stream_success": False, "tool_stream_success": False,
                                                 "json_mode_success": True, "skipped_reason": None}])
    _json(run / "meta/provider_metrics.json", {
        "summary": {"calls": 2, "success": 1, "errors": 1, "html_errors": 1, "retries": 0, "circuit_skips": 0},
        "routes": {"openrouter/x-ai/grok-4-fast": {"calls": 1, "success": 0, "errors": 1, "html_errors": 1,
                                                   "status_codes": {"502": 1}, "latency_avg": 0.2},
                   "openai/gpt-4o-mini": {"calls": 1, "success": 1, "errors": 0, "html_errors": 0,
                                          "status_codes": {"200": 1}, "latency_avg": 0.1}},
        "fallbacks": [{"from": "openrouter/x-ai/grok-4-fast", "to": "openai/gpt-4o-mini", "reason": "upstream_html"}],
        "stream_overrides": [{"route": "openrouter/x-ai/grok-4-fast", "reason": "capability_probe_stream_failure"}],
        "tool_overrides": [], "circuit_skips": []})
    for attempt, route, status, rid in ((1, "openrouter/x-ai/grok-4-fast", 502, "gen-upstream-111"),
                                        (2, "openai/gpt-4o-mini", 200, "req-upstream-222")):
        _json(run / f"meta/requests/turn_1_attempt_{attempt}.json", {
            "turn": 1, "attempt": attempt, "route": route, "kind": "primary" if attempt == 1 else "fallback",
            "status_code": status, "request_id": rid, "timestamp_utc": f"2025-10-15T02:14:2{attempt}.000Z",
            "request": {"headers": {"Authorization": f"Bearer {CANARY}"}, "body_excerpt": "{}"}})
    _json(run / "raw/responses/turn_1_attempt_1.json", {"route": "openrouter/x-ai/grok-4-fast", "status_code": 502,
                                                        "classification": "upstream_html", "html_detected": True,
                                                        "request_id": "gen-upstream-111"})
    body = f"<html><body>502 Bad Gateway; key={CANARY}</body></html>".encode()
    (run / "raw/responses/turn_1_attempt_1.body.b64").write_text(base64.b64encode(body).decode())
    (run / "raw/responses/turn_1_attempt_1.html_excerpt.txt").write_text("<html><body>502 Bad Gateway")
    _json(run / "raw/responses/turn_1.response.json", {"choices": [{"message": {"content": "ok"}}]})
    _json(run / "errors/turn_1.json", {"error": f"upstream_html: the key {CANARY} was sent", "turn": 1})
    tel = [{"event": "run.start", "ts": "2025-10-15T02:14:19.000Z", "run_id": RUN_ID,
            "config": f"{home}/configs/agent.yaml"},
           {"event": "llm.attempt", "ts": "2025-10-15T02:14:21.000Z", "run_id": RUN_ID,
            "route": "openrouter/x-ai/grok-4-fast", "status_code": 502, "outcome": "upstream_html", "html": True},
           {"event": "llm.attempt", "ts": "2025-10-15T02:14:21.500Z", "run_id": "otherrun0000",
            "route": "openai/gpt-4o", "status_code": 200, "outcome": "ok"},
           {"event": "run.end", "ts": "2025-10-15T02:14:23.000Z", "run_id": RUN_ID}]
    (run / "meta/telemetry.jsonl").write_text("".join(json.dumps(e) + "\n" for e in tel))
    _json(run / "meta/run.json", {
        "run_id": RUN_ID, "route": "openrouter/x-ai/grok-4-fast", "config_path": f"{home}/configs/agent.yaml",
        "peer": {"uid": 4242, "pid": 1, "gid": 4242},
        "timings": {"started_at": "2025-10-15T02:14:19.000Z", "ended_at": "2025-10-15T02:14:23.000Z",
                    "duration_s": 4.0},
        "resolved_config": {"providers": {"models": [{"id": "x", "api_key": "inline-config-key-value"}]}}})
    _json(run / "result.json", {"run_id": RUN_ID, "exit_reason": "mark_task_complete", "completed": True,
                                "steps": 1, "served_route": "openai/gpt-4o-mini"})
    # Never bundled, whatever they hold.
    for rel in ("workspace/secret.txt", "final_container_dir/secret.txt", "raw/requests/turn_1.request.json",
                "prompts/compiled_system.md", "meta/events.jsonl", "meta/requests/nested/turn_9.json"):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(f"never bundled {CANARY}")
    return run


@pytest.fixture
def env(tmp_path: Path):
    root, home = tmp_path / "runs", tmp_path / "home" / USER
    root.mkdir()
    home.mkdir(parents=True)
    run = make_run(root, home)
    scrubber = make_scrubber(Redactor([CANARY]), run, runs_root=root, homes=[str(home)], users=[USER, "root"],
                             config_path=run_facts(run).config_path)
    return root, home, run, scrubber


def build(run: Path, scrubber: Scrubber, **kw):
    return build_bundle(run, scrubber, run_id=RUN_ID, now=NOW, **kw)


def entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


# ---- contents and manifest ---------------------------------------------------------------

def test_only_the_allow_list_is_bundled(env):
    _, _, run, scrubber = env
    b = build(run, scrubber)
    assert b.name == f"{NAME}_vendor_bundle.zip"
    assert set(entries(b.data)) == EXPECTED | {MANIFEST, SUMMARY}


def test_manifest_lists_every_entry_with_size_and_sha256(env):
    _, _, run, scrubber = env
    b = build(run, scrubber)
    manifest = verify_bundle(b.data)  # raises on any mismatch
    assert {f["path"] for f in manifest["files"]} == EXPECTED | {SUMMARY}
    assert manifest["run_id"] == RUN_ID and manifest["run"] == NAME
    assert manifest["kylecode_version"] and manifest["created_utc"] == "2025-10-15T02:20:00Z"
    assert manifest["redaction"]["placeholders"]["<RUN_DIR>"]
    zipped = entries(b.data)
    for row in manifest["files"]:
        assert row["size"] == len(zipped[row["path"]])
    tampered = io.BytesIO()
    with zipfile.ZipFile(tampered, "w") as zf:
        for name, blob in zipped.items():
            zf.writestr(name, blob + b" " if name == "result.json" else blob)
    with pytest.raises(ValueError, match="result.json"):
        verify_bundle(tampered.getvalue())


def test_entry_names_are_relative_and_safe(env):
    _, _, run, scrubber = env
    with zipfile.ZipFile(io.BytesIO(build(run, scrubber).data)) as zf:
        for info in zf.infolist():
            assert check_entry_name(info.filename) == info.filename
            assert info.compress_type == zipfile.ZIP_DEFLATED


# ---- scrubbing -------------------------------------------------------------------------------

def test_secrets_paths_and_user_names_are_scrubbed_everywhere(env):
    root, home, run, scrubber = env
    zipped = entries(build(run, scrubber).data)
    blob = b"\n".join(zipped.values())
    decoded = base64.b64decode(zipped["raw/responses/turn_1_attempt_1.body.b64"])
    for needle in (CANARY.encode(), str(home).encode(), str(root).encode(), USER.encode(),
                   b"inline-config-key-value"):
        assert needle not in blob and needle not in decoded, needle
    assert MASK.encode() in decoded and b"502 Bad Gateway" in decoded
    convo = zipped["conversation/conversation.md"].decode()
    assert "$ ls -l <HOME>/project" in convo and "1 <USER> <USER> 12" in convo
    assert "See: <RUN_DIR>/artifacts/" in convo and f"key was {MASK}" in convo
    run_json = json.loads(zipped["meta/run.json"])
    assert run_json["config_path"] == "<CONFIG_DIR>/agent.yaml"
    assert run_json["resolved_config"]["providers"]["models"][0]["api_key"] == MASK  # by key name


def test_redaction_report_counts_what_was_replaced(env):
    _, _, run, scrubber = env
    manifest = verify_bundle(build(run, scrubber).data)
    rows = {f["path"]: f["redaction"] for f in manifest["files"]}
    assert rows["errors/turn_1.json"]["known_secret_values"] == 1
    assert rows["errors/turn_1.json"]["secrets_masked"] == 1
    assert rows["raw/responses/turn_1_attempt_1.body.b64"]["secrets_masked"] == 1
    assert rows["conversation/conversation.md"]["user_names_replaced"] == 2
    assert rows["conversation/conversation.md"]["paths_replaced"] == 2
    assert rows["result.json"] == {"secrets_masked": 0, "already_masked": 0, "known_secret_values": 0,
                                   "paths_replaced": 0, "user_names_replaced": 0}
    totals = manifest["redaction"]["totals"]
    assert totals["secrets_masked"] >= 5 and totals["known_secret_values"] >= 4


def test_telemetry_keeps_only_the_runs_lines(env):
    _, _, run, scrubber = env
    b = build(run, scrubber)
    lines = [json.loads(x) for x in entries(b.data)["meta/telemetry.jsonl"].splitlines()]
    assert [e["event"] for e in lines] == ["run.start", "llm.attempt", "run.end"]
    assert {e["run_id"] for e in lines} == {RUN_ID}
    row = next(f for f in b.manifest["files"] if f["path"] == "meta/telemetry.jsonl")
    assert row["other_runs_lines_dropped"] == 1


def test_scrubber_replaces_whole_paths_and_names_only():
    s = Scrubber(Redactor(), paths={"/root": "<HOME>", "/srv/runs": "<RUNS_ROOT>", "/srv/runs/r1": "<RUN_DIR>"},
                 users=["kyle", "root", "ab"], run_dir_name="r1")
    out, counts = s.scrub(b"/root/x /var/root /rootfs /srv/runs/r1/meta /srv/runs/r2 /private/tmp/q/r1/x "
                          b"kylecode kyle's kyle.bak root ab")
    assert out == (b"<HOME>/x /var/root /rootfs <RUN_DIR>/meta <RUNS_ROOT>/r2 <RUN_DIR>/x "
                   b"kylecode <USER>'s <USER>.bak root ab")
    assert (counts.paths_replaced, counts.user_names_replaced) == (4, 2)


# ---- refusal ------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", [b"", b"x", b"xy"])
def test_a_base64_encoded_secret_is_scrubbed_at_any_alignment(env, prefix):
    # The redactor knows the keys' encoded forms (base64 at any alignment, URL-safe, spelled
    # out), so they are masked like raw keys; the leak check after scrubbing stays as a net.
    root, _, run, scrubber = env
    hidden = base64.b64encode(prefix + CANARY.encode() + b" trailing").decode()
    _json(run / "errors/turn_2.json", {"raw_body_b64": hidden})
    b = build(run, scrubber)
    body = entries(b.data)["errors/turn_2.json"]
    assert MASK.encode() in body and not scrubber.leaks(body)
    assert CANARY.encode() not in body


def test_a_secret_in_an_attachment_is_scrubbed_in_every_form(env):
    _, _, run, scrubber = env
    ok = build(run, scrubber, attachments=[BundleAttachment("matrix.json", json.dumps({"log": CANARY}))])
    assert json.loads(entries(ok.data)["matrix/matrix.json"]) == {"log": MASK}
    urlsafe = base64.urlsafe_b64encode(CANARY.encode()).decode()
    spaced = " ".join(CANARY)
    b = build(run, scrubber, attachments=[BundleAttachment("junit.xml", f"<failure>{urlsafe} {spaced}</failure>")])
    junit = entries(b.data)["matrix/junit.xml"]
    assert junit.count(MASK.encode()) == 2 and not scrubber.leaks(junit)


# ---- caps ----------------------------------------------------------------------------------

def test_large_files_are_truncated_after_scrubbing(env):
    _, _, run, scrubber = env
    line = f"{CANARY} padding padding padding\n"
    (run / "conversation/conversation.md").write_text(line * 400)
    b = build(run, scrubber, caps=Caps(file_bytes=1000))
    convo = entries(b.data)["conversation/conversation.md"]
    assert len(convo) <= 1000 and convo.endswith(b"\n") and CANARY[:8].encode() not in convo
    row = next(f for f in b.manifest["files"] if f["path"] == "conversation/conversation.md")
    assert row["truncated"] and "per-file cap" in row["truncated_note"]
    assert row["source_size"] == len(line) * 400


def test_total_cap_and_read_cap(env):
    _, _, run, scrubber = env
    with pytest.raises(BundleError) as exc:
        build(run, scrubber, caps=Caps(total_bytes=2000))
    assert exc.value.status == 413 and exc.value.code == "bundle_too_large"
    limit = (run / "meta/run.json").stat().st_size - 1
    b = build(run, scrubber, caps=Caps(read_bytes=limit))
    assert "meta/run.json" not in entries(b.data) and "result.json" in entries(b.data)
    assert {"path": "meta/run.json", "reason": f"larger than {limit} bytes"} in b.manifest["skipped"]


# ---- names -------------------------------------------------------------------------------

def test_symlinks_and_unsafe_names_inside_the_run_are_skipped(env, tmp_path):
    _, _, run, scrubber = env
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"private": "outside the run"}))
    os.symlink(outside, run / "errors/turn_7.json")
    os.symlink(outside, run / "result.json.tmp")  # not allow-listed at all
    (run / "errors/..\\evil.json").write_text("{}")
    (run / "meta/provider_metrics.json").rename(run / "pm.json")
    os.symlink(run / "pm.json", run / "meta/provider_metrics.json")  # a symlink even inside the run
    b = build(run, scrubber)
    names = set(entries(b.data))
    assert "errors/turn_7.json" not in names and "meta/provider_metrics.json" not in names
    assert not any("evil" in n for n in names)
    reasons = {s["path"]: s["reason"] for s in b.manifest["skipped"]}
    assert reasons["errors/turn_7.json"] == "symlink" and reasons["meta/provider_metrics.json"] == "symlink"
    assert "unsafe file name" in reasons.values()
    assert b"outside the run" not in b"".join(entries(b.data).values())


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../b", "a\\b", "C:evil", "", "a//b", "./a", "a/",
                                  "a/./b", "x\x00y"])
def test_unsafe_entry_names_are_refused(name):
    with pytest.raises(BundleError) as exc:
        check_entry_name(name)
    assert exc.value.code == "unsafe_entry_name"


@pytest.mark.parametrize("name", ["../evil.json", "a/b.json", "..", ".hidden", "x" * 200, "", "a b.json"])
def test_unsafe_attachment_names_are_refused(env, name):
    _, _, run, scrubber = env
    with pytest.raises(BundleError) as exc:
        build(run, scrubber, attachments=[BundleAttachment(name, "{}")])
    assert exc.value.code == "unsafe_entry_name"


def test_run_references_must_resolve_directly_under_the_runs_root(env, tmp_path):
    root, _, run, _ = env
    outside = tmp_path / "elsewhere" / NAME
    make_run(tmp_path / "elsewhere", tmp_path / "home")  # looks like a run, but not under the root
    os.symlink(outside, root / "link-out")
    os.symlink(run, root / "link-in")
    os.symlink("/", root / "slash")
    assert resolve_run_dir(root, NAME) == run
    assert resolve_run_dir(root, str(run)) == run
    assert resolve_run_dir(root, "link-in") == run  # a symlink that stays inside is the same run
    refused = ["..", "../elsewhere/" + NAME, f"{NAME}/../{NAME}", str(outside), "/etc", "link-out", "slash",
               str(root), f"{NAME}/meta", str(root / "link-out"), "", "a\x00b", "/"]
    for ref in refused:
        with pytest.raises(BundleError) as exc:
            resolve_run_dir(root, ref)
        assert exc.value.status == 400 and exc.value.code in ("run_outside_runs_root", "invalid_run"), ref
    with pytest.raises(BundleError) as exc:
        resolve_run_dir(root, "no-such-run")
    assert exc.value.status == 404


# ---- SUMMARY.md -------------------------------------------------------------------------------

def test_summary_speaks_to_the_providers_support_team(env):
    _, _, run, scrubber = env
    summary = entries(build(run, scrubber).data)[SUMMARY].decode()
    for text in ("# KyleCode vendor bundle: run abc123def456",
                 "Primary route: `openrouter/x-ai/grok-4-fast`; served by `openai/gpt-4o-mini`",
                 "Exit: mark_task_complete (completed), 1 steps",
                 "Calls: 2 (1 ok, 1 errors); HTML errors: 1",
                 "| `openrouter/x-ai/grok-4-fast` | 1 | 0 | 1 | 1 |", "502×1", "200×1",
                 "| openrouter/x-ai/grok-4-fast | openai/gpt-4o-mini | upstream_html |",
                 "| stream | openrouter/x-ai/grok-4-fast | capability_probe_stream_failure |",
                 "gen-upstream-111", "req-upstream-222", "upstream_html (HTML)",
                 "- Run: 2025-10-15T02:14:19.000Z → 2025-10-15T02:14:23.000Z (4.0 s)",
                 "- Provider calls: 2025-10-15T02:14:21.000Z → 2025-10-15T02:14:22.000Z",
                 "`[fallback_route]` ×1", "`raw/responses/turn_1_attempt_1.html_excerpt.txt`"):
        assert text in summary, text


def test_summary_falls_back_on_telemetry_without_structured_requests(env):
    _, _, run, scrubber = env
    for path in (run / "meta/requests").glob("*.json"):
        path.unlink()
    for path in (run / "raw/responses").glob("turn_1_attempt_*"):
        path.unlink()
    summary = entries(build(run, scrubber).data)[SUMMARY].decode()
    assert "| 0 | 1 | openrouter/x-ai/grok-4-fast | - | 502 | upstream_html |" in summary


def test_hostile_provider_json_does_not_break_the_bundle(env):
    _, _, run, scrubber = env
    deep = "[" * 100_000 + "]" * 100_000
    (run / "raw/responses/turn_1.response.json").write_text(deep)
    (run / "meta/provider_metrics.json").write_text('["not", "an", "object"]')
    (run / "meta/telemetry.jsonl").write_text(deep + '\n"a string"\n{"event": "llm.attempt", "turn": "x"}\n')
    b = build(run, scrubber)
    assert entries(b.data)["raw/responses/turn_1.response.json"] == deep.encode()
    assert "## Routes" in entries(b.data)[SUMMARY].decode()


def test_a_run_dir_name_unfit_for_a_file_name_is_not_used(env):
    root, home, run, _ = env
    odd = run.rename(root / "run ünïcode")
    scrubber = make_scrubber(Redactor([CANARY]), odd, runs_root=root, homes=[str(home)])
    b = build_bundle(odd, scrubber, run_id=RUN_ID, now=NOW)
    assert b.name.startswith("run_") and b.name.endswith("_vendor_bundle.zip") and b.name.isascii()
    assert verify_bundle(b.data)["run"] == "run ünïcode"
