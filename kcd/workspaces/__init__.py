"""Run workspaces: how a caller's tree gets in, how tools stay inside it, what comes out.

  archive.py   packing a directory into a gzip'd tar (kcctl side) and safe extraction
               (both sides). Standard library only and cheap to import: `kcctl run` and
               `kcctl runs fetch` import it, so it must never import the daemon.
  tarcheck.py  the streaming, bounded-memory validation of an uploaded tar (daemon side
               only; `archive.check_archive` imports it lazily). Standard library only.
  uploads.py   uploaded archives waiting for their run, under the daemon's state directory
  seed.py      seeding a run's workspace from its upload or, same host, from a directory;
               whether a socket peer could read that directory itself
  confine.py   path confinement for the file tools; atomic writes inside the workspace
  diff.py      `workspace.diff` from the seed (its archive in the run dir) to the final tree
  changes.py   the change list against the seed manifest (`kcctl run --apply`)

This file imports nothing: kcctl imports `kcd.workspaces.archive`, which loads it.
"""
