"""A simulator namespace (a matrix scenario's, a replay's), driven over loopback HTTP.

The matrix talks to the simulator the way any client would (`/ns/<name>/_sim/...`),
so it works the same with the daemon's embedded simulator and with a
standalone `kcd simulate`.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from kcd.matrix.scenario import ANY_MODEL, FaultRef
from kcd.providers.routes import parse_route

__all__ = ["SimNamespace", "SimulatorError"]


class SimulatorError(RuntimeError):
    pass


class SimNamespace:
    def __init__(self, root: str, name: str, client: httpx.AsyncClient) -> None:
        self.root = root.rstrip("/")  # http://127.0.0.1:<port>
        self.name = name
        self._http = client

    @property
    def api_base(self) -> str:
        """The base URL routes use: requests land in this namespace."""
        return f"{self.root}/ns/{self.name}/v1"

    def _url(self, what: str) -> str:
        return f"{self.root}/ns/{self.name}/_sim/{what}"

    async def _call(self, method: str, what: str, body: Any = None) -> Any:
        try:
            resp = await self._http.request(method, self._url(what), json=body, timeout=10.0)
        except httpx.HTTPError as exc:
            raise SimulatorError(f"simulator at {self.root} did not answer {method} {what}: {exc}") from None
        if resp.status_code >= 400:
            raise SimulatorError(f"simulator refused {method} {what}: HTTP {resp.status_code} {resp.text[:300]}")
        return resp.json()

    async def program(self, faults: list[tuple[str, FaultRef]]) -> None:
        """Fresh state, then the faults: (route id or "*", fault) pairs, queued in order."""
        await self.drop()
        if faults:
            plans = [{"model": route if route == ANY_MODEL else parse_route(route).model, "fault": f.name,
                      "count": f.count, "params": f.params} for route, f in faults]
            await self._call("POST", "faults", plans)

    async def counts(self) -> dict[str, int]:
        """Chat requests per model (as sent, without a +fault suffix) since `program`."""
        return dict((await self._call("GET", "stats")).get("by_model") or {})

    async def load_script(self, load: Any) -> dict[str, Any]:
        """A recorded script (`kcd.simulator.recorded.ScriptLoad`) for this namespace's `replay` model."""
        return (await self._call("POST", "script", msgspec.to_builtins(load)))["script"]

    async def script_status(self) -> dict[str, Any] | None:
        return (await self._call("GET", "script"))["script"]

    async def drop(self) -> None:
        await self._call("DELETE", "faults")
