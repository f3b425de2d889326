"""Which isolation this host can give tool calls, decided once at daemon start.

`auto` takes the strongest mode that actually works here, each probed by
running `/bin/true` through the tool host: bubblewrap, then kcd's own
namespaces, then process containment. An explicitly configured mode that does
not work is an error, never a silent downgrade.
"""

from __future__ import annotations

import tempfile
from typing import Literal

import msgspec

from kcd.sandbox.host import HostUnavailable, SandboxRequest, ToolHost

__all__ = ["ISOLATION_ORDER", "IsolationReport", "IsolationUnavailable", "probe_isolation"]

ISOLATION_ORDER = ("bwrap", "namespaces", "process")
GUARANTEES = {
    "bwrap": "bubblewrap: own user/pid/net/ipc/uts/cgroup namespaces, only the workspace writable, no network",
    "namespaces": "kcd namespaces: own user/pid/net/ipc/uts/mount namespaces, only the workspace writable, "
                  "no network",
    "process": "process containment only: caps and a complete kill per call, no key reachable; the host's "
               "filesystem and network stay visible",
}
_PROBE_TIMEOUT_S = 15.0


class IsolationUnavailable(RuntimeError):
    """No isolation mode the configuration allows works on this host."""


class IsolationReport(msgspec.Struct, kw_only=True):
    """The isolation chosen at start-up, what it guarantees and how each mode probed."""

    mode: Literal["bwrap", "namespaces", "process"]
    configured: str
    guarantees: str
    weaker: bool  # no filesystem or network isolation
    probes: dict[str, str]  # mode -> "ok" or why it failed
    cgroup: dict[str, object] | None
    processes_capped_by: str | None  # "cgroup" | "rlimit_nproc" | None
    memory_capped_by: str | None


def probe_isolation(host: ToolHost, configured: str) -> IsolationReport:
    """Blocking; run it in a worker thread."""
    info = host.info()
    wanted = ISOLATION_ORDER if configured == "auto" else (configured,)
    probes: dict[str, str] = {}
    chosen: str | None = None
    enforced: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="kcd-probe-") as cwd:
        for mode in wanted:
            request = SandboxRequest(argv=["/bin/true"], cwd=cwd, env={"PATH": "/usr/bin:/bin"},
                                     timeout=_PROBE_TIMEOUT_S, mode=mode, scope="probe",
                                     limits={"pids": 16, "run_pids": 16, "cpu_s": 5, "memory": 256 * 2**20,
                                             "run_memory": 256 * 2**20})
            try:
                outcome = host.run(request, output_cap=4096)
            except HostUnavailable as exc:
                probes[mode] = str(exc)
                continue
            if outcome.error or outcome.exit != 0:
                why = outcome.error or outcome.stderr.kept.decode(errors="replace").strip()[-300:]
                probes[mode] = why or f"exit code {outcome.exit}"
                continue
            probes[mode] = "ok"
            chosen, enforced = mode, outcome.enforced
            break
    if chosen is None:
        raise IsolationUnavailable(
            f"tool isolation {configured!r} does not work on this host: "
            + "; ".join(f"{m}: {why}" for m, why in probes.items()))
    return IsolationReport(mode=chosen, configured=configured, guarantees=GUARANTEES[chosen],  # type: ignore[arg-type]
                           weaker=chosen == "process", probes=probes, cgroup=info.get("cgroup"),
                           processes_capped_by=enforced.get("pids_by"),  # type: ignore[arg-type]
                           memory_capped_by=enforced.get("memory_by"))  # type: ignore[arg-type]
