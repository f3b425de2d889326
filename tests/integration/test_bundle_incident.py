"""`kcctl bundle` and `kcctl incident` through a real daemon, runs on the simulator.

The daemon knows two kinds of secret: the provider keys (CANARY_KEYS, which the
simulator's `auth_401` fault with `echo_key=1` echoes back into error bodies) and an
extra token planted in its environment, which the tests also plant in run files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kcd.observe.redact import encoded_forms

from .conftest import CANARY_KEYS, REPO
from .resilience_support import GROK, OPENAI_MINI, read_json, run_json, write_config

CANARY = "kc-bundle-canary-5b8e2f6a9d"  # not key-shaped: only the daemon's known values catch it
SECRETS = [CANARY, *CANARY_KEYS.values()]
ALLOWED_PREFIXES = ("meta/requests/", "errors/", "raw/responses/", "matrix/")
ALLOWED_FILES = {"MANIFEST.json", "SUMMARY.md", "conversation/conversation.md", "meta/capability_probes.json",
                 "meta/provider_metrics.json", "meta/telemetry.jsonl", "meta/run.json", "result.json"}


@pytest.fixture
def bkcd(make_kcd, sim):
    sim.reset()
    return make_kcd("--executor", "in-process", env_extra={
        "OPENROUTER_BASE_URL": sim.api_base, "OPENAI_BASE_URL": sim.api_base, "KC_BUNDLE_CANARY_TOKEN": CANARY})


@pytest.fixture
def fallback_run(bkcd, sim, tmp_path):
    """A run whose primary answered 401 echoing the key, then fell back: (run id, run dir)."""
    sim.fault(GROK, "auth_401", 1, echo_key=1)
    sim.fault(GROK, "html_502", 1)
    end, run_dir = run_json(bkcd, write_config(tmp_path / "cfg.yaml", GROK, [OPENAI_MINI]))
    assert end["data"]["completed"], end
    return read_json(run_dir / "result.json")["run_id"], run_dir


def kcctl(daemon, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kcctl.cli", "--socket", str(daemon.socket), "--no-autostart",
                           *args], env=daemon.env, capture_output=True, text=True, timeout=180, cwd=cwd)


def unzip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def assert_matches_manifest(zipped: dict[str, bytes]) -> dict:
    manifest = json.loads(zipped["MANIFEST.json"])
    listed = {row["path"]: row for row in manifest["files"]}
    assert set(listed) == set(zipped) - {"MANIFEST.json"}
    for name, blob in zipped.items():
        assert not name.startswith("/") and ".." not in name.split("/"), name
        if name != "MANIFEST.json":
            assert listed[name]["size"] == len(blob), name
            assert listed[name]["sha256"] == hashlib.sha256(blob).hexdigest(), name
    return manifest


def assert_clean(zipped: dict[str, bytes], *local: Path) -> None:
    for name, blob in zipped.items():
        views = [blob]
        if name.endswith(".b64"):
            views.append(base64.b64decode(blob))
        for view in views:
            for secret in SECRETS:
                assert secret.encode() not in view, (name, secret)
                assert base64.b64encode(secret.encode())[:20] not in view, (name, secret)
            for path in local:
                assert str(path).encode() not in view, (name, path)


# ---- bundle ---------------------------------------------------------------------------------

def test_bundle_by_id_and_by_directory_matches_its_manifest(bkcd, fallback_run, tmp_path):
    run_id, run_dir = fallback_run
    out = tmp_path / "by-id.zip"
    proc = kcctl(bkcd, "bundle", run_id, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"[vendor-bundle] Wrote {out}"
    zipped = unzip(out)
    manifest = assert_matches_manifest(zipped)
    assert manifest["run_id"] == run_id and manifest["run"] == run_dir.name and manifest["run_status"] == "completed"
    assert manifest["kylecode_version"] and manifest["created_utc"]
    for name in zipped:
        assert name in ALLOWED_FILES or name.startswith(ALLOWED_PREFIXES), name
    for name in ("meta/requests/turn_1_attempt_1.json", "errors/turn_1.json", "raw/responses/turn_1_attempt_1.json",
                 "meta/telemetry.jsonl", "conversation/conversation.md", "meta/provider_metrics.json"):
        assert name in zipped, name
    summary = zipped["SUMMARY.md"].decode()
    assert f"run {run_id}" in summary and "401" in summary and "| openrouter/x-ai/grok-4-fast | openai/gpt-4o-mini" \
        in summary
    request_ids = {read_json(p)["request_id"] for p in (run_dir / "meta/requests").glob("*.json")}
    assert request_ids and all(rid in summary for rid in request_ids)

    # By directory, from another working directory: the default name lands in the cwd.
    work = tmp_path / "work"
    work.mkdir()
    proc = kcctl(bkcd, "bundle", os.path.relpath(run_dir, work), cwd=work)
    assert proc.returncode == 0, proc.stderr
    default = work / f"{run_dir.name}_vendor_bundle.zip"
    assert proc.stdout.splitlines()[0] == f"[vendor-bundle] Wrote {default.name}"
    assert set(unzip(default)) == set(zipped)
    assert os.listdir(work) == [default.name]  # no temporary file left behind


def test_canary_in_env_and_in_run_files_comes_out_clean(bkcd, fallback_run, tmp_path, kcd_root):
    run_id, run_dir = fallback_run
    errors = read_json(run_dir / "errors/turn_1.json")
    errors["planted"] = f"leaked {CANARY} in a trace, and {CANARY_KEYS['OPENROUTER_API_KEY']}"
    (run_dir / "errors/turn_1.json").write_text(json.dumps(errors, indent=2))
    (run_dir / "conversation/conversation.md").open("a").write(f"\nshell said: TOKEN={CANARY}\n")
    # The daemon scrubs raw bodies before base64-encoding them; plant an unscrubbed one
    # (as an older kcd or a hand-copied file would leave) to prove the bundle decodes too.
    b64 = sorted((run_dir / "raw/responses").glob("*.body.b64"))
    assert b64 and not any(CANARY_KEYS["OPENROUTER_API_KEY"].encode() in base64.b64decode(p.read_bytes())
                           for p in b64)
    b64[0].write_bytes(base64.b64encode(b'{"error": "Incorrect API key provided: '
                                        + CANARY_KEYS["OPENROUTER_API_KEY"].encode() + b'"}'))
    out = tmp_path / "clean.zip"
    proc = kcctl(bkcd, "bundle", str(run_dir), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    zipped = unzip(out)
    assert_clean(zipped, kcd_root, tmp_path)
    manifest = assert_matches_manifest(zipped)
    rows = {row["path"]: row["redaction"] for row in manifest["files"]}
    assert rows["errors/turn_1.json"]["known_secret_values"] >= 2
    assert rows["conversation/conversation.md"]["secrets_masked"] >= 1
    assert sum(rows[p]["secrets_masked"] for p in rows if p.endswith(".body.b64")) >= 1
    assert manifest["redaction"]["totals"]["paths_replaced"] >= 1
    assert "<CONFIG_DIR>/cfg.yaml" in zipped["meta/run.json"].decode()
    assert "planted" in json.loads(zipped["errors/turn_1.json"])  # the evidence stays, scrubbed


def test_an_encoded_secret_is_scrubbed_from_bundle_and_incident(bkcd, fallback_run, tmp_path):
    # A key inside a base64 body (as a provider echo stores it) is masked like a raw key; the
    # leak check after scrubbing stays as a net (a form the redactor misses refuses the bundle).
    run_id, run_dir = fallback_run
    errors = read_json(run_dir / "errors/turn_1.json")
    errors["raw_body_b64"] = base64.b64encode(f"upstream said {CANARY}".encode()).decode()
    (run_dir / "errors/turn_1.json").write_text(json.dumps(errors))
    out = tmp_path / "scrubbed.zip"
    proc = kcctl(bkcd, "bundle", run_id, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    zipped = unzip(out)
    body = zipped["errors/turn_1.json"]
    assert CANARY.encode() not in body and b"***REDACTED***" in body
    forms = [f.encode() for f in encoded_forms(CANARY)]
    assert not [f for f in forms for data in zipped.values() if f in data]
    proc = kcctl(bkcd, "incident", run_id, "--out", str(tmp_path / "inc"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bundle_takes_a_matrix_result_along(bkcd, fallback_run, tmp_path):
    run_id, _ = fallback_run
    result = tmp_path / "matrix.json"
    result.write_text(json.dumps({"scenarios": [{"name": "x", "passed": False, "log": f"key {CANARY}"}]}))
    out = tmp_path / "with-matrix.zip"
    proc = kcctl(bkcd, "bundle", run_id, "--out", str(out), "--with-matrix", str(result), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    zipped = unzip(out)
    assert_matches_manifest(zipped)
    assert json.loads(zipped["matrix/matrix.json"])["scenarios"][0]["log"] == "key ***REDACTED***"


# ---- escapes ---------------------------------------------------------------------------------

def _escape_attempts(daemon, run_dir: Path, tmp_path: Path) -> list[str]:
    """References to things that are not a run directory under the runs root."""
    fake = tmp_path / "outside" / run_dir.name
    (fake / "meta").mkdir(parents=True)
    (fake / "meta/run.json").write_text(json.dumps({"run_id": "fake", "stolen": "private outside data"}))
    os.symlink(fake, daemon.runs_root / "link-out")
    os.symlink(daemon.state_dir, daemon.runs_root / "link-state")
    return [
        str(run_dir) + "/..",  # the runs root itself
        str(run_dir / "meta"),  # inside a run, but not a run directory
        os.path.relpath("/etc", tmp_path),  # ../../etc from the working directory
        "/etc",
        str(fake),  # looks like a run, lives elsewhere
        str(daemon.runs_root / "link-out"),  # a symlink out of the root
        "link-state",  # the same, by name
        str(daemon.runs_root / "link-out" / ".." / run_dir.name),  # a '..' after a symlink
    ]


@pytest.mark.parametrize("command", ["bundle", "incident"])
def test_path_escapes_are_refused(bkcd, fallback_run, tmp_path, command):
    _, run_dir = fallback_run
    work = tmp_path / "work"
    work.mkdir()
    attempts = _escape_attempts(bkcd, run_dir, tmp_path)
    for ref in attempts:
        proc = kcctl(bkcd, command, ref, cwd=work)
        assert proc.returncode == 2, (ref, proc.stdout, proc.stderr)
        assert "runs root" in proc.stderr or "'..'" in proc.stderr, (ref, proc.stderr)
        assert "private outside data" not in proc.stdout + proc.stderr
    assert os.listdir(work) == []
    # The API itself, without kcctl making paths absolute first.
    with bkcd.http() as c:
        for ref in ("../state", f"{run_dir.name}/../../state", "link-out", "/", "", str(run_dir / "meta")):
            r = c.post("/v1/bundles", json={"run": ref})
            assert r.status_code == 400, (ref, r.text)
            assert r.json()["error"]["code"] in ("run_outside_runs_root", "invalid_run")
        r = c.post("/v1/bundles", json={"run": run_dir.name, "matrix": [{"name": "../../evil.json", "content": "{}"}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsafe_entry_name"
        r = c.post("/v1/bundles", json={"run": "feedfacecafe"})
        assert r.status_code == 404


# ---- incident -------------------------------------------------------------------------------

def test_incident_writes_all_three_pieces(bkcd, fallback_run, tmp_path, kcd_root):
    run_id, run_dir = fallback_run
    folder = tmp_path / "inc"
    proc = kcctl(bkcd, "incident", run_id, "--out", str(folder), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 1. The bundle, now carrying the matrix results too.
    bundle = folder / f"{run_dir.name}_vendor_bundle.zip"
    zipped = unzip(bundle)
    assert_matches_manifest(zipped)
    assert_clean(zipped, kcd_root, tmp_path)
    # 2. incident_metrics.json is the exporter's summary, exactly as `kcctl metrics export` gives it.
    exported = kcctl(bkcd, "metrics", "export", str(run_dir), "--print-summary", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    metrics = json.loads((folder / "incident_metrics.json").read_text())
    assert metrics == json.loads(exported.stdout)
    assert metrics["calls"] >= 3 and metrics["errors"] >= 2 and metrics["fallbacks"] >= 1
    # 3. The matrix rerun: the scenarios on the run's routes, as results and JUnit, scrubbed.
    results_bytes = (folder / "matrix/results.json").read_bytes()
    junit = (folder / "matrix/junit.xml").read_bytes()
    assert zipped["matrix/results.json"] == results_bytes and zipped["matrix/junit.xml"] == junit
    results = json.loads(results_bytes)
    assert results["status"] in ("passed", "failed") and results["scenarios"]
    assert "f28_auth_401" in results["scenarios"] and "openrouter_text_only" in results["scenarios"]
    assert junit.lstrip().startswith(b"<") and b"f28_auth_401" in junit
    assert str(kcd_root).encode() not in results_bytes + junit and b"<RUNS_ROOT>/" in results_bytes
    readme = (folder / "README.md").read_text()
    assert f"# Incident: run {run_id}" in readme and bundle.name in readme and "incident_metrics.json" in readme
    assert "`openrouter/x-ai/grok-4-fast`" in readme and "`openai/gpt-4o-mini`" in readme
    assert "| matrix rerun | ok | `matrix/results.json`, `matrix/junit.xml` |" in readme
    assert "## Attach to the ticket" in readme and zipped["SUMMARY.md"].decode() in readme
    assert f"[incident] {folder}/" in proc.stdout and str(bundle) in proc.stdout
    assert str(folder / "matrix/junit.xml") in proc.stdout
    assert sorted(os.listdir(folder)) == sorted(["README.md", "incident_metrics.json", bundle.name, "matrix"])


def test_incident_default_folder_and_a_route_no_scenario_covers(bkcd, tmp_path):
    end, run_dir = run_json(bkcd, REPO / "configs/demo.yaml")  # mock/dev: the built-in simulator
    run_id = read_json(run_dir / "result.json")["run_id"]
    proc = kcctl(bkcd, "incident", run_id, cwd=tmp_path)
    folder = tmp_path / f"incident_{run_dir.name}"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(folder)) == sorted(["README.md", "incident_metrics.json",
                                                  f"{run_dir.name}_vendor_bundle.zip"])
    assert "matrix: skipped (no offline scenario uses mock/dev)" in (folder / "README.md").read_text()
    proc = kcctl(bkcd, "incident", run_id, cwd=tmp_path)  # the folder is not empty any more
    assert proc.returncode == 2 and "not empty" in proc.stderr
    proc = kcctl(bkcd, "incident", run_id, "--out", str(tmp_path / "strict"), "--require-matrix", cwd=tmp_path)
    assert proc.returncode == 1 and "[incident] matrix rerun: failed: matrix: skipped" in proc.stdout


# ---- the runbook's script ------------------------------------------------------------------------

def test_build_vendor_bundle_script(bkcd, fallback_run, tmp_path):
    run_id, run_dir = fallback_run
    script = [sys.executable, str(REPO / "scripts/build_vendor_bundle.py"), "--socket", str(bkcd.socket)]
    proc = subprocess.run([*script, str(run_dir)], env=bkcd.env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = run_dir.parent / f"{run_dir.name}_vendor_bundle.zip"  # the original's default place
    assert proc.stdout.splitlines()[0] == f"[vendor-bundle] Wrote {expected}"
    assert_matches_manifest(unzip(expected))
    proc = subprocess.run([*script, str(tmp_path / "logging/nope")], env=bkcd.env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 1 and "[error] Logging directory not found:" in proc.stderr
    proc = subprocess.run([*script, str(run_dir), "--extra", "../"], env=bkcd.env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "--extra is not supported" in proc.stderr
