"""Route ids: one canonical string per provider endpoint + model.

A route id is parsed once into a `Route`; `Route.id` is the key used everywhere
(breakers, probes, metrics, markers, telemetry, artifacts). An unknown provider
prefix is an error, never a silent route to another provider.
"""

from __future__ import annotations

import msgspec

from kcd.errors import BadRequest

PROVIDERS = ("openai", "openrouter", "mock")


class RouteError(BadRequest, ValueError):
    """A route id that does not name a known provider and model."""

    def __init__(self, message: str):
        super().__init__("invalid_route", message)


class Route(msgspec.Struct, frozen=True):
    """A parsed route id: provider and model."""

    id: str  # canonical: "openrouter/x-ai/grok-4-fast", "openai/gpt-4o-mini", "mock/dev"
    provider: str  # one of PROVIDERS
    model: str  # what the provider's API calls the model

    def __str__(self) -> str:
        return self.id


def parse_route(raw: str) -> Route:
    """Parse a route id as written in a config into its canonical form.

    `gpt-4o-mini` and `openai/gpt-4o-mini` are the same route (`openai/gpt-4o-mini`).
    OpenRouter ids keep everything after `openrouter/` as the model.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise RouteError("route id must be a non-empty string")
    text = raw.strip()
    if any(c.isspace() for c in text):
        raise RouteError(f"route id {raw!r} contains whitespace")
    parts = text.split("/")
    if any(not p for p in parts):
        raise RouteError(f"route id {raw!r} has an empty segment")
    if len(parts) == 1:
        if text.startswith("gpt-") or text.startswith(("o1", "o3", "o4")):
            return Route(id=f"openai/{text}", provider="openai", model=text)
        raise RouteError(
            f"route id {raw!r} has no provider prefix; write openai/<model>, "
            "openrouter/<vendor>/<model> or mock/<model>"
        )
    provider = parts[0]
    if provider not in PROVIDERS:
        raise RouteError(
            f"route id {raw!r}: unknown provider prefix {provider!r} "
            f"(known: {', '.join(PROVIDERS)})"
        )
    if provider == "openrouter":
        if len(parts) > 3:
            raise RouteError(
                f"route id {raw!r} has too many segments; OpenRouter ids are "
                "openrouter/<vendor>/<model>"
            )
    elif len(parts) != 2:
        raise RouteError(f"route id {raw!r}: {provider} ids are {provider}/<model>")
    model = "/".join(parts[1:])
    return Route(id=f"{provider}/{model}", provider=provider, model=model)


_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def is_openai_reasoning(route: Route) -> bool:
    """OpenAI's reasoning models called directly: they take `max_completion_tokens` (not
    `max_tokens`) and only the default temperature. OpenRouter maps these itself."""
    return route.provider == "openai" and route.model.startswith(_REASONING_PREFIXES)

