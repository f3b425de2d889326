"""The provider regression matrix: scenarios as data, run through the daemon.

`scenario` (the YAML schema and its loader), `plan` (the original's plan-file
format), `catalogue` (a matrix's files, loaded, checked and selected),
`configgen` (scenario -> agent config), `expect` and `compare` (pure
expectation checks and verdicts), `evidence` (what a finished run left
behind), `simctl` (simulator namespaces), `runner` (the daemon component that
runs matrices) and `report` (text table, diagnostics and JUnit for clients).
`types` holds the wire Structs of `/v1/matrix`.
"""
