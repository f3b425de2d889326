"""Contained tool execution: where a model-written command runs and what it can reach.

kcd never spawns a tool command itself. Each process that runs tools (the daemon
for the in-process executor, a Ray worker for Ray) starts one *tool host*
helper (`helper`), a small single-threaded Python process launched with `-I -S`
and an allow-listed environment, so it never held a provider key. For each
command the helper forks a *supervisor* (`supervisor`) that:

- puts the command in its own cgroup (process and memory caps; `cgroups`), or,
  without a writable cgroup, caps processes with RLIMIT_NPROC inside a user
  namespace;
- is a child subreaper, so daemonised, `setsid` and double-forked descendants
  re-parent to it instead of escaping;
- wraps the command in the run's isolation: bubblewrap (`bwrap`), our own
  user+mount+pid+net namespaces (`mounts`), or bare process containment;
- kills every process of the call when the call ends (success, timeout,
  cancel, run end, the daemon's death) and reports how many it killed.

`host.ToolHost` is the daemon-side client; `modes` picks the strongest
isolation that works on this host at start-up; `etcview` builds the small /etc
a contained call sees; `keys` keeps provider keys out of the daemon's own /proc
entries. The modules the helper imports (`protocol`,
`linux`, `cgroups`, `bwrap`, `mounts`, `supervisor`, `helper`) use only the
standard library: the helper runs without site-packages.
"""
