"""Vendor bundles: one run's provider evidence as an allow-listed, scrubbed, manifested zip.

What goes in (each if present; nothing else, ever: no `workspace/`, `final_container_dir/`,
`raw/requests/`, prompts or seed archives):
  conversation/conversation.md, meta/capability_probes.json, meta/provider_metrics.json,
  meta/requests/*, errors/*, raw/responses/* (the original's default set, in its order),
  then meta/telemetry.jsonl (only the run's lines), meta/run.json, result.json,
  and optional attachments (a matrix result) under `matrix/`.
Only regular files directly inside those directories are taken; a symlink anywhere on the
way is skipped and listed in the manifest.

Scrubbing, for every entry: JSON values under secret key names (`Redactor.obj`, so a run
written with `logging.redact: false` is still scrubbed), then the daemon's value-level
`Redactor` (known secret values, bearer tokens, `sk-…` keys), then local absolute paths
(run dir, runs root, state dir, homes, the config's directory, and any path ending in the
run dir's name) and local user names become placeholders. `*.b64` files are decoded,
scrubbed and re-encoded, since a secret inside base64 is invisible to the redactor.
A file is scrubbed whole and only then truncated to the per-file cap, so a cut can never
leave half a secret behind; files too large to read whole are left out.

Refusal: after scrubbing, every entry (and every `*.b64` entry decoded), SUMMARY.md and
MANIFEST.json are searched for the known secret values, verbatim and base64-encoded at any
alignment; any hit refuses the whole bundle (BundleError, nothing is returned). The same
check runs once more over the finished zip's entries.

MANIFEST.json lists every other entry with its size and sha256 (of the bytes in the zip),
the run id, the KyleCode version, the creation time and a redaction report per file.

The daemon builds bundles (`POST /v1/bundles`, for `kcctl bundle` and `kcctl incident`):
it can read the run directory and knows the secret values, and it returns the bytes, so a
client never makes it read or write a path of its choosing.

  types.py      the request (`BundleRequest`, attachments), the result (`Bundle`), `BundleError`
  runref.py     naming a run (id, directory name or path, confined to the runs root) and
                what the scrubber must know of it (run id, config path, owner, local users)
  selection.py  the allow-list and collecting its files without following a symlink
  scrub.py      scrubbing an entry, redaction counts, the placeholders, refusing a leak
  caps.py       per-file, total, read and entry-count caps; truncation at a line end
  summary.py    SUMMARY.md for the provider's support team
  manifest.py   MANIFEST.json: sizes, sha256s, skipped files, caps, the redaction report
  build.py      putting it together into the zip
  check.py      checking a bundle against its manifest; kcctl imports it, so it is
                standard library only and this file imports nothing
"""
