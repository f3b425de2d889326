"""Shared fixtures: the anyio backend, and one private Ray head per test session.

Never run `ray stop` anywhere in the tests: it kills every Ray process on the
host, other users' clusters included. The head started here lives in its own
process group, which teardown terminates.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from .raynodes import RayNode


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    # anyio 4.16's own fixture is module-scoped and parametrised over every installed
    # backend; pin asyncio (Ray ObjectRefs are asyncio awaitables). Scope must match.
    return "asyncio"


@pytest.fixture(scope="session")
def ray_client_env() -> dict[str, str]:
    """Environment a Ray client (a test, or a kcd process) needs to join `ray_cluster`."""
    return {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="session")
def ray_cluster(ray_client_env: dict[str, str]) -> Iterator[str]:
    """A private Ray head for the whole session; yields its GCS address "127.0.0.1:<port>".

    Every port is chosen free (not Ray's fixed defaults), so parallel sessions on one
    host do not collide. Clients must use `ray_client_env` (auth disabled).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(ray_client_env)
    head = RayNode(env, head=True, num_cpus=2)
    try:
        head.start()
        head.wait_driver()
    except RuntimeError as exc:
        if "no ray executable" in str(exc):
            pytest.skip(str(exc))
        raise
    try:
        yield head.address
    finally:
        head.stop()
        shutil.rmtree(head.base, ignore_errors=True)
