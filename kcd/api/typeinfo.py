"""Build msgspec's type information for Struct types before worker threads use them.

msgspec builds a Struct type's conversion info on first use and caches it on the
class, and that first build is not thread-safe: two worker threads converting to the
same type for the first time can crash the process with SIGSEGV (measured: 4 threads
loading the demo config at once crash a fresh interpreter 1 time in 4; see
tests/unit/api/test_typeinfo.py). The daemon converts configs, scenarios and tool
definitions off the event loop, so modules that define such types call `prepare_types` at
import time, which runs once, under Python's import lock, before any thread can race.
"""

from __future__ import annotations

import msgspec


def prepare_types(*types: type) -> None:
    """Build (and cache) the type info of `types` and every Struct type they contain."""
    for type_ in types:
        msgspec.json.Decoder(type_)
