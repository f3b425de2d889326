"""HTML building blocks for the viewer: escaping, the page shell, error pages, headers.

Plain string building over `html.escape`: the pages are a handful of tables and sections,
and a template engine would add a dependency and a second escaping story for the same
output. Every value that did not come from this module goes through `esc` (or `attr`).
"""

from __future__ import annotations

from html import escape

from kcd.server.http import Response

__all__ = ["SECURITY_HEADERS", "attr", "error_page", "esc", "html_response", "page"]

# No inline script or style anywhere: CSP forbids both, so an injected `<script>` that slipped
# through escaping would still not run.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def esc(value: object) -> str:
    """Text content: `None` shows as an empty string."""
    return "" if value is None else escape(str(value), quote=True)


def attr(value: object) -> str:
    """An attribute value, quoted."""
    return f'"{esc(value)}"'


def page(title: str, body: str, *, nav: bool = True) -> str:
    links = ('<nav><a href="/ui/">Runs</a> <a href="/ui/daemon">Daemon</a></nav>' if nav else "")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)} · kcd</title>"
            "<link rel=\"icon\" href=\"/ui/static/favicon.svg\" type=\"image/svg+xml\">"
            "<link rel=\"stylesheet\" href=\"/ui/static/viewer.css\">"
            "<script src=\"/ui/static/viewer.js\" defer></script></head>"
            f"<body><header><strong>kcd viewer</strong> {links}</header>\n{body}\n</body></html>\n")


def html_response(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body.encode("utf-8"), status, "text/html; charset=utf-8", {**SECURITY_HEADERS, **(headers or {})})


def error_page(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    hint = ("<p>Run <code>kcctl view</code> for a new login link.</p>" if status == 401 else "")
    body = (f'<main id="error" data-code={attr(code)} data-status="{status}">'
            f"<h1>{status} {esc(code)}</h1><p class=\"message\">{esc(message)}</p>{hint}</main>")
    return html_response(page(f"{status} {code}", body), status, headers)
