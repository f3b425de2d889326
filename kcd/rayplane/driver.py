"""The Ray driver: a child process of kcd that owns the Ray connection.

Ray's fatal paths (a GCS unreachable for 60 s ends the driver's process, a
native abort at shutdown) are this process's, never kcd's: kcd talks to it
over one inherited socket (`kcd.rayplane.messages`) and restarts it with
backoff when it dies (`kcd.rayplane.supervisor`).

Threads: the main thread reads kcd's messages and submits turns; a completion
thread sends each turn's result as soon as Ray reports it done (a callback on the turn's
future queues it: no polling, so a short turn is never held behind a long one); a
liveness thread asks the GCS for the node table every `check_s` and reports a
`Status` (a check that does not answer in `check_timeout_s` is `degraded`).
When kcd's end of the socket closes, the driver shuts Ray down and exits.

    python -m kcd.rayplane.driver --fd N [--address HOST:PORT] [--num-cpus N]
                                  [--temp-dir DIR] [--init-timeout S]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any

from pathlib import Path

from kcd.rayplane.messages import (
    Cancel,
    FrameBuffer,
    Message,
    NodeInfo,
    Release,
    Shutdown,
    Status,
    Turn,
    TurnDone,
    encode,
)
from kcd.rayplane.wsync import pack_tree, replace_tree

_STANDARD = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
_CANCEL_GRACE_S = 2.0
_RESUME_GRACE_S = 10.0  # how long a resumed turn may wait for a node before room is checked
_AUTH_HINT = ("if the cluster uses token authentication, start kcd with RAY_AUTH_MODE=token and "
              "RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN); otherwise check that the address is the GCS port")


class _Run:
    """What the driver keeps of a run between turns: kcd's copy is at `version`, whose
    packed form is `snapshot` (in the object store, owned here, so it outlives any node)."""

    __slots__ = ("node", "snapshot", "version")

    def __init__(self, snapshot: Any) -> None:
        self.version = 0
        self.snapshot = snapshot
        self.node: str | None = None  # where its cache is: the next turn prefers that node


class Driver:
    def __init__(self, sock: socket.socket, args: argparse.Namespace) -> None:
        self.sock = sock
        self.args = args
        self._send_lock = threading.Lock()
        self._pending: dict[Any, tuple[Turn, int]] = {}  # ref -> (turn, attempt)
        self._refs: dict[int, Any] = {}  # turn id -> its current ref
        self._runs: dict[str, _Run] = {}  # workspace -> state (touched by the main thread only...)
        self._runs_lock = threading.Lock()  # ...and the completion thread
        self._cancelled: set[int] = set()
        self._resumed: dict[int, float] = {}  # turn id -> when it was sent again after a node died
        self._lock = threading.Lock()
        self._done: queue.SimpleQueue[tuple[Any, Future[Any]]] = queue.SimpleQueue()  # (ref, its future), ended
        self._stop = threading.Event()
        self._remote: Any = None
        self._node_id = ""
        self.info: dict[str, Any] = {}

    # ---- the channel --------------------------------------------------------------

    def send(self, message: Any) -> None:
        data = encode(message)
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                self._stop.set()  # kcd is gone

    # ---- start-up -----------------------------------------------------------------

    def connect(self) -> None:
        import ray

        from kcd.rayplane.node_turn import release_on_node, run_turn_on_node

        a = self.args
        if a.address not in (None, "auto"):
            _probe_tcp(a.address)  # ray.init on a dead address hangs: fail fast and say why
        options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if a.address is None:
            options.update(address="local", include_dashboard=False, num_cpus=a.num_cpus)
            if a.temp_dir:
                options["_temp_dir"] = a.temp_dir
        else:
            options["address"] = a.address
        ray.init(**options)
        context = ray.get_runtime_context()
        self._node_id = context.get_node_id()
        # A turn goes to any node with room for it (turn_cpus and the custom resources asked
        # for: a head started with --num-cpus=0 gets none); the run's workspace travels with
        # it (kcd.rayplane.wsync). max_retries=0: the driver decides what is re-run.
        self._remote = ray.remote(max_retries=0, num_cpus=a.turn_cpus,
                                  resources=a.turn_resources or None)(run_turn_on_node)
        self._release = ray.remote(max_retries=0, num_cpus=0)(release_on_node)
        self.info = {"address": a.address or "local", "node_id": self._node_id,
                     "gcs_address": context.gcs_address, "ray_version": ray.__version__,
                     "local_instance": a.address is None, "driver_pid": os.getpid(),
                     "auth": "token" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else "disabled"}

    # ---- liveness -----------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        import ray
        from ray._private import state

        available = state.available_resources_per_node()
        with self._runs_lock:
            held: dict[str, int] = {}
            for run in self._runs.values():
                if run.node is not None:
                    held[run.node] = held.get(run.node, 0) + 1
        out = []
        for n in ray.nodes():
            node_id = n["NodeID"]
            total = n.get("Resources") or {}
            free = available.get(node_id) or {}
            out.append(NodeInfo(
                node_id=node_id, address=str(n.get("NodeManagerAddress", "")), alive=bool(n.get("Alive")),
                cpus_total=float(total.get("CPU", 0.0)), cpus_free=float(free.get("CPU", 0.0)),
                resources={k: float(v) for k, v in total.items()
                           if k not in _STANDARD and not k.startswith("node:")},
                runs=held.get(node_id, 0), local=node_id == self._node_id))
        return out

    def liveness_loop(self) -> None:
        """Report the cluster as it is now, from the GCS; a check that hangs is an answer too."""
        while not self._stop.is_set():
            result: dict[str, Any] = {}

            def check() -> None:
                try:
                    result["nodes"] = self.nodes()
                except Exception as exc:  # noqa: BLE001 - any failure is "cannot see the cluster"
                    result["error"] = f"{type(exc).__name__}: {exc}"

            t = threading.Thread(target=check, daemon=True)
            t.start()
            t.join(self.args.check_timeout)
            if "nodes" in result:
                nodes = result["nodes"]
                self._fail_unplaceable()
                local_alive = any(n.local and n.alive for n in nodes)
                state = "ready" if local_alive else "degraded"
                detail = dict(self.info) if local_alive else {**self.info, "error": "kcd's node is not alive"}
                self.send(Status(state=state, detail=detail, nodes=nodes))
            else:
                error = result.get("error") or f"the cluster did not answer within {self.args.check_timeout:g} s"
                self.send(Status(state="degraded", detail={**self.info, "error": error}))
            self._stop.wait(self.args.check_s)

    # ---- turns --------------------------------------------------------------------

    def submit(self, turn: Turn) -> None:
        import ray

        with self._runs_lock:
            run = self._runs.get(turn.workspace)
        if run is None:
            try:
                run = _Run(ray.put(pack_tree(Path(turn.workspace))))
            except Exception as exc:  # noqa: BLE001
                self.send(TurnDone(id=turn.id, error=f"cannot ship the workspace: {type(exc).__name__}: {exc}"))
                return
            with self._runs_lock:
                self._runs[turn.workspace] = run
        self._launch(turn, run, attempt=0)

    def _launch(self, turn: Turn, run: _Run, attempt: int) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy: Any = "DEFAULT"
        if run.node is not None:  # its cache is there: prefer it, but any node will do
            strategy = NodeAffinitySchedulingStrategy(node_id=run.node, soft=True)
        try:
            ref = self._remote.options(scheduling_strategy=strategy).remote(
                turn.workspace, run.version, [run.snapshot], turn.calls, turn.settings)
        except Exception as exc:  # noqa: BLE001
            self.send(TurnDone(id=turn.id, error=f"Ray refused the turn: {type(exc).__name__}: {exc}"))
            return
        with self._lock:
            self._pending[ref] = (turn, attempt)
            self._refs[turn.id] = ref
        # called on a Ray thread once the result (or the error) is here, already deserialised
        ref.future().add_done_callback(lambda future, ref=ref: self._done.put((ref, future)))

    def _fail_unplaceable(self) -> None:
        """A turn resumed after its node died waits for a node with room; once the cluster
        has noticed the death (a few seconds) and no live node has room, it ends now with
        `node_lost` rather than at its deadline."""
        import ray

        with self._lock:
            waiting = [t for t, since in self._resumed.items() if time.monotonic() - since > _RESUME_GRACE_S]
        if not waiting:
            return
        total = ray.cluster_resources()  # live nodes only
        room = total.get("CPU", 0.0) >= self.args.turn_cpus and all(
            total.get(k, 0.0) >= v for k, v in self.args.turn_resources.items())
        if room:
            return
        for turn_id in waiting:
            with self._lock:
                ref = self._refs.pop(turn_id, None)
                self._resumed.pop(turn_id, None)
                if ref is not None:
                    self._pending.pop(ref, None)
            if ref is None:
                continue
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass
            need = {"CPU": self.args.turn_cpus, **self.args.turn_resources}
            self.send(TurnDone(id=turn_id, error=f"node_lost: the Ray node running the turn died and no live "
                                                 f"node has room for it (needs {need}); the workspace is as "
                                                 "of the last completed turn"))

    def release(self, workspace: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        with self._runs_lock:
            run = self._runs.pop(workspace, None)
        if run is None or run.node is None:
            return
        try:
            self._release.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node_id=run.node, soft=True)).remote(workspace)
        except Exception:  # noqa: BLE001 - best effort: stale caches are removed after a day
            pass

    def cancel(self, turn_id: int) -> None:
        """Cooperative first (the task's shell is killed), forced if it does not end in time."""
        import ray

        with self._lock:
            ref = self._refs.get(turn_id)
            if ref is not None:
                self._cancelled.add(turn_id)  # its end is not a node failure to resume from
        if ref is None:
            return
        try:
            ray.cancel(ref)
        except Exception:  # noqa: BLE001
            pass

        def force() -> None:
            time.sleep(_CANCEL_GRACE_S)
            with self._lock:
                still = turn_id in self._refs
            if still:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001
                    pass

        threading.Thread(target=force, daemon=True).start()

    def completion_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ref, future = self._done.get(timeout=0.5)
            except queue.Empty:
                continue
            with self._lock:
                entry = self._pending.pop(ref, None)
            if entry is not None:  # None: given up on (`_fail_unplaceable`)
                self._finish(future, *entry)

    def _finish(self, future: Future[Any], turn: Turn, attempt: int) -> None:
        import ray

        with self._lock:
            cancelled = turn.id in self._cancelled
            self._cancelled.discard(turn.id)
            self._resumed.pop(turn.id, None)
            self._refs.pop(turn.id, None)
        with self._runs_lock:
            run = self._runs.get(turn.workspace)
        try:
            outcomes, packed, node_id, _ = future.result()
        except (ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError) as exc:
            # Cancelled, or the turn itself failed on the node (the tools report their own
            # errors as outcomes, so this is ours: unpacking, the cache, ...).
            self.send(TurnDone(id=turn.id, error=f"tool execution failed in Ray: {type(exc).__name__}: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - the node or worker died: resume once elsewhere
            if attempt == 0 and run is not None and not cancelled:
                run.node = None  # the snapshot is the workspace as of the last completed turn
                self._launch(turn, run, attempt=1)
                with self._lock:
                    self._resumed[turn.id] = time.monotonic()
                return
            self.send(TurnDone(id=turn.id, error=f"node_lost: the Ray node running the turn failed "
                                                 f"({type(exc).__name__}: {exc}); the workspace is as of "
                                                 "the last completed turn"))
            return
        if run is not None:
            if packed is not None:
                try:
                    replace_tree(packed, Path(turn.workspace))
                except Exception as exc:  # noqa: BLE001 - hostile or broken tree: refuse it
                    self.send(TurnDone(id=turn.id, error=f"the workspace sent back by node {node_id} was "
                                                         f"refused: {type(exc).__name__}: {exc}"))
                    return
                run.version += 1
                run.snapshot = ray.put(packed)
            run.node = node_id
        for o in outcomes:
            o.data = {**(o.data or {}), "node_id": node_id}
        self.send(TurnDone(id=turn.id, outcomes=outcomes, node_id=node_id, resumed=attempt > 0))

    # ---- the main loop ------------------------------------------------------------

    def serve(self) -> None:
        threading.Thread(target=self.liveness_loop, name="liveness", daemon=True).start()
        threading.Thread(target=self.completion_loop, name="completions", daemon=True).start()
        frames = FrameBuffer()
        while not self._stop.is_set():
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break  # kcd closed its end (it stopped, or died)
            for message in frames.feed(chunk):
                self.handle(message)

    def handle(self, message: Message) -> None:
        if isinstance(message, Turn):
            self.submit(message)
        elif isinstance(message, Cancel):
            self.cancel(message.id)
        elif isinstance(message, Release):
            self.release(message.workspace)
        elif isinstance(message, Shutdown):
            self._stop.set()


class Unreachable(Exception):
    pass


def _probe_tcp(address: str, timeout: float = 2.0) -> None:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise Unreachable(f"no Ray GCS answering at {address}: {exc}") from None


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kcd.rayplane.driver")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--address", default=None)
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--temp-dir", default=None)
    p.add_argument("--check-s", type=float, default=2.0)
    p.add_argument("--check-timeout", type=float, default=5.0)
    p.add_argument("--turn-cpus", type=float, default=1.0)
    p.add_argument("--turn-resources", type=json.loads, default={})
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(sys.argv[1:] if argv is None else argv)
    sock = socket.socket(fileno=args.fd)
    driver = Driver(sock, args)
    driver.send(Status(state="starting", detail={"address": args.address or "local", "driver_pid": os.getpid()}))
    try:
        driver.connect()
    except Exception as exc:  # noqa: BLE001 - reported, then the supervisor retries with backoff
        error = str(exc) if isinstance(exc, Unreachable) else f"{type(exc).__name__}: {exc}"
        detail = {"address": args.address or "local", "error": error}
        if args.address and not isinstance(exc, Unreachable) and "auth" in error.lower():
            detail["hint"] = _AUTH_HINT
        driver.send(Status(state="degraded", detail=detail))
        return 3
    try:
        driver.serve()
    finally:
        import ray

        try:
            ray.shutdown()
        finally:
            sock.close()
    return 0


if __name__ == "__main__":
    # os._exit: Ray's atexit hooks and native threads have aborted interpreters at exit before.
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
