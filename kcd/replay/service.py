"""ReplayService: replays a finished run as a new run, then writes its `replay.json`.

A replay is an ordinary run (own id and directory, in the runs list, `replay_of` set)
started through the run manager, so its tool calls take the executor and sandbox path
every run takes. Its only route is the daemon's simulator, in a namespace of its own
loaded with the recorded responses over loopback HTTP (`kcd.simulator.recorded`):
the dispatcher, response parsing and tool-call handling are the real ones, and no
provider is contacted and no key used. Its seed is the recorded one (or the tree the
caller gives instead). While the run is finalised, before `run.end`, the namespace's
cursor tells whether the replay asked for more turns than were recorded
(`replay_exhausted`), the namespace is dropped and the comparison is written.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import msgspec

from kcd.agent.loop import RunResult
from kcd.api.types import PeerInfo, ReplayReport, ReplayRequest, RunInfo, RunRequest
from kcd.errors import Conflict, NotFound, Unprocessable
from kcd.matrix.simctl import SimNamespace, SimulatorError
from kcd.observe.rundir import RunDir
from kcd.peer_files import peer_reader
from kcd.replay.compare import MAX_DIVERGENCES, NORMALISED, compare_turns
from kcd.replay.config import replay_config
from kcd.replay.recording import Recording, load_recording
from kcd.replay.results import read_results
from kcd.runs import RunManager, RunRejected, load_config_for_request
from kcd.simulator.recorded import ScriptLoad
from kcd.workspaces.uploads import UploadStore

__all__ = ["REPORT", "ReplayService", "read_report"]

log = logging.getLogger("kcd.replay")

REPORT = "replay.json"


def read_report(run_dir: Path) -> ReplayReport | None:
    path = run_dir / REPORT
    try:
        return msgspec.json.decode(path.read_bytes(), type=ReplayReport)
    except FileNotFoundError:
        return None


def build_report(rec: Recording, replay_run: str, run_dir: Path, workspace: Path, result: RunResult,
                 workspace_label: str, served: int) -> ReplayReport:
    """Compare the replay's tool results (in `run_dir`) with the recording's."""
    recorded_dir = Path(rec.run_dir)
    divergences, turns, calls = compare_turns(
        read_results(recorded_dir), read_results(run_dir), recorded_turns=rec.steps,
        replayed_turns=result.steps, recorded_workspace=recorded_dir / "workspace", replayed_workspace=workspace)
    return ReplayReport(
        recorded_run=rec.run_id, replay_run=replay_run, identical=not divergences, turns_compared=turns,
        calls_compared=calls, recorded_turns=rec.steps, replayed_turns=result.steps,
        recorded_exit_reason=rec.exit_reason, replayed_exit_reason=result.exit_reason,
        workspace=workspace_label, responses_recorded=len(rec.turns), responses_served=served,
        normalised=list(NORMALISED), divergences=divergences[:MAX_DIVERGENCES],
        divergences_total=len(divergences))


class ReplayService:
    """Starts replays (`POST /v1/runs/{id}/replay`); each finishes with its report."""

    def __init__(self, runs: RunManager, uploads: UploadStore, simulator_url: Callable[[], Awaitable[str]]):
        self.runs = runs
        self.uploads = uploads
        self.simulator_url = simulator_url

    def _seed(self, rec: Recording, body: ReplayRequest) -> tuple[RunRequest, str]:
        """(the seed fields of the run request, how the report names the workspace)."""
        if body.workspace or body.workspace_upload:
            given = body.workspace or "an uploaded tree"
            return RunRequest(config_text="", task="", workspace=body.workspace,
                              workspace_upload=body.workspace_upload), given
        if rec.seed_archive is not None:
            upload_id, path = self.uploads.new_path()
            shutil.copyfile(rec.seed_archive, path)  # the run takes (moves) its upload
            return RunRequest(config_text="", task="", workspace_upload=upload_id), "recorded seed"
        if rec.seed_dir is None:  # the recorded run started from an empty workspace
            return RunRequest(config_text="", task=""), "empty workspace, as recorded"
        if Path(rec.seed_dir).is_dir():
            return RunRequest(config_text="", task="", workspace=rec.seed_dir), f"recorded seed {rec.seed_dir}"
        raise Unprocessable("no_seed", f"run {rec.run_id} has no recorded seed ({rec.run_dir}/meta/seed.tar.gz) "
                                       f"and its seed directory {rec.seed_dir} is gone; give a workspace "
                                       "to replay against")

    async def start(self, info: RunInfo, body: ReplayRequest, peer: PeerInfo | None) -> RunInfo:
        """Replay `info` (the caller's access was checked): the new run's info."""
        if info.status not in ("completed", "failed", "cancelled", "interrupted"):
            raise Conflict("run_active", f"run {info.id} has not ended yet; replay it when it has")
        if info.pruned_at:
            raise NotFound("run_pruned", f"run {info.id}'s directory was deleted by retention at {info.pruned_at}")
        if body.workspace and body.workspace_upload:
            raise Unprocessable("invalid_request", "give workspace or workspace_upload, not both")
        rec = await anyio.to_thread.run_sync(load_recording, Path(info.run_dir))  # RecordingUnusable: 422
        if rec.pack_paths is None and rec.config_path:
            rec = await anyio.to_thread.run_sync(_paths_from_config_file, rec, peer)
        seed, label = await anyio.to_thread.run_sync(self._seed, rec, body)
        sim = (await self.simulator_url()).removesuffix("/v1")
        http = httpx.AsyncClient(trust_env=False)  # loopback only; closed when the replay finishes
        ns = SimNamespace(sim, f"replay-{secrets.token_hex(8)}", http)
        try:
            await ns.load_script(ScriptLoad(turns=rec.turns, source=rec.run_id))
            config = replay_config(rec.resolved_config, route=rec.route, base_url=ns.api_base,
                                   native_tools=rec.native_tools, stream=rec.stream,
                                   pack_paths=rec.pack_paths, tool_dirs=rec.tool_dirs)
            req = RunRequest(config_text=json.dumps(config), config_path=rec.config_path, task=rec.task,
                             max_steps=rec.max_steps, stream=rec.stream, workspace=seed.workspace,
                             workspace_upload=seed.workspace_upload)

            async def finish(run_dir: Path, workspace: Path, result: RunResult) -> RunResult:
                return await self._finish(rec, ns, http, run_dir, workspace, result, label)

            return await self.runs.submit(req, peer, replay_of=rec.run_id, on_finish=finish)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _close(ns, http)
            if seed.workspace_upload and not body.workspace_upload:  # our copy of the seed, not taken
                (self.uploads.root / f"{seed.workspace_upload}.tar").unlink(missing_ok=True)
            raise

    async def _finish(self, rec: Recording, ns: SimNamespace, http: httpx.AsyncClient, run_dir: Path,
                      workspace: Path, result: RunResult, label: str) -> RunResult:
        try:
            status = await ns.script_status() or {}
        except SimulatorError as exc:  # the simulator went away (a shutdown): compare anyway
            log.warning("replay namespace %s: no cursor: %s", ns.name, exc)
            status = {}
        finally:
            await _close(ns, http)
        if status.get("exhausted") and result.exit_kind == "provider_error":
            result = msgspec.structs.replace(
                result, exit_reason="replay_exhausted", method="replay_exhausted", error_type="replay_exhausted",
                error=f"the replay asked for model turn {result.steps}; run {rec.run_id} recorded "
                      f"{len(rec.turns)} response(s)", details=None, hint=None)
        report = await anyio.to_thread.run_sync(lambda: build_report(
            rec, _run_id(run_dir), run_dir, workspace, result, label, int(status.get("served") or 0)))
        await RunDir(run_dir, self.runs.redactor.bytes).write_json(REPORT, report)
        return result


def _paths_from_config_file(rec: Recording, peer: PeerInfo | None) -> Recording:
    """A run recorded before run.json kept its resolved paths: resolve them as the config
    file (read as the caller could) resolves them now; as recorded when it no longer loads."""
    path = Path(rec.config_path or "")
    may_read = peer_reader(peer)
    if may_read is not None and may_read(path) is not None:  # not the caller's to read: as recorded
        return rec
    try:
        loaded = load_config_for_request(path.read_text(encoding="utf-8"), rec.config_path, peer)
    except (OSError, UnicodeDecodeError, RunRejected):
        return rec
    return msgspec.structs.replace(rec, pack_paths=loaded.pack_paths, tool_dirs=loaded.tool_dirs)


def _run_id(run_dir: Path) -> str:
    index = run_dir / "conversation" / "index.json"
    return str(msgspec.json.decode(index.read_bytes()).get("run_id"))


async def _close(ns: SimNamespace, http: httpx.AsyncClient) -> None:
    try:
        await ns.drop()
    except SimulatorError as exc:  # the namespace is capped and reset by the next user of its name
        log.warning("replay namespace %s not dropped: %s", ns.name, exc)
    await http.aclose()
