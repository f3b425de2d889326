"""Key paths (`$.providers.models[0].id`) and the error that carries one.

Every agent-config problem is reported as `<file>: <key path>: <message>`, so a
user can go straight to the offending line. Paths are kept as tuples of keys
(str) and list indexes (int) internally and rendered only for messages.
"""

from __future__ import annotations

import re

from kcd.errors import BadRequest

Path_ = tuple[str | int, ...]

ROOT: Path_ = ()

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")
_SEGMENT = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]|\[\.\.\.\]|\[(['\"])(.*?)\3\]")


class ConfigError(BadRequest):
    """An invalid agent config: which file, which key, what is wrong (`message` is the
    last part; `str()`, the API error's message, names the file and key path too)."""

    def __init__(self, file: str, key_path: str, message: str) -> None:
        super().__init__("config_error", message)
        self.args = (f"{file}: {key_path}: {message}",)
        self.file = file
        self.key_path = key_path


def render(path: Path_) -> str:
    """`("providers", "models", 0, "id")` -> `$.providers.models[0].id`."""
    out = ["$"]
    for seg in path:
        if isinstance(seg, int):
            out.append(f"[{seg}]")
        elif _PLAIN_KEY.match(seg):
            out.append(f".{seg}")
        else:  # keys such as "openrouter/openai/*" need quoting to stay unambiguous
            out.append(f'["{seg}"]')
    return "".join(out)


def parse(text: str) -> Path_:
    """Inverse of `render` (also accepts msgspec's `[...]`, kept as the key "...")."""
    if not text.startswith("$"):
        return ROOT
    out: list[str | int] = []
    for m in _SEGMENT.finditer(text, 1):
        name, index, _quote, quoted = m.groups()
        if name is not None:
            out.append(name)
        elif index is not None:
            out.append(int(index))
        elif quoted is not None:
            out.append(quoted)
        else:
            out.append("...")
    return tuple(out)
