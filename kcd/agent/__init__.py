"""The agent loop of one run: turns, prompts, routes, tools and what a run records.

`loop` (one LLM call per turn, then its tool calls), `calls` (what the loop hands an
executor and gets back), `prompts` (system and per-turn text), `routing` (a turn's
route chain), `probing` (a run's use of the daemon's probes), `provider_log` (what a
run records about its provider calls), `toolset` (the tools a run offers);
`tools/` (the tools and the per-reply policy), `dialects/` (text tool-call formats)
and `patching/` (applying patches in pure Python).
"""
