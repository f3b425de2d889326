"""Error bodies and pages the faults send, each in its provider's shape.

OpenAI (``message/type/param/code``), OpenRouter (``code/message/metadata``,
moderation metadata per its errors page) and Anthropic (529 overloaded).
"""

from __future__ import annotations

import base64
import urllib.parse

from typing import TYPE_CHECKING, Any

from kcd.simulator import wire
from kcd.simulator.behaviours import Reply, message_text

if TYPE_CHECKING:
    from kcd.simulator.delivery import Exchange
    from kcd.simulator.faults import FaultRun

PROVIDER = "SimProvider"  # metadata.provider_name in OpenRouter-style errors
CONTEXT_WINDOW = 128_000
HTML = "text/html; charset=UTF-8"
CF_RAY = "8f1c2a3b4d5e6f70-AMS"


def openai_error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openrouter_error(code: int, message: str, **metadata: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if metadata:
        error["metadata"] = metadata
    return {"error": error}


def for_status(status: int) -> dict[str, Any]:
    """A plain OpenAI-style error for a status that came without a body of its own."""
    return openai_error(f"Upstream answered HTTP {status}.", "server_error" if status >= 500 else "invalid_request_error",
                        None)


def rate_limited(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    return openai_error(f"Rate limit reached for {ex.model} on requests per min. Please try again later.",
                        "requests", "rate_limit_exceeded")


def server_error(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    return openai_error("The server had an error while processing your request. Sorry about that!",
                        "server_error", None)


def unavailable(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    return openai_error("The engine is currently overloaded, please try again later.", "server_error",
                        "service_unavailable")


def overloaded(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def context_length(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    prompt = wire.usage_for(ex.request, Reply())["prompt_tokens"]
    return openai_error(
        f"This model's maximum context length is {CONTEXT_WINDOW} tokens. However, your messages resulted "
        f"in {max(prompt, CONTEXT_WINDOW + 1)} tokens. Please reduce the length of the messages.",
        "invalid_request_error", "context_length_exceeded", param="messages")


def moderation(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    users = [m for m in ex.request.get("messages") or () if isinstance(m, dict) and m.get("role") == "user"]
    flagged = message_text(users[-1])[:100] if users else ""
    return openrouter_error(
        403, f'{ex.model} requires moderation on OpenRouter. Your input was flagged for "violence". '
             "No credits were charged.",
        reasons=["violence"], flagged_input=flagged, provider_name=PROVIDER, model_slug=ex.model)


def prefill_rejected(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    return openai_error("This model does not support assistant message prefill. The conversation must "
                        "end with a user message.", "invalid_request_error", "prefill_unsupported",
                        param="messages")


def bad_gateway(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    return openrouter_error(502, "Provider returned error", provider_name=PROVIDER,
                            raw="upstream connection reset after partial output")


def invalid_key(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    # echo_key quotes the presented key, as careless providers do: a leak vector that kcd's
    # redaction must stop before anything is written. 1: verbatim; 2: inside a base64 blob
    # ("Bearer <key>" encoded); 3: spelled out with spaces; 4: URL-encoded.
    shown = _echoed(ex.credential, int(fx.params.get("echo_key") or 0)) if ex.credential else "sk-***"
    return openai_error(f"Incorrect API key provided: {shown}. You can find your API key at "
                        "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                        "invalid_api_key")


def _echoed(key: str, form: int) -> str:
    if form == 1:
        return key
    if form == 2:
        return "credential=" + base64.b64encode(f"Bearer {key}".encode()).decode()
    if form == 3:
        return " ".join(key)
    if form == 4:
        return urllib.parse.quote(key + "/", safe="")
    return "sk-***"


def no_credits(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    message = "Insufficient credits. Add more using https://openrouter.ai/settings/credits"
    if fx.params.get("retry_after") is None:
        return openrouter_error(402, message)
    return openrouter_error(402, message, limit_source="openrouter_in_flight_budget")


def no_providers(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    return openrouter_error(503, "No allowed providers are available for the selected model.",
                            model_slug=ex.model)


def upstream_error(fx: FaultRun, ex: Exchange) -> dict[str, Any]:
    return openrouter_error(502, "Upstream provider error before the first token", provider_name=PROVIDER)


CLOUDFLARE_502 = f"""<!DOCTYPE html>
<html lang="en-US">
<head><title>example.com | 502: Bad gateway</title></head>
<body>
<div id="cf-wrapper"><div id="cf-error-details" class="cf-error-details-wrapper">
<h1><span class="cf-error-type">Error</span> <span class="cf-error-code">502</span></h1>
<h2 class="cf-subheadline">Bad gateway</h2>
<p>The web server reported a bad gateway error.</p>
<div class="cf-error-footer"><span>Cloudflare Ray ID: <strong>{CF_RAY.split("-")[0]}</strong></span>
<!-- cf-ray: {CF_RAY} --></div>
</div></div>
</body>
</html>
"""

LOGIN_PAGE = """<!DOCTYPE html>
<html>
<head><title>Sign in - Corporate Access Portal</title></head>
<body>
<h1>Sign in to continue</h1>
<form action="/login" method="post">
<input name="username" placeholder="Username"><input name="password" type="password">
<button type="submit">Sign in</button>
</form>
</body>
</html>
"""
