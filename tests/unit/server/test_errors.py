"""One rooted error tree, rendered in one place (issue 15, item 5)."""

from __future__ import annotations

import anyio
import msgspec
import pytest

import kcd.errors
from kcd.bundles.types import BundleError
from kcd.config.keypath import ConfigError
from kcd.errors import BadRequest, Conflict, Forbidden, KcError, NotFound, TooLarge, Unavailable, Unprocessable
from kcd.matrix.catalogue import SelectionError
from kcd.providers.routes import RouteError, parse_route
from kcd.runs import RunRejected
from kcd.server.http import App, BodyTooLarge, HTTPError, Router
from kcd.workspaces.uploads import UploadError


@pytest.mark.parametrize(("cls", "status"), [(BadRequest, 400), (Forbidden, 403), (NotFound, 404),
                                             (Conflict, 409), (TooLarge, 413), (Unprocessable, 422),
                                             (Unavailable, 503)])
def test_each_kind_carries_its_status(cls: type[KcError], status: int) -> None:
    err = cls("some_code", "what went wrong")
    assert (err.status, err.code, err.message, str(err)) == (status, "some_code", "what went wrong",
                                                             "what went wrong")
    assert isinstance(err, KcError) and err.details == {} and err.headers == {}


def test_request_facing_errors_share_the_root() -> None:
    cases = [
        (RunRejected("invalid_request", "task is empty"), 400, "invalid_request"),
        (RunRejected("shutting_down", "bye", status=503), 503, "shutting_down"),
        (BundleError(422, "bundle_refused", "a secret would remain"), 422, "bundle_refused"),
        (UploadError("bad member"), 400, "unsafe_archive"),
        (SelectionError("no scenario matches 'x'"), 400, "no_scenario"),
        (HTTPError(405, "method_not_allowed", "no", {"allow": "GET"}), 405, "method_not_allowed"),
        (BodyTooLarge(10), 413, "body_too_large"),
    ]
    for err, status, code in cases:
        assert isinstance(err, KcError) and (err.status, err.code) == (status, code), err
    with pytest.raises(RouteError) as info:
        parse_route("nope")
    assert (info.value.status, info.value.code) == (400, "invalid_route")


def test_value_error_callers_still_catch() -> None:
    for cls in (UploadError, RouteError, SelectionError):
        assert issubclass(cls, ValueError) and issubclass(cls, KcError)


def test_config_error_keeps_its_parts_and_names_them_on_the_wire() -> None:
    err = ConfigError("a.yaml", "$.x", "bad value")
    assert (err.file, err.key_path, err.message) == ("a.yaml", "$.x", "bad value")
    assert str(err) == "a.yaml: $.x: bad value" and (err.status, err.code) == (400, "config_error")


def _call(app: App, path: str) -> tuple[int, dict, dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    anyio.run(app, scope, receive, send)
    start, body = sent
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, msgspec.json.decode(body["body"])


def test_the_asgi_layer_renders_every_kc_error() -> None:
    async def refused(req):
        raise ConfigError("a.yaml", "$.x", "bad value")

    async def gone(req):
        raise NotFound("run_not_found", "no run with id 'x'")

    async def boom(req):
        raise RuntimeError("bug")

    r = Router()
    r.add("GET", "/refused", refused)
    r.add("GET", "/gone", gone)
    r.add("GET", "/boom", boom)
    app = App(r, max_body=100)
    assert _call(app, "/refused")[::2] == (400, {"error": {"code": "config_error",
                                                           "message": "a.yaml: $.x: bad value"}})
    assert _call(app, "/gone")[::2] == (404, {"error": {"code": "run_not_found", "message": "no run with id 'x'"}})
    assert _call(app, "/boom")[::2] == (500, {"error": {"code": "internal_error", "message": "RuntimeError: bug"}})
    status, headers, _ = _call(app, "/nothing-here")
    assert status == 404
    r.add("POST", "/only-post", gone)
    status, headers, body = _call(app, "/only-post")
    assert (status, headers["allow"], body["error"]["code"]) == (405, "POST", "method_not_allowed")


def test_the_tree_is_drawn_in_the_module_docstring() -> None:
    doc = kcd.errors.__doc__ or ""
    for name in ("KcError", "BadRequest", "Forbidden", "NotFound", "Conflict", "TooLarge", "Unavailable",
                 "RunRejected", "BundleError", "UploadError", "RouteError", "ConfigError", "HTTPError"):
        assert name in doc, name
