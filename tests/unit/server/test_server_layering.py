"""The control server sees the daemon only through `ControlServices` (issue 15, item 4)."""

from __future__ import annotations

import ast
from pathlib import Path

import kcd.server

SERVER = Path(kcd.server.__file__).parent


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_server_never_imports_the_daemon() -> None:
    files = sorted(SERVER.glob("*.py"))
    assert files
    for path in files:
        imported = _imported(ast.parse(path.read_text(), str(path)))
        offending = {n for n in imported if n == "kcd.daemon" or n.startswith("kcd.daemon.")}
        assert not offending, f"{path.name} imports {sorted(offending)}"


def test_no_function_in_the_control_api_imports() -> None:
    tree = ast.parse((SERVER / "app.py").read_text())
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not inner, f"{fn.name} imports at line {inner[0].lineno}" if inner else ""


def test_no_type_checking_guard_in_the_control_api() -> None:
    tree = ast.parse((SERVER / "app.py").read_text())
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    assert not guarded
