"""The gateway: kcd's OpenAI-compatible endpoint (configured by the daemon config's `gateway:`).

Any OpenAI client can send `POST /v1/chat/completions` and `GET /v1/models` to
the control socket or, when `gateway.tcp` is set, to a token-protected TCP
port. Each request is one turn of the daemon's `kcd.providers.dispatcher.Dispatcher`,
the same one runs use (routes, retries, fallbacks, breakers, probes). This
package speaks OpenAI on the client side; it never talks to a provider itself.

One request, in the order it meets the modules:

1. `listener`: the TCP port (bound by the daemon) and its ASGI app, which wants a
   bearer token before anything else. On the control socket the route is
   registered by `kcd.server.app` instead, and the peer's uid is the caller.
2. `access`: who is calling: a token's name, or the socket peer's uid.
3. `handlers`: `OpenAIEndpoint.serve_chat` reads the body and takes the request
   through the steps below; `list_models` answers `/v1/models`.
4. `wire`: the body is checked and translated to the provider-neutral chat
   types (`parse_request`); anything wrong is an `errors.OpenAIError` (400).
5. `models`: the model name becomes a plan: its chain of routes with their
   timeouts and retries, the stream mode, whether to probe.
6. `logical`: the breaker's key, shared by one client's repeats of one request.
7. `observer` and `metrics`: every attempt goes to telemetry and the live
   metrics, as a run's would; the request itself is counted by model and status.
8. The turn, run by the dispatcher in one of two ways:
   - `disconnect`: JSON and `buffer`-mode answers run beside a watch on the
     client, which cancels the turn (and records why) if the client leaves;
   - `streaming`: `passthrough` streams, where a `Relay` hands text deltas from
     the turn to `PassthroughResponse` as they arrive.
9. The answer: `wire` renders it (`completion_body`, `ChunkWriter` for SSE) and
   `responses` sends it (`VerbatimResponse`); a failed turn is mapped by
   `errors.from_failure` and sent by `responses.error_response`.

Dependencies flow one way: `kcd.daemon` (which hands the endpoint to the control
API) → `kcd.gateway` → `kcd.providers`; of `kcd.server`, the gateway uses only
`kcd.server.http`.
"""
