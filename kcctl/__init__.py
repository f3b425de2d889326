"""kcctl: the command-line client of kcd (talks to it over the control socket only).

`cli` (the click root group and its lazy command table), `commands/` (one module
per command), `client` and `http11` (HTTP/1.1 over AF_UNIX), `errors` (how talking
to kcd fails), `follow` and `render` (a run's event stream as progress lines),
`bundles` (fetching and checking vendor bundles), `matrix_report` (matrix results
for people and CI) and `export/` (the telemetry exporter). It never imports the
daemon: only `kcd.api` and a few standard-library-only helpers, so start-up stays fast.
"""
