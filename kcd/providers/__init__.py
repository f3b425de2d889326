"""Provider layer: every LLM call the daemon makes goes through `dispatcher.Dispatcher`.

`routes` (route ids), `endpoints` (base URL, key, headers per route), `types` (chat
types), `openai_wire` (the OpenAI wire format), `openai_compat` (one classified HTTP
attempt) with `sse`, `assembly`, `envelope`, `errors` and `attempt` (parsing, judging
and recording it), `aiohttp_transport` and `aiohttp_client` (the upstream HTTP client),
`retry` (retry and fallback decisions), `breaker` (per-route circuit breakers),
`probes` (capability probes) and `dispatcher` (the one retry loop over a route chain).
"""
