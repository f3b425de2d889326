"""The errors a client of the control API can be answered with: one root, one mapping.

Every request-facing error is a `KcError`: it carries the API error `code`, the HTTP
`status` and a `message` (optionally `details` and response `headers`). Handlers and the
components below them simply raise; the ASGI layer (`kcd.server.http.App`) is the one place
that turns a `KcError` into a response, `{"error": {"code", "message"}}` with `status`
(`message` is `str(exc)`: the message, unless a subclass adds to it as `ConfigError` does).
Anything else that escapes a handler is a 500 `internal_error`.

    Exception
    └── KcError(code, message, status=500)
        ├── BadRequest      400
        │   ├── ConfigError      kcd.config.keypath      config_error (file: key path: message)
        │   ├── RouteError       kcd.providers.routes    invalid_route      (also a ValueError)
        │   ├── UploadError      kcd.workspaces.uploads  unsafe_archive     (also a ValueError)
        │   └── SelectionError   kcd.matrix.catalogue    no_scenario        (also a ValueError)
        ├── Unauthorized    401
        ├── Forbidden       403
        ├── NotFound        404
        ├── Conflict        409
        ├── TooLarge        413
        │   └── BodyTooLarge     kcd.server.http         body_too_large
        ├── Unprocessable   422
        │   └── RecordingUnusable  kcd.replay.recording  recording_incomplete / recording_corrupt
        ├── Unavailable     503
        ├── RunRejected          kcd.runs                400 by default; forbidden 403,
        │                                                run_active 409, shutting_down 503
        ├── BundleError          kcd.bundles.types       status given per raise (400/404/413/422)
        └── HTTPError            kcd.server.http         any status, with headers (405 + allow)

Not in the tree: errors that never reach a client as such (`ProviderFailure`, `ToolError`,
`PatchError`, the sandbox's, `TreeRefused`, ...), and the OpenAI-compatible endpoint's
`OpenAIError` (kcd.gateway.errors), which answers in OpenAI's error shape, not this one.
`kcd.workspaces.archive` and `kcd.bundles.check` keep their plain `ValueError`s: `kcctl`
imports them and must not import this module.

Standard library only, so that any room may import it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BadRequest", "Conflict", "Forbidden", "KcError", "NotFound", "TooLarge", "Unauthorized", "Unavailable",
           "Unprocessable"]


class KcError(Exception):
    """A request-facing error: API `code`, HTTP `status`, human `message`."""

    status: int = 500

    def __init__(self, code: str, message: str, *, status: int | None = None,
                 details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status
        self.details = details or {}
        self.headers = headers or {}


# The kinds, by meaning; a subclass by component sets its `code` at the raise.
class BadRequest(KcError):
    """The request itself is wrong: a malformed body, an invalid config, route or archive."""

    status = 400


class Unauthorized(KcError):
    status = 401  # no valid viewer session on the TCP listener (kcd.viewer)


class Forbidden(KcError):
    status = 403  # the access rule (kcd.server.access) refuses the caller


class NotFound(KcError):
    status = 404  # no such run, matrix, route state, probe, workspace or endpoint


class Conflict(KcError):
    status = 409  # the resource is not in a state that allows it (a run not ended yet)


class TooLarge(KcError):
    status = 413  # a body or a bundle over its cap


class Unprocessable(KcError):
    status = 422  # understood but refused on its content (a secret would remain)


class Unavailable(KcError):
    status = 503  # the daemon cannot take it now (shutting down)
