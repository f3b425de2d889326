"""What runs leave behind and what the daemon reports: artifacts, events, metrics, telemetry.

`rundir` (a run's directory), `eventlog` (a run's ordered events), `conversation`
(`conversation.md`), `run_metrics` (`meta/provider_metrics.json`), `finalise` (the
final artifacts' shape), `recovery` (finishing runs a dead daemon left behind),
`redact` (value-level redaction), `telemetry` and `telemetry_events` (the one JSONL
writer and its typed records) and `prometheus` (the daemon-wide live metrics).
"""
