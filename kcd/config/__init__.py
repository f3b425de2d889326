"""Configuration: the Schema V2 agent config and the daemon's own config.

`agent` loads an agent config (YAML -> `extends` merge -> typed `AgentConfig`) and
`agent_schema`, `agent_resilience` and `agent_checks` define and check it; `merge`
(`extends` and provenance), `packs` (prompt packs), `shape` (fitting YAML to Structs,
ignored and pending keys), `yamlfile` (safe loading with duplicate-key checks) and
`keypath` (error locations) serve it. `daemon` is kcd's own config (`DaemonConfig`).
"""
