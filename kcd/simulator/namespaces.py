"""Simulator namespaces: separate state for clients that share one simulator.

Requests under ``/ns/<name>/v1/...`` and control calls under
``/ns/<name>/_sim/...`` (or ``/ns/<name>/v1/_sim/...``) see only the state of
namespace `<name>`: its fault plans, per-model counters (``server_error_once``,
``flapping_primary``), request log and stats. Paths without the prefix use the
app's own state (the default namespace), exactly as before. Parallel matrix
scenarios each take a namespace, so one scenario's ``"*"`` plan or fault
counter never reaches another.

A namespace is created by its first request and dropped by
``DELETE /ns/<name>/_sim/faults`` (a reset namespace and a new one are the
same thing), so finished clients leave nothing behind. The number of live
namespaces is capped; request ids stay unique across all of them (they come
from the default state).
"""

from __future__ import annotations

import re

from kcd.simulator.control import SimulatorState

__all__ = ["MAX_NAMESPACES", "NS_PREFIX", "NamespaceError", "Namespaces", "split_namespace"]

NS_PREFIX = "/ns/"
MAX_NAMESPACES = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


class NamespaceError(ValueError):
    """A malformed namespace name, or too many live namespaces."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def split_namespace(path: str) -> tuple[str | None, str]:
    """``/ns/a/v1/chat/completions`` -> ``("a", "/v1/chat/completions")``; other
    paths -> ``(None, path)``. Raises NamespaceError for a bad name."""
    if not path.startswith(NS_PREFIX):
        return None, path
    name, _, rest = path[len(NS_PREFIX):].partition("/")
    if not _NAME.match(name):
        raise NamespaceError(f"namespace {name!r} must be 1-128 of [A-Za-z0-9_.-], starting with a "
                             "letter or digit")
    return name, "/" + rest if rest else "/"


class Namespaces:
    """Live namespaces and their states; one per app, used from its event loop only."""

    def __init__(self, max_log: int = 256, limit: int = MAX_NAMESPACES) -> None:
        self.max_log = max_log
        self.limit = limit
        self._states: dict[str, SimulatorState] = {}

    def get(self, name: str) -> SimulatorState:
        """The namespace's state, created on first use."""
        state = self._states.get(name)
        if state is None:
            if len(self._states) >= self.limit:
                raise NamespaceError(f"too many simulator namespaces ({self.limit}); drop finished ones "
                                     "with DELETE /ns/<name>/_sim/faults", status=503)
            state = self._states[name] = SimulatorState(self.max_log)
        return state

    def drop(self, name: str) -> bool:
        return self._states.pop(name, None) is not None

    def names(self) -> list[str]:
        return sorted(self._states)

    def listing(self) -> list[dict[str, object]]:
        """``GET /_sim/namespaces``: each live namespace with its stats."""
        return [{"name": name, **self._states[name].stats()} for name in self.names()]
