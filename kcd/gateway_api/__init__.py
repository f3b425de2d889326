"""The OpenAI-compatible gateway: what `kcd.server.openai_api` serves, in small parts.

- `wire`: the OpenAI request and response shapes, and their translation to and
  from the provider-neutral chat types;
- `models`: model names → route chains, precomputed from the daemon config;
- `errors`: OpenAI's error shape, and how a gateway failure maps onto it;
- `observer`: every attempt of a request into telemetry and the live metrics;
- `relay`: the hand-over between a turn in flight and a passthrough stream;
- `access`: bearer tokens for the TCP listener, compared in constant time.
"""
