"""docs/architecture.md's layout names every module under kcd/ and kcctl/, file for file."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_module_is_in_the_architecture_layout() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    index = doc[doc.index("### Every module"):]
    listed: set[str] = set()
    package = None
    for line in index.splitlines():
        if m := re.match(r"- `([\w/]+)/`$", line):
            package = m.group(1)
        elif (m := re.match(r"  - `([\w.]+\.py)`: \S", line)) and package:
            listed.add(f"{package}/{m.group(1)}")
        elif line.startswith("### ") and line != "### Every module":
            break
    present = {p.relative_to(REPO).as_posix() for top in ("kcd", "kcctl") for p in (REPO / top).rglob("*.py")
               if "__pycache__" not in p.parts and p.name != "__init__.py"}
    assert sorted(present - listed) == [], "modules missing from docs/architecture.md ### Every module"
    assert sorted(listed - present) == [], "modules listed in docs/architecture.md that do not exist"
