"""Where a login may send the browser: only a path of the viewer itself."""

from __future__ import annotations

import pytest

from kcd.viewer.routes import _safe_next


@pytest.mark.parametrize("target", ["/ui/", "/ui/runs/abc123", "/ui/?status=failed&route=mock/dev", "/ui/daemon"])
def test_viewer_paths_are_kept(target: str) -> None:
    assert _safe_next(target) == target


@pytest.mark.parametrize("target", [None, "", "https://evil.example/ui/", "//evil.example/ui/", "/ui//evil.example",
                                    "/\\evil.example", "/ui/\\\\evil", "/v1/runs", "/ui/../v1/runs", "/ui/./x/..",
                                    "/ui/%2e%2e/v1/runs", "/ui/%2E%2E/v1", "/ui/\u00e9", "/ui/\r\nSet-Cookie: x=y",
                                    "javascript:alert(1)", "/ui/ x"])
def test_anything_else_lands_on_the_runs_list(target: str | None) -> None:
    assert _safe_next(target) == "/ui/"
