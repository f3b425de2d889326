"""Every file tool x every escape attempt: none may succeed, nothing outside may change.

All attempts aim at a sentinel directory beside the workspace (never at /etc or
the home directory: the tests run as root, and a confinement bug must not be
able to damage the host).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kcd.agent.calls import ToolInvocation, ToolSettings
from kcd.agent.tools import execute_calls

SECRET = "secret-outside-content"


def bp(body: str) -> str:
    return f"*** Begin Patch\n{body}*** End Patch\n"


# tool variant -> arguments aiming at path p
TOOLS: dict[str, Callable[[str], dict[str, Any]]] = {
    "read_file": lambda p: {"path": p},
    "list_dir": lambda p: {"path": p, "depth": 3},
    "create_file": lambda p: {"path": p, "content": "pwned"},
    "create_file_from_block": lambda p: {"file_name": p, "content": "pwned"},
    "apply_search_replace": lambda p: {"file_name": p, "search": SECRET, "replace": "pwned"},
    "apply_search_replace:create": lambda p: {"file_name": p, "search": "", "replace": "pwned"},
    "apply_unified_patch:modify": lambda p: {"patch": f"--- {p}\n+++ {p}\n@@ -1 +1 @@\n-{SECRET}\n+pwned\n"},
    "apply_unified_patch:add": lambda p: {"patch": f"--- /dev/null\n+++ {p}\n@@ -0,0 +1 @@\n+pwned\n"},
    "apply_unified_patch:delete": lambda p: {"patch": f"--- {p}\n+++ /dev/null\n@@ -1 +0,0 @@\n-{SECRET}\n"},
    "apply_unified_patch:rename": lambda p: {
        "patch": f"diff --git a/README.md b/{p}\nrename from README.md\nrename to {p}\n"
    },
    "read": lambda p: {"filePath": p},
    "write": lambda p: {"filePath": p, "content": "pwned"},
    "edit": lambda p: {"filePath": p, "oldString": SECRET, "newString": "pwned"},
    "edit:create": lambda p: {"filePath": p, "oldString": "", "newString": "pwned"},
    "glob": lambda p: {"pattern": "**/*", "path": p},
    "grep": lambda p: {"pattern": "secret", "path": p},
    "list": lambda p: {"path": p},
    "patch:update": lambda p: {"patchText": bp(f"*** Update File: {p}\n@@\n-{SECRET}\n+pwned\n")},
    "patch:add": lambda p: {"patchText": bp(f"*** Add File: {p}\n+pwned\n")},
    "patch:delete": lambda p: {"patchText": bp(f"*** Delete File: {p}\n")},
    "patch:move": lambda p: {"patchText": bp(f"*** Update File: README.md\n*** Move to: {p}\n@@\n-# demo\n+# moved\n")},
}

# {OUT}: the sentinel directory (absolute); {WS}: the workspace (absolute).
ATTEMPTS = [
    "{OUT}/secret.txt",  # absolute, outside
    "{OUT}/new_file.txt",  # absolute, outside, new file
    "/{OUT}/secret.txt",  # '//' prefix
    "/",
    "..",
    "../out/secret.txt",
    "../out/new_file.txt",
    "../../../../../../../../../../..{OUT}/secret.txt",
    "a/../../out/secret.txt",
    "src/../../out/secret.txt",
    "./../out/secret.txt",
    "out_link/secret.txt",  # absolute symlink to the sentinel dir
    "out_link",
    "secret_link",  # symlink to a file outside
    "rel_out/secret.txt",  # relative symlink out
    "rel_out/new_file.txt",
    "dangling_out",  # dangling symlink pointing out (a create would land outside)
    "hop1/secret.txt",  # chain of symlinks ending outside
    "hop1",
    "src/up/out/secret.txt",  # symlink to the workspace's parent
    "src/up",
    "~",
    "~/secret.txt",
    "~root/.bashrc",
    "secret\x00.txt",
    "src/\x00/x",
    "rel_out/sub/../secret.txt",
    "{WS}/../out/secret.txt",  # absolute, starts inside, '..' out
    "{WS}/rel_out/secret.txt",  # absolute, inside prefix, symlink out
    "{WS}/secret_link",
]


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "ws"
    out = tmp_path / "out"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "README.md").write_text("# demo\n")
    (out / "sub").mkdir(parents=True)
    (out / "secret.txt").write_text(SECRET + "\n")
    (out / "sub" / "deep.txt").write_text(SECRET + "\n")
    os.symlink(out, root / "out_link")
    os.symlink(out / "secret.txt", root / "secret_link")
    os.symlink("../out", root / "rel_out")
    os.symlink(out / "missing.txt", root / "dangling_out")
    os.symlink("hop2", root / "hop1")
    os.symlink("hop3", root / "hop2")
    os.symlink(str(out), root / "hop3")
    os.symlink("../..", root / "src" / "up")
    return root, out


def outside_state(tmp_path: Path, root: Path) -> dict[str, Any]:
    """Everything under tmp_path except the workspace: names, contents, link targets, mtimes."""
    state: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(tmp_path, followlinks=False):
        if Path(dirpath) == root or root in Path(dirpath).parents:
            dirnames[:] = []
            continue
        st = os.lstat(dirpath)
        state[dirpath] = ("dir", st.st_mtime_ns, sorted(os.listdir(dirpath)))
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content = os.readlink(path) if os.path.islink(path) else Path(path).read_bytes()
            state[path] = (content, st.st_mtime_ns, st.st_mode)
    return state


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=lambda a: repr(a))
@pytest.mark.parametrize("variant", list(TOOLS))
def test_escape_attempt_fails(layout: tuple[Path, Path], tmp_path: Path, variant: str, attempt: str) -> None:
    root, out = layout
    path = attempt.replace("{OUT}", str(out)).replace("{WS}", str(root))
    before = outside_state(tmp_path, root)
    name = variant.split(":")[0]
    [outcome] = execute_calls(str(root), [ToolInvocation("c1", name, TOOLS[variant](path))], ToolSettings())
    assert not outcome.ok, outcome.output
    assert outcome.output.startswith(f'<TOOL_ERROR tool="{name}">'), outcome.output
    assert "PATCH_RESULT" not in outcome.output
    assert SECRET not in outcome.output and "deep.txt" not in outcome.output
    assert outside_state(tmp_path, root) == before
    assert (out / "secret.txt").read_text() == SECRET + "\n"
    assert not (out / "new_file.txt").exists() and not (out / "missing.txt").exists()
    assert (root / "README.md").read_text() == "# demo\n"  # a refused move/patch changes nothing inside either


# --------------------------------------------------------------------------- walks stay inside


def run(root: Path, name: str, **args: Any) -> str:
    [outcome] = execute_calls(str(root), [ToolInvocation("c1", name, args)], ToolSettings())
    assert outcome.ok, outcome.output
    return outcome.output


def test_glob_never_returns_entries_outside(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    output = run(root, "glob", pattern="**/*")
    assert "src/main.c" in output and "README.md" in output
    for leaked in ("secret", "deep.txt", "out_link/", "rel_out/", "hop1/", "src/up/"):
        assert leaked not in output
    for pattern in ("../out/*", "../**/*", "**/../../out/*", "out_link/**", "src/up/**"):
        assert "No files found" in run(root, "glob", pattern=pattern)


def test_grep_never_reads_files_outside(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    output = run(root, "grep", pattern="secret|int main")
    assert "src/main.c:1: int main" in output
    assert SECRET not in output and "secret_link" not in output


def test_list_tools_do_not_descend_symlinked_dirs(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    for output in (run(root, "list"), run(root, "list_dir", path=".", depth=5)):
        assert "out_link/" in output and "rel_out/" in output  # shown...
        assert "secret.txt" not in output and "deep.txt" not in output  # ...never entered
